"""Benchmark a daemon-to-daemon fetch on loopback against HTTP download + sha256.

Usage::

    .venv/bin/python scripts/bench_transfer.py [--size-gib 1.0] [--workdir DIR]
        [--repeats 3] [--warmup 1] [--json]

Set-up (once, untimed): the synthetic 24-layer bf16 model of ``_synthetic.py`` is written
and packed with a freshly generated key; daemon A (``--profile local``, 127.0.0.2) publishes
the release; an aiohttp static server (``web.static``, a separate process) serves the same
release dir on 127.0.0.1.

p2pw side, per run: a fresh daemon B (``--profile local``, 127.0.0.3, empty data dir) that
trusts A's key is started, untimed. The clock runs from the ``fetch`` request (magnet +
A's address as the only peer) until ``wait`` reports the release ``seeding``: metadata,
the manifest stage (manifest.json and manifest.sig fetched and authenticated first), every
chunk checked block by block against the signed v2 roots, and the verify records written.
B is then stopped and its data dir removed.

HTTP side, per run: one aiohttp client session downloads every file of the release
(manifest.json, manifest.sig and every chunk), one after the other, streaming each to disk
while it computes its sha256, and checks each digest against the manifest. The clock runs
from the first request to the last digest check.

Both sides move the same payload (the release's files) from the page cache of the same
machine. Each side runs ``--warmup`` times untimed first (the publisher seeds in
``seed_mode``, so its first upload also hashes every piece it sends, once), then the sides
alternate; the figures are medians. ``os.sync()`` runs (untimed) before every run so one
run's writeback does not land in the next.

Target (from the issue): p2pw MB/s / (HTTP + sha256) MB/s >= 1.0. MB = 10**6 bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _synthetic import (
    GIB,
    Stopwatch,
    make_synthetic,
    median,
    serve_until_signalled,
    server_child,
    sha256_file,
    work_dir,
)

TARGET = 1.0
MB = 1_000_000
_MIB = 1024 * 1024
_HOST_A = "127.0.0.2"
_HOST_B = "127.0.0.3"
_HTTP_HOST = "127.0.0.1"
_HTTP_READ = 4 * _MIB
"""aiohttp read buffer and the size of each hashed/written piece of the HTTP side."""
_FETCH_TIMEOUT = 1800.0
_ATTEMPTS = 3
"""A fetch that ends in state ``error`` is reported and tried again, at most this often."""


class FetchFailedError(RuntimeError):
    """Daemon B's fetch ended in state ``error`` (the daemon's reason is the message)."""


# ---- daemons -------------------------------------------------------------------------------


def _local_args(host: str) -> list[str]:
    return ["--profile", "local", "--listen", f"{host}:0", "--outgoing-interface", host]


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it once it exits
    except ChildProcessError:  # already reaped (by subprocess' own clean-up) or not ours
        return Path(f"/proc/{pid}").exists()
    return done == 0


def stop_daemon(pid: int, timeout: float = 60.0) -> None:
    """SIGTERM, wait for the exit (the daemon saves resume data first), SIGKILL if stuck."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.05)


def _log_tail(home: Path, lines: int = 15) -> str:
    path = home / "daemon.log"
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used; 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """A Stopwatch that also counts the CPU of the given helper processes (daemons, server),
    so "others" means processes that are not part of the benchmark at all."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self.watch = Stopwatch()
        self.helper_cpu: list[float] = [0.0] * len(pids)

    def __enter__(self) -> Meter:
        self._cpu0 = [_proc_cpu(p) for p in self.pids]
        self.watch.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watch.__exit__(*exc)
        self.helper_cpu = [_proc_cpu(p) - c for p, c in zip(self.pids, self._cpu0, strict=True)]

    @property
    def seconds(self) -> float:
        """Wall seconds."""
        return self.watch.seconds

    @property
    def others(self) -> float:
        """Share of all CPUs used by processes outside the benchmark, 0..1."""
        w = self.watch
        share = w.others - sum(self.helper_cpu) / (w.seconds * (os.cpu_count() or 1))
        return min(max(share, 0.0), 1.0)


# ---- the HTTP server (a child process) -----------------------------------------------------


def _serve(root: Path) -> None:
    """Serve ``root`` with web.static on 127.0.0.1; print the port; run until SIGTERM."""
    from aiohttp import web

    app = web.Application()
    app.router.add_static("/", root, show_index=False, follow_symlinks=False)
    serve_until_signalled(app, _HTTP_HOST)


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[tuple[int, int]]:
    """The static server as a child process; yields its port and pid."""
    with server_child([sys.executable, __file__, "--serve", str(root)]) as server:
        yield server


# ---- runs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Payload:
    """The release's files: what both sides must move and check."""

    files: dict[str, int]
    """Path in the release dir -> size."""
    sha256: dict[str, str]
    """Path -> expected sha256 (chunks from the signed manifest)."""

    @property
    def total(self) -> int:
        """Bytes of every file."""
        return sum(self.files.values())


