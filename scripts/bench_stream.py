"""Streaming benchmark: time to the first usable layer against fetch-then-load.

    .venv/bin/python scripts/bench_stream.py [--size-gib 1.0] [--rate-mb 100[,50,400]] [--json]
        [--stream-only] [--breakdown]

A seeder daemon, its upload capped at ``--rate-mb`` MB/s (on loopback too; several
comma-separated rates run one after the other, e.g. ``50,100,400``), seeds a
24-layer synthetic Llama-shaped model. Each side gets a fresh leecher daemon (empty store)
on its own loopback address, and the clock starts when the fetch is asked for:

* ``stream``: ``p2pweights.stream(magnet, device="meta")`` in a child process. It records
  when the first tensor came, when the first usable layer was complete (every tensor up to
  and including ``model.layers.0`` in layer order: the embeddings and layer 0, what a
  forward pass needs to start), and when the last tensor came. ``meta`` is a non-CPU
  target, so the path is the device path (chunk by chunk through one staging buffer): the
  child's peak RSS growth is reported beside the largest chunk.
* ``fetch+load`` (the baseline): ``p2pweights.fetch`` then ``p2pweights.load`` of every
  tensor, in a child process too.

Prints the three times, the ratio of time-to-first-layer to the full fetch-then-load time
(target <= 0.10), and the share of the model's bytes that the first layer needs (the ratio
could not go below it at a fixed rate). The overhead of the start is printed directly: the
first usable layer's time minus its byte share of the full ``stream()`` time (target
<= 0.5 s), what a fetch that started at line rate at once would not pay.

``--stream-only`` skips the fetch-then-load baseline (the start overhead needs only the
stream). ``--breakdown`` prints the stream's timeline to stderr: the leecher daemon's
events (metadata, manifest, ``file_completed`` when libtorrent has a first-layer chunk
whole, ``chunk`` when it is hashed, placed and announced, the progress counters), each
with the daemon's send time and when a second subscriber in the reader's process got it,
beside the reader's own marks (manifest authenticated, first tensor, first layer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import make_synthetic, work_dir
from bench_transfer import stop_daemon

_SEEDER = "127.0.4.2"
_LEECHERS = ("127.0.4.3", "127.0.4.4")
_MB = 1_000_000
_TIMEOUT = 1800.0

_CHILD = r"""
import json, sys, time
from pathlib import Path
import p2pweights
# `import p2pweights` is light and loads torch on first use: import what is measured here
# before the clock starts, as any process that loads tensors has done.
import p2pweights.loader, p2pweights.remote, p2pweights.stream  # noqa: E401

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

mode, magnet, home, peer, breakdown = sys.argv[1:6]
trust = p2pweights.TrustStore.load(Path(home) / "trust.json")
events = []
if breakdown == "1":
    # A second subscriber to the daemon's events, on its own thread: each event with the
    # daemon's wall clock (when it was sent) and ours (when it came).
    import asyncio, threading
    from p2pweights.client import DaemonClient
    subscribed = threading.Event()
    async def follow():
        async for ev in DaemonClient(Path(home)).events():
            if ev.get("kind") == "subscribed":
                subscribed.set()
            else:
                events.append((time.time(), ev))
    threading.Thread(target=asyncio.run, args=(follow(),), daemon=True).start()
    subscribed.wait(30)
Path("/proc/self/clear_refs").write_text("5")  # peak RSS counts from here
base = status("VmRSS")
out = {}
t0, w0 = time.monotonic(), time.time()
if mode == "stream":
    with p2pweights.stream(magnet, home=home, peers=[peer], trust=trust, device="meta") as ts:
        names = ts.start()
        out["started"] = time.monotonic() - t0
        last0 = max(i for i, n in enumerate(names) if ".layers.0." in n)
        for i, (name, tensor) in enumerate(ts):
            if i == 0:
                out["first_tensor"] = time.monotonic() - t0
            if i == last0:
                out["first_layer"] = time.monotonic() - t0
        out["staging_peak"] = ts.reader.staging.peak_bytes
    out["tensors"] = len(names)
else:
    path = p2pweights.fetch(magnet, home=home, peers=[peer])
    state = p2pweights.load(path, trust=trust)
    for t in state.values():
        t.view(-1)[:1].sum()  # touch each tensor once
    out["tensors"] = len(state)
