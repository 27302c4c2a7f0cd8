"""Benchmark a 100,000-tensor mixture-of-experts release: manifest, open, load, pack.

Usage::

    .venv/bin/python scripts/bench_manifest.py [--tensors 100000] [--shards 4]
        [--hidden 32] [--intermediate 16] [--repeats 3] [--workdir DIR] [--json]

The checkpoint is ``_synthetic_moe``'s: Qwen-MoE names, 64 layers, as many experts as make
the tensor count, small bf16 tensors (1 KiB per expert projection by default, as in the
46,080-tensor checkpoint issue 12 measured), saved in ``--shards`` shards by safetensors'
own ``save_file``. Each figure is printed beside a baseline measured in the same run:

- manifest bytes per tensor (no baseline: the target is absolute, 150 B);
- open and authenticate (``open_release``: read, trust, Ed25519 over the bytes, the full
  schema parse) against reading every shard's safetensors header with
  ``safetensors.safe_open`` (what knowing every tensor costs the format itself);
- ``load`` plus one pass over every tensor against ``safetensors.torch.load_file`` of the
  shards plus the same pass (``bench_load.touch_all``: a wrapping uint8 sum per tensor);
- ``pack`` against copying the source dir (``shutil.copyfile``) and a single-threaded
  sha256 of the copies (``_synthetic.sha256_files``).

The sides alternate, each once untimed first, and the median is taken; every pack writes
a fresh dir, and dirty pages are flushed (``os.sync``) before each timed pack or copy. The
machine's other processes are reported too ("others"): it is shared, so compare ratios.

Targets (issue 12): <= 150 B per tensor; open <= 0.3 s; load <= 1.3x; pack <= 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from _synthetic import Stopwatch, median, sha256_files, work_dir
from _synthetic_moe import make_moe, moe_shape_for
from bench_load import touch_all
from safetensors import safe_open
from safetensors.torch import load_file

import p2pweights
from p2pweights.release import MANIFEST_NAME, open_release

TARGETS = {"bytes_per_tensor": 150.0, "open_s": 0.3, "load_ratio": 1.3, "pack_ratio": 1.5}


@dataclass(frozen=True, slots=True)
class Pair:
    """One measure: ours and its baseline, median seconds of the timed runs."""

    ours_s: float
    baseline_s: float
    ours_runs: list[float]
    baseline_runs: list[float]
    others: float
    """Median share of the machine's CPUs other processes used during our runs."""
    ours_cpu_s: float
    """Median CPU seconds (all threads) of our runs: steadier than wall time when the
    machine is shared."""
    baseline_cpu_s: float

    @property
    def ratio(self) -> float:
        """Ours over the baseline."""
        return self.ours_s / self.baseline_s


def _alternate(ours: Callable[[], object], baseline: Callable[[], object], repeats: int,
               before: Callable[[], None] = lambda: None) -> Pair:
    for fn in (ours, baseline):  # warm-up, untimed
        before()
        fn()
    runs: dict[str, list[float]] = {"ours": [], "baseline": []}
    cpu: dict[str, list[float]] = {"ours": [], "baseline": []}
    others: list[float] = []
    for r in range(repeats):
        sides = [("ours", ours), ("baseline", baseline)]
        for side, fn in sides if r % 2 == 0 else sides[::-1]:
            before()
            with Stopwatch() as watch:
                fn()
            runs[side].append(watch.seconds)
            cpu[side].append(watch.cpu_seconds)
            if side == "ours":
                others.append(watch.others)
    return Pair(median(runs["ours"]), median(runs["baseline"]),
                [round(x, 4) for x in runs["ours"]], [round(x, 4) for x in runs["baseline"]],
                median(others), median(cpu["ours"]), median(cpu["baseline"]))


def _read_headers(shards: list[Path]) -> int:
    count = 0
    for shard in shards:
        with safe_open(str(shard), framework="pt") as fh:
            count += len(list(fh.keys()))
    return count


def _copy_and_hash(src: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    copies = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        dst = out / path.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst)
        copies.append(dst)
    sha256_files(copies)


