"""Integration: real daemons in separate processes, real libtorrent, loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
from safetensors.torch import load_file

import p2pweights
from p2pweights import PrivateKey, TrustStore, UntrustedKeyError
from p2pweights.client import DaemonClient

from ..conftest import layer_state
from .conftest import Daemon, p2pw

pytestmark = pytest.mark.slow

DaemonFactory = Callable[..., Daemon]


def trust(d: Daemon, key: PrivateKey, name: str = "publisher") -> None:
    TrustStore.load(d.home / "trust.json").add(key.public, name)


def fetch_and_wait(
    d: Daemon, uri: str, *, peers: list[str], timeout: float = 120, **kw: Any
) -> dict[str, Any]:
    started = d.call("fetch", uri, peers=peers, **kw)
    return d.wait_done(started["id"], timeout)


async def _progress(client: DaemonClient, rid: str, fraction: float) -> dict[str, Any]:
    events = client.events()
    await anext(events)  # subscribed; then read the state, so no event is missed
    # Before the "downloading" state only the manifest files are wanted.
    chunks = (await client.show(rid))["state"] == "downloading"
    async for event in events:
        if event.get("id") != rid:
            continue
        chunks = chunks or event["kind"] == "downloading"
        wanted = event.get("wanted") or 0
        if chunks and wanted and event["wanted_done"] >= fraction * wanted:
            return event
    raise AssertionError("event stream ended")


def wait_progress(d: Daemon, rid: str, fraction: float, timeout: float = 60) -> dict[str, Any]:
    return asyncio.run(asyncio.wait_for(_progress(d.client, rid, fraction), timeout))


def test_publish_fetch_load_minilm(
    daemons: DaemonFactory, key: PrivateKey, minilm_dir: Path, tmp_path: Path
) -> None:
    a, b = daemons(name="a"), daemons(name="b")
    release = tmp_path / "release"
    p2pweights.pack(
        minilm_dir, release, name="sentence-transformers/all-MiniLM-L6-v2", version=1, key=key
    )
    published = a.call("publish", release)
    assert published["state"] == "seeding"
    assert published["magnet"].startswith("magnet:?xt=urn:btmh:1220")
    assert Path(published["torrent_path"]).is_file()
    trust(b, key)
    info = fetch_and_wait(b, published["magnet"], peers=[a.peer])
    assert info["state"] == "seeding" and info["id"] == published["id"]
    assert info["transfer"]["downloaded"] >= info["total_bytes"]
    # The library's own entry point: load by magnet through B's (running) daemon.
    loaded = p2pweights.load(published["magnet"], home=b.home)
    original = load_file(str(minilm_dir / "model.safetensors"))
    assert set(loaded) == set(original)
    for name, tensor in original.items():
        assert torch.equal(loaded[name], tensor), name
    # Loaded from B's store, not from A's files.
    assert Path(info["path"]).is_relative_to(b.home)


def test_fetch_from_two_seeders(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    release = make_release(make_model(layer_state(layers=8, hidden=384)))
    limit = ["--upload-rate", "8000000", "--rate-limit-local"]
    s1, s2 = daemons(*limit, name="s1"), daemons(*limit, name="s2")
    magnet = s1.call("publish", release)["magnet"]
    assert s2.call("publish", release)["magnet"] == magnet  # same bytes, same info-hash
    leech = daemons(name="leech")
    trust(leech, key)
    info = fetch_and_wait(leech, magnet, peers=[s1.peer, s2.peer])
    rid = info["id"]
    up1 = s1.call("show", rid)["transfer"]["uploaded"]
    up2 = s2.call("show", rid)["transfer"]["uploaded"]
    assert up1 > 0 and up2 > 0, (up1, up2)
    assert up1 + up2 >= info["total_bytes"]
    assert len(p2pweights.load(info["path"], home=leech.home, verify="full")) > 0


def test_kill9_mid_fetch_resumes_without_refetching(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    # ~200 MB in 26 chunks; the seeder's upload is capped so the kill lands mid-transfer.
    state = layer_state(layers=24, hidden=512)
    release = make_release(make_model(state))
    seeder = daemons("--upload-rate", "25000000", "--rate-limit-local", name="seeder")
    magnet = seeder.call("publish", release)["magnet"]
    leech = daemons(name="leech")
    trust(leech, key)
    rid = leech.call("fetch", magnet, peers=[seeder.peer])["id"]
    event = wait_progress(leech, rid, 0.5)
    leech.kill9()
    done_before, total = event["wanted_done"], event["wanted"]
    assert total * 0.5 <= done_before < total

    leech.start()  # same home: an unclean stop; it goes on from the saved progress
    info = leech.call("wait", rid, 120)
    assert info["state"] == "seeding", info
    again = info["transfer"]["downloaded"]
    refetched = again - (total - done_before)
    print(
        f"verified before kill {done_before}, downloaded after restart {again}, "
        f"fetched again {refetched} ({100 * refetched / done_before:.1f}%)"
    )
    assert refetched < 0.10 * done_before, (again, done_before, total)
    loaded = p2pweights.load(info["path"], home=leech.home, verify="full")
    assert all(torch.equal(loaded[n], t) for n, t in state.items())


def test_restarted_seeder_seeds_without_rehash(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    release = make_release(make_model())
    seeder = daemons(name="seeder")
    rid = seeder.call("publish", release)["id"]
    seeder.stop()  # clean: resume data saved on SIGTERM
    seeder.start()
    info = seeder.call("show", rid)
    assert info["state"] == "seeding"
    history = info["transfer"]["state_history"]
    assert history and "checking_files" not in history, history
    # The same restart without resume data does hash the files: the signal is real.
    seeder.kill9()
    import sqlite3

    db = sqlite3.connect(seeder.home / "catalog.sqlite3")
    with db:
        db.execute("DELETE FROM resume")
    db.close()
    seeder.start()
    info = seeder.call("wait", rid, 60)
    assert "checking_files" in info["transfer"]["state_history"], info["transfer"]
    # And it still serves a fetch.
    leech = daemons(name="leech")
    trust(leech, key)
    assert fetch_and_wait(leech, info["magnet"], peers=[seeder.peer])["state"] == "seeding"


def test_new_version_downloads_only_changed_chunks(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    state = layer_state(layers=8, hidden=256)
    v1 = make_release(make_model(state))
    changed = dict(state)
    changed["model.layers.5.mlp.up_proj.weight"] = state["model.layers.5.mlp.up_proj.weight"] * 2
    v2 = make_release(make_model(changed), version=2)
    seeder = daemons(name="seeder")
    m1 = seeder.call("publish", v1)["magnet"]
    m2 = seeder.call("publish", v2)["magnet"]
    leech = daemons(name="leech")
    trust(leech, key)
    first = fetch_and_wait(leech, m1, peers=[seeder.peer])
    second = fetch_and_wait(leech, m2, peers=[seeder.peer])
    man1 = p2pweights.open_release(Path(first["path"]), TrustStore.of_keys([key.public])).manifest
    man2 = p2pweights.open_release(Path(second["path"]), TrustStore.of_keys([key.public])).manifest
    new = {c.path: c.size for c in man2.chunks}.items() - {
        c.path: c.size for c in man1.chunks
    }.items()
    new_bytes = sum(size for _, size in new)
    assert len(new) == 1
    manifest_bytes = len((Path(second["path"]) / "manifest.json").read_bytes()) + 64
    downloaded = second["transfer"]["downloaded"]
    assert new_bytes <= downloaded <= new_bytes + manifest_bytes + 4 * 1024 * 1024
    # Every piece from the honest seeder passed. With libtorrent's mmap back end this fetch
    # lost blocks of its one new chunk (a failed piece, or a hang) in 20 of 29 runs.
    assert first["transfer"]["failed_bytes"] == second["transfer"]["failed_bytes"] == 0
    assert downloaded < second["total_bytes"] / 4
    # One file on disk per chunk, shared by both releases.
    chunk_files = list((leech.home / "store" / "chunks").iterdir())
    assert len(chunk_files) == len({c.path for c in man1.chunks} | {c.path for c in man2.chunks})
    assert p2pweights.load(second["path"], home=leech.home, verify="full")[
        "model.layers.5.mlp.up_proj.weight"
    ].equal(changed["model.layers.5.mlp.up_proj.weight"])


def test_untrusted_publisher_is_refused_before_any_chunk(
    daemons: DaemonFactory, make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> None:
    seeder = daemons(name="seeder")
    magnet = seeder.call("publish", make_release(make_model()))["magnet"]
    leech = daemons(name="leech")  # trusts nobody
    started = leech.call("fetch", magnet, peers=[seeder.peer])
    info = leech.call("wait", started["id"], 60)
    assert info["state"] == "error" and info["error"].startswith("UntrustedKeyError"), info
    assert list((leech.home / "store" / "chunks").iterdir()) == []
    # Asked again, the failed fetch goes to the peers it knew, and fails the same way at
    # once (not a wait for metadata from nobody).
    with pytest.raises(UntrustedKeyError):
        p2pweights.load(magnet, home=leech.home, timeout=60)
    with pytest.raises(UntrustedKeyError):
        p2pweights.load(info["path"], home=leech.home)
    # The CLI says so in one line, with the documented exit code.
    proc = p2pw(leech.home, "fetch", magnet, "--peer", seeder.peer, "--timeout", "60")
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.count("\n") == 1 and "not in the trust store" in proc.stderr


def test_trust_on_first_use_is_an_explicit_opt_in(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    seeder = daemons(name="seeder")
    magnet = seeder.call("publish", make_release(make_model()))["magnet"]
    leech = daemons(name="leech")
    info = fetch_and_wait(leech, magnet, peers=[seeder.peer], trust_on_first_use=True)
    assert info["state"] == "seeding"
    assert TrustStore.load(leech.home / "trust.json").name_of(key.public) is not None


def tcp_listeners(port: int) -> list[str]:
    """The addresses with a socket listening on TCP ``port`` (from /proc/net/tcp{,6})."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                local, state = line.split()[1], line.split()[3]
                addr, hexport = local.split(":")
                if state == "0A" and int(hexport, 16) == port:
                    raw = bytes.fromhex(addr)
                    # The kernel writes each 32-bit word in host (little-endian) order.
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    found.append(str(ipaddress.ip_address(words)))
    return sorted(found)


