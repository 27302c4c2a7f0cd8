"""Private swarms (BEP 27) with a real tracker (opentracker) in the lab."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from netlab import Host, Lab, start_opentracker, tracker_hash

from p2pweights import PrivateKey
from p2pweights.client import DaemonClient
from p2pweightsd.engine.torrents import make_torrent

from ..conftest import layer_state
from ..daemon.conftest import p2pw
from .conftest import LAN_PORT, LabDaemon

pytestmark = pytest.mark.slow

TRACKER_PORT = 6969
SEEDER_RATE = 1_000_000
"""The seeder's shaped uplink (bytes/s): the ~6.5 MB release takes it ~7 s to send once."""
DaemonFactory = Callable[..., LabDaemon]


def _tracker(lab: Lab, tmp_path: Path, release: Path) -> tuple[Host, str, str]:
    """A tracker host whitelisting the private torrent of ``release``; (host, URL, id)."""
    if shutil.which("opentracker") is None:
        pytest.skip("opentracker is not installed (scripts/setup.sh installs it as root)")
    host = lab.add_host()
    url = f"http://{host.addr}:{TRACKER_PORT}/announce"
    # The torrent is reproducible, so its info-hash is known before anyone publishes it.
    rid = make_torrent(release, private=True, trackers=[url]).id
    start_opentracker(host, tmp_path / "tracker", [rid], port=TRACKER_PORT)
    return host, url, rid


def _scrape(tracker: Host, rid: str) -> dict[str, int]:
    """The tracker's counts for a release, asked from the tracker's own host."""
    q = urllib.parse.quote(bytes.fromhex(tracker_hash(rid)))
    with tracker.entered():
        body = urllib.request.urlopen(
            f"http://{tracker.addr}:{TRACKER_PORT}/scrape?info_hash={q}", timeout=10).read()
    return {k.decode(): int(v) for k, v in re.findall(rb"(complete|incomplete)i(\d+)e", body)}


def _publish_private(seeder: LabDaemon, release: Path, url: str) -> dict[str, Any]:
    """``p2pw publish --private --tracker URL``, the real CLI against the seeder."""
    out = p2pw(seeder.home, "publish", str(release), "--private", "--tracker", url, "--json")
    assert out.returncode == 0, out.stderr
    published: dict[str, Any] = json.loads(out.stdout)
    data = Path(published["torrent_path"]).read_bytes()
    assert b"7:privatei1e" in data  # BEP 27's flag, inside the info dict
    return published


