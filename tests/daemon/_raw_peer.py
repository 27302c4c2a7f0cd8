"""What the tests' raw libtorrent peers (the liar, the withholder) share: a loopback-only
session, a release's torrent added as had, and the port it listens on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libtorrent as lt


def session(addr: str, extra_alerts: int = 0) -> Any:
    """A session on ``addr`` only: no DHT, LSD, UPnP, NAT-PMP or uTP."""
    return lt.session({
        "listen_interfaces": f"{addr}:0", "outgoing_interfaces": addr, "enable_dht": False,
        "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "enable_outgoing_utp": False, "enable_incoming_utp": False, "dht_bootstrap_nodes": "",
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert.category_t.status_notification
        | lt.alert.category_t.error_notification
        | extra_alerts,
    })


def had_torrent(torrent: Path, release: Path) -> Any:
    """Add params that seed ``torrent`` from the release dir, every piece marked as had
    (``have_pieces``: trusted without a check), started at once."""
    ti = lt.torrent_info(torrent.read_bytes())
    atp = lt.add_torrent_params()
    atp.ti = ti
    atp.save_path = str(release)
    fs = ti.layout()
    name = fs.name()
    atp.renamed_files = {i: fs.file_path(i)[len(name) + 1:] for i in range(fs.num_files())
                         if not fs.file_flags(i) & lt.file_storage.flag_pad_file}
    atp.have_pieces = [True] * ti.num_pieces()
    atp.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
    return atp


def listen_port(ses: Any) -> int:
    """The port ``ses`` listens on, once it says so."""
    port = 0
    while not port:  # bounded by the test's own time-out on our first line of output
        ses.wait_for_alert(1000)
        for alert in ses.pop_alerts():
            if isinstance(alert, lt.listen_succeeded_alert):
                port = int(alert.port)
    return port
