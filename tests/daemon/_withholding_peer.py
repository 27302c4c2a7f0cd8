"""A peer that holds every chunk of a release but not its manifest, in its own process.

    python _withholding_peer.py --listen 127.0.0.N TORRENT_FILE RELEASE_DIR

Seeds the torrent's honest chunk bytes from RELEASE_DIR and marks the pieces of
``manifest.json`` as missing (``have_pieces``), so a fetching peer can get every chunk
from it but never the manifest: the chunk bytes arrive first. Prints {"port": P} and runs
until stdin closes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import libtorrent as lt


def main() -> None:
    addr, torrent, release = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    ses = lt.session({
        "listen_interfaces": f"{addr}:0", "outgoing_interfaces": addr, "enable_dht": False,
        "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "enable_outgoing_utp": False, "enable_incoming_utp": False, "dht_bootstrap_nodes": "",
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert.category_t.status_notification
        | lt.alert.category_t.error_notification,
    })
    ti = lt.torrent_info(torrent.read_bytes())
    atp = lt.add_torrent_params()
    atp.ti = ti
    atp.save_path = str(release)
    fs = ti.layout()
    name = fs.name()
    atp.renamed_files = {i: fs.file_path(i)[len(name) + 1:] for i in range(fs.num_files())
                         if not fs.file_flags(i) & lt.file_storage.flag_pad_file}
    have = [True] * ti.num_pieces()
    manifest = next(i for i in range(fs.num_files()) if fs.file_path(i).endswith("/manifest.json"))
    first = ti.map_file(manifest, 0, 0).piece
    last = ti.map_file(manifest, max(fs.file_size(manifest) - 1, 0), 0).piece
    for piece in range(int(first), int(last) + 1):
        have[piece] = False
    atp.have_pieces = have
    atp.file_priorities = [0] * fs.num_files()  # it never fetches the manifest either
    atp.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
    ses.add_torrent(atp)
    port = 0
    while not port:  # bounded by the test's own time-out on our first line of output
        ses.wait_for_alert(1000)
        for alert in ses.pop_alerts():
            if isinstance(alert, lt.listen_succeeded_alert):
                port = int(alert.port)
    print(json.dumps({"port": port}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
