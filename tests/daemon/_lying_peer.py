"""A peer that serves altered bytes, in its own process: a test's liar.

    python _lying_peer.py --listen 127.0.0.N TORRENT_FILE RELEASE_DIR

Seeds the torrent from RELEASE_DIR after flipping one byte in every chunk. The torrent
is added with every piece marked as had (``have_pieces``), which libtorrent trusts
without a check, so the altered bytes really go out (a seed-mode seeder would notice the
mismatch on first request and stop serving). Prints {"port": P} and runs until stdin
closes; then prints {"uploaded": BYTES, "peers": N}, what it sent and to how many peers
it is still connected.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import libtorrent as lt


def main() -> None:
    addr, torrent, release = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    for chunk in (release / "chunks").iterdir():
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
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
    atp.have_pieces = [True] * ti.num_pieces()
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
    # What the liar got to send, for the test to check that it stopped being used.
    (handle,) = ses.get_torrents()
    st = handle.status()
    print(json.dumps({"uploaded": st.total_payload_upload, "peers": st.num_peers}), flush=True)


if __name__ == "__main__":
    main()
