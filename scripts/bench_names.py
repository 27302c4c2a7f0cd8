"""Benchmark p2pw:// names on a loopback DHT of 16 nodes.

Usage::

    unshare -n -- sh -c 'ip link set lo up && exec .venv/bin/python scripts/bench_names.py'
        [--resolves 50] [--searches 20] [--trials 8] [--mib 16] [--workdir DIR] [--json]

Set-up (untimed): 14 plain libtorrent DHT nodes (``scripts/_dht_nodes.py``) plus two
daemons (``--profile local --dht``): A, the publisher, whose key is in its ``DATA/keys``,
and B, the client, which trusts A's key under the name ``acme``. A packs and publishes a
synthetic release of ``--mib`` MiB, which puts its name.

* **Resolve latency.** B resolves ``p2pw://acme/bench/model`` ``--resolves`` times through
  its API (``POST /v1/resolve``: the HTTP round trip, the DHT walk to its authoritative
  end, the signature and the record checks, the catalog's high-water mark).
* **Search latency.** B searches ``bench`` ``--searches`` times (``POST /v1/search``: the
  index name resolved like any name, A's index release read and parsed). The first
  search also fetches the index through the swarm, so it is reported on its own; the
  baseline is the resolve latency above (a search is a resolve plus a read).
* **Name to first chunk, against magnet to first chunk.** ``--trials`` times each, in
  alternating order: B fetches the release by name, or by its magnet link, with A as its
  peer, and the time from the call to B's first ``chunk`` event (the first chunk verified
  and in the store) is measured; the release is then removed with its data.

Target (issue 10): a name adds at most 0.5 s (p50) on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_ADDED_P50_S = 0.5
_HOSTS = {"a": "127.0.3.2", "b": "127.0.3.3"}
_NODES_BASE = "127.0.4"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def start_nodes(count: int) -> tuple[subprocess.Popen[str], list[list[Any]]]:
    helper = Path(__file__).with_name("_dht_nodes.py")
    proc = subprocess.Popen(
        [sys.executable, str(helper), _NODES_BASE, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())["nodes"]


def start_daemon(home: Path, addr: str, boot: str) -> int:
    from p2pweights.client import start_daemon as start

    args = ["--profile", "local", "--listen", f"{addr}:0", "--outgoing-interface", addr]
    return start(home, extra_args=[*args, "--dht", "--dht-bootstrap", boot])


def make_release(work: Path, key: Any, mib: int) -> Path:
    import torch
    from safetensors.torch import save_file

    import p2pweights

    src = work / "src"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    per_layer = mib * 1024 * 1024 // 8 // 4  # 8 layers of float32
    state = {f"model.layers.{i}.w": torch.randn(per_layer, generator=g) for i in range(8)}
    save_file(state, str(src / "model.safetensors"))
    out = work / "release"
    p2pweights.pack(src, out, name="bench/model", version=1, key=key)
    return out


async def first_chunk(client: Any, uri: str, peer: str) -> tuple[float, str]:
    """Seconds from the fetch call to the first ``chunk`` event, and the release id."""
    events = client.events()
    assert (await anext(events))["kind"] == "subscribed"
    began = time.perf_counter()
    started = await client.fetch(uri, peers=[peer])
    rid = started["id"]
    async for event in events:
        if event.get("id") == rid and event["kind"] == "chunk":
            break
        if event.get("id") == rid and event["kind"] == "error":
            raise RuntimeError(f"fetch of {uri[:60]} failed")
    seconds = time.perf_counter() - began
    await events.aclose()
    await client.wait(rid, 120)
    await client.remove(rid, delete_data=True)
    return seconds, rid


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from p2pweights import TrustStore, generate_key
    from p2pweights.client import DaemonClient

    proc, nodes = start_nodes(14)
    boot = f"{nodes[0][0]}:{nodes[0][1]}"
    pids = []
    try:
        home_a, home_b = work / "a", work / "b"
        for home in (home_a, home_b):
            home.mkdir(mode=0o700)
        key = generate_key(home_a / "keys" / "publisher.pem")
        TrustStore.load(home_b / "trust.json").add(key.public, "acme")
        pids += [start_daemon(home_a, _HOSTS["a"], boot), start_daemon(home_b, _HOSTS["b"], boot)]
        a, b = DaemonClient(home_a), DaemonClient(home_b)
        release = make_release(work, key, args.mib)
        published = await a.publish(release)
        peer = (await a.status())["peer_address"]
        name = "p2pw://acme/bench/model"
        resolve_s = []
        for _ in range(args.resolves):
            began = time.perf_counter()
            got = await b.resolve(name)
            resolve_s.append(time.perf_counter() - began)
            assert got["info_hash"] == published["id"]
        search_s = []
        for _ in range(args.searches):
            began = time.perf_counter()
            found = await b.search("bench")
            search_s.append(time.perf_counter() - began)
            assert [r["info_hash"] for r in found["results"]] == [published["id"]], found
        by = {"name": [], "magnet": []}
        for trial in range(args.trials):
            order = ("name", "magnet") if trial % 2 == 0 else ("magnet", "name")
            for kind in order:
                uri = name if kind == "name" else published["magnet"]
                seconds, rid = await first_chunk(b, uri, peer)
                assert rid == published["id"]
                by[kind].append(seconds)
        added = statistics.median(by["name"]) - statistics.median(by["magnet"])
        return {
            "dht_nodes": len(nodes) + 2,
            "release_mib": args.mib,
            "resolve_ms": {
                "p50": round(1000 * percentile(resolve_s, 0.5), 2),
                "p99": round(1000 * percentile(resolve_s, 0.99), 2),
                "n": len(resolve_s),
            },
            "search_ms": {
                "first": round(1000 * search_s[0], 2),
                "p50": round(1000 * percentile(search_s[1:], 0.5), 2),
                "p99": round(1000 * percentile(search_s[1:], 0.99), 2),
                "n": len(search_s) - 1,
            },
            "first_chunk_s": {
                kind: {
                    "p50": round(statistics.median(v), 4),
                    "min": round(min(v), 4),
                    "max": round(max(v), 4),
                    "n": len(v),
                }
                for kind, v in by.items()
            },
            "name_adds_p50_s": round(added, 4),
            "target_added_p50_s": TARGET_ADDED_P50_S,
            "meets_target": added <= TARGET_ADDED_P50_S,
        }
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolves", type=int, default=50)
    parser.add_argument("--searches", type=int, default=20)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        result = asyncio.run(measure(args, Path(tmp)))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    r, f = result["resolve_ms"], result["first_chunk_s"]
    print(f"loopback DHT of {result['dht_nodes']} nodes, release of {result['release_mib']} MiB")
    print(f"resolve latency      p50 {r['p50']:.1f} ms   p99 {r['p99']:.1f} ms   (n={r['n']})")
    s = result["search_ms"]
    print(
        f"search latency       p50 {s['p50']:.1f} ms   p99 {s['p99']:.1f} ms   (n={s['n']}; "
        f"the first, which fetched the index: {s['first']:.1f} ms)"
    )
    for kind in ("magnet", "name"):
        v = f[kind]
        span = f"(min {v['min']:.3f}, max {v['max']:.3f})"
        print(f"{kind:>6} -> 1st chunk p50 {v['p50']:.3f} s  {span}")
    print(
        f"a name adds {result['name_adds_p50_s']:.3f} s (p50); target <= {TARGET_ADDED_P50_S} s: "
        + ("met" if result["meets_target"] else "NOT met")
    )


if __name__ == "__main__":
    main()