def test_api_socket_is_private_and_tcp_needs_the_token(daemons: DaemonFactory) -> None:
    import socket as socketlib

    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = daemons("--tcp-port", str(port), name="api")
    assert stat.S_IMODE(d.home.stat().st_mode) == 0o700  # the data dir: this user only
    assert stat.S_IMODE((d.home / "daemon.sock").stat().st_mode) == 0o600
    # The TCP API listens on 127.0.0.1 only, not on every address of the host.
    assert tcp_listeners(port) == ["127.0.0.1"]
    token_file = d.home / "api.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()

    async def probe(
        headers: dict[str, str], *, body: bytes | None = None, path: str = "/v1/status"
    ) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                "POST" if body is not None else "GET",
                f"http://127.0.0.1:{port}{path}",
                headers=headers,
                data=body,
            ) as resp,
        ):
            return resp.status, json.loads(await resp.text() or "{}")

    def status(headers: dict[str, str], **kw: Any) -> int:
        return asyncio.run(probe(headers, **kw))[0]

    assert status({}) == 401
    assert status({"Authorization": "Bearer wrong"}) == 401
    assert status({"Authorization": f"Bearer {token}x"}) == 401
    good = {"Authorization": f"Bearer {token}"}
    assert status(good) == 200
    assert status({**good, "Origin": "http://evil.example"}) == 403
    assert status({**good, "Host": "evil.example"}) == 403
    assert status(good, body=b"x" * 100_000, path="/v1/fetch") == 413
    assert status(good, body=b'{"uri": "magnet:?x", "shell": 1}', path="/v1/fetch") == 400
    code, err = asyncio.run(probe(good, body=b'{"path": "/etc"}', path="/v1/publish"))
    # A local path over TCP is refused outright: only the owner's 0600 socket may name one.
    assert code == 403 and "socket" in err["error"], err
    # The typed client speaks TCP with the token too.
    tcp = DaemonClient(d.home, tcp_port=port, token=token)
    assert asyncio.run(tcp.status())["pid"] == d.pid