out["full"] = time.monotonic() - t0
out["rss_growth"] = status("VmHWM") - base
out["events"] = [
    {"sent": round(ev["time"] - w0, 4), "came": round(came - w0, 4),
     **{k: ev[k] for k in ("kind", "path", "file_index", "downloaded") if k in ev}}
    for came, ev in events
]
print(json.dumps(out))
"""


@dataclass
class Result:
    """One benchmark run."""

    size_bytes: int
    rate_mb: float
    first_layer_share: float
    largest_chunk: int
    stream_first_tensor: float
    stream_first_layer: float
    stream_full: float
    fetch_load_full: float | None
    """None with ``--stream-only``, as are ``ratio`` and ``fetch_load_rss_growth``."""
    ratio: float | None
    start_overhead: float
    """First usable layer minus (its byte share x the full ``stream()`` time), seconds."""
    stream_rss_growth: int
    stream_staging_peak: int
    fetch_load_rss_growth: int | None


def _daemon_args(host: str, *extra: str) -> list[str]:
    return ["--profile", "local", "--listen", f"{host}:0", "--outgoing-interface", host, *extra]


def _run_child(
    mode: str, magnet: str, home: Path, peer: str, *, breakdown: bool = False
) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, magnet, str(home), peer, str(int(breakdown))],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed: {proc.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench(
    work: Path, size_gib: float, rate_mb: float, *, breakdown: bool = False, baseline: bool = True
) -> Result:
    """Seed once; stream into one fresh leecher and fetch-then-load into another.

    With ``breakdown``, the stream's timeline (the leecher's events and the reader's own
    marks) is printed to stderr.
    """
    import p2pweights
    from p2pweights.chunking import layer_order
    from p2pweights.client import DaemonClient, start_daemon

    src = make_synthetic(work / "synthetic", size_gib)
    release = work / "release"
    if release.exists():
        shutil.rmtree(release)
    key = p2pweights.generate_key(work / "bench-key.pem", overwrite=True)
    packed = p2pweights.pack(src, release, name="bench/stream", version=1, key=key)
    manifest = packed.manifest
    total = sum(c.size for c in manifest.chunks)
    order = layer_order(manifest.tensors)
    last0 = max(i for i, n in enumerate(order) if ".layers.0." in n)
    first_chunks = {manifest.tensors[n].chunk for n in order[: last0 + 1]}
    share = sum(c.size for c in manifest.chunks if c.path in first_chunks) / total
    homes = [work / "seeder", *(work / f"leech{i}" for i in range(len(_LEECHERS)))]
    for home in homes:
        if home.exists():
            shutil.rmtree(home)
    cap = str(int(rate_mb * _MB))
    seeder_pid = start_daemon(
        homes[0], extra_args=_daemon_args(_SEEDER, "--upload-rate", cap, "--rate-limit-local")
    )
    try:
        seeder = DaemonClient(homes[0])
        port = int(asyncio.run(seeder.status())["listen_port"])
        published = asyncio.run(seeder.publish(release))
        peer = f"{_SEEDER}:{port}"
        runs: dict[str, dict[str, Any]] = {}
        modes = ("stream", "fetch") if baseline else ("stream",)
        for mode, home, host in zip(modes, homes[1:], _LEECHERS, strict=False):
            leecher = start_daemon(home, extra_args=_daemon_args(host))
            p2pweights.TrustStore.load(home / "trust.json").add(key.public, "bench")
            print(
                f"{mode}: fetching {total / 2**30:.2f} GiB at {rate_mb:g} MB/s …", file=sys.stderr
            )
            try:
                runs[mode] = _run_child(
                    mode, str(published["magnet"]), home, peer, breakdown=breakdown
                )
            finally:
                # Gone before the next side starts: it would seed to it and double the rate.
                stop_daemon(leecher)
    finally:
        stop_daemon(seeder_pid)
    s, f = runs["stream"], runs.get("fetch")
    if breakdown:
        torrent = next(homes[0].rglob("release.torrent")).read_bytes()
        _timeline(s, torrent, first_chunks, manifest)
    return Result(
        size_bytes=total,
        rate_mb=rate_mb,
        first_layer_share=round(share, 4),
        largest_chunk=max(c.size for c in manifest.chunks),
        stream_first_tensor=round(s["first_tensor"], 3),
        stream_first_layer=round(s["first_layer"], 3),
        stream_full=round(s["full"], 3),
        fetch_load_full=None if f is None else round(f["full"], 3),
        ratio=None if f is None else round(s["first_layer"] / f["full"], 4),
        start_overhead=round(s["first_layer"] - share * s["full"], 3),
        stream_rss_growth=int(s["rss_growth"]),
        stream_staging_peak=int(s["staging_peak"]),
        fetch_load_rss_growth=None if f is None else int(f["rss_growth"]),
    )


def _timeline(run: dict[str, Any], torrent: bytes, first: set[str], manifest: Any) -> None:
    """Print the stream's timeline: daemon events (sent, came) and the reader's marks."""
    from p2pweightsd.engine import parse_torrent

    paths = {f.index: f.path for f in parse_torrent(torrent).files}
    sizes = {c.path: c.size for c in manifest.chunks}
    rows: list[tuple[float, str]] = []
    for ev in run["events"]:
        kind = ev["kind"]
        path = ev.get("path") or paths.get(ev.get("file_index", -1), "")
        if kind in ("chunk", "file_completed") and path.startswith("chunks/"):
            if path not in first:
                continue
            path = f"first-layer {path[7:19]} ({sizes[path] / _MB:.1f} MB)"
        if kind == "progress":
            path = f"downloaded {ev.get('downloaded', 0) / _MB:.1f} MB"
        if kind in ("piece", "state"):
            continue
        lag = ev["came"] - ev["sent"]
        rows.append((ev["sent"], f"{kind:15s} {path}  (came +{lag * 1000:.0f} ms)"))
    for mark in ("started", "first_tensor", "first_layer"):
        rows.append((run[mark], f"reader: {mark}"))
    print("stream timeline (s after the fetch was asked for):", file=sys.stderr)
    for t, what in sorted(rows):
        print(f"  {t:7.3f}  {what}", file=sys.stderr)


def _print(r: Result) -> None:
    mib = 2**20
    print(f"model: {r.size_bytes / 2**30:.2f} GiB, 24 layers; seeder capped at {r.rate_mb:g} MB/s")
    print(f"  time to first tensor            {r.stream_first_tensor:8.2f} s")
    print(
        f"  time to first usable layer      {r.stream_first_layer:8.2f} s   (embeddings + layer 0)"
    )
    print(f"  full model, stream()            {r.stream_full:8.2f} s")
    if r.fetch_load_full is not None and r.ratio is not None:
        print(f"  full model, fetch then load     {r.fetch_load_full:8.2f} s   (baseline)")
        target = "met" if r.ratio <= 0.10 else "MISSED"
        print(
            f"  first layer / fetch+load        {r.ratio:8.3f}     (target <= 0.10: {target}; "
            f"the first layer is {r.first_layer_share:.3f} of the bytes)"
        )
    else:
        print(f"  first layer share of the bytes  {r.first_layer_share:8.3f}     (no baseline run)")
    verdict = "met" if r.start_overhead <= 0.5 else "MISSED"
    print(
        f"  start overhead                  {r.start_overhead:8.2f} s   (first layer - its share"
        f" x full stream; target <= 0.5 s: {verdict})"
    )
    if r.fetch_load_full is not None:
        print(f"  stream()/fetch+load, full       {r.stream_full / r.fetch_load_full:8.3f}x")
    print(
        f"  peak RSS growth, stream to meta {r.stream_rss_growth / mib:8.1f} MiB   "
        f"(largest chunk {r.largest_chunk / mib:.1f} MiB, staging "
        f"{r.stream_staging_peak / mib:.1f} MiB)"
    )
    if r.fetch_load_rss_growth is not None:
        print(
            f"  peak RSS growth, fetch+load     {r.fetch_load_rss_growth / mib:8.1f} MiB   "
            f"(CPU load: the mapped model)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=2.0, help="synthetic model size")
    parser.add_argument("--rate-mb", default="100",
                        help="seeder upload cap, MB/s; comma-separated for several runs")
    parser.add_argument("--workdir", type=Path, help="scratch dir (kept); default a temp dir")
    parser.add_argument("--json", action="store_true", help="print one JSON object per rate")
    parser.add_argument("--breakdown", action="store_true",
                        help="print the stream's timeline (daemon events, reader marks) to stderr")
    parser.add_argument("--stream-only", action="store_true",
                        help="skip the fetch-then-load baseline (the start overhead needs only "
                        "the stream)")
    args = parser.parse_args(argv)
    try:
        rates = [float(r) for r in args.rate_mb.split(",")]
    except ValueError:
        parser.error("--rate-mb must be comma-separated numbers")
    if args.size_gib <= 0 or min(rates) <= 0:
        parser.error("--size-gib and --rate-mb must be positive")
    results = []
    with work_dir(args.workdir) as work:
        for rate in rates:
            started = time.monotonic()
            result = bench(
                work, args.size_gib, rate, breakdown=args.breakdown, baseline=not args.stream_only
            )
            results.append(result)
            seconds = round(time.monotonic() - started, 1)
            if args.json:
                print(json.dumps({**asdict(result), "seconds": seconds}))
            else:
                _print(result)
    if len(results) > 1 and not args.json:
        print("start overhead: " + ", ".join(
            f"{r.start_overhead:.2f} s at {r.rate_mb:g} MB/s" for r in results))
    return 0 if all(r.ratio is None or r.ratio <= 0.10 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