def run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """Build (or reuse) the checkpoint, pack it once, and measure every figure."""
    shape = moe_shape_for(args.tensors, hidden=args.hidden, intermediate=args.intermediate)
    src = work / f"moe-{shape.tensors}-{shape.hidden}x{shape.intermediate}-{args.shards}"
    if not src.is_dir():
        make_moe(src, shape, shards=args.shards)
    shards = sorted(src.glob("*.safetensors"))
    key = p2pweights.generate_key(work / "bench-key.pem") if not (
        work / "bench-key.pem").exists() else p2pweights.load_private_key(work / "bench-key.pem")
    trust = p2pweights.TrustStore.of_keys([key.public])
    release = work / "release"
    if release.exists():
        shutil.rmtree(release)
    p2pweights.pack(src, release, name="bench/moe", version=1, key=key)
    manifest_bytes = (release / MANIFEST_NAME).stat().st_size

    opened = _alternate(lambda: open_release(release, trust), lambda: _read_headers(shards),
                        args.repeats)
    sums: dict[str, int] = {}

    def ours_load() -> None:
        sums["ours"] = touch_all(p2pweights.load(release, trust=trust))

    def base_load() -> None:
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(shard)))
        sums["baseline"] = touch_all(state)

    loaded = _alternate(ours_load, base_load, args.repeats)
    if sums["ours"] != sums["baseline"]:
        raise RuntimeError("load and load_file passes saw different bytes")

    out = work / "packed"

    def ours_pack() -> None:
        if out.exists():
            shutil.rmtree(out)
        p2pweights.pack(src, out, name="bench/moe", version=1, key=key)

    packed = _alternate(ours_pack, lambda: _copy_and_hash(src, work / "copied"), args.repeats,
                        before=os.sync)
    for path in (out, work / "copied"):
        shutil.rmtree(path, ignore_errors=True)
    figures = {
        "bytes_per_tensor": manifest_bytes / shape.tensors,
        "open_s": opened.ours_s,
        "load_ratio": loaded.ratio,
        "pack_ratio": packed.ratio,
    }
    return {
        "model": asdict(shape) | {"tensors": shape.tensors, "bytes": shape.nbytes,
                                  "shards": len(shards)},
        "manifest_bytes": manifest_bytes,
        "open": asdict(opened) | {"ratio": opened.ratio},
        "load": asdict(loaded) | {"ratio": loaded.ratio},
        "pack": asdict(packed) | {"ratio": packed.ratio},
        "figures": figures,
        "targets": TARGETS,
        "met": {k: figures[k] <= TARGETS[k] for k in TARGETS},
        "cpus": os.cpu_count(),
    }


def _print(report: dict[str, object]) -> None:
    model = report["model"]
    assert isinstance(model, dict)
    print(f"model: {model['tensors']:,} tensors, {model['bytes'] / 2**20:.0f} MiB in "
          f"{model['shards']} shards ({model['layers']} layers x {model['experts']} experts)")
    figures, met = report["figures"], report["met"]
    assert isinstance(figures, dict)
    assert isinstance(met, dict)
    print(f"manifest: {report['manifest_bytes']:,} B = {figures['bytes_per_tensor']:.1f} "
          f"B/tensor (target <= 150) {'ok' if met['bytes_per_tensor'] else 'MISSED'}")
    for label, key, baseline, target in (
        ("open+authenticate", "open", "safe_open of every shard's header", "open_s"),
        ("load + one pass", "load", "load_file + the same pass", "load_ratio"),
        ("pack", "pack", "cp + sha256", "pack_ratio"),
    ):
        pair = report[key]
        assert isinstance(pair, dict)
        print(f"{label}: {pair['ours_s']:.3f} s vs {baseline} {pair['baseline_s']:.3f} s = "
              f"{pair['ratio']:.2f}x (target {TARGETS[target]}{' s' if key == 'open' else 'x'}: "
              f"{'ok' if met[target] else 'MISSED'}; CPU {pair['ours_cpu_s']:.3f} s vs "
              f"{pair['baseline_cpu_s']:.3f} s; others {pair['others']:.0%})")


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run, and print the figures (or one JSON object)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tensors", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=32, help="expert input width")
    parser.add_argument("--intermediate", type=int, default=16, help="expert hidden width")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side")
    parser.add_argument("--workdir", type=Path, help="scratch dir (kept); default a temp dir")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.tensors < 1000 or args.shards < 1:
        parser.error("--repeats >= 1, --tensors >= 1000 and --shards >= 1")
    torch.set_num_threads(1)  # the pass on one thread, on both sides (see bench_load)
    with work_dir(args.workdir) as work:
        report = run(args, work)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        _print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
