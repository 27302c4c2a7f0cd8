"""A small swarm: one capped seeder, three leechers that must share with each other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import p2pweights
from p2pweights import PrivateKey, TrustStore
from p2pweights.client import DaemonClient
from p2pweightsd.engine import EngineSettings
from p2pweightsd.engine.settings import (
    RATE_LIMITED_TICK_MS,
    UNLIMITED_TICK_MS,
    UNLIMITED_UNCHOKE_SLOTS,
    UPLOAD_LIMITED_UNCHOKE_SLOTS,
)

from ..conftest import layer_state
from .conftest import Daemon

DaemonFactory = Callable[..., Daemon]
SEEDER_RATE = 1_000_000
"""Bytes/s: the payload takes the seeder ~7 s to send once, so leechers share or wait."""


async def _fetch_all(
    leechers: list[Daemon], magnet: str, peers: dict[str, list[str]], timeout: float
) -> list[dict[str, Any]]:
    async def one(d: Daemon) -> dict[str, Any]:
        client = DaemonClient(d.home)
        started = await client.fetch(magnet, peers=peers[d.addr])
        info: dict[str, Any] = await client.wait(str(started["id"]), timeout)
        return info

    return list(await asyncio.gather(*(one(d) for d in leechers)))


def test_swarm_tuning_applies_only_under_rate_limits() -> None:
    unlimited = EngineSettings().settings_pack()
    assert unlimited["tick_interval"] == UNLIMITED_TICK_MS == 500
    assert unlimited["unchoke_slots_limit"] == UNLIMITED_UNCHOKE_SLOTS == 8
    # Under a limit every message waits for the next tick's quota (the swarm's start-up),
    # and an upload limit is split among fewer peers at once.
    up = EngineSettings.local_only("127.0.0.5", upload_rate_limit=1).settings_pack()
    assert up["tick_interval"] == RATE_LIMITED_TICK_MS < UNLIMITED_TICK_MS
    assert up["unchoke_slots_limit"] == UPLOAD_LIMITED_UNCHOKE_SLOTS < UNLIMITED_UNCHOKE_SLOTS
    down = EngineSettings.local_only("127.0.0.5", download_rate_limit=1).settings_pack()
    assert down["tick_interval"] == RATE_LIMITED_TICK_MS
    assert down["unchoke_slots_limit"] == UNLIMITED_UNCHOKE_SLOTS
    # Explicit values win.
    pinned = EngineSettings(upload_rate_limit=1, tick_interval_ms=250, unchoke_slots=5)
    assert pinned.settings_pack()["tick_interval"] == 250
    assert pinned.settings_pack()["unchoke_slots_limit"] == 5


@pytest.mark.slow
def test_three_leechers_share_with_each_other(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    # ~6.5 MB in 14 chunks (one per layer, plus embeddings and config): 14+ pieces.
    state = layer_state(layers=12, hidden=128)
    release = make_release(make_model(state))
    seeder = daemons("--upload-rate", str(SEEDER_RATE), "--rate-limit-local", name="seeder")
    published = seeder.call("publish", release)
    size = int(published["total_bytes"])
    leechers = [daemons(name=f"leecher{i}") for i in range(3)]
    for d in leechers:
        TrustStore.load(d.home / "trust.json").add(key.public, "publisher")
    # Each leecher is told about the seeder and the other leechers (a tracker's answer).
    everyone = [seeder.peer, *(d.peer for d in leechers)]
    peers = {d.addr: [p for p in everyone if p != d.peer] for d in leechers}

    infos = asyncio.run(_fetch_all(leechers, published["magnet"], peers, timeout=60))

    for d, info in zip(leechers, infos, strict=True):
        assert not info["timed_out"], (info, d.log()[-3000:])
        assert info["state"] == "seeding", (info, d.log()[-3000:])
        assert Path(info["path"]).is_relative_to(d.home)
        loaded = p2pweights.load(info["path"], home=d.home, verify="full")
        assert set(loaded) == set(state)
        assert all(torch.equal(loaded[n], t) for n, t in state.items())
    # The daemons' own payload counters, read once every leecher is done.
    seeder_sent = int(seeder.call("show", published["id"])["transfer"]["uploaded"])
    shows = [d.call("show", published["id"])["transfer"] for d in leechers]
    leechers_sent = sum(int(t["uploaded"]) for t in shows)
    received = sum(int(t["downloaded"]) for t in shows)
    print(
        f"payload {size}; seeder sent {seeder_sent / size:.2f}x, leechers sent "
        f"{leechers_sent / size:.2f}x, leechers received {received / size:.2f}x"
    )
    assert all(int(t["failed_bytes"]) == 0 for t in shows)
    # Bytes came from non-seeders: the leechers uploaded to each other, and the seeder sent
    # less than one copy per leecher.
    assert leechers_sent > 0.25 * size, (leechers_sent, size)
    assert seeder_sent < 2.75 * size, (seeder_sent, size)
    # Every leecher received at least the payload, and it all came from inside the swarm.
    assert received >= 3 * size
    assert seeder_sent + leechers_sent >= 0.95 * received
