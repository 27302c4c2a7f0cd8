"""Benchmark ``p2pweights.pack`` against copying the same files and hashing them once.

Usage::

    .venv/bin/python scripts/bench_pack.py [--size-gib 1.0] [--model synthetic|minilm]
        [--src DIR] [--workdir DIR] [--repeats N] [--json]

The baseline copies every file of the source dir into a fresh dir (``shutil.copyfile``)
and then sha256s the copies with hashlib in 4 MiB reads, single-threaded: the least work
that makes a verified copy. Pack does the same copy, plus its two digests per chunk (sha256
and the BitTorrent v2 tree) and a sha256 of each original weight file, on every core.

Each run happens in a child process, which times only the work (not Python's start or
imports) and reports its resident set from ``/proc/self/status``: after imports, the peak
during the work alone (``VmHWM`` after ``/proc/self/clear_refs`` resets it), which is what
to compare with the largest chunk, and the child's peak since exec. (``ru_maxrss`` is not
used: Linux carries the parent's peak across ``exec`` into it.) Each side runs once
untimed to warm the page cache, then the sides alternate; the figure is the median. Every
output dir is fresh and removed afterwards, and dirty pages are flushed (``os.sync``)
before each run so one run's writeback does not land in the next one's time.

The machine's other processes are measured too ("other procs"): pack uses every core and
the baseline one, so on a shared machine pack's figure suffers more. Compare on a quiet one.

Target (from the issue): pack time <= 1.5x the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from _synthetic import (
    GIB,
    Stopwatch,
    add_common_args,
    bench_source,
    check_common_args,
    median,
    sha256_files,
    source_bytes,
    work_dir,
)

TARGET = 1.5
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Run:
    """What one child reports."""

    seconds: float
    cpu_seconds: float
    """CPU time of the child during the work, all threads."""
    others: float
    """Share of the machine's CPUs that other processes used meanwhile."""
    rss_before_kib: int
    """Resident set just before the work started (after imports)."""
    work_peak_kib: int
    """Peak resident set during the work (VmHWM after a reset); -1 when it cannot be reset."""
    process_peak_kib: int
    """Peak resident set of the child since exec (VmHWM), imports included."""
    largest_chunk: int = 0
    chunks: int = 0


# ---- child side ---------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _copy_and_hash(src: Path, out: Path) -> None:
    copies: list[Path] = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        dst = out / path.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst)
        copies.append(dst)
    sha256_files(copies)


def _pack_job(src: Path, out: Path, key_path: Path) -> Callable[[], tuple[int, int]]:
    import p2pweights  # here, so that the baseline child never pays for torch's import

    key = p2pweights.load_private_key(key_path)

    def job() -> tuple[int, int]:
        result = p2pweights.pack(src, out, name="bench/model", version=1, key=key)
        return max(c.size for c in result.manifest.chunks), len(result.manifest.chunks)

    return job


def _copy_job(src: Path, out: Path) -> Callable[[], tuple[int, int]]:
    def job() -> tuple[int, int]:
        _copy_and_hash(src, out)
        return 0, 0

    return job


def _child(spec: dict[str, str]) -> Run:
    src, out = Path(spec["src"]), Path(spec["out"])
    job = (_pack_job(src, out, Path(spec["key"])) if spec["side"] == "pack"
           else _copy_job(src, out))
    rss_before = _proc_status_kib("VmRSS")
    import_peak = _proc_status_kib("VmHWM")
    reset = _reset_peak()
    with Stopwatch() as watch:
        largest, chunks = job()
    work_peak = _proc_status_kib("VmHWM") if reset else -1
    return Run(
        seconds=watch.seconds,
        cpu_seconds=watch.cpu_seconds,
        others=watch.others,
        rss_before_kib=rss_before,
        work_peak_kib=work_peak,
        process_peak_kib=max(import_peak, work_peak, _proc_status_kib("VmHWM")),
        largest_chunk=largest,
        chunks=chunks,
    )


# ---- parent side --------------------------------------------------------------------------


def _run_child(side: str, src: Path, out: Path, key: Path) -> Run:
    if out.exists():
        shutil.rmtree(out)
    os.sync()  # untimed: the previous run's writeback must not land in this one
    spec = {"side": side, "src": str(src), "out": str(out), "key": str(key)}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{side} child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    run = Run(**json.loads(proc.stdout.strip().splitlines()[-1]))
    shutil.rmtree(out)
    return run


def _measure(src: Path, work: Path, key: Path, repeats: int) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {"baseline": [], "pack": []}
    outs = {"baseline": work / "out-copy", "pack": work / "out-release"}
    for side in runs:  # warm-up, untimed
        _run_child(side, src, outs[side], key)
    for r in range(repeats):
        order = ("baseline", "pack") if r % 2 == 0 else ("pack", "baseline")
        for side in order:
            runs[side].append(_run_child(side, src, outs[side], key))
    return runs


