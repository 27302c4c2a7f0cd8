"""A second publisher cannot reach another release's bytes in the shared store.

Each test reproduces an attack from the store-integrity review with real daemons on
loopback. The attacker is a second publisher, trusted for its own name or accepted on
first use, whose release names one of its chunks after a chunk of the victim release
(same name and size, other bytes), seeded by a plain libtorrent peer (a p2pweights daemon
refuses to publish such a release). Races are made deterministic by parking both fetches
with no peer, then releasing them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import selectors
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import p2pweights
from p2pweights import PrivateKey, TrustStore
from p2pweights._canonical import dumps
from p2pweights.errors import CorruptChunkError, ReleaseMismatchError
from p2pweights.manifest import ChunkEntry, Manifest, chunk_address
from p2pweights.release import MANIFEST_NAME, SIGNATURE_NAME
from p2pweightsd.admission import store_layout
from p2pweightsd.catalog import Catalog
from p2pweightsd.engine import make_torrent
from p2pweightsd.store import FileStamp, Store

from ..conftest import layer_state
from .conftest import Daemon, p2pw

pytestmark = pytest.mark.slow

DaemonFactory = Callable[..., Daemon]
PEER = Path(__file__).with_name("_engine_peer.py")


@contextmanager
def plain_seeder(addr: str, release: Path) -> Iterator[str]:
    """A plain libtorrent peer seeding ``release`` as it is; yields ``IP:PORT``."""
    proc = subprocess.Popen(
        [sys.executable, str(PEER), "--listen", addr, str(release)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=60), "the seeder did not start"
        yield f"{addr}:{json.loads(proc.stdout.readline())['port']}"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


def _tensor_names(doc: dict[str, Any]) -> list[str]:
    return [n for c in doc["chunks"] if c["kind"] == "tensors" for n in c["names"]]


def squatter(victim: Path, attacker: Path, key: PrivateKey) -> tuple[Path, ChunkEntry]:
    """Rename one of ``attacker``'s tensor chunks after a same-size chunk of ``victim``.

    The forged manifest is signed by ``key`` and parses (a chunk's path is the content
    address of the sha256 it claims), but the chunk's bytes and v2 root are the
    attacker's own.

    Returns:
        The forged release dir, and the victim's chunk whose name it claims.
    """
    v = Manifest.from_bytes((victim / MANIFEST_NAME).read_bytes())
    doc = json.loads((attacker / MANIFEST_NAME).read_bytes())
    by_size = {c.size: c for c in v.chunks if c.kind == "tensors"}
    own = next(c for c in doc["chunks"] if c["kind"] == "tensors" and c["size"] in by_size
               and c["sha256"] != by_size[c["size"]].sha256)
    target = by_size[own["size"]]
    (attacker / chunk_address(own["sha256"], "tensors")).rename(attacker / target.path)
    # A tensor's position counts chunk by chunk, in path order: renaming a chunk moves it
    # in that order, so the files' tensor positions are mapped to the new order.
    before = _positions(doc["chunks"])
    own["sha256"] = target.sha256
    doc["chunks"].sort(key=lambda c: chunk_address(c["sha256"], c["kind"]))
    after = _positions(doc["chunks"])
    moved = {before[k]: after[k] for k in before}
    for f in doc["files"]:
        if "tensors" in f:
            f["tensors"] = [moved[p] for p in f["tensors"]]
    data = dumps(doc)
    Manifest.from_bytes(data)  # the forgery is a well-formed manifest
    (attacker / MANIFEST_NAME).write_bytes(data)
    (attacker / SIGNATURE_NAME).write_bytes(key.sign(data))
    (attacker / ".p2pw-verified.json").unlink(missing_ok=True)
    return attacker, target


def _positions(chunks: list[dict[str, Any]]) -> dict[tuple[int, int], int]:
    """(id of a chunk entry, tensor index in it) -> the tensor's position in the manifest."""
    out: dict[tuple[int, int], int] = {}
    for c in chunks:
        for k in range(len(c.get("names", []))):
            out[(id(c), k)] = len(out)
    return out


