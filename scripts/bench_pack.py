"""Benchmark ``p2pweights.pack`` against copying the same files and hashing them once.

Usage::

    .venv/bin/python scripts/bench_pack.py [--size-gib 1.0] [--model synthetic|minilm]
        [--src DIR] [--workdir DIR] [--repeats N] [--json]

The baseline copies every file of the source dir into a fresh dir (``shutil.copyfile``)
and then sha256s the copies with hashlib in 8 MiB reads, single-threaded: the least work
that makes a verified copy. Pack does the same copy, plus its two digests per chunk (sha256
and the BitTorrent v2 tree) and a sha256 of each original weight file.

Each run happens in a child process, which times only the work (not Python's start or
imports) and reports its peak resident set: both the whole process's ``ru_maxrss`` and the
high-water mark reached during the work alone (``/proc/self/clear_refs`` resets it first),
which is what to compare with the largest chunk. Each side runs once untimed to warm the
page cache, then the sides alternate; the figure is the median. Every output dir is fresh
and removed afterwards, and dirty pages are flushed (``os.sync``) before each run so one
run's writeback does not land in the next one's time.

Target (from the issue): pack time <= 1.5x the baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from _synthetic import GIB, add_common_args, bench_source, median, source_bytes, work_dir

TARGET = 1.5
_READ = 8 * 1024 * 1024
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Run:
    """What one child reports."""

    seconds: float
    rss_before_kib: int
    """Resident set just before the work started (after imports)."""
    work_peak_kib: int
    """Peak resident set during the work (VmHWM after a reset); -1 when it cannot be reset."""
    process_peak_kib: int
    """ru_maxrss of the whole child, imports included."""
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


def _copy_and_hash(src: Path, out: Path) -> int:
    copies: list[Path] = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        dst = out / path.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst)
        copies.append(dst)
    buf = bytearray(_READ)
    view = memoryview(buf)
    for path in copies:
        sha = hashlib.sha256()
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                sha.update(view[:n])
        sha.hexdigest()
    return len(copies)


def _child(spec: dict[str, str]) -> Run:
    src, out = Path(spec["src"]), Path(spec["out"])
    if spec["side"] == "pack":
        import p2pweights  # the baseline child never pays for torch's import

        key = p2pweights.load_private_key(Path(spec["key"]))
    rss_before = _proc_status_kib("VmRSS")
    reset = _reset_peak()
    started = time.perf_counter()
    largest = chunks = 0
    if spec["side"] == "pack":
        result = p2pweights.pack(src, out, name="bench/model", version=1, key=key)
        largest = max(c.size for c in result.manifest.chunks)
        chunks = len(result.manifest.chunks)
    else:
        _copy_and_hash(src, out)
    seconds = time.perf_counter() - started
    return Run(
        seconds=seconds,
        rss_before_kib=rss_before,
        work_peak_kib=_proc_status_kib("VmHWM") if reset else -1,
        process_peak_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
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


def _summary(label: str, src: Path, runs: dict[str, list[Run]]) -> dict[str, object]:
    size = source_bytes(src)
    base = median([r.seconds for r in runs["baseline"]])
    pack = median([r.seconds for r in runs["pack"]])
    ratio = pack / base

    def peak(side: str, attr: str) -> int:
        return max(getattr(r, attr) for r in runs[side])

    return {
        "benchmark": "bench_pack",
        "model": label,
        "source": str(src),
        "source_bytes": size,
        "cpus": os.cpu_count(),
        "repeats": len(runs["pack"]),
        "baseline_s": base,
        "pack_s": pack,
        "baseline_runs_s": [r.seconds for r in runs["baseline"]],
        "pack_runs_s": [r.seconds for r in runs["pack"]],
        "ratio": ratio,
        "target": f"<= {TARGET}x",
        "target_met": ratio <= TARGET,
        "largest_chunk_bytes": runs["pack"][0].largest_chunk,
        "chunks": runs["pack"][0].chunks,
        "pack_rss": {k: peak("pack", k) for k in ("rss_before_kib", "work_peak_kib",
                                                  "process_peak_kib")},
        "baseline_rss": {k: peak("baseline", k) for k in ("rss_before_kib", "work_peak_kib",
                                                          "process_peak_kib")},
        "runs": {side: [asdict(r) for r in rs] for side, rs in runs.items()},
    }


def _mib(kib: int) -> str:
    return "n/a" if kib < 0 else f"{kib / 1024:.0f} MiB"


def _print(s: dict[str, object]) -> None:
    size = int(s["source_bytes"])  # type: ignore[call-overload]
    base, pack, ratio = float(s["baseline_s"]), float(s["pack_s"]), float(s["ratio"])  # type: ignore[arg-type]
    prss: dict[str, int] = s["pack_rss"]  # type: ignore[assignment]
    brss: dict[str, int] = s["baseline_rss"]  # type: ignore[assignment]
    gib = size / GIB
    print(f"bench_pack: {s['model']} ({gib:.3f} GiB) from {s['source']}")
    print(f"  {s['cpus']} CPUs, median of {s['repeats']} runs per side, after one warm-up each")
    print(f"  baseline cp + sha256 : {base:8.3f} s  {gib / base:6.2f} GiB/s  "
          f"runs {', '.join(f'{x:.3f}' for x in s['baseline_runs_s'])}")  # type: ignore[attr-defined]
    print(f"  p2pweights.pack      : {pack:8.3f} s  {gib / pack:6.2f} GiB/s  "
          f"runs {', '.join(f'{x:.3f}' for x in s['pack_runs_s'])}")  # type: ignore[attr-defined]
    verdict = "MET" if s["target_met"] else "MISSED"
    print(f"  ratio pack/baseline  : {ratio:.2f}x   target <= {TARGET}x: {verdict}")
    print(f"  largest chunk        : {int(s['largest_chunk_bytes']) / _MIB:.1f} MiB "  # type: ignore[call-overload]
          f"({s['chunks']} chunks)")
    for name, rss in (("pack", prss), ("baseline", brss)):
        grew = rss["work_peak_kib"] - rss["rss_before_kib"] if rss["work_peak_kib"] >= 0 else -1
        print(f"  peak RSS {name:<9}   : {_mib(rss['work_peak_kib'])} during the work "
              f"(+{_mib(grew)} over {_mib(rss['rss_before_kib'])} after imports); "
              f"process ru_maxrss {_mib(rss['process_peak_kib'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(asdict(_child(json.loads(args.child)))))
        return 0
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    import p2pweights  # the parent only needs it for the key

    with work_dir(args.workdir) as work:
        label, src = bench_source(args.model, args.src, args.size_gib, work)
        key_path = work / "bench-key.pem"
        p2pweights.generate_key(key_path, overwrite=True)
        summary = _summary(label, src, _measure(src, work, key_path, args.repeats))
    if args.json:
        print(json.dumps(summary))
    else:
        _print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