async def _fetch_all(
    leechers: list[LabDaemon], torrent: str, timeout: float,
    on_started: Callable[[list[int]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every leecher fetches the .torrent (no peers given); ``on_started`` runs once every
    leecher has received payload from someone, with the bytes each had then."""
    receiving = [asyncio.Event() for _ in leechers]
    got = [0] * len(leechers)

    async def watch(d: LabDaemon, flag: asyncio.Event, rid: str) -> None:
        k = leechers.index(d)
        async for event in DaemonClient(d.home).events():
            if event.get("id") == rid and int(event.get("downloaded", 0)) > 0:
                got[k] = max(got[k], int(event["downloaded"]))
                flag.set()

    async def one(d: LabDaemon, flag: asyncio.Event) -> dict[str, Any]:
        client = DaemonClient(d.home)
        started = await client.fetch(torrent)
        watcher = asyncio.create_task(watch(d, flag, str(started["id"])))
        try:
            return await client.wait(str(started["id"]), timeout)
        finally:
            watcher.cancel()

    async def trigger() -> None:
        await asyncio.wait_for(asyncio.gather(*(f.wait() for f in receiving)), timeout)
        assert on_started is not None
        on_started(list(got))

    jobs = [one(d, f) for d, f in zip(leechers, receiving, strict=True)]
    if on_started is not None:
        jobs.append(trigger())  # type: ignore[arg-type]
    results = await asyncio.gather(*jobs)
    return [r for r in results if r is not None]


def test_daemons_find_each_other_only_through_the_tracker(
    lab: Lab, lab_daemons: DaemonFactory, key: PrivateKey, tmp_path: Path,
    make_model: Callable[..., Path], make_release: Callable[..., Path],
) -> None:
    release = make_release(make_model(layer_state(layers=12, hidden=128)))
    tracker, url, rid = _tracker(lab, tmp_path, release)
    # The lan profile: LSD is on (and found the seeder in test_lsd); the private flag
    # switches it, the DHT and PEX off for this torrent, so only the tracker is left.
    seeder = lab_daemons(rate=SEEDER_RATE, name="seeder")
    published = _publish_private(seeder, release, url)
    assert published["id"] == rid
    leechers = [lab_daemons(trust=key.public, name=f"leecher{i}") for i in range(3)]
    infos = asyncio.run(_fetch_all(leechers, published["torrent_path"], 120))
    assert [i["state"] for i in infos] == ["seeding"] * 3, infos
    assert _scrape(tracker, rid)["complete"] == 4  # everyone announced, everyone is done
    # With the seeder's uplink at 1 MB/s, the leechers also served each other.
    uploads = [int(d.call("show", rid)["transfer"]["uploaded"]) for d in leechers]
    assert sum(uploads) > 0, uploads


def test_a_private_release_is_never_announced_to_the_dht(
    lab: Lab, lab_daemons: DaemonFactory, key: PrivateKey, tmp_path: Path,
    make_model: Callable[..., Path], make_release: Callable[..., Path],
) -> None:
    secret = make_release(make_model(layer_state(layers=4, hidden=64, seed=1)))
    public = make_release(make_model(layer_state(layers=4, hidden=64, seed=2)))
    _, url, rid = _tracker(lab, tmp_path, secret)
    node_host = lab.add_host()
    node = node_host.popen(
        [sys.executable, str(Path(__file__).with_name("_dht_node.py")),
         f"{node_host.addr}:{LAN_PORT}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert node.stdout is not None
    json.loads(node.stdout.readline())
    dht = ["--dht", "--dht-bootstrap", f"{node_host.addr}:{LAN_PORT}"]
    seeder = lab_daemons(*dht, name="seeder")
    leecher = lab_daemons(*dht, trust=key.public, name="leecher")
    published = _publish_private(seeder, secret, url)
    info = leecher.call("fetch", published["torrent_path"])
    assert leecher.call("wait", str(info["id"]), 60)["state"] == "seeding"
    # The control, after the private swarm: a public release on the same daemons is
    # announced to the DHT node. Once the node has heard it, it had every chance to hear
    # the private one, which started earlier on the same sessions.
    control = seeder.call("publish", public)
    heard: list[dict[str, str]] = []
    while not any(h["info_hash"] == tracker_hash(control["id"]) for h in heard):
        line = node.stdout.readline()  # the node's alerts: blocks until the next one
        assert line, "the DHT node exited"
        heard.append(json.loads(line))
    assert tracker_hash(rid) not in {h["info_hash"] for h in heard}, heard


def test_stopping_the_tracker_leaves_connected_peers_transferring(
    lab: Lab, lab_daemons: DaemonFactory, key: PrivateKey, tmp_path: Path,
    make_model: Callable[..., Path], make_release: Callable[..., Path],
) -> None:
    release = make_release(make_model(layer_state(layers=12, hidden=128)))
    tracker, url, rid = _tracker(lab, tmp_path, release)
    seeder = lab_daemons(rate=SEEDER_RATE, name="seeder")
    published = _publish_private(seeder, release, url)
    leechers = [lab_daemons(rate=SEEDER_RATE, trust=key.public, name=f"leecher{i}")
                for i in range(3)]
    tracker_proc = tracker.procs[0]
    at_stop: list[int] = []

    def stop_tracker(got: list[int]) -> None:
        tracker_proc.terminate()
        tracker_proc.wait(10)
        at_stop.extend(got)

    infos = asyncio.run(_fetch_all(leechers, published["torrent_path"], 120, stop_tracker))
    assert at_stop, "the tracker was never stopped"
    assert [i["state"] for i in infos] == ["seeding"] * 3, infos
    # Most of the payload moved after the tracker was gone.
    size = int(published["total_bytes"])
    assert all(b < size / 2 for b in at_stop), (at_stop, size)
    assert all(d.call("show", rid)["state"] == "seeding" for d in leechers)
