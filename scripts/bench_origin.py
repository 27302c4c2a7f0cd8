#!/usr/bin/env python3
"""Origin offload: N daemons fetch one release with only a web seed (nginx), no seeder peer.

Usage: ``scripts/bench_origin.py [--quick] [--size-mib F] [--rate U] [--nodes 1,4,8,16]
[--without-rule] [--plot PNG]`` (root: it builds a network lab with ``scripts/netlab.py``),
or ``--replot docs/origin.json`` to draw the plot again from a results file.

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
N = 8, and >= 0.9x HTTP's speed at N = 1. With ``--without-rule`` each round is run
again with the web seed rule off (``web_seed_spare = false``, ``daemon/origin_rule.py``).
Results go to ``docs/origin.json``, the plot (origin / F and time against N, matplotlib
from the ``dev`` extra) to ``docs/origin.png`` unless ``--quick``.
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


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Origin bytes / F and time against N: p2pw (rule on and off) and plain HTTP, targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["N"] for r in rows]
    off = all("rule_off_origin_over_F" in r for r in rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.3), dpi=110)
    left.plot(ns, ns, "s-", color="tab:red", label="plain HTTP + sha256 (= N)")
    if off:
        left.plot(ns, [r["rule_off_origin_over_F"] for r in rows], "^--", color="tab:orange",
                  label="p2pw, web seed rule off")
    left.plot(ns, [r["origin_over_F"] for r in rows], "o-", color="tab:blue",
              label="p2pw, web seed rule on")
    left.axhline(1.0, color="black", lw=0.8, ls=":")
    left.plot([16], [1.3], "*", color="tab:green", ms=14, ls="none",
              label="target: ≤ 1.3 at N = 16")
    left.set_yscale("log", base=2)
    left.set_yticks([1, 1.3, 2, 4, 8, 16], ["1", "1.3", "2", "4", "8", "16"])
    left.set_ylabel("origin bytes sent / F")
    left.set_title("Origin offload: bytes the origin serves", fontsize=10)
    right.plot(ns, [r["http_s"] for r in rows], "s-", color="tab:red",
               label="plain HTTP + sha256, every node")
    if off:
        right.plot(ns, [r["rule_off_s"] for r in rows], "^--", color="tab:orange",
                   label="p2pw, web seed rule off")
    right.plot(ns, [r["p2pw_s"] for r in rows], "o-", color="tab:blue",
               label="p2pw, web seed rule on")
    http8 = [r["http_s"] for r in rows if r["N"] == 8]
    if http8:
        right.plot([8], [0.35 * http8[0]], "*", color="tab:green", ms=14, ls="none",
                   label="target at N = 8: ≤ 0.35x HTTP")
    right.set_ylabel("seconds until all N hold F")
    right.set_title("Time until every node is done", fontsize=10)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("N nodes fetching at once")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    r0 = rows[0]
    fig.suptitle(f"One nginx origin and N nodes, every uplink capped at U = {r0['U'] / 1e6:g} MB/s "
                 f"(tbf, network lab); F = {r0['F_bytes'] / 1e6:.0f} MB; no seeder peer",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="F = 32 MiB, U = 8 MB/s, N = 1, 4")
    parser.add_argument("--size-mib", type=int, default=74)
    parser.add_argument("--rate", type=int, default=4_000_000, help="U, bytes/s")
    parser.add_argument("--nodes", default="1,4,8,16")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "origin.json")
    parser.add_argument("--without-rule", action="store_true",
                        help="also run each round with the web seed rule off (web_seed_spare)")
    parser.add_argument("--plot", type=Path, help="PNG plot (default docs/origin.png, not --quick)")
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="only draw --plot from the rows of a results file")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.replot.read_text())["rows"], args.plot or ROOT / "docs" / "origin.png")
        return
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
        def p2pw(n: int, spare: bool) -> tuple[float, int]:
            nodes = nodes_all[:n]
            homes, pids = [], []
            for i, node in enumerate(nodes):
                home = work / f"n{n}-{i}-{'rule' if spare else 'off'}"
                home.mkdir()
                TrustStore.load(home / "trust.json").add(key.public, "bench")
                if not spare:
                    (home / "config.toml").write_text("web_seed_spare = false\n")
                pids.append(node.start_daemon(home, lab_args(node.addr)))
                homes.append(home)
            before = origin.counters()["tx_bytes"]
            t_p2p = asyncio.run(p2pw_round(nodes, homes, tf.magnet, url, 3600))
            origin_bytes = origin.counters()["tx_bytes"] - before
            stop_daemons(pids)  # their port is the next round's
            return t_p2p, origin_bytes

        for n in counts:
            t_p2p, origin_bytes = p2pw(n, True)
            t_http = http_round(nodes_all[:n], url, files)
            row = {"N": n, "F_bytes": size, "U": args.rate, "p2pw_s": round(t_p2p, 2),
                   "http_s": round(t_http, 2), "time_ratio": round(t_p2p / t_http, 3),
                   "origin_over_F": round(origin_bytes / size, 3)}
            if args.without_rule:
                t_off, off_bytes = p2pw(n, False)
                row |= {"rule_off_s": round(t_off, 2),
                        "rule_off_time_ratio": round(t_off / t_http, 3),
                        "rule_off_origin_over_F": round(off_bytes / size, 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"quick": args.quick, "rows": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot or not args.quick:
        plot(rows, args.plot or ROOT / "docs" / "origin.png")
    print(f"{'N':>3} {'origin/F':>9} {'p2pw s':>8} {'http s':>8} {'p2pw/http':>10}"
          f"{'  rule off: origin/F, p2pw/http' if args.without_rule else ''}")
    for r in rows:
        print(f"{r['N']:>3} {r['origin_over_F']:>9} {r['p2pw_s']:>8} {r['http_s']:>8} "
              f"{r['time_ratio']:>10}"
              + (f"  {r['rule_off_origin_over_F']:>9} {r['rule_off_time_ratio']:>10}"
                 if args.without_rule else ""))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
