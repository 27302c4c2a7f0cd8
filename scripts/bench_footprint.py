"""Benchmark the CLI's and the daemon's footprint, and a daemon holding many releases.

Usage::

    .venv/bin/python scripts/bench_footprint.py [--releases 1000] [--runs 5] [--json]

Every CLI figure is a whole process (interpreter start included), median of ``--runs``:
wall time, and peak RSS from ``wait4``'s ``ru_maxrss``. The baseline is Hugging Face's own
CLI in the same run: ``hf version``, else ``huggingface-cli version``, else
``python -c 'import huggingface_hub'`` (the output says which).

- ``p2pw --version``, ``p2pw --help``, and ``p2pw ls`` with a daemon running (empty);
- the daemon (``--profile local`` on 127.0.9.2, its own data dir): start to ready (what
  ``p2pw daemon start`` waits for: the daemon writes ``ready`` once its API serves, after
  every release in the catalog is back in the session), and its VmRSS when idle;
- ``--releases`` tiny synthetic releases (one small tensor and a config each, every one
  different) published to it: its VmRSS then, ``p2pw ls`` over all of them, and a clean
  restart (SIGTERM saves resume data) timed to ready; after the restart every release
  must be seeding and none may have gone through libtorrent's ``checking_files`` state
  (its ``state_history``), i.e. nothing was re-hashed.

Targets (issue 12): CLI wall <= 1.5x the baseline and peak <= 60 MiB; daemon <= 80 MiB
idle, <= 200 MiB with 1,000 releases; ready <= 1 s empty, <= 10 s with 1,000 and none
re-hashed; ``p2pw ls`` <= 0.5 s with 1,000.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _synthetic import work_dir

from p2pweights import generate_key, pack
from p2pweights._canonical import dumps
from p2pweights.client import DaemonClient, start_daemon

_ADDR = "127.0.9.2"
_MIB = 1024 * 1024
_BIN = Path(sys.executable).parent


# A fork carries the parent's resident set into the child's ru_maxrss until the exec, so
# each process is spawned from a small helper interpreter (~10 MiB, below any measured
# process), not from this one.
_SPAWN = (
    "import os, sys, time\n"
    "t = time.perf_counter()\n"
    "pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=["
    "(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),"
    "(os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(time.perf_counter() - t, usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)


def _measure(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one whole process."""
    out = subprocess.run(
        [sys.executable, "-c", _SPAWN, *argv], env=env, capture_output=True, text=True,
        check=True,
    ).stdout.split()
    wall, maxrss_kib, code = float(out[0]), int(out[1]), int(out[2])
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {code}")
    return wall, maxrss_kib / 1024


def _median(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    _measure(argv, env)  # warm the page cache; not counted
    samples = [_measure(argv, env) for _ in range(runs)]
    return {
        "wall_s": round(statistics.median(s[0] for s in samples), 4),
        "peak_mib": round(statistics.median(s[1] for s in samples), 1),
    }


def _hf_baseline() -> tuple[str, list[str]]:
    for name, args in (("hf", ["version"]), ("huggingface-cli", ["version"])):
        exe = _BIN / name if (_BIN / name).exists() else shutil.which(name)
        if exe:
            return f"{name} {' '.join(args)}", [str(exe), *args]
    return "python -c 'import huggingface_hub'", [sys.executable, "-c", "import huggingface_hub"]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise SystemExit(f"no VmRSS for {pid}")


def _tiny_model(root: Path, i: int) -> Path:
    """One 64-float tensor and a config, with bytes that differ for every ``i``."""
    root.mkdir(parents=True)
    header = dumps({"w": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}})
    header += b" " * (-len(header) % 8)
    data = struct.pack("<64f", *(float(i * 64 + k) for k in range(64)))
    (root / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + data)
    (root / "config.json").write_text(json.dumps({"model_type": "tiny", "index": i}))
    return root


def make_releases(work: Path, count: int) -> list[Path]:
    key = generate_key(work / "key.pem")

    def one(i: int) -> Path:
        out = work / "releases" / f"r{i:05d}"
        pack(_tiny_model(work / "models" / f"m{i:05d}", i), out, name="bench/tiny", version=i,
             key=key)
        return out

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


