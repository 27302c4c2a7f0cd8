"""The daemon's caps on torrents and manifests (issue 16, finding 7).

A torrent with 50,000 files was accepted (about +95 MB RSS); only libtorrent's bdecode
limit stopped 450,000. The daemon's config now caps the files of a torrent and the
counts of a manifest, far below that, and refuses more with ``OverCapError`` before any
file is mapped into the store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import libtorrent as lt
import pytest

import p2pweights
from p2pweights import ManifestError, OverCapError, PrivateKey, TrustStore
from p2pweights.manifest import LIMITS
from p2pweightsd.config import load_config
from p2pweightsd.engine import make_torrent, parse_torrent

from .conftest import Daemon

DaemonFactory = Callable[..., Daemon]


def _many_files(n: int, tmp: Path) -> bytes:
    """A v2 torrent of ``n`` files, all but one empty (so only that one is hashed)."""
    entries = [lt.create_file_entry(f"r/chunks/{i:064x}", 0) for i in range(n - 1)]
    entries.append(lt.create_file_entry("r/manifest.json", 5))
    ct = lt.create_torrent(entries, 16384, lt.create_torrent.v2_only)
    (tmp / "r").mkdir(exist_ok=True)
    (tmp / "r" / "manifest.json").write_bytes(b"hello")
    lt.set_piece_hashes(ct, str(tmp))
    return bytes(lt.bencode(ct.generate()))


def test_default_cap_refuses_a_torrent_of_too_many_files(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={})
    assert config.max_torrent_files == 20_000
    over = _many_files(config.max_torrent_files + 1, tmp_path)
    with pytest.raises(OverCapError, match="20001 files, over this daemon's cap of 20000"):
        parse_torrent(over, max_files=config.max_torrent_files)
    # Without the cap the same bytes parse: the cap, not libtorrent, refused them.
    assert len(parse_torrent(over).files) == config.max_torrent_files + 1
    at_cap = _many_files(config.max_torrent_files, tmp_path)
    assert len(parse_torrent(at_cap, max_files=config.max_torrent_files).files) == 20_000


def test_the_cap_counts_real_files_not_padding(
    make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> None:
    release = make_release(make_model())
    hybrid = make_torrent(release, hybrid=True)
    assert hybrid.num_files > len(hybrid.files)  # v1 pad files sit between the chunks
    n = len(hybrid.files)
    assert len(parse_torrent(hybrid.data, max_files=n).files) == n
    with pytest.raises(OverCapError):
        parse_torrent(hybrid.data, max_files=n - 1)


def test_config_caps_lower_the_manifest_limits(
    tmp_path: Path, key: PrivateKey, make_model: Callable[..., Path]
) -> None:
    (tmp_path / "config.toml").write_text("max_torrent_files = 3\nmax_manifest_tensors = 5\n")
    config = load_config(tmp_path, environ={})
    limits = config.manifest_limits
    assert (limits.chunks, limits.files, limits.tensors) == (3, 3, 5)
    unlimited = load_config(tmp_path / "zero", overrides={"max_torrent_files": 0}, environ={})
    assert unlimited.manifest_limits.chunks == LIMITS.chunks
    release = tmp_path / "rel"
    p2pweights.pack(make_model(), release, name="org/m", version=1, key=key, now=1_700_000_000)
    trust = TrustStore.of_keys([key.public])
    with pytest.raises(ManifestError, match="over the limit of"):
        p2pweights.open_release(release, trust, limits=limits)
    assert p2pweights.open_release(release, trust).manifest.name == "org/m"


@pytest.mark.slow
def test_a_daemon_refuses_a_torrent_over_its_file_cap(
    daemons: DaemonFactory,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    key: PrivateKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeder = daemons(name="seeder")
    info = seeder.call("publish", make_release(make_model()))
    files = len(parse_torrent(Path(info["torrent_path"]).read_bytes()).files)
    config = tmp_path / "capped.toml"
    config.write_text(f"max_torrent_files = {files - 1}\n")
    monkeypatch.setenv("P2PW_CONFIG", str(config))
    leech = daemons(name="leech")
    TrustStore.load(leech.home / "trust.json").add(key.public, "publisher")
    # A magnet: refused as its metadata arrives, before any file is mapped.
    started = leech.call("fetch", info["magnet"], peers=[seeder.peer])
    done = leech.call("wait", started["id"], 60)
    assert done["state"] == "error" and done["error"].startswith("OverCapError"), done
    assert f"{files} files, over this daemon's cap of {files - 1}" in done["error"]
    assert not any((leech.home / "store" / "chunks").iterdir())
    # A .torrent file: refused as it is parsed, with the typed error.
    with pytest.raises(OverCapError):
        leech.call("fetch", info["torrent_path"], peers=[seeder.peer])
