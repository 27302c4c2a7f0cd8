"""Local service discovery in the lab: a magnet with no peer, tracker or DHT finds its seeder."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pweights import PrivateKey
from p2pweightsd.engine.torrents import make_torrent

from ..conftest import layer_state
from .conftest import LabDaemon

LSD_BUDGET_S = 60.0
"""The lan profile's LSD re-announce interval: discovery must take no longer than one."""


@pytest.mark.slow
def test_magnet_finds_the_seeder_by_lsd_alone(
    lab_daemons: Callable[..., LabDaemon],
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    release = make_release(make_model(layer_state(layers=4, hidden=64)))
    seeder = lab_daemons("--no-dht", name="seeder")
    published = seeder.call("publish", release)
    leecher = lab_daemons("--no-dht", trust=key.public, name="leecher")
    assert leecher.call("status")["profile"] == "lan"
    t0 = time.monotonic()
    started = leecher.call("fetch", published["magnet"])  # no peers, no trackers
    info = leecher.call("wait", str(started["id"]), LSD_BUDGET_S)
    seconds = time.monotonic() - t0
    assert info["state"] == "seeding", info
    assert seconds < LSD_BUDGET_S
    print(f"LSD: fetched in {seconds:.2f} s")
    # Nothing but LSD could have told the leecher: no x.pe, no tracker, DHT off.
    assert "x.pe=" not in published["magnet"] and "tr=" not in published["magnet"]


@pytest.mark.slow
def test_a_waiting_magnet_hears_a_seeder_that_comes_later(
    lab_daemons: Callable[..., LabDaemon],
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    # The other way round: the leecher asks first, into an empty LAN; the seeder's own
    # announce when it starts seeding is what the leecher hears.
    release = make_release(make_model(layer_state(layers=4, hidden=64)))
    seeder = lab_daemons("--no-dht", name="seeder")
    leecher = lab_daemons("--no-dht", trust=key.public, name="leecher")
    magnet = make_torrent(release).magnet
    started = leecher.call("fetch", magnet)
    assert leecher.call("show", str(started["id"]))["state"] == "metadata"
    t0 = time.monotonic()
    seeder.call("publish", release)
    info = leecher.call("wait", str(started["id"]), LSD_BUDGET_S)
    seconds = time.monotonic() - t0
    assert info["state"] == "seeding", info
    print(f"LSD (seeder second): fetched in {seconds:.2f} s")