@pytest.fixture
def releases(
    make_model: Callable[..., Path], key: PrivateKey, other_key: PrivateKey, tmp_path: Path
) -> dict[str, Any]:
    """The victim ``org/m1`` (key), and a squatting ``evil/m2`` (other_key) of the same shape."""
    victim_state = layer_state(layers=3, hidden=96, seed=0)
    victim = tmp_path / "victim"
    p2pweights.pack(make_model(victim_state), victim, name="org/m1", version=1, key=key)
    evil = tmp_path / "evil"
    p2pweights.pack(make_model(layer_state(layers=3, hidden=96, seed=1)), evil, name="evil/m2",
                    version=1, key=other_key)
    evil, target = squatter(victim, evil, other_key)
    torrent = tmp_path / "evil.torrent"
    torrent.write_bytes(make_torrent(evil).data)
    return {"victim": victim, "state": victim_state, "evil": evil, "target": target,
            "evil_magnet": make_torrent(evil).magnet, "evil_torrent": torrent}


def _trust(d: Daemon, key: PrivateKey, name: str) -> None:
    TrustStore.load(d.home / "trust.json").add(key.public, name)


def _attacker_trust(d: Daemon, other_key: PrivateKey, mode: str) -> dict[str, bool]:
    """Trust the second publisher for good, or ask for trust on first use."""
    if mode == "trusted":
        _trust(d, other_key, "evil")
        return {}
    return {"trust_on_first_use": True}


def _done(d: Daemon, rid: str, timeout: float = 120) -> dict[str, Any]:
    info: dict[str, Any] = d.call("wait", rid, timeout)
    assert not info["timed_out"], (info, d.log()[-3000:])
    return info


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_store_holds_victim(d: Daemon, target: ChunkEntry) -> None:
    path = d.home / "store" / target.path
    assert _sha(path) == target.sha256
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert not any((d.home / "store" / "partial").rglob("*")), "a partial file was left"


def _assert_victim_loads(d: Daemon, rid: str, state: dict[str, torch.Tensor]) -> None:
    path = d.call("show", rid)["path"]
    for mode in ("fast", "full"):
        loaded = p2pweights.load(path, home=d.home, verify=mode)
        assert all(torch.equal(loaded[n], t) for n, t in state.items()), mode


@pytest.mark.parametrize("mode", ["trusted", "tofu"])
def test_race_of_two_parked_fetches_keeps_the_victims_bytes(
    daemons: DaemonFactory, key: PrivateKey, other_key: PrivateKey,
    releases: dict[str, Any], mode: str,
) -> None:
    """Both fetches wait with no peer, then get their peers at once. Before the fix both
    torrents wrote into one store file, and ``load`` returned the attacker's values."""
    pub = daemons(name="pub")
    victim_magnet = pub.call("publish", releases["victim"])["magnet"]
    node = daemons(name="node")
    _trust(node, key, "org")
    extra = _attacker_trust(node, other_key, mode)
    a = node.call("fetch", victim_magnet, peers=[])["id"]
    b = node.call("fetch", releases["evil_magnet"], peers=[], **extra)["id"]
    assert {node.call("show", r)["state"] for r in (a, b)} == {"metadata"}
    pub_peer = pub.peer
    with plain_seeder("127.0.9.9", releases["evil"]) as evil_peer:

        async def release_both() -> None:
            client = node.client
            await asyncio.gather(client.fetch(victim_magnet, peers=[pub_peer]),
                                 client.fetch(releases["evil_magnet"], peers=[evil_peer], **extra))

        asyncio.run(release_both())
        info_a, info_b = _done(node, a), _done(node, b)
    assert info_a["state"] == "seeding", info_a
    assert info_b["state"] == "error", info_b
    assert "do not hash to its name" in info_b["error"] or "other bytes" in info_b["error"]
    _assert_store_holds_victim(node, releases["target"])
    _assert_victim_loads(node, a, releases["state"])