@dataclass(frozen=True, slots=True)
class Side:
    """One side's figures over its timed runs."""

    seconds: float
    """Median wall time."""
    best_s: float
    """Fastest run: the least disturbed by other processes."""
    runs_s: list[float]
    cpu_seconds: float
    """Median CPU time, all threads."""
    others: float
    """Median share of the machine's CPUs used by other processes during a run."""
    rss_before_kib: int
    work_peak_kib: int
    process_peak_kib: int


def _side(runs: list[Run]) -> Side:
    return Side(
        seconds=median([r.seconds for r in runs]),
        best_s=min(r.seconds for r in runs),
        runs_s=[round(r.seconds, 4) for r in runs],
        cpu_seconds=median([r.cpu_seconds for r in runs]),
        others=median([r.others for r in runs]),
        rss_before_kib=max(r.rss_before_kib for r in runs),
        work_peak_kib=max(r.work_peak_kib for r in runs),
        process_peak_kib=max(r.process_peak_kib for r in runs),
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """What the benchmark prints."""

    model: str
    source: str
    source_bytes: int
    cpus: int
    repeats: int
    baseline: Side
    pack: Side
    ratio: float
    """Of the medians: the figure the target is judged on."""
    best_ratio: float
    """Of the fastest runs, for context on a busy machine."""
    target_met: bool
    largest_chunk_bytes: int
    chunks: int
    benchmark: str = "bench_pack"
    target: str = f"pack/baseline <= {TARGET}"


def _summary(label: str, src: Path, runs: dict[str, list[Run]]) -> Summary:
    base, pack = _side(runs["baseline"]), _side(runs["pack"])
    ratio = pack.seconds / base.seconds
    return Summary(
        model=label, source=str(src), source_bytes=source_bytes(src), cpus=os.cpu_count() or 1,
        repeats=len(runs["pack"]), baseline=base, pack=pack, ratio=ratio,
        best_ratio=pack.best_s / base.best_s,
        target_met=ratio <= TARGET, largest_chunk_bytes=runs["pack"][0].largest_chunk,
        chunks=runs["pack"][0].chunks,
    )


def _mib(kib: int) -> str:
    return "n/a" if kib < 0 else f"{kib / 1024:.0f} MiB"


def _print(s: Summary) -> None:
    gib = s.source_bytes / GIB
    print(f"bench_pack: {s.model}, {gib:.3f} GiB, from {s.source}")
    print(f"  {s.cpus} CPUs; median of {s.repeats} runs per side (alternating), "
          "each side warmed once untimed")
    for name, side in (("baseline cp + sha256", s.baseline), ("p2pweights.pack", s.pack)):
        print(f"  {name:<21}: {side.seconds:7.3f} s  {gib / side.seconds:5.2f} GiB/s  "
              f"best {side.best_s:6.3f} s  cpu {side.cpu_seconds:6.3f} s  "
              f"other procs {side.others:4.0%}  runs {', '.join(f'{x:.3f}' for x in side.runs_s)}")
    verdict = "MET" if s.target_met else "MISSED"
    print(f"  ratio pack/baseline  : {s.ratio:.2f}x   target <= {TARGET}x: {verdict}   "
          f"(best runs: {s.best_ratio:.2f}x)")
    print(f"  largest chunk        : {s.largest_chunk_bytes / _MIB:.1f} MiB ({s.chunks} chunks)")
    for name, side in (("pack", s.pack), ("baseline", s.baseline)):
        grew = side.work_peak_kib - side.rss_before_kib if side.work_peak_kib >= 0 else -1
        print(f"  peak RSS {name:<12}: {_mib(side.work_peak_kib)} during the work "
              f"(+{_mib(grew)} over {_mib(side.rss_before_kib)} after imports); "
              f"child's peak since exec {_mib(side.process_peak_kib)}")
    if max(s.pack.others, s.baseline.others) > 0.1:
        print("  note: other processes used a share of the CPUs during the runs; pack uses "
              "every core and the baseline one, so contention weighs on pack more.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(asdict(_child(json.loads(args.child)))))
        return 0
    check_common_args(parser, args)
    import p2pweights  # the parent only needs it for the key

    with work_dir(args.workdir) as work:
        label, src = bench_source(args.model, args.src, args.size_gib, work)
        key_path = work / "bench-key.pem"
        p2pweights.generate_key(key_path, overwrite=True)
        summary = _summary(label, src, _measure(src, work, key_path, args.repeats))
    if args.json:
        print(json.dumps(asdict(summary)))
    else:
        _print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
