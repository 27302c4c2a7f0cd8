"""A bare DHT node that reports what it hears: the lab's witness for DHT announces.

    python _dht_node.py ADDR:PORT

Prints ``{"port": P}`` once listening, then one JSON line per DHT request that names an
info-hash (``{"kind": "announce"|"get_peers", "info_hash": HEX}``), until stdin closes.
It has no bootstrap node; daemons bootstrap from it.
"""

from __future__ import annotations

import json
import sys
import threading

import libtorrent as lt


def main() -> None:
    listen = sys.argv[1]
    ses = lt.session({
        "listen_interfaces": listen,
        "enable_dht": True,
        "dht_bootstrap_nodes": "",
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # A lab is one subnet: let private addresses route and search.
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_prefer_verified_node_ids": False,
        "alert_mask": lt.alert.category_t.dht_notification,
    })
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print(json.dumps({"port": ses.listen_port()}), flush=True)
    while not done.is_set():
        ses.wait_for_alert(200)
        for a in ses.pop_alerts():
            if isinstance(a, lt.dht_announce_alert):
                kind = "announce"
            elif isinstance(a, lt.dht_get_peers_alert):
                kind = "get_peers"
            else:
                continue
            print(json.dumps({"kind": kind, "info_hash": str(a.info_hash)}), flush=True)


if __name__ == "__main__":
    main()