@pytest.mark.parametrize("mode", ["trusted", "tofu"])
def test_late_rewrite_cannot_touch_a_verified_chunk(
    daemons: DaemonFactory, key: PrivateKey, other_key: PrivateKey,
    releases: dict[str, Any], mode: str,
) -> None:
    """The attacker's .torrent is added first while its seeder is away; the victim
    completes; then the attacker's seeder appears. Before the fix libtorrent rewrote the
    victim's verified chunk in place, under a tensor a process had already loaded."""
    pub = daemons(name="pub")
    victim_magnet = pub.call("publish", releases["victim"])["magnet"]
    node = daemons(name="node")
    _trust(node, key, "org")
    extra = _attacker_trust(node, other_key, mode)
    b = node.call("fetch", str(releases["evil_torrent"]), peers=[], **extra)["id"]
    a = node.call("fetch", victim_magnet, peers=[pub.peer])["id"]
    assert _done(node, a)["state"] == "seeding"
    target = node.home / "store" / releases["target"].path
    inode = target.stat().st_ino
    held = p2pweights.load(node.call("show", a)["path"], home=node.home, verify="full")
    with plain_seeder("127.0.9.10", releases["evil"]) as evil_peer:
        node.call("fetch", str(releases["evil_torrent"]), peers=[evil_peer], **extra)
        info_b = _done(node, b)
    assert info_b["state"] == "error", info_b
    assert target.stat().st_ino == inode
    _assert_store_holds_victim(node, releases["target"])
    assert all(torch.equal(held[n], t) for n, t in releases["state"].items())
    assert node.call("show", a)["state"] == "seeding"
    _assert_victim_loads(node, a, releases["state"])


@pytest.mark.parametrize("mode", ["trusted", "tofu"])
def test_a_squatter_that_completes_first_cannot_block_the_victim(
    daemons: DaemonFactory, key: PrivateKey, other_key: PrivateKey,
    releases: dict[str, Any], mode: str,
) -> None:
    """Before the fix the attacker's bytes took the name, and the victim could never be
    fetched (``claims other bytes than the store's verified chunk``)."""
    pub = daemons(name="pub")
    victim_magnet = pub.call("publish", releases["victim"])["magnet"]
    node = daemons(name="node")
    _trust(node, key, "org")
    extra = _attacker_trust(node, other_key, mode)
    with plain_seeder("127.0.9.11", releases["evil"]) as evil_peer:
        b = node.call("fetch", releases["evil_magnet"], peers=[evil_peer], **extra)["id"]
        info_b = _done(node, b)
    assert info_b["state"] == "error", info_b
    assert not (node.home / "store" / releases["target"].path).exists()
    a = node.call("fetch", victim_magnet, peers=[pub.peer])["id"]
    assert _done(node, a)["state"] == "seeding"
    _assert_store_holds_victim(node, releases["target"])
    _assert_victim_loads(node, a, releases["state"])


def test_publishing_a_name_colliding_release_changes_nothing(
    daemons: DaemonFactory, key: PrivateKey, releases: dict[str, Any]
) -> None:
    """Before the fix publish replaced the store file first, then failed, and left the
    hostile row behind as seeding."""
    node = daemons(name="node")
    _trust(node, key, "org")
    victim = node.call("publish", releases["victim"])
    target = node.home / "store" / releases["target"].path
    inode = target.stat().st_ino
    with pytest.raises(CorruptChunkError):
        node.call("publish", releases["evil"])
    assert target.stat().st_ino == inode
    _assert_store_holds_victim(node, releases["target"])
    assert [r["id"] for r in node.call("releases")] == [victim["id"]]
    assert sorted(p.name for p in (node.home / "store" / "releases").iterdir()) == [victim["id"]]
    _assert_victim_loads(node, victim["id"], releases["state"])