class Daemon:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.pid = 0
        self.client = DaemonClient(home, timeout=600)

    def start(self) -> float:
        """Start it; seconds from spawn to ready."""
        t0 = time.perf_counter()
        self.pid = start_daemon(
            self.home,
            extra_args=["--profile", "local", "--listen", f"{_ADDR}:0",
                        "--outgoing-interface", _ADDR, "--log-level", "WARNING"],
            timeout=600,
        )
        return time.perf_counter() - t0

    def stop(self) -> float:
        """SIGTERM and wait for the exit (resume data is saved first); seconds."""
        t0 = time.perf_counter()
        fd = os.pidfd_open(self.pid)
        try:
            os.kill(self.pid, signal.SIGTERM)
            import select

            if not select.select([fd], [], [], 600)[0]:
                raise SystemExit(f"daemon {self.pid} did not stop")
        finally:
            os.close(fd)
        os.waitpid(self.pid, 0)  # start_daemon spawned it: ours to reap
        self.pid = 0
        return time.perf_counter() - t0

    def idle_rss(self) -> float:
        self.client.request_sync("GET", "/status")
        return _rss_mib(self.pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--releases", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    started = time.perf_counter()
    out: dict[str, Any] = {"releases": args.releases, "runs": args.runs}
    with work_dir(args.workdir) as work:
        home = work / "home"
        env = {**os.environ, "P2PW_HOME": str(home), "P2PW_CONFIG": str(work / "none.toml")}
        os.environ.update(P2PW_CONFIG=env["P2PW_CONFIG"])
        p2pw = str(_BIN / "p2pw")
        label, hf = _hf_baseline()
        out["baseline"] = {"command": label, **_median(hf, env, args.runs)}
        out["p2pw --version"] = _median([p2pw, "--version"], env, args.runs)
        out["p2pw --help"] = _median([p2pw, "--help"], env, args.runs)

        d = Daemon(home)
        ready = [d.start()]
        for _ in range(2):  # start-to-ready, empty: median of 3 starts
            d.stop()
            ready.append(d.start())
        out["daemon ready, empty (s)"] = round(statistics.median(ready), 3)
        out["daemon RSS idle (MiB)"] = d.idle_rss()
        out["p2pw ls (empty)"] = _median([p2pw, "ls"], env, args.runs)
        torch_loaded = d.client.request_sync("GET", "/status")["modules_loaded"]

        t0 = time.perf_counter()
        releases = make_releases(work, args.releases)
        out["pack all (s)"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(
                lambda r: d.client.request_sync("POST", "/publish", body={"path": str(r)})["id"],
                releases,
            ))
        out["publish all (s)"] = round(time.perf_counter() - t0, 1)
        out[f"daemon RSS with {args.releases} (MiB)"] = d.idle_rss()
        out[f"p2pw ls with {args.releases}"] = _median([p2pw, "ls"], env, args.runs)
        out["daemon stop, saving resume data (s)"] = round(d.stop(), 2)
        out[f"daemon ready with {args.releases} (s)"] = round(d.start(), 3)
        rows = d.client.request_sync("GET", "/releases")["releases"]
        rehashed = [
            r["id"] for r in rows
            if "checking_files" in (r.get("transfer") or {}).get("state_history", [])
        ]
        seeding = sum(r["state"] == "seeding" for r in rows)
        out["after restart"] = {"releases": len(rows), "seeding": seeding,
                                "rehashed": len(rehashed)}
        out[f"daemon RSS with {args.releases} after restart (MiB)"] = d.idle_rss()
        out["daemon modules_loaded"] = {
            "empty": torch_loaded,
            f"with {args.releases}": d.client.request_sync("GET", "/status")["modules_loaded"],
        }
        d.stop()
        if sorted(ids) != sorted(r["id"] for r in rows):
            raise SystemExit("the restarted daemon does not hold the releases it published")
    out["bench seconds"] = round(time.perf_counter() - started, 1)
    _report(out, args)


def _report(out: dict[str, Any], args: argparse.Namespace) -> None:
    base = out["baseline"]
    n = args.releases
    for key in ("p2pw --version", "p2pw --help", "p2pw ls (empty)", f"p2pw ls with {n}"):
        out[key]["wall_vs_baseline"] = round(out[key]["wall_s"] / base["wall_s"], 2)
    checks = {
        "CLI wall <= 1.5x baseline": all(
            out[k]["wall_vs_baseline"] <= 1.5
            for k in ("p2pw --version", "p2pw --help", "p2pw ls (empty)")
        ),
        "CLI peak <= 60 MiB": all(
            out[k]["peak_mib"] <= 60 for k in ("p2pw --version", "p2pw --help", "p2pw ls (empty)")
        ),
        "daemon idle <= 80 MiB": out["daemon RSS idle (MiB)"] <= 80,
        f"daemon with {n} <= 200 MiB": out[f"daemon RSS with {n} (MiB)"] <= 200,
        "ready empty <= 1 s": out["daemon ready, empty (s)"] <= 1.0,
        f"ready with {n} <= 10 s, none re-hashed": out[f"daemon ready with {n} (s)"] <= 10
        and out["after restart"]["rehashed"] == 0
        and out["after restart"]["seeding"] == n,
        f"p2pw ls with {n} <= 0.5 s": out[f"p2pw ls with {n}"]["wall_s"] <= 0.5,
        "no torch in the daemon": not any(
            any(v.values()) for v in out["daemon modules_loaded"].values()
        ),
    }
    out["targets"] = checks
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"baseline: {base['command']}: {base['wall_s']:.3f} s, {base['peak_mib']:.1f} MiB")
    for key in ("p2pw --version", "p2pw --help", "p2pw ls (empty)", f"p2pw ls with {n}"):
        v = out[key]
        print(f"{key:<24} {v['wall_s']:.3f} s ({v['wall_vs_baseline']:.2f}x)  "
              f"{v['peak_mib']:.1f} MiB")
    for key, v in out.items():
        if isinstance(v, (int, float)) and key not in ("releases", "runs"):
            print(f"{key:<44} {v}")
    print(f"after restart: {out['after restart']}")
    print(f"daemon modules_loaded: {out['daemon modules_loaded']}")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")


if __name__ == "__main__":
    main()