def _lying_torrent(release: Path, out: Path) -> Path:
    """A v2 torrent of ``release`` as it is on disk, with no check against its manifest."""
    import os
    import tempfile

    import libtorrent as lt

    files = sorted(
        p.relative_to(release).as_posix()
        for p in release.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    entries = [lt.create_file_entry(f"evil/{rel}", (release / rel).stat().st_size) for rel in files]
    ct = lt.create_torrent(entries, 4 * 1024 * 1024, lt.create_torrent.v2_only)
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(release.resolve(), Path(tmp) / "evil")
        lt.set_piece_hashes(ct, tmp)
    out.write_bytes(lt.bencode(ct.generate()))
    return out


@pytest.mark.parametrize("lie", ["changed_chunk", "extra_file"])
def test_torrent_that_disagrees_with_its_signed_manifest_is_refused(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    tmp_path: Path,
    lie: str,
) -> None:
    from p2pweights import ReleaseMismatchError

    from .test_engine import seeder

    release = make_release(make_model())
    victim = sorted((release / "chunks").glob("*.safetensors"))[0]
    if lie == "changed_chunk":  # same name, other bytes: another v2 root than the manifest's
        data = bytearray(victim.read_bytes())
        data[-1] ^= 0xFF
        victim.write_bytes(bytes(data))
    else:  # a file the manifest does not list
        (release / "chunks" / ("e" * 64)).write_bytes(b"not in the manifest")
    torrent = _lying_torrent(release, tmp_path / "evil.torrent")
    leech = daemons(name="leech")
    trust(leech, key)  # the manifest itself is genuine and trusted
    with seeder(release, addr="127.0.9.9", torrent=torrent) as (port, _):
        started = leech.call("fetch", str(torrent), peers=[f"127.0.9.9:{port}"])
        info = leech.call("wait", started["id"], 60)
    assert info["state"] == "error", info
    assert info["error"].startswith("ReleaseMismatchError"), info["error"]
    assert list((leech.home / "store" / "chunks").iterdir()) == []
    with pytest.raises(ReleaseMismatchError):
        p2pweights.load(str(torrent), home=leech.home)


def test_peers_found_through_a_dht_on_loopback(daemons: DaemonFactory, key: PrivateKey,
                                               make_model: Callable[..., Path],
                                               make_release: Callable[..., Path]) -> None:
    """No explicit peer: the leecher finds the seeder through a DHT of loopback nodes."""
    seeder = daemons("--dht", name="seeder")
    leech = daemons("--dht", "--dht-bootstrap", seeder.peer, name="leech")
    # A third node that knows both, so each side's routing table is not just the other.
    daemons("--dht", "--dht-bootstrap", f"{seeder.peer},{leech.peer}", name="router")
    magnet = seeder.call("publish", make_release(make_model()))["magnet"]
    trust(leech, key)
    info = fetch_and_wait(leech, magnet, peers=[], timeout=90)
    assert info["state"] == "seeding"
    assert info["transfer"]["downloaded"] >= info["total_bytes"]


async def _fetch_watching(
    d: Daemon, uri: str, peers: list[str], timeout: float = 120
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fetch and wait, keeping every event of the release on the way."""
    events = d.client.events()
    seen: list[dict[str, Any]] = []
    try:
        await anext(events)  # subscribed: nothing after this is missed
        rid = (await d.client.fetch(uri, peers=peers))["id"]

        async def collect() -> None:
            async for event in events:
                if event.get("id") == rid:
                    seen.append(event)

        collector = asyncio.create_task(collect())
        try:
            info: dict[str, Any] = await d.client.wait(rid, timeout)
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
    finally:
        await events.aclose()
    assert not info["timed_out"], (info, d.log()[-3000:])
    return info, seen


def test_lying_peer_is_outvoted_by_an_honest_one(
        daemons: DaemonFactory, key: PrivateKey, make_model: Callable[..., Path],
        make_release: Callable[..., Path], tmp_path: Path) -> None:
    """A peer serving altered bytes next to a (slower) honest seeder: the fetch completes
    with the publisher's bytes, the hash failures prove the liar really lied, and the
    leech drops the liar for good while it still needs pieces.

    The liar alters every block it sends, so every piece it has a hand in fails and it
    never earns libtorrent's trust back: the ban comes after a few failed pieces. The
    honest seeder is capped (19.7 MB at 4 MB/s: 5 s at the least), so the fetch is still
    downloading, from the honest seeder alone, once the liar is gone."""
    import selectors
    import shutil
    import subprocess
    import sys

    state = layer_state(layers=4, hidden=384)
    release = make_release(make_model(state))
    honest = daemons("--upload-rate", "4000000", "--rate-limit-local", name="honest")
    published = honest.call("publish", release)
    liar_copy = tmp_path / "liar-release"
    shutil.copytree(release, liar_copy)
    liar = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_lying_peer.py")), "--listen",
         "127.0.8.8", published["torrent_path"], str(liar_copy), "--every-block"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert liar.stdout is not None and liar.stdin is not None
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(liar.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=30), "the lying peer did not start"
        liar_port = json.loads(liar.stdout.readline())["port"]
        leech = daemons(name="leech")
        trust(leech, key)
        info, events = asyncio.run(_fetch_watching(
            leech, published["magnet"], [f"127.0.8.8:{liar_port}", honest.peer]))
    finally:
        liar.stdin.close()
        told = liar.stdout.readline()
        liar.wait(timeout=30)
        liar.stdout.close()
    assert info["state"] == "seeding", info
    transfer = info["transfer"]
    assert transfer["hash_failures"] >= 1 and transfer["failed_bytes"] > 0, transfer
    failed = [e for e in events if e["kind"] == "hash_failed"]
    assert failed, [e["kind"] for e in events]  # the liar was heard, and its pieces thrown away
    # ... and then dropped: while the fetch still wanted bytes, after a failure, only the
    # honest seeder was connected. (A leech that kept the liar shows 2 peers until done.)
    progress = [e for e in events if e["kind"] == "progress" and e["wanted_done"] < e["wanted"]]
    alone = [e for e in progress if e["failed_bytes"] > 0 and e["peers"] == 1]
    assert alone, [(e["state"], e["peers"], e["failed_bytes"], e["wanted_done"]) for e in progress]
    # The liar's side: its altered bytes went out over one connection of the leech's
    # (an earlier one fetched the honest manifest), the leech closed it, and never
    # came back.
    liar_said = json.loads(told)
    print(f"the liar sent {liar_said['uploaded']} bytes over {liar_said['connections']}")
    meta = sum((release / n).stat().st_size for n in ("manifest.json", "manifest.sig"))
    conns = [c for c in liar_said["connections"] if c["ip"] == leech.addr]
    lying = [i for i, c in enumerate(conns) if c["sent"] > meta]
    assert lying == [len(conns) - 1], liar_said
    assert not conns[-1]["open"] and liar_said["peers"] == 0, liar_said
    print(
        f"wasted on the liar: {transfer['failed_bytes']} bytes in "
        f"{transfer['hash_failures']} failed pieces, of {info['total_bytes']}"
    )
    loaded = p2pweights.load(info["path"], home=leech.home, verify="full")
    assert all(torch.equal(loaded[n], t) for n, t in state.items())
    # The log names the liar: banned, and its failed pieces in one summary line.
    leech.stop()  # the summary is flushed on the way out
    text, liar_at = leech.log(), f"127.0.8.8:{liar_port}"
    assert f"peer {liar_at} banned for sending data that failed the hash check" in text
    assert f" from {liar_at} failed the hash check (" in text, text[-3000:]


@pytest.mark.parametrize("comeback", ["another_seeder", "same_seeder_new_port"])
def test_the_only_seeder_vanishes_mid_fetch_and_another_appears(
        daemons: DaemonFactory, key: PrivateKey, make_model: Callable[..., Path],
        make_release: Callable[..., Path], comeback: str) -> None:
    state = layer_state(layers=8, hidden=512)
    release = make_release(make_model(state))
    limit = ("--upload-rate", "15000000", "--rate-limit-local")
    first = daemons(*limit, name="first")
    magnet = first.call("publish", release)["magnet"]
    leech = daemons(name="leech")
    trust(leech, key)
    rid = leech.call("fetch", magnet, peers=[first.peer])["id"]
    wait_progress(leech, rid, 0.3)
    first.kill9()
    if comeback == "another_seeder":
        second = daemons(*limit, name="second")
        assert second.call("publish", release)["magnet"] == magnet
    else:
        first.start()  # same data dir, new port
        second = first
    # Telling the running fetch about the peer that is there now is enough.
    leech.call("fetch", magnet, peers=[second.peer])
    info = leech.call("wait", rid, 120)
    assert info["state"] == "seeding", info
    loaded = p2pweights.load(info["path"], home=leech.home, verify="full")
    assert all(torch.equal(loaded[n], t) for n, t in state.items())


def test_a_paused_fetch_goes_on_with_the_peers_it_knew(
        daemons: DaemonFactory, key: PrivateKey, make_model: Callable[..., Path],
        make_release: Callable[..., Path]) -> None:
    """Resume is the same fetch again, as the web page's button sends it, naming no peer:
    it goes on from the paused fetch's saved state and completes bit-identical."""
    state = layer_state(layers=8, hidden=512)
    release = make_release(make_model(state))
    seeder = daemons("--upload-rate", "15000000", "--rate-limit-local", name="seeder")
    magnet = seeder.call("publish", release)["magnet"]
    leech = daemons(name="leech")
    trust(leech, key)
    rid = leech.call("fetch", magnet, peers=[seeder.peer])["id"]
    event = wait_progress(leech, rid, 0.2)
    # Progress says how the peers were found (the CLI's progress line shows it).
    assert event["peer_sources"] == {"explicit": 1}, event
    paused = leech.call("request", "POST", f"/releases/{rid}/pause")
    assert paused["state"] == "paused", paused
    leech.call("fetch", magnet)  # no peer named
    info = leech.call("wait", rid, 120)
    assert info["state"] == "seeding", (info, leech.log()[-3000:])
    loaded = p2pweights.load(info["path"], home=leech.home, verify="full")
    assert all(torch.equal(loaded[n], t) for n, t in state.items())
