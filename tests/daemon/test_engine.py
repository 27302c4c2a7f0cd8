"""The libtorrent engine: torrents from releases, magnets, fetches, a shared store, resume.

Every session binds to its own 127.0.0.x address with DHT, LSD, UPnP, NAT-PMP and uTP off.
Seeders run in a separate process (``_engine_peer.py``); the leecher runs in the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import libtorrent as lt
import pytest
import torch

from p2pweights import TrustStore, open_release
from p2pweights.errors import CorruptChunkError, FormatError, MissingChunkError
from p2pweights.hashing import hash_file
from p2pweights.manifest import Manifest

from ..conftest import layer_state

try:
    from p2pweightsd import engine as eng
except ImportError:  # not installed under its package name yet: the source tree
    from daemon import engine as eng  # type: ignore[no-redef]

PEER = Path(__file__).with_name("_engine_peer.py")
SEEDER = "127.0.0.2"
LEECHER = "127.0.0.3"
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def local(addr: str = LEECHER, **kw: Any) -> eng.EngineSettings:
    return eng.EngineSettings.local_only(addr, **kw)


@contextlib.contextmanager
def seeder(*releases: Path, addr: str = SEEDER, upload_limit: int = 0,
           piece_size: int = eng.DEFAULT_PIECE_SIZE,
           torrent: Path | None = None) -> Iterator[tuple[int, list[str]]]:
    """A seeding peer process; yields (port, torrent ids) once it seeds everything.

    With ``torrent``, that .torrent is seeded from the one release dir unchecked.
    """
    cmd = [sys.executable, str(PEER), "--listen", addr, "--upload-limit", str(upload_limit),
           "--piece-size", str(piece_size),
           *(["--torrent", str(torrent)] if torrent else []), *map(str, releases)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=30), "peer process did not start in 30 s"
        line = proc.stdout.readline()
        assert line, f"peer process died (rc={proc.wait()})"
        info = json.loads(line)
        yield int(info["port"]), list(info["torrents"])
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def big_state(layers: int = 4, hidden: int = 256) -> dict[str, torch.Tensor]:
    return layer_state(layers=layers, hidden=hidden)


def store_layout(tf: eng.TorrentFile) -> dict[int, str]:
    """The shared-store recipe: chunks by name in one dir, manifests per release."""
    return {
        f.index: f.path if f.path.startswith("chunks/") else f"releases/{tf.id}/{f.path}"
        for f in tf.files
    }


def same_files(release: Path, root: Path, layout: dict[int, str], tf: eng.TorrentFile) -> None:
    for f in tf.files:
        assert (root / layout[f.index]).read_bytes() == (release / f.path).read_bytes(), f.path


# ------------------------------------------------------------------ making torrents


ODD_FILES = {
    "tiny.bin": b"x",                                    # 1 byte
    "exact16k.bin": bytes(range(256)) * 64,              # exactly one 16 KiB block
    "over16k.bin": b"\x01" * (16 * 1024 + 1),            # two blocks, the second of 1 byte
    "three_blocks.bin": os.urandom(3 * 16 * 1024 + 5),   # 4 leaves: non-power-of-two data
    "five_blocks.bin": os.urandom(5 * 16 * 1024),        # 5 full blocks, padded to 8
    "tokenizer.json": b'{"a": 1}' * 5000,
}


@pytest.mark.parametrize("hybrid", [False, True], ids=["v2", "hybrid"])
def test_v2_roots_from_libtorrent_equal_manifest(
    make_model: Callable[..., Path], make_release: Callable[..., Path], hybrid: bool
) -> None:
    release = make_release(make_model(extra_files=ODD_FILES))
    manifest = Manifest.from_bytes((release / "manifest.json").read_bytes())
    sizes = {c.size for c in manifest.chunks}
    assert {1, 16384, 16385, 3 * 16384 + 5, 5 * 16384} <= sizes

    tf = eng.make_torrent(release, hybrid=hybrid, piece_size=32 * 1024)
    # Roots as libtorrent reads them back from the bencoded torrent.
    ti = lt.torrent_info(tf.data)
    fs = ti.layout()
    by_path = {fs.file_path(i).split("/", 1)[1]: str(fs.root(i)) for i in range(fs.num_files())
               if not fs.file_flags(i) & lt.file_storage.flag_pad_file}
    for chunk in manifest.chunks:
        assert by_path[chunk.path] == chunk.v2_root, chunk.path
    for name in ("manifest.json", "manifest.sig"):
        assert by_path[name] == hash_file(release / name).v2_root
    # Exactly the release's files; local state such as the verify records stays out.
    assert set(by_path) == {"manifest.json", "manifest.sig"} | {c.path for c in manifest.chunks}
    assert (release / ".p2pw-verified.json").exists()
    assert tf.name == "test--model-v1"
    assert len(tf.info_hash_v2) == 64
    assert (tf.info_hash_v1 is not None) == hybrid
    assert f"xt=urn:btmh:1220{tf.info_hash_v2}" in tf.magnet
    assert eng.parse_magnet(tf.magnet).info_hash_v1 == tf.info_hash_v1
    assert eng.parse_torrent(tf.data) == tf


def test_make_torrent_is_reproducible_and_independent_of_dir_name(
    make_model: Callable[..., Path], make_release: Callable[..., Path], tmp_path: Path
) -> None:
    release = make_release(make_model())
    a = eng.make_torrent(release)
    moved = release.rename(tmp_path / "some other name")
    b = eng.make_torrent(moved)
    assert a.data == b.data
    assert a.id == b.id


def test_make_torrent_refuses_damaged_release(
    make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> None:
    release = make_release(make_model())
    manifest = Manifest.from_bytes((release / "manifest.json").read_bytes())
    victim = release / manifest.chunks[0].path
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptChunkError, match="v2 root"):
        eng.make_torrent(release)
    victim.write_bytes(bytes(data[:-1]))
    with pytest.raises(CorruptChunkError, match="bytes"):
        eng.make_torrent(release)
    victim.unlink()
    with pytest.raises(MissingChunkError):
        eng.make_torrent(release)
    with pytest.raises(FormatError):
        eng.make_torrent(release, piece_size=3 * 16 * 1024)


def test_parse_torrent_rejects_garbage_and_v1(tmp_path: Path) -> None:
    for junk in (b"", b"not bencode", lt.bencode({b"info": {b"name": b"x"}})):
        with pytest.raises(FormatError):
            eng.parse_torrent(junk)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"hello")
    ct = lt.create_torrent(lt.list_files(str(tmp_path / "d")), 16 * 1024, lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, str(tmp_path))
    with pytest.raises(FormatError, match="v2"):
        eng.parse_torrent(lt.bencode(ct.generate()))


def test_parse_magnet() -> None:
    ih = "ab" * 32
    m = eng.parse_magnet(
        f"magnet:?xt=urn:btmh:1220{ih}&dn=test--model-v1&tr=http://127.0.0.1:9/announce"
        f"&x.pe=127.0.0.2:6881&x.pe=[::1]:7000"
    )
    assert m.info_hash_v2 == ih
    assert m.info_hash_v1 is None
    assert m.name == "test--model-v1"
    assert m.peers == (("127.0.0.2", 6881), ("::1", 7000))
    assert m.trackers == ("http://127.0.0.1:9/announce",)
    hybrid = eng.parse_magnet(f"magnet:?xt=urn:btih:{'cd' * 20}&xt=urn:btmh:1220{ih}")
    assert hybrid.info_hash_v1 == "cd" * 20


@pytest.mark.parametrize("uri", [
    "http://example.invalid/x",
    "magnet:?xt=urn:btih:" + "cd" * 20,                       # v1 only
    "magnet:?xt=urn:btmh:1220" + "ab" * 31,                   # short
    "magnet:?xt=urn:btmh:1114" + "ab" * 32,                   # not sha256
    "magnet:?xt=urn:btmh:1220" + "zz" * 32,                   # not hex
    "magnet:?xt=urn:btmh:1220" + "ab" * 32 + "&xt=urn:btmh:1220" + "cd" * 32,
    "magnet:?xt=urn:btmh:1220" + "ab" * 32 + "&x.pe=127.0.0.2",
    "magnet:?xt=urn:btmh:1220" + "ab" * 32 + "&x.pe=127.0.0.2:70000",
    "magnet:?xt=urn:btmh:1220" + "ab" * 32 + "&x.pe=[zz]:1",
    "magnet:?xt=urn:btmh:1220" + "ab" * 32 + "&tr=file:///etc/passwd",
    "magnet:?xt=urn:btmh:1220" + "ab" * 32 + "&dn=a%0Ab",
    "magnet:?xt=urn:btmh:1220" + "ab" * 32 + "&&",
    "magnet:?" + "a" * 70_000,
])
def test_parse_magnet_rejects(uri: str) -> None:
    with pytest.raises(FormatError):
        eng.parse_magnet(uri)


def test_settings_profiles() -> None:
    pack = eng.EngineSettings.local_only("127.0.0.5").settings_pack()
    assert pack["listen_interfaces"] == "127.0.0.5:0"
    assert pack["outgoing_interfaces"] == "127.0.0.5"
    assert pack["dht_bootstrap_nodes"] == ""
    for off in ("enable_dht", "enable_lsd", "enable_upnp", "enable_natpmp",
                "enable_outgoing_utp", "enable_incoming_utp"):
        assert pack[off] is False, off
    real = eng.EngineSettings.default().settings_pack()
    for on in ("enable_dht", "enable_lsd", "enable_upnp", "enable_natpmp", "enable_outgoing_utp"):
        assert real[on] is True, on
    assert "router.bittorrent.com" in real["dht_bootstrap_nodes"]
    with pytest.raises(eng.EngineError):
        eng.EngineSettings.local_only("10.1.2.3")


# ------------------------------------------------------------------ sessions


def test_engine_alerts_rename_remove(
    make_model: Callable[..., Path], make_release: Callable[..., Path], tmp_path: Path
) -> None:
    """One session, no peers: checking, events, renames, priorities, remove."""
    release = make_release(make_model())
    tf = eng.make_torrent(release)

    async def go() -> None:
        async with await eng.Engine.start(local(status_interval=0.05)) as e:
            assert e.listen_port > 0
            with e.subscribe() as events:
                tid = e.add(tf, release, file_paths=tf.release_layout())
                assert tid == tf.id
                await asyncio.wait_for(e.wait_finished(tid), 10)
                st = e.status(tid)
                assert st.is_seeding and st.progress == 1.0 and st.total_done == sum(
                    f.size for f in tf.files)
                assert e.torrent_files(tid) == tf.files
                kinds: list[str] = []
                async for ev in events:
                    kinds.append(ev.kind)
                    if ev.kind == "progress":
                        break
                assert {"added", "state", "progress"} <= set(kinds)
            sig = tf.file("manifest.sig")
            new = await asyncio.wait_for(e.rename_file(tid, sig.index, "moved/manifest.sig"), 5)
            assert new == "moved/manifest.sig"
            assert (release / "moved" / "manifest.sig").is_file()
            assert e.file_paths(tid)[sig.index] == "moved/manifest.sig"
            await asyncio.wait_for(e.set_file_priorities(tid, [1] * tf.num_files), 5)
            waiter = asyncio.ensure_future(e.wait_files(tid, [f.index for f in tf.files]))
            await asyncio.wait_for(waiter, 5)
            await asyncio.wait_for(e.remove(tid), 5)
            assert e.torrents() == []
            with pytest.raises(eng.EngineError):
                e.status(tid)
        with pytest.raises(eng.EngineError):
            e.add(tf, release)

    run(go())


def test_start_fails_cleanly_when_it_cannot_listen() -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: bind fails, nothing is sent.
    settings = eng.EngineSettings.local_only("127.0.0.9", listen_interfaces="192.0.2.1:0")

    async def go() -> None:
        with pytest.raises(eng.EngineError, match="listen"):
            await eng.Engine.start(settings, listen_timeout=5)

    run(go())


@pytest.mark.parametrize("how", ["torrent", "magnet"])
def test_fetch_across_processes(
    make_model: Callable[..., Path], make_release: Callable[..., Path], tmp_path: Path,
    key: Any, how: str,
) -> None:
    release = make_release(make_model(extra_files=ODD_FILES))
    tf = eng.make_torrent(release)
    out = tmp_path / "out"
    with seeder(release) as (port, ids):
        assert ids == [tf.id]

        async def go() -> None:
            async with await eng.Engine.start(local()) as e:
                if how == "torrent":
                    tid = e.add(tf, out, file_paths=tf.release_layout(),
                                peers=[(SEEDER, port)])
                else:
                    tid = e.add(f"{tf.magnet}&x.pe={SEEDER}:{port}", out)
                    meta = await asyncio.wait_for(e.wait_metadata(tid), 10)
                    assert meta.files == tf.files
                    assert meta.id == tf.id
                await asyncio.wait_for(e.wait_finished(tid), 15)
                st = e.status(tid)
                assert st.total_payload_download == sum(f.size for f in tf.files)
                assert st.failed_bytes == 0

        run(go())
    root = out if how == "torrent" else out / tf.name
    layout = {f.index: f.path for f in tf.files}
    same_files(release, root, layout, tf)
    assert open_release(root, TrustStore.of_keys([key.public])).manifest.name == "test/model"


def test_file_error_fails_waiters(
    make_model: Callable[..., Path], make_release: Callable[..., Path], tmp_path: Path
) -> None:
    release = make_release(make_model())
    tf = eng.make_torrent(release)
    out = tmp_path / "out"
    out.mkdir()
    (out / "chunks").write_bytes(b"a file where a directory must go")
    with seeder(release) as (port, _):

        async def go() -> None:
            async with await eng.Engine.start(local()) as e:
                tid = e.add(tf, out, file_paths=tf.release_layout(), peers=[(SEEDER, port)])
                with pytest.raises(eng.TorrentFailedError):
                    await asyncio.wait_for(e.wait_finished(tid), 15)
                assert e.status(tid).error

        run(go())


def test_staged_fetch_manifest_first_then_chunks(
    make_model: Callable[..., Path], make_release: Callable[..., Path], tmp_path: Path
) -> None:
    """The daemon's flow: fetch only the manifest files, then the chunks.

    While the torrent wants nothing more, seeder and leecher are both upload-only and
    the connection is dropped; raising priorities and calling ``connect_peer`` works
    only because ``local_only`` sets ``min_reconnect_time`` to 1 s (with libtorrent's
    default of 60 s this stalled: 0 peers after 8 s).
    """
    release = make_release(make_model(big_state(layers=6, hidden=128)))
    tf = eng.make_torrent(release)
    meta = [tf.file("manifest.json").index, tf.file("manifest.sig").index]
    prios = [0] * tf.num_files
    for i in meta:
        prios[i] = 7
    out = tmp_path / "out"
    with seeder(release) as (port, _):

        async def go() -> None:
            async with await eng.Engine.start(local()) as e:
                tid = e.add(tf, out, file_paths=tf.release_layout(), file_priorities=prios,
                            peers=[(SEEDER, port)])
                await asyncio.wait_for(e.wait_files(tid, meta), 10)
                st = e.status(tid)
                assert st.is_finished
                assert st.total_done == sum(tf.files[j].size for j in range(len(tf.files))
                                            if tf.files[j].index in meta)
                await asyncio.wait_for(e.set_file_priorities(tid, [4] * tf.num_files), 5)
                assert not e.status(tid).is_finished
                e.connect_peer(tid, SEEDER, port)
                await asyncio.wait_for(e.wait_finished(tid), 10)

        run(go())
    same_files(release, out, tf.release_layout(), tf)


# ------------------------------------------------------------------ the shared store


def two_versions(make_model: Callable[..., Path],
                 make_release: Callable[..., Path]) -> tuple[Path, Path]:
    """Releases v1 and v2 of a model; v2 changes one tensor, so one chunk differs."""
    state = big_state(layers=6, hidden=128)
    a = make_release(make_model(state))
    state2 = dict(state)
    state2["model.layers.3.mlp.up_proj.weight"] = state2["model.layers.3.mlp.up_proj.weight"] + 1
    b = make_release(make_model(state2), version=2)
    return a, b


@pytest.mark.parametrize("recipe", ["torrent", "magnet-readd", "magnet-rename-recheck"])
def test_shared_store_fetches_only_new_chunks(
    make_model: Callable[..., Path], make_release: Callable[..., Path], tmp_path: Path,
    recipe: str,
) -> None:
    """Release B shares all but one chunk with A; fetching B after A moves only the new bytes.

    Recipes (all three measured to move exactly the new bytes):
    * torrent: add the .torrent with ``file_paths`` (renamed_files) into the store; the
      check at add finds the shared chunks complete.
    * magnet-readd: add the magnet with ``dont_download``, wait for metadata, remove it and
      add the metadata back as a torrent with ``file_paths``.
    * magnet-rename-recheck: add the magnet with ``dont_download``, rename every file on
      metadata, force a recheck, then raise priorities. The recheck disconnects the peers
      and libtorrent will not dial a peer again before ``min_reconnect_time`` (60 s by
      default, ``connect_peer`` included), so this recipe needs that setting lowered.
    """
    rel_a, rel_b = two_versions(make_model, make_release)
    tf_a, tf_b = eng.make_torrent(rel_a), eng.make_torrent(rel_b)
    chunks_a = {f.path for f in tf_a.files if f.path.startswith("chunks/")}
    new_b = [f for f in tf_b.files if f.path not in chunks_a]
    assert [f.path for f in new_b if f.path.startswith("chunks/")], "B must have a new chunk"
    new_bytes = sum(f.size for f in new_b)
    total_b = sum(f.size for f in tf_b.files)
    assert new_bytes < total_b / 4
    store = tmp_path / "store"
    downloaded: dict[str, int] = {}

    with seeder(rel_a, rel_b) as (port, ids):
        assert ids == [tf_a.id, tf_b.id]

        async def fetch(e: eng.Engine, tf: eng.TorrentFile) -> str:
            if recipe == "torrent":
                return e.add(tf, store, file_paths=store_layout(tf), peers=[(SEEDER, port)])
            tid = e.add(f"{tf.magnet}&x.pe={SEEDER}:{port}", store, dont_download=True)
            meta = await asyncio.wait_for(e.wait_metadata(tid), 10)
            layout = store_layout(meta)
            if recipe == "magnet-readd":
                await asyncio.wait_for(e.remove(tid), 5)
                return e.add(meta, store, file_paths=layout, peers=[(SEEDER, port)])
            for index, path in layout.items():
                await asyncio.wait_for(e.rename_file(tid, index, path), 5)
            await asyncio.wait_for(e.force_recheck(tid), 10)
            await asyncio.wait_for(e.set_file_priorities(tid, [4] * meta.num_files), 5)
            e.connect_peer(tid, SEEDER, port)
            return tid

        async def go() -> None:
            async with await eng.Engine.start(local()) as e:
                for tf in (tf_a, tf_b):
                    tid = await fetch(e, tf)
                    await asyncio.wait_for(e.wait_finished(tid), 15)
                    downloaded[tf.name] = e.status(tid).total_payload_download

        run(go())

    print(f"{recipe}: B total {total_b}, new {new_bytes}, downloaded {downloaded}")
    assert downloaded[tf_a.name] == sum(f.size for f in tf_a.files)
    # Only the new chunk and B's manifest files crossed the wire (at most one piece more).
    assert new_bytes <= downloaded[tf_b.name] <= new_bytes + tf_b.piece_size
    assert downloaded[tf_b.name] < total_b / 4
    # The store: one chunks dir shared by both, one dir per release for its manifest.
    same_files(rel_a, store, store_layout(tf_a), tf_a)
    same_files(rel_b, store, store_layout(tf_b), tf_b)
    names = {p.name for p in store.iterdir()}
    assert names == {"chunks", "releases"}, names  # no torrent root dir, no part file
    assert len(list((store / "chunks").iterdir())) == len(chunks_a | {
        f.path for f in tf_b.files if f.path.startswith("chunks/")})


# ------------------------------------------------------------------ resume


def test_resume_mid_download_continues_where_it_stopped(
    make_model: Callable[..., Path], make_release: Callable[..., Path], tmp_path: Path
) -> None:
    release = make_release(make_model(big_state(layers=4, hidden=256)))
    piece = 64 * 1024
    tf = eng.make_torrent(release, piece_size=piece)
    total = sum(f.size for f in tf.files)
    out = tmp_path / "out"
    facts: dict[str, int] = {}
    limit = 2 * 1024 * 1024

    with seeder(release, upload_limit=limit, piece_size=piece) as (port, _):

        async def first() -> bytes:
            async with await eng.Engine.start(local(status_interval=0.1)) as e:
                with e.subscribe() as events:
                    tid = e.add(tf, out, file_paths=tf.release_layout(), peers=[(SEEDER, port)])
                    async for ev in events:
                        st = ev.status
                        if ev.kind == "progress" and st and st.total_done > total // 3:
                            break
                facts["done_before"] = e.status(tid).total_done
                resume = await e.close()  # pauses, waits, saves: the shutdown path
                return resume[tid]

        resume = run(first())
        done_before = facts["done_before"]

        async def second() -> None:
            async with await eng.Engine.start(local()) as e:
                tid = e.add(tf, out, resume_data=resume, peers=[(SEEDER, port)])
                await asyncio.wait_for(e.wait_finished(tid), 20)
                facts["again"] = e.status(tid).total_payload_download

        run(second())

    print(f"resume: total {total}, done before {done_before}, fetched again {facts['again']}")
    assert total // 3 <= done_before < total, (done_before, total)
    refetched = facts["again"] - (total - done_before)
    assert refetched < 0.10 * done_before, (facts, done_before, total)
    same_files(release, out, tf.release_layout(), tf)


def test_restarted_seeder_does_not_rehash(
    make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> None:
    """With resume data a seeder comes back seeding without checking files.

    The signal: the state sequence has ``checking_files`` without resume data and not
    with it; and a byte flipped on disk (size and mtime kept) goes unnoticed until a
    forced recheck, which proves the files were not read.
    """
    release = make_release(make_model())
    tf = eng.make_torrent(release)

    async def states_until_seeding(resume: bytes | None) -> tuple[list[str], bytes]:
        async with await eng.Engine.start(local()) as e:
            with e.subscribe() as events:
                tid = e.add(tf, release, file_paths=tf.release_layout(), resume_data=resume)
                await asyncio.wait_for(e.wait_finished(tid), 10)
                assert e.status(tid).is_seeding
                got = events.drain()
                assert not [ev for ev in got if ev.kind == "resume_rejected"]
                states = [ev.message for ev in got if ev.kind == "state"]
            saved = await e.close()
            return states, saved[tid]

    async def recheck_after_flip(resume: bytes) -> float:
        async with await eng.Engine.start(local()) as e:
            tid = e.add(tf, release, file_paths=tf.release_layout(), resume_data=resume)
            await asyncio.wait_for(e.wait_finished(tid), 10)
            assert e.status(tid).progress == 1.0  # not re-read: the flip is not seen
            await asyncio.wait_for(e.force_recheck(tid), 10)
            return e.status(tid).progress

    cold, resume = run(states_until_seeding(None))
    print(f"states without resume {cold}")
    assert "checking_files" in cold
    warm, resume2 = run(states_until_seeding(resume))
    print(f"states with resume {warm}")
    assert "checking_files" not in warm
    assert warm[-1] == "seeding"

    victim = release / tf.files[0].path
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run(recheck_after_flip(resume2)) < 1.0


def test_a_peer_is_capped_and_uncapped_by_its_address(
    make_model: Callable[..., Path], make_release: Callable[..., Path], tmp_path: Path
) -> None:
    """``cap_peer_download`` finds the connection by ``host:port`` (the share keeper's seam)."""
    release = make_release(make_model(big_state(layers=6, hidden=256)))
    tf = eng.make_torrent(release)
    out = tmp_path / "out"
    with seeder(release, upload_limit=1024 * 1024) as (port, _):

        async def go() -> None:
            async with await eng.Engine.start(local()) as e:
                with e.subscribe() as events:
                    tid = e.add(tf, out, file_paths=tf.release_layout(), peers=[(SEEDER, port)])
                    async for ev in events:  # a piece came: the seeder is connected
                        if ev.kind == "piece" and ev.torrent == tid:
                            break
                assert not e.status(tid).is_finished
                assert e.cap_peer_download(tid, [f"{SEEDER}:{port + 1}", "[::1]:1"], 1) == 0
                assert e.cap_peer_download(tid, [f"{SEEDER}:{port}"], 16 * 1024) == 1
                assert e.cap_peer_download(tid, [f"{SEEDER}:{port}"], 0) == 1
                await asyncio.wait_for(e.wait_finished(tid), 30)
                with pytest.raises(eng.EngineError):
                    e.cap_peer_download("0" * 64, [f"{SEEDER}:{port}"], 0)

        run(go())
    same_files(release, out, tf.release_layout(), tf)


def test_stall_report_tells_a_seeder_that_is_asked_from_an_idle_one(
    make_model: Callable[..., Path], make_release: Callable[..., Path], tmp_path: Path
) -> None:
    """Mid-fetch the seeder is asked for pieces, so it is no idle sender; the line names it."""
    release = make_release(make_model(big_state(layers=6, hidden=256)))
    tf = eng.make_torrent(release)
    with seeder(release, upload_limit=4 * 1024 * 1024) as (port, _):

        async def go() -> None:
            async with await eng.Engine.start(local()) as e:
                with e.subscribe() as events:
                    tid = e.add(
                        tf, tmp_path / "out", file_paths=tf.release_layout(), peers=[(SEEDER, port)]
                    )
                    async for ev in events:  # a piece came: the seeder unchokes us
                        if ev.kind == "piece" and ev.torrent == tid:
                            break
                mid = e.stall_report(tid)  # a seeder that sends has requests queued
                assert mid.missing > 0 and mid.idle_senders == 0, mid
                assert f"{SEEDER}:{port}" in mid.text and "seed" in mid.text, mid
                await asyncio.wait_for(e.wait_finished(tid), 30)
                done = e.stall_report(tid)
                assert (done.missing, done.idle_senders) == (0, 0), done
                assert "0 wanted pieces missing" in done.text, done
                with pytest.raises(eng.EngineError):
                    e.stall_report("0" * 64)

        run(go())
