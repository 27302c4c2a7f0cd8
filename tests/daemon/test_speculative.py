"""Integration: chunks fetched before the manifest stay unusable until it is authenticated."""

from __future__ import annotations

import asyncio
import json
import selectors
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p2pweights import PrivateKey, TrustStore
from p2pweights.release import open_self_signed

from ..conftest import layer_state
from .conftest import Daemon

pytestmark = pytest.mark.slow

DaemonFactory = Callable[..., Daemon]


def _start_withholder(torrent: str, release: Path, addr: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_withholding_peer.py")), "--listen", addr,
         torrent, str(release)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=30), "the withholding peer did not start"
    return proc, f"{addr}:{json.loads(proc.stdout.readline())['port']}"


@pytest.mark.parametrize("ordered", [False, True], ids=["every-chunk", "streaming-warm-up"])
def test_chunks_that_arrive_before_the_manifest_are_not_verified_or_streamed_until_it_is(
    ordered: bool,
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    tmp_path: Path,
) -> None:
    release = make_release(make_model(layer_state(layers=4, hidden=192)))
    chunks = open_self_signed(release).manifest.chunks
    chunk_bytes = sum(c.size for c in chunks)
    # An ordered (streaming) fetch wants only its warm-up chunk, the largest, before the
    # manifest; a fetch of every chunk in no order wants them all.
    early_bytes = max(c.size for c in chunks) if ordered else chunk_bytes
    publisher = daemons(name="publisher")
    published = publisher.call("publish", release)
    rid = published["id"]
    publisher.stop()  # back later, as the only source of the manifest
    copy = tmp_path / "withholder"
    shutil.copytree(release, copy)
    withholder, withholder_peer = _start_withholder(published["torrent_path"], copy, "127.0.9.30")
    leech = daemons(name="leech")
    TrustStore.load(leech.home / "trust.json").add(key.public, "publisher")
    seen: list[dict[str, Any]] = []

    async def scenario() -> None:
        events = leech.client.events()
        try:
            await anext(events)  # subscribed: nothing after this is missed
            await leech.client.fetch(
                published["magnet"], peers=[withholder_peer], ordered=ordered
            )
            async for event in events:
                if event.get("id") != rid:
                    continue
                seen.append(event)
                if event.get("kind") == "progress" and event["wanted_done"] >= early_bytes:
                    break  # every early chunk byte is in, checked against the torrent's roots
            # The manifest is still missing: nothing is verified, placed or announced.
            info = await leech.client.show(rid)
            assert info["state"] == "manifest", info
            assert "ready_chunks" not in info, info
            assert not [e for e in seen if e.get("kind") in ("chunk", "downloading")], seen
            assert not any((leech.home / "store" / "chunks").iterdir())
            # Now the manifest comes from an honest seeder; the chunks follow its check.
            await asyncio.to_thread(publisher.start)
            port = (await publisher.client.status())["listen_port"]
            await leech.client.fetch(published["magnet"], peers=[f"{publisher.addr}:{port}"])
            async for event in events:
                if event.get("id") == rid:
                    seen.append(event)
                    if event.get("kind") in ("complete", "error"):
                        break
        finally:
            await events.aclose()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        assert withholder.stdin is not None and withholder.stdout is not None
        withholder.stdin.close()
        withholder.wait(30)
        withholder.stdout.close()
    kinds = [e["kind"] for e in seen]
    assert kinds[-1] == "complete", kinds
    announced = [e["path"] for e in seen if e["kind"] == "chunk"]
    assert sorted(announced) == sorted(c.path for c in chunks)
    # Every chunk was announced only after the manifest was authenticated.
    assert kinds.index("downloading") < kinds.index("chunk")
    # The early chunk bytes came from the withholding peer, before the manifest did: the
    # honest seeder sent little more than the manifest, its signature and the rest.
    uploaded = publisher.call("show", rid)["transfer"]["uploaded"]
    assert uploaded < chunk_bytes - early_bytes // 2, (uploaded, chunk_bytes, early_bytes)
