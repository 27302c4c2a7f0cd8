"""Benchmark the control API under load while releases transfer, and the daemon's RSS.

Usage::

    .venv/bin/python scripts/bench_daemon_load.py [--releases 20] [--clients 100]
        [--duration 10] [--procs 4] [--seeded 50] [--workdir DIR] [--json]

Set-up (untimed): ``--seeded`` small synthetic releases (2-8 MiB each, one seeded
generator, packed with a fresh key) are written. Daemon A (``--profile local``, 127.0.0.4)
publishes the first ``--releases`` of them, with its upload capped (``--upload-rate``,
applied to loopback too) so that the transfers outlast the measurement window. Daemon B
(127.0.0.5) trusts the key.

Loaded phase: B is asked to fetch every release from A, all at once; then ``--clients``
API clients (``p2pweights.client.DaemonClient`` over B's Unix socket, a new connection per
call, as the CLI makes them), spread over ``--procs`` processes so that the clients' own
event loops are not what is measured, call B as fast as they can for ``--duration``
seconds: a mix of ``status``, ``releases`` (all 20 with their transfer state) and ``show``
of a random release. Each call's latency is measured around the whole request; a call
that raises counts as an error. That the transfers were still under way when the window
closed is checked and reported.

Idle phase (the baseline for the ratio): once every fetch is complete, the same load runs
against B again, which then holds the same 20 releases but moves nothing.

RSS: a fresh daemon C publishes all ``--seeded`` releases and its VmRSS (``/proc/PID/
status``) is read beside a fresh idle daemon D's, each once it has served a ``status``.

Target (from the issue): loaded p99 <= 50 ms, 0 errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _synthetic import work_dir

TARGET_P99_MS = 50.0
_MIB = 1024 * 1024
_HOSTS = {"a": "127.0.0.4", "b": "127.0.0.5", "c": "127.0.0.6", "d": "127.0.0.7"}
_OPS = ("status", "releases", "show")


# ---- releases --------------------------------------------------------------------------


def make_releases(work: Path, count: int) -> tuple[list[Path], str]:
    """``count`` distinct small releases (2-8 MiB of weights); returns them and the key's
    public text. Reused when already there (a stamp file names the count)."""
    import torch
    from safetensors.torch import save_file

    import p2pweights
    from p2pweights.keys import generate_key, load_private_key

    key_path = work / "publisher.pem"
    key = load_private_key(key_path) if key_path.exists() else generate_key(key_path)
    out = [work / "releases" / f"r{i:03d}" for i in range(count)]
    stamp = work / "releases" / "stamp.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("count", 0) >= count:
        return out, key.public.text
    gen = torch.Generator().manual_seed(20261127)
    for i, release in enumerate(out):
        mib = 2 + i % 7  # 2..8 MiB, one 1 MiB layer each
        state = {
            f"model.layers.{layer}.mlp.weight": torch.randn(256, 1024, generator=gen)
            for layer in range(mib)
        }
        src = work / "sources" / release.name
        src.mkdir(parents=True, exist_ok=True)
        save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
        (src / "config.json").write_text(json.dumps({"model_type": "bench", "index": i}))
        if release.exists():
            import shutil

            shutil.rmtree(release)
        p2pweights.pack(src, release, name=f"bench/model-{i:03d}", version=1, key=key)
    stamp.write_text(json.dumps({"count": count}))
    return out, key.public.text


# ---- daemons ---------------------------------------------------------------------------


@dataclass
class Daemon:
    home: Path
    host: str
    pid: int = 0

    def start(self, *extra: str) -> Daemon:
        from p2pweights.client import start_daemon

        args = ["--profile", "local", "--listen", f"{self.host}:0"]
        args += ["--outgoing-interface", self.host, "--log-level", "WARNING", *extra]
        self.pid = start_daemon(self.home, extra_args=args)
        return self

    def call(self, name: str, *args: Any, **kw: Any) -> Any:
        from p2pweights.client import DaemonClient

        return asyncio.run(getattr(DaemonClient(self.home), name)(*args, **kw))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.pid}")

    def stop(self) -> None:
        if not self.pid:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        fd = os.pidfd_open(self.pid)
        try:
            import select

            if not select.select([fd], [], [], 60)[0]:
                os.kill(self.pid, signal.SIGKILL)
        finally:
            os.close(fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.pid = 0


@contextlib.contextmanager
def running(*daemons: Daemon) -> Iterator[None]:
    try:
        yield
    finally:
        for d in daemons:
            d.stop()


# ---- the load --------------------------------------------------------------------------


def _client_proc(
    home: str, clients: int, duration: float, ids: list[str], seed: int, interval: float
) -> Any:
    """One process of API clients: returns (op, ms) samples and error reasons.

    Each client calls every ``interval`` seconds (from a random phase, so the clients do
    not move in step); a call that takes longer delays the next one, never piles up. With
    ``interval`` 0 each client calls again as soon as it has its answer (saturation).
    """
    from p2pweights.client import DaemonClient

    async def one(
        rng: random.Random, deadline: float, out: list[tuple[str, float]], errors: list[str]
    ) -> None:
        client = DaemonClient(Path(home), timeout=30)
        due = time.monotonic() + rng.uniform(0, interval)
        while due < deadline:
            if interval:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                due = max(due + interval, time.monotonic())
            else:
                due = time.monotonic()
            op = rng.choice(_OPS)
            t0 = time.perf_counter()
            try:
                if op == "status":
                    await client.status()
                elif op == "releases":
                    await client.releases()
                else:
                    await client.show(rng.choice(ids))
            except Exception as exc:  # every failure is counted, with its reason
                errors.append(f"{op}: {type(exc).__name__}: {exc}"[:200])
                continue
            out.append((op, (time.perf_counter() - t0) * 1000))

    async def run() -> tuple[list[tuple[str, float]], list[str]]:
        out: list[tuple[str, float]] = []
        errors: list[str] = []
        deadline = time.monotonic() + duration
        await asyncio.gather(
            *(one(random.Random(seed * 1000 + i), deadline, out, errors) for i in range(clients))
        )
        return out, errors

    return asyncio.run(run())


@dataclass(frozen=True, slots=True)
class LoadResult:
    calls: int
    errors: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    p99_by_op_ms: dict[str, float]
    error_samples: list[str]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_load(
    home: Path, clients: int, procs: int, duration: float, ids: list[str], interval: float
) -> LoadResult:
    ctx = multiprocessing.get_context("spawn")
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    with ctx.Pool(procs) as pool:
        parts = pool.starmap(
            _client_proc, [(str(home), n, duration, ids, i, interval) for i, n in enumerate(per)]
        )
    samples = [s for out, _ in parts for s in out]
    errors = [e for _, errs in parts for e in errs]
    ms = [m for _, m in samples]
    by_op = {op: _pct([m for o, m in samples if o == op], 0.99) for op in _OPS}
    return LoadResult(
        calls=len(ms),
        errors=len(errors),
        calls_per_s=round(len(ms) / duration, 1),
        p50_ms=round(_pct(ms, 0.50), 2),
        p99_ms=round(_pct(ms, 0.99), 2),
        max_ms=round(max(ms, default=float("nan")), 2),
        p99_by_op_ms={k: round(v, 2) for k, v in by_op.items()},
        error_samples=sorted(set(errors))[:5],
    )


# ---- main ------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--releases", type=int, default=20, help="releases B fetches at once")
    ap.add_argument("--clients", type=int, default=100, help="concurrent API clients")
    ap.add_argument("--procs", type=int, default=4, help="processes the clients run in")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per phase")
    ap.add_argument(
        "--interval",
        type=float,
        default=0.5,
        help="seconds between one client's calls (0: call again at once, saturation)",
    )
    ap.add_argument("--seeded", type=int, default=50, help="releases seeded for the RSS figure")
    ap.add_argument(
        "--upload-rate",
        type=int,
        default=0,
        help="A's upload cap, bytes/s (default: the transfers last 2x --duration)",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if not 0 < args.releases <= args.seeded or args.clients < 1 or args.procs < 1:
        ap.error("need 0 < --releases <= --seeded, --clients >= 1, --procs >= 1")

    from p2pweights import TrustStore
    from p2pweights.keys import PublicKey

    with work_dir(args.workdir) as work:
        for name in ("a", "b", "c", "d"):
            home = work / f"home-{name}"
            if home.exists():
                import shutil

                shutil.rmtree(home)
        releases, public = make_releases(work, args.seeded)
        fetched = releases[: args.releases]
        total = sum(f.stat().st_size for r in fetched for f in (r / "chunks").iterdir())
        rate = args.upload_rate or max(int(total / (2 * args.duration)), 256 * 1024)
        a = Daemon(work / "home-a", _HOSTS["a"])
        b = Daemon(work / "home-b", _HOSTS["b"])
        with running(a, b):
            a.start("--upload-rate", str(rate), "--rate-limit-local")
            b.start()
            TrustStore.load(b.home / "trust.json").add(PublicKey.parse(public), "bench")
            published = [a.call("publish", r) for r in fetched]
            ids = [p["id"] for p in published]
            for p in published:
                b.call("fetch", p["magnet"], peers=[f"{a.host}:{a.call('status')['listen_port']}"])
            loaded = run_load(b.home, args.clients, args.procs, args.duration, ids, args.interval)
            still = b.call("status")["active_fetches"]
            t0 = time.monotonic()
            states = [b.call("wait", rid, 600)["state"] for rid in ids]
            drained = time.monotonic() - t0
            if states != ["seeding"] * len(ids):
                raise RuntimeError(f"fetches ended as {sorted(set(states))}")
            idle = run_load(b.home, args.clients, args.procs, args.duration, ids, args.interval)
        c = Daemon(work / "home-c", _HOSTS["c"])
        d = Daemon(work / "home-d", _HOSTS["d"])
        with running(c, d):
            c.start()
            d.start()
            for r in releases:
                c.call("publish", r)
            c.call("status")
            d.call("status")
            rss = {
                "seeded": len(releases),
                "rss_seeded_mib": round(c.rss_kib() / 1024, 1),
                "rss_idle_mib": round(d.rss_kib() / 1024, 1),
            }
    result: dict[str, Any] = {
        "releases": args.releases,
        "payload_mib": round(total / _MIB, 1),
        "a_upload_rate": rate,
        "clients": args.clients,
        "procs": args.procs,
        "duration_s": args.duration,
        "interval_s": args.interval,
        "offered_calls_per_s": round(args.clients / args.interval, 1) if args.interval else None,
        "fetches_active_at_window_end": still,
        "seconds_to_finish_after_window": round(drained, 1),
        "loaded": asdict(loaded),
        "idle": asdict(idle),
        "p99_ratio_loaded_over_idle": round(loaded.p99_ms / idle.p99_ms, 2)
        if idle.p99_ms
        else None,
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": loaded.p99_ms <= TARGET_P99_MS and loaded.errors == 0,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        **rss,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{args.releases} releases ({result['payload_mib']} MiB) fetched by B from A "
            f"(A capped at {rate / 1e6:.1f} MB/s); {still} fetches still active when the "
            f"{args.duration:g} s window closed"
        )
        pace = f"each every {args.interval:g} s" if args.interval else "each back to back"
        print(f"{args.clients} clients in {args.procs} processes, {pace}: status / releases / show")
        print(
            f"{'phase':<8}{'calls':>8}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
            f"{'errors':>8}"
        )
        for name, res in (("loaded", loaded), ("idle", idle)):
            print(
                f"{name:<8}{res.calls:>8}{res.calls_per_s:>9}{res.p50_ms:>9}{res.p99_ms:>9}"
                f"{res.max_ms:>9}{res.errors:>8}   p99 by op {res.p99_by_op_ms}"
            )
            for e in res.error_samples:
                print(f"    error: {e}")
        print(
            f"p99 loaded / idle: {result['p99_ratio_loaded_over_idle']}; target p99 <= "
            f"{TARGET_P99_MS:g} ms and 0 errors: {'met' if result['meets_target'] else 'MISSED'}"
        )
        print(
            f"RSS: {rss['rss_seeded_mib']} MiB with {len(releases)} releases seeded, "
            f"{rss['rss_idle_mib']} MiB idle (load avg {result['load_avg_1m']} on "
            f"{result['cpus']} CPUs)"
        )
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