def test_a_store_file_written_anyway_is_found_not_seeded_and_repaired(
    daemons: DaemonFactory, key: PrivateKey, releases: dict[str, Any]
) -> None:
    """Root ignores mode 0444: a forced write into a linked tensor file is noticed (on a
    check, and before seeding after a restart), shown by ``show`` and ``doctor``, the
    release stops seeding, and a re-fetch repairs it."""
    pub = daemons(name="pub")
    magnet = pub.call("publish", releases["victim"])["magnet"]
    node = daemons(name="node")
    _trust(node, key, "org")
    rid = node.call("fetch", magnet, peers=[pub.peer])["id"]
    assert _done(node, rid)["state"] == "seeding"
    assert "transfer" in node.call("show", rid)
    # Write through the release dir's link, as a program writing into an export would.
    linked = Path(node.call("show", rid)["path"]) / releases["target"].path
    assert os.geteuid() == 0 or not os.access(linked, os.W_OK), "store files are read-only"
    if os.geteuid() != 0:
        os.chmod(linked, 0o644)  # what root can do without asking
    with open(linked, "r+b") as fh:
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptChunkError, match=releases["target"].sha256[:16]):
        node.call("check", rid)
    info = node.call("show", rid)
    assert info["state"] == "damaged", info
    assert "changed in the store" in info["error"]
    assert "transfer" not in info  # no longer seeded
    # Checked before it seeds: a restart keeps it off the swarm.
    node.stop()
    node.start()
    assert node.call("show", rid)["state"] == "damaged"
    assert "transfer" not in node.call("show", rid)
    node.stop()
    doctor = p2pw(node.home, "doctor", "--json")
    assert "damaged" in doctor.stdout, doctor.stdout + doctor.stderr
    node.start()
    # A re-fetch repairs it: the changed file is fetched again and replaces the bad one.
    node.call("fetch", magnet, peers=[pub.peer])
    info = _done(node, rid)
    assert info["state"] == "seeding", info
    assert "transfer" in info
    _assert_store_holds_victim(node, releases["target"])
    _assert_victim_loads(node, rid, releases["state"])
    assert node.call("check", rid, full=True)["ok"]


def test_a_selective_fetch_is_checked_on_its_own_chunks_only(
    daemons: DaemonFactory, key: PrivateKey, releases: dict[str, Any]
) -> None:
    """Chunks a ``--include`` fetch did not want are absent, not damaged: the check (and
    the one before seeding after a restart) counts only files the release has."""
    pub = daemons(name="pub")
    magnet = pub.call("publish", releases["victim"])["magnet"]
    node = daemons(name="node")
    _trust(node, key, "org")
    rid = node.call("fetch", magnet, peers=[pub.peer], include=["model.layers.0.*"])["id"]
    assert _done(node, rid)["state"] == "seeding"
    total = len(Manifest.from_bytes((releases["victim"] / MANIFEST_NAME).read_bytes()).chunks)
    done = node.call("check", rid, full=True)
    assert done["ok"] and 0 < done["chunks"] < total
    node.stop()
    node.start()
    assert node.call("show", rid)["state"] == "seeding"


def test_store_layout_refuses_a_torrent_that_claims_other_bytes_for_a_store_chunk(
    tmp_path: Path, releases: dict[str, Any]
) -> None:
    """The check at metadata: a chunk name the store holds verified, claimed with another
    v2 root, is refused before anything is mapped; the honest torrent is mapped onto the
    store file, and only while that file is unchanged."""
    store = Store(tmp_path / "store")
    store.open()
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    target: ChunkEntry = releases["target"]
    dest = store.root / target.path
    dest.write_bytes((releases["victim"] / target.path).read_bytes())
    catalog.record_chunk(target, FileStamp.of(dest))
    evil = make_torrent(releases["evil"])
    with pytest.raises(ReleaseMismatchError, match="claims other bytes"):
        store_layout(evil.id, evil, store, catalog)
    honest = make_torrent(releases["victim"])
    index = honest.file(target.path).index
    assert store_layout(honest.id, honest, store, catalog)[index] == target.path
    dest.chmod(0o644)
    with open(dest, "r+b") as fh:  # changed since it was verified: never mapped again
        fh.write(b"\xff")
    mapped = store_layout(honest.id, honest, store, catalog)[index]
    assert mapped == store.partial_path(honest.id, target.path)
    catalog.close()
