"""The lab itself: hosts reach each other on their own addresses, uplinks are shaped, and
nothing is left behind."""

from __future__ import annotations

import os
import socket
import threading
import time

from netlab import Lab

RATE = 2_000_000
SEND = 4 * 1024 * 1024


def test_hosts_talk_over_a_shaped_uplink_and_nothing_is_left(lab: Lab) -> None:
    a, b = lab.add_host(), lab.add_host(rate=RATE)
    with a.entered():
        server = socket.create_server((a.addr, 0))
    with b.entered():
        # The caller's own namespace has no route to the lab: only b's socket can dial.
        client = socket.create_connection(server.getsockname(), timeout=30)
    conn, (peer, _) = server.accept()
    assert peer == b.addr
    sender = threading.Thread(target=lambda: (client.sendall(b"x" * SEND), client.close()))
    t0 = time.monotonic()
    sender.start()
    got = 0
    while chunk := conn.recv(1 << 20):
        got += len(chunk)
    seconds = time.monotonic() - t0
    sender.join()
    conn.close()
    server.close()
    assert got == SEND
    # tbf holds b's upload to its rate (10 ms of burst; TCP's headers ride on top).
    assert got / seconds < 1.1 * RATE, got / seconds
    assert b.counters()["tx_bytes"] >= SEND
    assert b.qdisc_stats()["bytes"] >= SEND
    holders = [h.pid for h in lab.hosts] + [lab.switch.pid]
    lab.close()
    for pid in holders:
        assert not os.path.exists(f"/proc/{pid}"), pid


def test_the_callers_namespace_is_untouched(lab: Lab) -> None:
    before = socket.if_nameindex()
    lab.add_hosts(2)
    assert socket.if_nameindex() == before
