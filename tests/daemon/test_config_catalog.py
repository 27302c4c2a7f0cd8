"""The daemon's typed config (file, then env, then flags) and its SQLite catalog."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from p2pweights.errors import CatalogError, ConfigError
from p2pweights.manifest import ChunkEntry
from p2pweightsd.catalog import Catalog
from p2pweightsd.config import PUBLIC_BOOTSTRAP, load_config
from p2pweightsd.store import FileStamp


def test_defaults_suit_real_users(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, environ={"P2PW_CONFIG": str(tmp_path / "absent.toml")})
    assert cfg.profile == "default"
    assert cfg.dht and cfg.lsd and cfg.upnp and cfg.natpmp and cfg.utp
    assert cfg.dht_bootstrap == PUBLIC_BOOTSTRAP
    assert cfg.socket_path == tmp_path / "daemon.sock"


def test_local_profile_switches_off_everything_that_leaves_the_machine(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, environ={"P2PW_PROFILE": "local"})
    assert not (cfg.dht or cfg.lsd or cfg.upnp or cfg.natpmp or cfg.utp)
    assert cfg.dht_bootstrap == ()
    assert cfg.listen.startswith("127.0.0.1:")


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'profile = "local"\nupload_rate = 100\ndownload_rate = 5\nseed_ratio_limit = 2.5\n')
    env = {"P2PW_UPLOAD_RATE": "200", "P2PW_DHT": "1"}
    cfg = load_config(tmp_path, environ=env, overrides={"upload_rate": 300, "listen": None})
    assert cfg.profile == "local" and cfg.dht  # explicit keys win over the profile
    assert (cfg.upload_rate, cfg.download_rate, cfg.seed_ratio_limit) == (300, 5, 2.5)
    assert load_config(tmp_path, environ=env).upload_rate == 200


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ("upload_rate = -1\n", "upload_rate"),
        ('profile = "cloud"\n', "profile"),
        ("dht = 3\n", "dht"),
        ("rate = 1\n", "unknown key"),
        ("[broken\n", "config file"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, toml: str, match: str) -> None:
    (tmp_path / "config.toml").write_text(toml)
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path, environ={})


def test_a_data_dir_too_long_for_a_socket_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="too long"):
        load_config(tmp_path / ("x" * 120), environ={})


def test_catalog_is_wal_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    cat = Catalog(path)
    rid = "a" * 64
    cat.add_release(rid, source="magnet:?x", state="metadata", peers=["127.0.0.2:1"])
    cat.set_manifest(rid, name="o/m", version=3, label="", publisher="ed25519:x",
                     manifest_sha256="b" * 64, total_bytes=10,
                     chunks=[("chunks/" + "c" * 64, 10, "c" * 64, "d" * 64)], torrent=b"t")
    cat.set_state(rid, "seeding")
    cat.save_resume(rid, b"resume")
    cat.close()
    again = Catalog(path)
    row = again.get(rid)
    assert row is not None and row.state == "seeding" and row.completed is not None
    assert row.peers == ("127.0.0.2:1",) and row.version == 3 and row.torrent == b"t"
    assert again.resume_data(rid) == b"resume"
    # A signed manifest alone records no store file: only a placed, hashed one is.
    assert again.store_chunks() == {}
    chunk = ChunkEntry("chunks/" + "c" * 64, 10, "c" * 64, "d" * 64, "blob")
    again.record_chunk(chunk, FileStamp(10, 1, 2, 3))
    known = again.store_chunks([chunk.path])[chunk.path]
    assert known.entry() == chunk and known.stamp == FileStamp(10, 1, 2, 3)
    assert again.remove(rid, forget_chunks=True) == ["chunks/" + "c" * 64]
    assert again.get(rid) is None and again.store_chunks() == {}
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_schema_1_catalog_is_migrated_and_forgets_unverified_identities(
    tmp_path: Path,
) -> None:
    """Schema 1 recorded a chunk name as soon as a signed manifest claimed it; those rows
    could squat a name, so the migration drops them (the daemon re-hashes store files)."""
    path = tmp_path / "catalog.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE chunks (path TEXT PRIMARY KEY, size INTEGER NOT NULL,
            sha256 TEXT NOT NULL, v2_root TEXT NOT NULL);
        INSERT INTO chunks VALUES ('chunks/x', 1, 'a', 'b');"""
    )
    db.close()
    cat = Catalog(path)
    assert cat.store_chunks() == {}
    cat.record_chunk(ChunkEntry("chunks/x", 1, "a", "b", "blob"), FileStamp(1, 2, 3, 4))
    cat.close()
    assert Catalog(path).store_chunks()["chunks/x"].stamp == FileStamp(1, 2, 3, 4)


def test_damaged_catalog_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CatalogError, match="damaged"):
        Catalog(path)