@dataclass(frozen=True, slots=True)
class HttpRun:
    """One HTTP + sha256 download."""

    seconds: float
    cpu_seconds: float
    """CPU of this (client) process, all threads."""
    server_cpu_seconds: float
    others: float
    """Share of the CPUs used by processes outside the benchmark."""
    bytes: int


@dataclass(frozen=True, slots=True)
class P2pRun:
    """One daemon-to-daemon fetch."""

    seconds: float
    downloaded: int
    """B's ``transfer.downloaded``: payload bytes since the torrent last (re)started. The
    daemon pauses the torrent to save resume data at the end, which resets it, so it can
    read 0 once the release is complete."""
    all_time_download: int
    """B's ``transfer.all_time_download`` (libtorrent can leave the last second out)."""
    a_uploaded: int
    """Payload bytes daemon A sent during the run (its ``transfer.uploaded`` before and
    after; A's torrent is never paused, so this counter is reliable)."""
    failed_bytes: int
    cpu_a: float
    """CPU seconds of daemon A (the seeder) during the run."""
    cpu_b: float
    """CPU seconds of daemon B (the fetcher) during the run."""
    others: float
    """Share of the CPUs used by processes outside the benchmark."""
    split: dict[str, float] = field(default_factory=dict)
    """Seconds from the fetch request to each milestone seen in B's event stream."""
    pid_b: int = 0


async def _http_once(port: int, payload: Payload, out: Path) -> int:
    import aiohttp

    moved = 0
    timeout = aiohttp.ClientTimeout(total=_FETCH_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, read_bufsize=_HTTP_READ) as session:
        for rel in sorted(payload.files):
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            sha = hashlib.sha256()
            async with session.get(f"http://{_HTTP_HOST}:{port}/{rel}") as resp:
                resp.raise_for_status()
                with open(dst, "wb") as fh:
                    async for block in resp.content.iter_chunked(_HTTP_READ):
                        sha.update(block)
                        fh.write(block)
                        moved += len(block)
            if sha.hexdigest() != payload.sha256[rel]:
                raise RuntimeError(f"HTTP download of {rel} has the wrong sha256")
    return moved


def run_http(port: int, server_pid: int, payload: Payload, out: Path) -> HttpRun:
    """Download every file over HTTP, hashing as it streams; checks the digests."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    os.sync()
    with Meter(server_pid) as meter:
        moved = asyncio.run(_http_once(port, payload, out))
    if moved != payload.total:
        raise RuntimeError(f"HTTP moved {moved} bytes, expected {payload.total}")
    shutil.rmtree(out)
    return HttpRun(meter.seconds, meter.watch.cpu_seconds, meter.helper_cpu[0], meter.others,
                   moved)


def _split(events: list[dict[str, Any]], t0: float) -> dict[str, float]:
    """Milestones (seconds after the request, daemon clock) from B's events."""
    out: dict[str, float] = {}

    def mark(name: str, when: float) -> None:
        if name not in out:
            out[name] = round(when - t0, 3)

    stage = ""
    for ev in events:
        kind, when = str(ev.get("kind")), float(ev.get("time", t0))
        if kind in ("metadata", "manifest", "downloading", "complete", "error"):
            stage = kind
            mark(kind, when)
        elif kind == "file_completed":
            if stage == "manifest":
                mark("manifest_file_done", when)
            elif stage == "downloading":
                mark("first_chunk_done", when)
                out["last_chunk_done"] = round(when - t0, 3)
        elif kind == "progress" and stage == "downloading" and int(ev.get("downloaded", 0)) > (
            1 << 20
        ):
            mark("first_progress_over_1MiB", when)
    return out


async def _uploaded(home_a: Path, rid: str) -> int:
    from p2pweights.client import DaemonClient

    info = await DaemonClient(home_a).show(rid)
    return int((info.get("transfer") or {}).get("uploaded", -1))


