"""Plain libtorrent DHT nodes in one process: the rest of a loopback DHT (tests, bench_names).

    python scripts/_dht_nodes.py BASE COUNT [--bootstrap HOST:PORT] [--ports P1,P2,...]

Starts COUNT sessions on BASE.2, BASE.3, ... (DHT only: no torrents, LSD, UPnP); the
first bootstraps from ``--bootstrap`` if given, the others from the first. ``--ports``
binds the same ports again (a DHT that forgot everything, at the same addresses). Prints
``{"nodes": [[host, port], ...]}`` once listening, then runs until stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import libtorrent as lt


def session(addr: str, port: int, bootstrap: str) -> lt.session:
    return lt.session(
        lt.session_params(
            {
                "listen_interfaces": f"{addr}:{port}",
                "outgoing_interfaces": addr,
                "enable_dht": True,
                "dht_bootstrap_nodes": bootstrap,
                "dht_restrict_routing_ips": False,
                "dht_restrict_search_ips": False,
                "dht_prefer_verified_node_ids": False,
                # As the daemons on a private DHT (daemon/engine/settings.py).
                "dht_upload_rate_limit": 4_000_000,
                "dht_block_ratelimit": 1000,
                "enable_lsd": False,
                "enable_upnp": False,
                "enable_natpmp": False,
                "alert_mask": lt.alert.category_t.status_notification,
            }
        )
    )


def wait_listening(ses: lt.session) -> int:
    """The session's port, once libtorrent says it listens (an alert, not a poll)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ses.wait_for_alert(1000)
        for a in ses.pop_alerts():
            if isinstance(a, lt.listen_succeeded_alert):
                return int(ses.listen_port())
    raise SystemExit("a DHT node did not listen")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("count", type=int)
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--ports", default="")
    args = parser.parse_args()
    ports = [int(p) for p in args.ports.split(",") if p] or [0] * args.count
    first = session(f"{args.base}.2", ports[0], args.bootstrap)
    boot = f"{args.base}.2:{wait_listening(first)}"
    rest = [session(f"{args.base}.{3 + i}", ports[1 + i], boot) for i in range(args.count - 1)]
    nodes = [[f"{args.base}.2", first.listen_port()]]
    nodes += [[f"{args.base}.{3 + i}", wait_listening(s)] for i, s in enumerate(rest)]
    print(json.dumps({"nodes": nodes}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
