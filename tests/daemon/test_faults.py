"""Integration: a full disk during a fetch, and a swarm of nothing but liars."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import selectors
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import p2pweights
from p2pweights import ChunkError, PrivateKey, TrustStore
from p2pweights.release import open_release
from p2pweights.verify import ChunkRecords

from ..conftest import layer_state
from .conftest import Daemon, p2pw

pytestmark = pytest.mark.slow

DaemonFactory = Callable[..., Daemon]
_MIB = 1024 * 1024


def _trust(d: Daemon, key: PrivateKey) -> None:
    TrustStore.load(d.home / "trust.json").add(key.public, "publisher")


async def _events(
    d: Daemon, rid: str, kinds: set[str], started: Any, *, every: bool = True
) -> dict[str, Any]:
    """The first event of each of ``kinds`` for ``rid`` (of any one, without ``every``), by kind.

    Subscribes first, then calls ``started``: nothing after the subscription is missed.
    """
    seen: dict[str, Any] = {}
    events = d.client.events()
    try:
        await anext(events)  # subscribed
        await started()
        async for event in events:
            if event.get("id") == rid and event.get("kind") in kinds:
                seen.setdefault(event["kind"], event)
                if seen.keys() == kinds or not every:
                    return seen
    finally:
        await events.aclose()
    raise AssertionError(f"the event stream ended; seen {sorted(seen)} of {sorted(kinds)}")


async def _next_event(d: Daemon, rid: str, kinds: set[str], started: Any) -> dict[str, Any]:
    """The first event of any of ``kinds`` for ``rid`` after subscribing and ``started``."""
    return next(iter((await _events(d, rid, kinds, started, every=False)).values()))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 40 MiB tmpfs, mounted for the test (needs root), unmounted after."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _check_store_consistent(release_dir: Path, trust: TrustStore) -> int:
    """Every chunk recorded as verified hashes to its signed sha256; returns how many."""
    release = open_release(release_dir, trust)
    records = ChunkRecords(release_dir)
    good = 0
    for chunk in release.manifest.chunks:
        path = release_dir / chunk.path
        if path.is_file() and records.matches(path, chunk.sha256, path.stat()):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == chunk.sha256, chunk.path
            good += 1
    return good


def _verified_stamps(release_dir: Path, trust: TrustStore) -> dict[str, tuple[int, int, int]]:
    """Inode, size and mtime of each chunk recorded as verified (and still matching)."""
    release = open_release(release_dir, trust)
    records = ChunkRecords(release_dir)
    stamps = {}
    for chunk in release.manifest.chunks:
        path = release_dir / chunk.path
        if path.is_file() and records.matches(path, chunk.sha256, st := path.stat()):
            stamps[chunk.path] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return stamps


def test_a_full_disk_pauses_the_fetch_and_it_goes_on_once_space_is_freed(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    small_disk: Path,
) -> None:
    # ~29 MB of chunks; the leecher's data dir is on a 40 MiB disk that a filler leaves
    # 12 MiB of, so the fetch runs out of space part way.
    state = layer_state(layers=24, hidden=192)
    release = make_release(make_model(state))
    seeder = daemons("--upload-rate", "20000000", "--rate-limit-local", name="seeder")
    published = seeder.call("publish", release)
    rid = published["id"]
    home = small_disk / "home"
    leech = Daemon(home, "127.0.9.9").start()
    try:
        _trust(leech, key)
        filler = small_disk / "filler"
        free = shutil.disk_usage(small_disk).free
        filler.write_bytes(b"\0" * (free - 12 * _MIB))
        peer = seeder.peer

        async def start() -> None:
            await leech.client.fetch(published["magnet"], peers=[peer])

        paused = asyncio.run(asyncio.wait_for(_next_event(leech, rid, {"disk_full"}, start), 120))
        assert "No space left" in paused["message"], paused
        info = leech.call("show", rid)
        assert info["state"] == "paused", info
        assert "DiskFullError" in info["error"] and "space" in info["problem"], info
        # The CLI says so in one line, with its own exit code, and the daemon stays up.
        out = p2pw(home, "fetch", published["magnet"], "--peer", peer)
        assert out.returncode == 17, (out.returncode, out.stdout, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "space" in out.stderr
        shown = p2pw(home, "show", rid[:12])
        assert shown.returncode == 0 and "PROBLEM:" in shown.stdout
        # Nothing corrupt: whatever is recorded as verified is the publisher's bytes, and
        # the release cannot be loaded while chunks are missing.
        trust = TrustStore.load(home / "trust.json")
        before = _check_store_consistent(Path(info["path"]), trust)
        kept = _verified_stamps(Path(info["path"]), trust)
        assert kept, "the disk filled before any chunk was verified"
        with pytest.raises(ChunkError):
            p2pweights.load(info["path"], home=home)

        async def free_space() -> None:
            filler.unlink()

        asyncio.run(asyncio.wait_for(_next_event(leech, rid, {"space_freed"}, free_space), 60))
        done = leech.wait_done(rid)
        assert done["state"] == "seeding", done
        assert done.get("problem") is None
        assert _check_store_consistent(Path(done["path"]), trust) >= before
        # Verified pieces were kept: every chunk verified before the pause is the same
        # file, untouched since (same inode, size and mtime), not fetched again.
        after = _verified_stamps(Path(done["path"]), trust)
        assert {p: after.get(p) for p in kept} == kept
        loaded = p2pweights.load(done["path"], home=home, verify="full")
        assert set(loaded) == set(state)
        assert all(torch.equal(loaded[n], t) for n, t in state.items())
    finally:
        leech.stop()


def test_with_only_lying_seeders_nothing_completes_and_status_says_why(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    tmp_path: Path,
) -> None:
    state = layer_state(layers=4, hidden=192)
    release = make_release(make_model(state))
    publisher = daemons(name="publisher")
    published = publisher.call("publish", release)
    rid = published["id"]
    publisher.stop()  # the honest seeder is gone; only liars remain
    liars: list[subprocess.Popen[str]] = []
    peers: list[str] = []
    try:
        for n in range(2):
            copy = tmp_path / f"liar{n}"
            shutil.copytree(release, copy)
            addr = f"127.0.9.{20 + n}"
            liar = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).with_name("_lying_peer.py")),
                    "--listen",
                    addr,
                    published["torrent_path"],
                    str(copy),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            liars.append(liar)
            assert liar.stdout is not None
            with selectors.DefaultSelector() as sel:
                sel.register(liar.stdout, selectors.EVENT_READ)
                assert sel.select(timeout=30), "a lying peer did not start"
            peers.append(f"{addr}:{json.loads(liar.stdout.readline())['port']}")
        leech = daemons(name="leech")
        _trust(leech, key)

        async def start() -> None:
            await leech.client.fetch(published["magnet"], peers=peers)

        # Chunks are asked for speculatively behind the manifest, so the first piece that
        # fails its hash check may come before the fetch reaches "downloading": wait for both.
        seen = asyncio.run(
            asyncio.wait_for(_events(leech, rid, {"hash_failed", "downloading"}, start), 120)
        )
        assert seen["hash_failed"]["id"] == rid
        # A bounded wait says "not done" instead of hanging; status names the cause.
        info = leech.call("wait", rid, 2)
        assert info["timed_out"] and info["state"] == "downloading", info
        assert info["transfer"]["hash_failures"] >= 1 and info["transfer"]["failed_bytes"] > 0
        assert "failed the hash check" in info["problem"], info
        shown = p2pw(leech.home, "show", rid[:12])
        assert shown.returncode == 0 and "PROBLEM:" in shown.stdout and "hash check" in shown.stdout
        listed = p2pw(leech.home, "ls", "--json")
        assert listed.returncode == 0
        row = next(r for r in json.loads(listed.stdout)["releases"] if r["id"] == rid)
        assert row["state"] == "downloading"
        # Nothing of it is loadable, and nothing is recorded as verified.
        with pytest.raises(ChunkError):
            p2pweights.load(info["path"], home=leech.home)
        release_dir = Path(info["path"])
        trusted = TrustStore.load(leech.home / "trust.json")
        assert _check_store_consistent(release_dir, trusted) == 0
    finally:
        for liar in liars:
            assert liar.stdin is not None and liar.stdout is not None
            liar.stdin.close()
            liar.wait(timeout=30)
            liar.stdout.close()
