"""The daemon never imports torch, and the CLI's daemon verbs stay light (real daemons)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from p2pweights import PrivateKey, SourceError, TrustStore
from p2pweightsd.catalog import Catalog

from .._imports import CLI_HEAVY, cli_imports, heavy_in
from ..conftest import layer_state
from .conftest import Daemon

pytestmark = pytest.mark.slow


def _cli(d: Daemon, *args: str) -> dict[str, object]:
    proc, modules = cli_imports(d.home, *args, "--json")
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr[-2000:])
    assert heavy_in(modules, CLI_HEAVY) == set(), (args, heavy_in(modules, CLI_HEAVY))
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_daemons_publish_and_fetch_without_torch(
    daemons: Callable[..., Daemon],
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    tmp_path: Path,
) -> None:
    a, b = daemons(name="a"), daemons(name="b")
    published = a.call("publish", make_release(make_model()))
    TrustStore.load(b.home / "trust.json").add(key.public, "publisher")
    # The CLI's daemon verbs, each in a fresh interpreter: none loads torch, aiohttp,
    # cryptography or libtorrent.
    started = _cli(b, "fetch", "--no-wait", "--peer", a.peer, str(published["magnet"]))
    info = b.call("wait", started["id"], 120)
    assert info["state"] == "seeding" and not info["timed_out"], b.log()[-3000:]
    assert [r["id"] for r in _cli(b, "ls")["releases"]] == [published["id"]]  # type: ignore[index]
    assert _cli(b, "show", str(published["id"])[:8])["state"] == "seeding"
    assert _cli(b, "daemon", "status")["releases"] == 1
    # Packing pickles would need torch: the daemon refuses, and says what to do instead.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"w": torch.zeros(4)}, pickled / "pytorch_model.bin")
    with pytest.raises(SourceError, match="p2pw pack"):
        a.client.request_sync(
            "POST",
            "/publish",
            body={
                "source": str(pickled),
                "name": "test/pickled",
                "version": 1,
                "key_file": str(tmp_path / "keys" / "publisher.pem"),
            },
        )
    # Seen from inside each daemon, at request time, after publishing, fetching, seeding.
    for d in (a, b):
        assert d.call("status")["modules_loaded"] == {"torch": False, "numpy": False}
    assert _cli(b, "rm", str(published["id"]))["id"] == published["id"]
    assert b.call("status")["releases"] == 0


def test_catalog_counts_and_finds_prefixes_without_reading_rows(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "catalog.sqlite3")
    ids = ["ab" + "0" * 62, "ab" + "1" * 62, "ac" + "0" * 62, "f" * 64]
    for rid in ids:
        cat.add_release(rid, source="magnet:?x", state="metadata")
    assert cat.count() == 4
    assert cat.ids_with_prefix("ab") == ids[:2]
    assert cat.ids_with_prefix("ab1") == [ids[1]]
    assert cat.ids_with_prefix("f" * 64) == [ids[3]]
    assert cat.ids_with_prefix("ad") == [] and cat.ids_with_prefix("abz") == []
    # A listing leaves the torrents out, but says which releases have one.
    cat.set_manifest(ids[0], name="o/m", version=1, label="", publisher="ed25519:x",
                     manifest_sha256="b" * 64, total_bytes=1, chunks=[], torrent=b"t" * 4096)
    light = {r.id: r for r in cat.releases(torrents=False)}
    assert all(r.torrent is None for r in light.values())
    assert [rid for rid, r in light.items() if r.has_torrent] == [ids[0]]
    full = {r.id: r for r in cat.releases()}
    assert full[ids[0]].torrent == cat.torrent(ids[0]) == b"t" * 4096
    assert full[ids[1]].torrent is None and cat.torrent(ids[1]) is None
    # The lookup is a range over the primary key's index, not a scan of the table: the
    # statement it ran (traced, with its values bound) is planned on a covering index.
    traced: list[str] = []
    cat._db.set_trace_callback(traced.append)
    cat.ids_with_prefix("ab")
    cat._db.set_trace_callback(None)
    plan = " ".join(str(r[-1]) for r in cat._db.execute(f"EXPLAIN QUERY PLAN {traced[-1]}"))
    assert "COVERING INDEX" in plan and "SCAN" not in plan, plan
    cat.close()


def test_many_seeded_releases_come_back_without_a_rehash(
    daemons: Callable[..., Daemon],
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    d = daemons(name="many")
    releases = [make_release(make_model(layer_state(1, 8, seed=i))) for i in range(30)]
    ids = {d.client.request_sync("POST", "/publish", body={"path": str(r)})["id"] for r in releases}
    assert len(ids) == 30
    d.stop()  # clean: resume data of every torrent is saved
    d.start()
    rows = _cli(d, "ls")["releases"]
    assert {r["id"] for r in rows} == ids  # type: ignore[union-attr]
    for r in rows:  # type: ignore[union-attr]
        assert r["state"] == "seeding", r
        assert "checking_files" not in r["transfer"]["state_history"], r
        assert str(r["magnet"]).startswith("magnet:?xt=urn:btmh:1220") and r["torrent_path"]
    assert d.call("status")["modules_loaded"]["torch"] is False
