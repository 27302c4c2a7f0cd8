"""``bench_swarm.py --net lab``: every peer in its own namespace, its uplink shaped by tbf.

In the lab no daemon has a libtorrent rate limit: the network limits each host's upload to
U (``netlab.Host.shape``), the way a real link does, instead of libtorrent's limiter, which
lets one-second bursts through (14 MB/s measured under an 8 MB/s cap). Daemons run the
``local`` profile's settings (TCP only, no DHT/LSD, explicit peers) on their host's lab
address, so the two modes differ only in what limits the rate.

Hosts are kept across the rounds (leecher i is always host i); each round starts fresh
daemons with empty data dirs on them. Link use comes from each host's ``eth0`` counters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from netlab import Host, Lab

__all__ = ["LAB_PORT", "LabPlacement", "daemon_rss_mib", "lab_args", "lab_verdict",
           "mem_available_mib", "percentile", "plot_ratio"]

LAB_PORT = 6881


def lab_args(addr: str) -> list[str]:
    """A lab daemon's flags: the local profile's settings on the host's address, no limit."""
    return ["--profile", "local", "--listen", f"{addr}:{LAB_PORT}", "--outgoing-interface", addr]


class LabPlacement:
    """The seeder's host and as many leecher hosts as the largest round needs."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.lab = Lab()
        self.seeder = self.lab.add_host(rate)
        self.leechers: list[Host] = []

    def leecher_hosts(self, n: int) -> list[Host]:
        """The first ``n`` leecher hosts (made on first use)."""
        while len(self.leechers) < n:
            self.leechers.append(self.lab.add_host(self.rate))
        return self.leechers[:n]

    @staticmethod
    def tx_bytes(hosts: list[Host]) -> list[int]:
        """Bytes each host has sent on its link (IP headers included)."""
        return [h.counters()["tx_bytes"] for h in hosts]

    def close(self) -> None:
        self.lab.close()


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100): with 32 nodes p99 is the slowest."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def mem_available_mib() -> float:
    """``MemAvailable`` from ``/proc/meminfo``, in MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def daemon_rss_mib(pid: int) -> float:
    """A process's resident set, in MiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


LAB_TARGETS = {8: 1.25, 32: 1.40}
"""N -> the largest T_all / fluid bound the issue asks for on the shaped lab."""
LAB_STALL_S = 1.0


def lab_verdict(runs: list[Any]) -> tuple[bool, str]:
    """Whether the lab's targets are met (runs at N = 8 and 32 judge), and the targets."""
    target = (", ".join(f"T <= {r} x fluid bound at N = {n}" for n, r in LAB_TARGETS.items())
              + f"; start-up stall <= {LAB_STALL_S} s")
    judged = [r for r in runs if r.n in LAB_TARGETS]
    met = bool(judged) and all(r.ratio <= LAB_TARGETS[r.n] for r in judged) and all(
        r.startup_stall_s <= LAB_STALL_S for r in runs)
    return met, target


def plot_ratio(lab: dict[str, Any], loopback_json: Path, path: Path) -> None:
    """T_all / fluid bound against N: the shaped lab, and the loopback limiter's run."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(summary: dict[str, Any]) -> tuple[list[int], list[float]]:
        by_n: dict[int, list[float]] = {}
        for r in summary["runs"]:
            by_n.setdefault(int(r["n"]), []).append(float(r["ratio"]))
        ns = sorted(by_n)
        return ns, [sorted(by_n[n])[len(by_n[n]) // 2] for n in ns]

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ns, ratios = series(lab)
    mb, rate = lab["payload_bytes"] / 1e6, lab["rate_bytes_s"] / 1e6
    ax.plot(ns, ratios, "o-", color="tab:blue",
            label=f"shaped lab: tbf uplinks, F = {mb:.0f} MB, U = {rate:g} MB/s")
    if loopback_json.is_file():
        loop = json.loads(loopback_json.read_text())
        lns, lratios = series(loop)
        ax.plot(lns, lratios, "s--", color="tab:orange",
                label=f"loopback, libtorrent's limiter: F = {loop['payload_bytes'] / 1e6:.0f} "
                f"MB, U = {loop['rate_bytes_s'] / 1e6:g} MB/s")
    for n, r in LAB_TARGETS.items():
        ax.plot([n], [r], "*", color="tab:green", markersize=12)
    ax.plot([], [], "*", color="tab:green", label="targets (N = 8: 1.25x, N = 32: 1.40x)")
    ax.axhline(1.0, color="black", linestyle=":", label="fluid bound max(F/U, N·F/(U+N·U))")
    ax.set_xscale("log", base=2)
    ticks = sorted(set(ns) | {2, 4, 8, 16, 32})
    ax.set_xticks(ticks, [str(n) for n in ticks])
    ax.set_xlabel("N leechers (1 seeder + N, a daemon each)")
    ax.set_ylabel("time until every leecher holds F / fluid bound")
    ax.set_ylim(bottom=0.9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
