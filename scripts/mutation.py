"""Mutation score of the trust-critical modules (mutmut), each against its fast unit tests.

Too slow for CI: a report, to rerun when these modules change. For each module it makes a
scratch copy of the project (the daemon package copied to ``p2pweightsd/``, the name it is
imported by), points mutmut at that one module and its unit tests (never the daemon
integration tests, which start real daemons), runs it under a time budget, and prints the
share of mutants killed. A run cut off by its budget reports what it got through, and says
so. The survivors are listed, to be killed by a test or noted as equivalent in
docs/testing.md.

    .venv/bin/python scripts/mutation.py                    # every module, smallest first
    .venv/bin/python scripts/mutation.py _paths manifest    # some of them
    .venv/bin/python scripts/mutation.py --budget 900 --keep /tmp/mut
    .venv/bin/python scripts/mutation.py manifest --sample 150 --seed 18   # a fixed sample

mutmut's own settings are in pyproject.toml under ``[tool.mutmut]``; this script adds the
module and its tests per run. Exit status 1 when a finished module is under 90 %.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.90

# module -> (the file mutmut mutates in the scratch copy, its fast unit tests, a glob of
# the mutant names to count: all of them, or only the API guard's functions)
MODULES: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    "_paths": (
        "p2pweights/_paths.py",
        [
            "tests/test_paths.py",
            "tests/test_properties.py::test_check_relative_and_join_inside",
            "tests/test_properties.py::test_check_relative_non_strings",
        ],
        ("*",),
    ),
    "_canonical": (
        "p2pweights/_canonical.py",
        [
            "tests/test_canonical.py",
            "tests/test_properties.py::test_loads_strict_arbitrary_bytes",
            "tests/test_properties.py::test_canonical_round_trip_is_stable",
            "tests/test_properties.py::test_loads_strict_depth_limit",
            "tests/test_properties.py::test_loads_strict_size_limit",
        ],
        ("*",),
    ),
    "trust": (
        "p2pweights/trust.py",
        [
            "tests/test_trust_store.py",
            "tests/test_keys_trust.py",
            "tests/test_key_rotation.py",
            "tests/test_key_statements.py",
            "tests/test_trust_edges.py",
        ],
        ("*",),
    ),
    "key_statements": (
        "p2pweights/key_statements.py",
        [
            "tests/test_key_statements.py",
            "tests/test_key_statement_edges.py",
            "tests/test_key_rotation.py",
            "tests/test_trust_store.py",
            "tests/test_keys_trust.py",
        ],
        ("*",),
    ),
    "release": (
        "p2pweights/release.py",
        [
            "tests/test_release.py",
            "tests/test_hostile_inputs.py",
            "tests/test_keys_trust.py",
            "tests/test_key_rotation.py",
        ],
        ("*",),
    ),
    "verify": (
        "p2pweights/verify.py",
        ["tests/test_verify.py", "tests/test_hostile_inputs.py", "tests/test_loader.py"],
        ("*",),
    ),
    "manifest": (
        "p2pweights/manifest.py",
        [
            "tests/test_manifest_refusals.py",
            "tests/test_properties.py",
            "tests/test_properties_valid.py",
            "tests/test_hostile_inputs.py",
        ],
        ("*",),
    ),
    "admission": ("p2pweightsd/admission.py", ["tests/daemon/test_admission.py"], ("*",)),
    "store": ("p2pweightsd/store.py", ["tests/daemon/test_store.py"], ("*",)),
    # The guard middleware and the helpers it calls (the rest of api.py is the handlers).
    "api-guard": (
        "p2pweightsd/api.py",
        ["tests/daemon/test_api_guard.py"],
        tuple(
            f"p2pweightsd.api.x_{f}__mutmut_*"
            for f in ("guard", "_status_for", "_is_disk_full", "_error", "_tcp_port")
        ),
    ),
}

KILLED = {1, 3, 24, -24, 152, 255, 36, 37}  # a failing test, a timeout, or the type checker
SURVIVED = {0}


def _scratch(where: Path) -> None:
    """A copy of what the tests import, with the daemon under its installed name."""
    shutil.copytree(ROOT / "p2pweights", where / "p2pweights")
    shutil.copytree(ROOT / "daemon", where / "p2pweightsd")
    shutil.copytree(ROOT / "tests", where / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", where / "pyproject.toml")


def _configure(where: Path, module: str, tests: list[str]) -> None:
    """Append this run's module and tests to the scratch pyproject's [tool.mutmut]."""
    text = (where / "pyproject.toml").read_text()
    base = tomllib.loads(text).get("tool", {}).get("mutmut", {})
    tests = [t for t in tests if (where / t).exists()]
    args = [*base.get("pytest_add_cli_args_test_selection", []), *tests]
    settings = {
        **base,
        "source_paths": ["p2pweights", "p2pweightsd"],
        "only_mutate": [module],
        "pytest_add_cli_args_test_selection": args,
    }
    lines = ["[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    # Drop the project's own [tool.mutmut] table and write this run's one.
    text = re.sub(r"\n\[tool\.mutmut\]\n(?:[^\[].*\n|\n)*", "\n", text + "\n")
    (where / "pyproject.toml").write_text(text + "\n" + "\n".join(lines) + "\n")


def _results(where: Path, module: str, patterns: tuple[str, ...]) -> dict[str, int | None]:
    import fnmatch

    meta = where / "mutants" / (module + ".meta")
    if not meta.exists():
        return {}
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    return {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, p) for p in patterns)}


def _mutant_names(where: Path, module: str) -> list[str]:
    """Every mutant mutmut makes of ``module``, named as in its results (none is run)."""
    code = (
        "import io, sys\n"
        "from pathlib import Path\n"
        "from mutmut.__main__ import write_all_mutants_to_file\n"
        "from mutmut.utils.format_utils import get_mutant_name\n"
        "p = Path(sys.argv[1])\n"
        "f = write_all_mutants_to_file(out=io.StringIO(), source=p.read_text(), filename=p)\n"
        "print('\\n'.join(get_mutant_name(p, n) for n in f.mutant_names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, module], cwd=where, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def run_module(
    name: str, budget: float, keep: Path | None, sample: int | None = None, seed: int = 0
) -> tuple[int, int, int, bool]:
    import fnmatch

    module, tests, patterns = MODULES[name]
    where = Path(tempfile.mkdtemp(prefix=f"p2pw-mut-{name}-", dir=keep))
    _scratch(where)
    _configure(where, module, tests)
    mutmut = Path(sys.executable).parent / "mutmut"
    cmd = [str(mutmut), "run", "--max-children", str(os.cpu_count() or 1)]
    if sample is not None:
        # A fixed random sample (same seed, same module source: same mutants), counted alone.
        names = [
            n
            for n in _mutant_names(where, module)
            if any(fnmatch.fnmatch(n, p) for p in patterns)
        ]
        chosen = sorted(random.Random(seed).sample(names, min(sample, len(names))))
        print(f"{name:12} sample of {len(chosen)} of {len(names)} mutants (seed {seed})")
        patterns = tuple(chosen)
    if patterns != ("*",):
        cmd.extend(patterns)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    log = (where / "mutmut.log").open("w")
    proc = subprocess.Popen(
        cmd, cwd=where, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        proc.wait(timeout=budget)
        finished = proc.returncode == 0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole mutmut process group
        proc.wait()
        finished = False
    codes = _results(where, module, patterns)
    killed = sum(1 for c in codes.values() if c in KILLED)
    survived = sorted(k for k, c in codes.items() if c in SURVIVED)
    other = sorted(k for k, c in codes.items() if c not in KILLED | SURVIVED and c is not None)
    untried = sum(1 for c in codes.values() if c is None)
    tried = killed + len(survived) + len(other)
    share = killed / tried if tried else 0.0
    state = "finished" if finished and not untried else f"cut off, {untried} not tried"
    print(f"{name:12} {killed:4}/{tried:<4} killed  {share:6.1%}  ({state}; {where})")
    for k in survived:
        print(f"    survived: {k}")
    for k in other:
        print(f"    {codes[k]}: {k}")
    if keep is None:
        shutil.rmtree(where, ignore_errors=True)
    return killed, tried, untried, finished


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"any of: {', '.join(MODULES)}")
    parser.add_argument("--budget", type=float, default=1200.0, help="seconds per module")
    parser.add_argument("--keep", type=Path, help="keep the scratch copies under this dir")
    parser.add_argument(
        "--sample", type=int, help="run only this many mutants of each module, drawn at random"
    )
    parser.add_argument("--seed", type=int, default=0, help="the random seed of --sample")
    args = parser.parse_args()
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    names = args.modules or sorted(
        MODULES,
        key=lambda n: (ROOT / MODULES[n][0].replace("p2pweightsd/", "daemon/")).stat().st_size,
    )
    low = False
    for name in names:
        killed, tried, untried, finished = run_module(
            name, args.budget, args.keep, args.sample, args.seed
        )
        if finished and not untried and tried and killed / tried < TARGET:
            low = True
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
