"""Interop: a plain libtorrent session fetches a published release from our daemon by magnet."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import libtorrent as lt
import pytest

from p2pweights.release import open_self_signed

from ..conftest import layer_state
from .conftest import Daemon

pytestmark = pytest.mark.slow

DaemonFactory = Callable[..., Daemon]


def test_a_default_libtorrent_session_fetches_a_release_by_magnet_from_the_daemon(
    daemons: DaemonFactory,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    tmp_path: Path,
) -> None:
    release = make_release(make_model(layer_state(layers=4, hidden=192)))
    publisher = daemons(name="publisher")
    published = publisher.call("publish", release)
    # libtorrent's defaults, except what the network rule of the tests forbids: the public
    # DHT bootstrap, LSD multicast, UPnP and NAT-PMP; and an address of its own.
    ses = lt.session({
        "listen_interfaces": "127.0.9.40:0",
        "outgoing_interfaces": "127.0.9.40",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "alert_mask": lt.alert.category_t.status_notification
        | lt.alert.category_t.error_notification
        | lt.alert.category_t.storage_notification,
    })
    atp = lt.parse_magnet_uri(published["magnet"])
    atp.save_path = str(tmp_path / "stock")
    host, _, port = publisher.peer.rpartition(":")
    atp.peers = [(host, int(port))]
    handle = ses.add_torrent(atp)
    deadline = time.monotonic() + 60
    finished = flushed = False
    while not flushed and time.monotonic() < deadline:
        ses.wait_for_alert(1000)  # wakes on the next alert, at most a second later
        for alert in ses.pop_alerts():
            assert not isinstance(alert, lt.torrent_error_alert), alert.message()
            if isinstance(alert, lt.torrent_finished_alert) and not finished:
                finished = True
                handle.flush_cache()  # the last blocks may still be in memory
            flushed |= finished and isinstance(alert, lt.cache_flushed_alert)
    assert flushed, handle.status().progress
    ti = handle.torrent_file()
    assert ti is not None and ti.info_hashes().has_v2()  # a BEP 52 torrent
    root = tmp_path / "stock" / ti.name()
    for path in ["manifest.json", "manifest.sig"] + [
        c.path for c in open_self_signed(release).manifest.chunks
    ]:
        assert (root / path).read_bytes() == (release / path).read_bytes(), path