async def _p2p_once(home_b: Path, magnet: str, peer: str, home_a: Path, rid_a: str,
                    ) -> tuple[float, dict[str, Any], dict[str, float], int]:
    from p2pweights.client import DaemonClient

    client = DaemonClient(home_b, timeout=_FETCH_TIMEOUT)
    up0 = await _uploaded(home_a, rid_a)
    events: list[dict[str, Any]] = []

    async def watch() -> None:
        async for ev in client.events():
            events.append(ev)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)  # let the event stream connect before the clock starts
    try:
        t_wall = time.time()
        t0 = time.perf_counter()
        started = await client.fetch(magnet, peers=[peer])
        info = await client.wait(str(started["id"]), _FETCH_TIMEOUT)
        seconds = time.perf_counter() - t0
        await asyncio.sleep(0.5)  # the last events; the byte counters settle (untimed)
        if info.get("state") == "seeding":
            info = await client.show(str(started["id"]))
        sent = await _uploaded(home_a, rid_a) - up0
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    if info.get("state") != "seeding":
        raise FetchFailedError(f"fetch ended in state {info.get('state')}: {info.get('error')}")
    split = _split(events, t_wall)
    split["wait_returned"] = round(seconds, 3)
    return seconds, info, split, sent


@contextlib.contextmanager
def perf_record(pid: int, out: Path | None) -> Iterator[None]:
    """``perf record`` of process ``pid`` (all threads, call graphs) while the block runs."""
    if out is None:
        yield
        return
    import subprocess

    proc = subprocess.Popen(
        ["perf", "record", "--quiet", "-F", "999", "-g", "-p", str(pid), "-o", str(out)],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # perf attaches to every thread before the fetch starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)


def run_p2p(home_b: Path, magnet: str, peer: str, publisher: Any, pid_a: int,
            home_a: Path, rid_a: str, perf_out: Path | None = None) -> P2pRun:
    """One fetch by a fresh daemon B; B is stopped and its data dir removed afterwards.

    With ``perf_out``, B runs under ``perf record`` (an extra run, never a timed one).
    """
    from p2pweights import TrustStore
    from p2pweights.client import start_daemon

    if home_b.exists():
        shutil.rmtree(home_b)
    home_b.mkdir(parents=True, mode=0o700)
    TrustStore.load(home_b / "trust.json").add(publisher, "bench")
    pid = start_daemon(home_b, extra_args=_local_args(_HOST_B))
    try:
        os.sync()
        with perf_record(pid, perf_out), Meter(pid_a, pid) as meter:
            seconds, info, split, sent = asyncio.run(
                _p2p_once(home_b, magnet, peer, home_a, rid_a))
    except BaseException:
        tail = _log_tail(home_b)
        if tail:
            print(f"daemon B log tail:\n{tail}", file=sys.stderr)
        raise
    finally:
        stop_daemon(pid)
    transfer = info.get("transfer") or {}
    shutil.rmtree(home_b)
    return P2pRun(seconds=seconds, downloaded=int(transfer.get("downloaded", -1)),
                  all_time_download=int(transfer.get("all_time_download", -1)),
                  a_uploaded=sent,
                  failed_bytes=int(transfer.get("failed_bytes", -1)),
                  cpu_a=meter.helper_cpu[0], cpu_b=meter.helper_cpu[1], others=meter.others,
                  split=split, pid_b=pid)


# ---- summary -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """What the benchmark prints."""

    model: str
    payload_bytes: int
    files: int
    largest_file_bytes: int
    piece_size: int
    cpus: int
    repeats: int
    warmup: int
    http_mb_s: float
    p2pw_mb_s: float
    ratio: float
    target_met: bool
    http_runs_s: list[float]
    p2pw_runs_s: list[float]
    p2pw_downloaded: list[int]
    p2pw_all_time_download: list[int]
    p2pw_a_uploaded: list[int]
    p2pw_failed_bytes: list[int]
    p2pw_split_median: dict[str, float]
    p2pw_splits: list[dict[str, float]]
    warmup_http_s: list[float]
    warmup_p2pw_s: list[float]
    p2pw_failed_fetches: list[str]
    """Fetches that ended in state error and were tried again (a daemon bug, not noise)."""
    http_client_cpu_s: float
    http_server_cpu_s: float
    p2pw_cpu_a_s: float
    p2pw_cpu_b_s: float
    others_http: float
    others_p2pw: float
    profile_cpu_b_s: float | None = None
    """CPU seconds of daemon B in the extra run under ``perf record`` (``--profile``)."""
    profile_seconds: float | None = None
    profile_percent: dict[str, float] = field(default_factory=dict)
    """Share of B's sampled CPU per part of the daemon in that run (see ``cpu_split``)."""
    benchmark: str = "bench_transfer"
    target: str = f"p2pw/(HTTP+sha256) >= {TARGET}"


def _median_split(splits: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in splits[0] if all(k in s for s in splits)]
    return {k: round(median([s[k] for s in splits]), 3) for k in keys}


def _print(s: Summary) -> None:
    print(f"bench_transfer: {s.model}, payload {s.payload_bytes / GIB:.3f} GiB "
          f"({s.payload_bytes / MB:.1f} MB) in {s.files} files, largest "
          f"{s.largest_file_bytes / _MIB:.1f} MiB, torrent piece {s.piece_size // _MIB} MiB")
    print(f"  {s.cpus} CPUs; median of {s.repeats} runs per side (alternating), "
          f"{s.warmup} untimed warm-up run(s) per side; MB = 10^6 bytes")
    for name, mbs, runs in (("HTTP + sha256 (aiohttp)", s.http_mb_s, s.http_runs_s),
                            ("p2pw daemon -> daemon", s.p2pw_mb_s, s.p2pw_runs_s)):
        print(f"  {name:<24}: {mbs:7.1f} MB/s  median {s.payload_bytes / MB / mbs:6.3f} s  "
              f"runs {', '.join(f'{x:.3f}' for x in runs)} s")
    verdict = "MET" if s.target_met else "MISSED"
    print(f"  ratio p2pw/(HTTP+sha256): {s.ratio:.2f}x   target >= {TARGET}x: {verdict}")
    print(f"  A sent (delta of A's transfer.uploaded): "
          f"{', '.join(str(d) for d in s.p2pw_a_uploaded)} bytes (payload {s.payload_bytes})")
    print(f"  B transfer.downloaded {', '.join(str(d) for d in s.p2pw_downloaded)}; "
          f"all_time_download {', '.join(str(d) for d in s.p2pw_all_time_download)} "
          f"(payload {s.payload_bytes}; read 0.5 s after completion, the final resume-data "
          f"pause can reset the first); failed bytes "
          f"{', '.join(str(d) for d in s.p2pw_failed_bytes)}")
    if s.p2pw_failed_fetches:
        print(f"  FAILED p2pw fetches (tried again): {len(s.p2pw_failed_fetches)}")
        for msg in s.p2pw_failed_fetches:
            print(f"    {msg}")
    if s.p2pw_split_median:
        print("  p2pw time split (median s after the fetch request, from B's events):")
        for k, v in s.p2pw_split_median.items():
            print(f"    {k:<26} {v:7.3f}")
        print("    (events: manifest/downloading/complete are the service's stages; progress "
              "events come once a second, so first_progress_* is coarse)")
        sp = s.p2pw_split_median
        if "downloading" in sp and "last_chunk_done" in sp:
            body = sp["last_chunk_done"] - sp["downloading"]
            print(f"    -> before chunks (metadata + manifest stage): {sp['downloading']:.3f} s; "
                  f"chunk phase {body:.3f} s = "
                  f"{s.payload_bytes / MB / max(body, 1e-9):.1f} MB/s")
    print(f"  warm-up runs: HTTP {', '.join(f'{x:.3f}' for x in s.warmup_http_s) or '-'} s; "
          f"p2pw {', '.join(f'{x:.3f}' for x in s.warmup_p2pw_s) or '-'} s")
    print(f"  CPU s (median): HTTP client {s.http_client_cpu_s:.2f} + server "
          f"{s.http_server_cpu_s:.2f}; p2pw daemon A {s.p2pw_cpu_a_s:.2f} + daemon B "
          f"{s.p2pw_cpu_b_s:.2f}")
    print(f"  CPU share used by processes outside the benchmark: HTTP runs {s.others_http:.0%}, "
          f"p2pw runs {s.others_p2pw:.0%}")
    if max(s.others_http, s.others_p2pw) > 0.1:
        print("  note: other processes competed for the CPUs; the figures are noisy.")
    if s.profile_cpu_b_s is not None and s.profile_seconds is not None:
        gib = s.payload_bytes / GIB
        print(f"  profiled run (daemon B under perf record): {s.profile_seconds:.2f} s, "
              f"B used {s.profile_cpu_b_s:.2f} CPU s = {s.profile_cpu_b_s / gib:.2f} per GiB")
        for part, pct in sorted(s.profile_percent.items(),
                                key=lambda kv: (kv[0].startswith(" "), -kv[1])):
            print(f"    {pct:5.1f} %  {pct / 100 * s.profile_cpu_b_s / gib:5.2f} CPU s/GiB  {part}")


# ---- main ----------------------------------------------------------------------------------


def _payload(release: Path, manifest_sha256: str, chunks: dict[str, str]) -> Payload:
    files = {p.relative_to(release).as_posix(): p.stat().st_size
             for p in release.rglob("*") if p.is_file()}
    wanted = {"manifest.json", "manifest.sig", *chunks}
    files = {k: v for k, v in files.items() if k in wanted}
    if set(files) != wanted:
        raise RuntimeError("the release dir lacks files its manifest lists")
    sha = {**chunks, "manifest.json": manifest_sha256,
           "manifest.sig": sha256_file(release / "manifest.sig")}
    return Payload(files, sha)


_OURS_LOOP = "ours: the Python event loop (alerts, API, events, catalog)"
_OURS_HASH = "ours: sha256 of each chunk before it enters the store (hashlib threads)"
_OURS_OTHER = "ours: other Python threads"
_LIBTORRENT = "libtorrent's threads (network, disk, v2 block hashing)"


def _thread_kind(tid: str, pid: int, leaves: collections.Counter[str]) -> str:
    """Which part of the daemon a thread is, from the shared objects its samples land in."""
    if tid == str(pid):
        return _OURS_LOOP
    user = [(n, dso) for dso, n in leaves.items() if not dso.startswith("[")]
    top = max(user)[1] if user else ""
    if top.startswith("libcrypto"):
        return _OURS_HASH
    if top.startswith("libpython"):
        return _OURS_OTHER
    return _LIBTORRENT


def cpu_split(perf_data: Path, pid: int) -> dict[str, float]:
    """Percent of the sampled CPU per part of the daemon, by thread (``perf script``).

    The wheel's libtorrent has no frame pointers, so call graphs stop at its first frame;
    each thread does one job, though, so the thread a sample lands in says whose work it is.
    """
    import subprocess

    text = subprocess.run(
        ["perf", "script", "-F", "tid,ip,sym,dso", "-i", str(perf_data)],
        capture_output=True, text=True, check=True,
    ).stdout
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter)
    tid, leaf = "", False
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith("\t"):  # a sample's header: its thread id
            tid, leaf = line.split()[0], True
        elif leaf:  # the first frame of the call chain: where the CPU was
            dso = line.rsplit("(", 1)[-1].rstrip(") \t").rsplit("/", 1)[-1]
            per_thread[tid][dso] += 1
            leaf = False
    total = sum(sum(c.values()) for c in per_thread.values()) or 1
    shares: dict[str, float] = collections.defaultdict(float)
    for t, leaves in per_thread.items():
        shares[_thread_kind(t, pid, leaves)] += 100 * sum(leaves.values()) / total
        kernel = sum(n for dso, n in leaves.items() if dso.startswith("[kernel"))
        shares["  of all: in the kernel (system calls, copies, page faults)"] += (
            100 * kernel / total)
    return {k: round(v, 1) for k, v in shares.items()}


