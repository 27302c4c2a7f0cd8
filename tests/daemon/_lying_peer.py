"""A peer that serves altered bytes, in its own process: a test's liar.

    python _lying_peer.py --listen 127.0.0.N TORRENT_FILE RELEASE_DIR [--every-block]

Seeds the torrent from RELEASE_DIR after flipping one byte in every chunk (with
``--every-block``, in every 16 KiB block: then no block it sends is good, and every
piece it has a hand in fails). The torrent is added with every piece marked as had
(``have_pieces``), which libtorrent trusts without a check, so the altered bytes really
go out (a seed-mode seeder would notice the mismatch on first request and stop serving).
Prints {"port": P} and runs until stdin closes; then prints {"uploaded": BYTES, "peers":
N, "connections": [{"ip", "at", "sent", "open"}, ...]}: what it sent, to how many peers
it is still connected, and each connection in turn, with what it had sent before and
over that connection, and whether it was still open at the end.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import libtorrent as lt
from _raw_peer import had_torrent, listen_port, session

BLOCK = 16 * 1024
"""libtorrent's request size: with ``--every-block`` each one carries a flipped byte."""


def main() -> None:
    addr, torrent, release = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    every_block = "--every-block" in sys.argv[5:]
    for chunk in (release / "chunks").iterdir():
        data = bytearray(chunk.read_bytes())
        step = BLOCK if every_block else len(data)
        for start in range(0, len(data), step):
            data[start + min(step, len(data) - start) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
    ses = session(addr, lt.alert.category_t.connect_notification)
    ses.add_torrent(had_torrent(torrent, release))
    port = listen_port(ses)
    print(json.dumps({"port": port}), flush=True)
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    # Each connection with a peer, in turn: its address, and what we sent over it.
    connections: list[dict[str, Any]] = []
    open_at: dict[tuple[str, int], dict[str, Any]] = {}

    def sent() -> int:
        handles = ses.get_torrents()
        return int(handles[0].status().total_payload_upload) if handles else 0

    while not closed.is_set():
        ses.wait_for_alert(100)
        for alert in ses.pop_alerts():
            if isinstance(alert, lt.peer_connect_alert | lt.peer_disconnected_alert):
                ep = (str(alert.endpoint[0]), int(alert.endpoint[1]))
                if isinstance(alert, lt.peer_connect_alert):
                    open_at[ep] = {"ip": ep[0], "at": sent(), "sent": 0, "open": True}
                    connections.append(open_at[ep])
                elif ep in open_at:
                    conn = open_at.pop(ep)
                    conn.update(sent=sent() - conn["at"], open=False)
    for conn in open_at.values():
        conn["sent"] = sent() - conn["at"]
    # What the liar got to send, for the test to check that it stopped being used.
    (handle,) = ses.get_torrents()
    st = handle.status()
    print(json.dumps({"uploaded": st.total_payload_upload, "peers": st.num_peers,
                      "connections": connections}), flush=True)


if __name__ == "__main__":
    main()
