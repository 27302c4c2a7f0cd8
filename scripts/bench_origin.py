#!/usr/bin/env python3
"""Origin offload: N daemons fetch one release with only a web seed (nginx), no seeder peer.

Usage: ``scripts/bench_origin.py [--quick] [--size-mib F] [--rate U] [--nodes 1,4,8,16]``
(root: it builds a network lab with ``scripts/netlab.py``).

Set-up (untimed): a synthetic checkpoint of at least F MiB is packed, its torrent made and
written as a ``p2pw mirror`` tree; nginx serves the tree from the origin host, whose
uplink ``tbf`` caps at U bytes/s. Every node host's uplink is capped at U as well.

Each round, for N nodes:

- **p2pw**: N fresh daemons (the local profile's settings on their lab address) start the
  same magnet fetch at once, each with the origin as ``--web-seed`` and the other nodes as
  peers (a tracker's answer), no seeder peer. The metadata comes from the mirror.
- **http**: N plain clients, one per node host, download every file from nginx with
  ``urllib`` and hash it with sha256 (what a node does without p2pweights).

Reported: the origin's bytes sent (``eth0`` tx, headers included) divided by F (plain HTTP
is N), the time until all N are done against the HTTP clients', and at N = 1 the ratio of
the two times. Targets (issue 11): origin/F <= 1.3 at N = 16, time <= 0.35x HTTP at
N = 8, and >= 0.9x HTTP's speed at N = 1. Results go to ``docs/origin.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _swarm_lab import LAB_PORT, lab_args
from _synthetic import make_synthetic
from netlab import Host, Lab, unavailable

import p2pweights
from p2pweights import TrustStore
from p2pweights.client import DaemonClient
from p2pweights.mirror import write_mirror
from p2pweightsd.engine.torrents import make_torrent

MIB = 2**20
HTTP_PORT = 8080
ROOT = Path(__file__).resolve().parent.parent
CLIENT = """
import hashlib, sys, time, urllib.request
base, files = sys.argv[1], sys.argv[2:]
for rel in files:
    h = hashlib.sha256()
    with urllib.request.urlopen(base + rel) as resp:
        while block := resp.read(1 << 20):
            h.update(block)
print(time.time())
"""


def start_nginx(host: Host, tree: Path, work: Path) -> None:
    """nginx in the origin host, serving ``tree`` on port 8080."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work.mkdir(parents=True, exist_ok=True)
    temps = "".join(f"  {k}_temp_path {work}/{k};\n" for k in ("client_body", "proxy",
                                                                   "fastcgi", "uwsgi", "scgi"))
    (work / "nginx.conf").write_text(
        f"user root;\ndaemon off;\nworker_processes 2;\npid {work}/nginx.pid;\n"
        f"error_log {work}/error.log;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\n  access_log {work}/access.log;\n  sendfile on;\n{temps}"
        f"  server {{ listen {host.addr}:{HTTP_PORT}; root {tree}; }}\n}}\n"
    )
    proc = host.popen([nginx, "-p", str(work), "-c", str(work / "nginx.conf")])
    with host.entered():
        for _ in range(200):  # nginx has no readiness signal; it binds within ms
            try:
                socket.create_connection((host.addr, HTTP_PORT), timeout=0.5).close()
                return
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"nginx exited: {(work / 'error.log').read_text()}") from None
                time.sleep(0.05)
    raise SystemExit("nginx did not listen")


async def p2pw_round(nodes: list[Host], homes: list[Path], magnet: str, url: str,
                     timeout: float) -> float:
    """Start the same fetch on every node at once; seconds until the last is done."""
    clients = [DaemonClient(h) for h in homes]
    peers = [f"{n.addr}:{LAB_PORT}" for n in nodes]
    t0 = time.monotonic()

    async def one(i: int) -> float:
        started = await clients[i].fetch(
            magnet, peers=[p for j, p in enumerate(peers) if j != i], web_seeds=[url]
        )
        info = await clients[i].wait(str(started["id"]), timeout)
        if info["state"] != "seeding":
            raise SystemExit(f"node {i}: {info['state']} {info.get('problem')}")
        return time.monotonic() - t0

    return max(await asyncio.gather(*(one(i) for i in range(len(nodes)))))


def stop_daemons(pids: list[int]) -> None:
    """SIGTERM each daemon and wait until it is gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        for _ in range(600):
            with contextlib.suppress(ChildProcessError):  # our child: reap it
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)


def http_round(nodes: list[Host], url: str, files: list[str]) -> float:
    """N plain HTTP + sha256 clients at once; seconds until the last is done."""
    t0 = time.time()
    procs = [n.popen([sys.executable, "-c", CLIENT, url, *files], stdout=-1, text=True)
             for n in nodes]
    ends = [float(p.communicate(timeout=3600)[0].strip()) for p in procs]
    return max(ends) - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="F = 32 MiB, U = 8 MB/s, N = 1, 4")
    parser.add_argument("--size-mib", type=int, default=74)
    parser.add_argument("--rate", type=int, default=4_000_000, help="U, bytes/s")
    parser.add_argument("--nodes", default="1,4,8,16")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "origin.json")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.rate, args.nodes = 32, 8_000_000, "1,4"
    if reason := unavailable():
        raise SystemExit(f"bench_origin needs the network lab: {reason}")
    counts = [int(n) for n in args.nodes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="p2pw-origin-"))
    key = p2pweights.generate_key(work / "bench-key.pem", overwrite=True)
    src = make_synthetic(work / "synthetic", args.size_mib * MIB / 2**30)
    root = work / "release"
    p2pweights.pack(src, root, name="bench/origin", version=1, key=key)
    tf = make_torrent(root)
    tree = work / "tree"
    write_mirror(root, tf.data, name=tf.name, info_hash=tf.id, dest=tree)
    size = sum(f.size for f in tf.files)
    files = [f"{tf.name}/{f.path}" for f in tf.files]
    rows: list[dict[str, Any]] = []
    with Lab() as lab:
        origin = lab.add_host(args.rate)
        start_nginx(origin, tree, work / "nginx")
        url = f"http://{origin.addr}:{HTTP_PORT}/"
        nodes_all = lab.add_hosts(max(counts), args.rate)
        for n in counts:
            nodes = nodes_all[:n]
            homes, pids = [], []
            for i, node in enumerate(nodes):
                home = work / f"n{n}-{i}"
                home.mkdir()
                TrustStore.load(home / "trust.json").add(key.public, "bench")
                pids.append(node.start_daemon(home, lab_args(node.addr)))
                homes.append(home)
            before = origin.counters()["tx_bytes"]
            t_p2p = asyncio.run(p2pw_round(nodes, homes, tf.magnet, url, 3600))
            origin_bytes = origin.counters()["tx_bytes"] - before
            stop_daemons(pids)  # their port is the next round's
            t_http = http_round(nodes, url, files)
            row = {"N": n, "F_bytes": size, "U": args.rate, "p2pw_s": round(t_p2p, 2),
                   "http_s": round(t_http, 2), "time_ratio": round(t_p2p / t_http, 3),
                   "origin_over_F": round(origin_bytes / size, 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"quick": args.quick, "rows": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'N':>3} {'origin/F':>9} {'p2pw s':>8} {'http s':>8} {'p2pw/http':>10}")
    for r in rows:
        print(f"{r['N']:>3} {r['origin_over_F']:>9} {r['p2pw_s']:>8} {r['http_s']:>8} "
              f"{r['time_ratio']:>10}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