def bench(work: Path, size_gib: float, repeats: int, warmup: int,
          profile: Path | None = None) -> Summary:
    """Set up once, then alternate the two sides; then, with ``profile``, one run under perf."""
    import p2pweights
    from p2pweights.client import DaemonClient, start_daemon

    src = make_synthetic(work / "synthetic", size_gib)
    release = work / "release"
    if release.exists():
        shutil.rmtree(release)
    key = p2pweights.generate_key(work / "bench-key.pem", overwrite=True)
    result = p2pweights.pack(src, release, name="bench/transfer", version=1, key=key)
    payload = _payload(release, result.manifest_sha256,
                       {c.path: c.sha256 for c in result.manifest.chunks})
    home_a, home_b, http_out = work / "a", work / "b", work / "http-out"
    for d in (home_a, home_b, http_out):
        if d.exists():
            shutil.rmtree(d)
    failures: list[str] = []
    pid_a = start_daemon(home_a, extra_args=_local_args(_HOST_A))
    try:
        client_a = DaemonClient(home_a)
        port_a = int(asyncio.run(client_a.status())["listen_port"])
        published = asyncio.run(client_a.publish(release))
        magnet, peer = str(published["magnet"]), f"{_HOST_A}:{port_a}"
        rid_a = str(published["id"])
        import libtorrent as lt

        piece = int(lt.torrent_info(Path(published["torrent_path"]).read_bytes())
                    .piece_length())
        with http_server(release) as (port, server_pid):

            def http() -> HttpRun:
                return run_http(port, server_pid, payload, http_out)

            def p2p() -> P2pRun:
                for attempt in range(1, _ATTEMPTS + 1):
                    try:
                        return run_p2p(home_b, magnet, peer, key.public, pid_a, home_a,
                                       rid_a)
                    except FetchFailedError as exc:
                        failures.append(str(exc))
                        print(f"warning: p2pw fetch failed (attempt {attempt}): {exc}",
                              file=sys.stderr)
                        if attempt == _ATTEMPTS:
                            raise
                raise AssertionError("unreachable")

            warm_h = [http().seconds for _ in range(warmup)]
            warm_p = [p2p().seconds for _ in range(warmup)]
            https: list[HttpRun] = []
            p2ps: list[P2pRun] = []
            for r in range(repeats):
                if r % 2 == 0:
                    https.append(http())
                    p2ps.append(p2p())
                else:
                    p2ps.append(p2p())
                    https.append(http())
            profiled: P2pRun | None = None
            if profile is not None:
                profile.mkdir(parents=True, exist_ok=True)
                profiled = run_p2p(home_b, magnet, peer, key.public, pid_a, home_a, rid_a,
                                   perf_out=profile / "fetcher.perf.data")
    except BaseException:
        tail = _log_tail(home_a)
        if tail:
            print(f"daemon A log tail:\n{tail}", file=sys.stderr)
        raise
    finally:
        stop_daemon(pid_a)
        shutil.rmtree(home_a, ignore_errors=True)  # hard links into the release: small
    http_s = median([h.seconds for h in https])
    p2p_s = median([p.seconds for p in p2ps])
    http_mbs, p2p_mbs = payload.total / MB / http_s, payload.total / MB / p2p_s
    ratio = p2p_mbs / http_mbs
    return Summary(
        model=f"synthetic llama-like {size_gib:g} GiB", payload_bytes=payload.total,
        files=len(payload.files), largest_file_bytes=max(payload.files.values()),
        piece_size=piece, cpus=os.cpu_count() or 1, repeats=repeats, warmup=warmup,
        http_mb_s=round(http_mbs, 1), p2pw_mb_s=round(p2p_mbs, 1), ratio=round(ratio, 3),
        target_met=ratio >= TARGET,
        http_runs_s=[round(h.seconds, 3) for h in https],
        p2pw_runs_s=[round(p.seconds, 3) for p in p2ps],
        p2pw_downloaded=[p.downloaded for p in p2ps],
        p2pw_all_time_download=[p.all_time_download for p in p2ps],
        p2pw_a_uploaded=[p.a_uploaded for p in p2ps],
        p2pw_failed_bytes=[p.failed_bytes for p in p2ps],
        p2pw_split_median=_median_split([p.split for p in p2ps]),
        p2pw_splits=[p.split for p in p2ps],
        p2pw_failed_fetches=failures,
        warmup_http_s=[round(x, 3) for x in warm_h], warmup_p2pw_s=[round(x, 3) for x in warm_p],
        http_client_cpu_s=round(median([h.cpu_seconds for h in https]), 3),
        http_server_cpu_s=round(median([h.server_cpu_seconds for h in https]), 3),
        p2pw_cpu_a_s=round(median([p.cpu_a for p in p2ps]), 3),
        p2pw_cpu_b_s=round(median([p.cpu_b for p in p2ps]), 3),
        others_http=round(median([h.others for h in https]), 3),
        others_p2pw=round(median([p.others for p in p2ps]), 3),
        profile_cpu_b_s=round(profiled.cpu_b, 3) if profiled else None,
        profile_seconds=round(profiled.seconds, 3) if profiled else None,
        profile_percent=(cpu_split(profile / "fetcher.perf.data", profiled.pid_b)
                         if profile is not None and profiled is not None else {}),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=1.0, help="synthetic model size")
    parser.add_argument("--workdir", type=Path, help="scratch dir (kept); default a temp dir")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per side first")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="after the timed runs, one more fetch with daemon B under "
                             "`perf record`; prints its CPU split by shared object")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve)
        return 0
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    with work_dir(args.workdir) as work:
        summary = bench(work, args.size_gib, args.repeats, args.warmup, args.profile)
    if args.json:
        print(json.dumps(asdict(summary)))
    else:
        _print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
