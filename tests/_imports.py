"""Which modules a fresh interpreter loads: the footprint tests' one measuring tool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# What a process that only talks to the daemon, or a daemon that only seeds, must not load.
HEAVY = ("torch", "numpy", "safetensors", "transformers")
# And what the CLI's daemon-only verbs must not load on top of that.
CLI_HEAVY = (*HEAVY, "aiohttp", "cryptography", "libtorrent", "asyncio")

_MAIN = "import sys; from p2pweights.cli import main; sys.exit(main(sys.argv[1:]))"


def imported_by(
    code: str, *args: str, home: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``code`` under ``python -X importtime``; the process and every module it imported."""
    env = dict(os.environ)
    if home is not None:
        env["P2PW_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert modules, proc.stderr[-2000:]
    return proc, modules


def cli_imports(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the real ``p2pw`` entry point with ``args``; the process and what it imported."""
    return imported_by(_MAIN, *args, home=home)


def heavy_in(modules: set[str], heavy: tuple[str, ...] = HEAVY) -> set[str]:
    """The heavy top-level packages among ``modules``."""
    return {m for m in modules if m.split(".", 1)[0] in heavy}
