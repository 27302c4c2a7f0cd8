"""Real daemons in separate processes, each on its own loopback address."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from p2pweights.client import DaemonClient, start_daemon

from ._dht_nodes import DhtNodes

# One loopback address per daemon, never reused within a run.
_ADDRESSES = (f"127.0.{b}.{c}" for b, c in itertools.product(range(10, 250), range(2, 250)))


def wait_pid_exit(pid: int, timeout: float) -> bool:
    """Wait for a process to exit, on its pidfd (an event, not a poll)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        import select

        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


@dataclass
class Daemon:
    """A p2pweights daemon process with its own data dir and loopback address."""

    home: Path
    addr: str
    args: list[str] = field(default_factory=list)
    pid: int = 0

    @property
    def client(self) -> DaemonClient:
        return DaemonClient(self.home)

    def start(self) -> Daemon:
        self.pid = start_daemon(
            self.home,
            extra_args=[
                "--profile",
                "local",
                "--listen",
                f"{self.addr}:0",
                "--outgoing-interface",
                self.addr,
                "--log-level",
                "INFO",
                *self.args,
            ],
        )
        return self

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return asyncio.run(getattr(self.client, name)(*args, **kwargs))

    @property
    def port(self) -> int:
        return int(self.call("status")["listen_port"])

    @property
    def peer(self) -> str:
        return f"{self.addr}:{self.port}"

    def stop(self) -> None:
        """SIGTERM and wait: the clean shutdown path."""
        if self.pid and not wait_pid_exit(self.pid, 0):
            os.kill(self.pid, signal.SIGTERM)
            assert wait_pid_exit(self.pid, 60), f"daemon {self.pid} ignored SIGTERM"
        self.pid = 0

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        assert wait_pid_exit(self.pid, 30)
        self.pid = 0

    def log(self) -> str:
        path = self.home / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_done(self, rid: str, timeout: float = 120) -> dict[str, Any]:
        """``wait`` for a fetch to end; a hang fails the test with its state and log.

        The report is the test's whole message (pytest would cut an assertion's short).
        """
        info: dict[str, Any] = self.call("wait", rid, timeout)
        if info["timed_out"]:
            transfer = info.get("transfer", {})
            log = "".join(line for line in self.log().splitlines(True) if "aiohttp" not in line)
            pytest.fail(
                f"state {info.get('state')}, history {transfer.get('state_history')}, "
                f"peers {transfer.get('peers')}, wanted {transfer.get('wanted_done')}"
                f"/{transfer.get('wanted')}, error {info.get('error')}\n{log[-6000:]}",
                pytrace=False,
            )
        return info


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Make daemons; every one still running is stopped (SIGTERM, then SIGKILL) at the end."""
    made: list[Daemon] = []

    def make(*args: str, name: str | None = None) -> Daemon:
        home = tmp_path / (name or f"d{len(made)}")
        d = Daemon(home, next(_ADDRESSES), list(args)).start()
        made.append(d)
        return d

    yield make
    for d in made:
        if d.pid:
            try:
                d.stop()
            except (AssertionError, ProcessLookupError):
                os.kill(d.pid, signal.SIGKILL)


def p2pw(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `p2pw` console script against a daemon's home."""
    exe = Path(sys.executable).with_name("p2pw")
    env = {**os.environ, "P2PW_HOME": str(home)}
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=300, env=env, check=False
    )


@pytest.fixture
def dht() -> Iterator[Callable[..., DhtNodes]]:
    """Makes loopback DHTs of plain libtorrent nodes; stops them after the test."""
    made: list[DhtNodes] = []

    def make(count: int = 6) -> DhtNodes:
        made.append(DhtNodes(count))
        return made[-1]

    yield make
    for d in made:
        d.stop()
