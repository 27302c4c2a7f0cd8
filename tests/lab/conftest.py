"""The network lab (``scripts/netlab.py``) for tests: hosts in namespaces, daemons in hosts.

Every test here needs root; elsewhere it is skipped with the lab's one reason.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p2pweights import PublicKey, TrustStore

from ..daemon.conftest import Daemon

_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
if str(_SCRIPTS) not in sys.path:  # the lab lives with the benchmarks, which share it
    sys.path.insert(0, str(_SCRIPTS))

from netlab import Host, Lab, unavailable  # noqa: E402

LAN_PORT = 6881


@dataclass
class LabDaemon(Daemon):
    """A daemon in a lab host, on the host's address (``--profile lan`` by default)."""

    host: Host | None = None

    def start(self) -> LabDaemon:
        assert self.host is not None
        self.pid = self.host.start_daemon(self.home, ["--log-level", "INFO", *self.args])
        return self


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh lab, torn down after the test whatever happens."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with Lab() as made:
        yield made


@pytest.fixture
def lab_daemons(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., LabDaemon]]:
    """Make a daemon in a new lab host: ``make(*args, rate=0, trust=key, profile="lan")``."""
    made: list[LabDaemon] = []

    def make(
        *args: str, rate: int = 0, trust: PublicKey | None = None, profile: str = "lan",
        name: str | None = None,
    ) -> LabDaemon:
        host = lab.add_host(rate)
        home = tmp_path / (name or f"d{len(made)}")
        home.mkdir(mode=0o700)
        if trust is not None:
            TrustStore.load(home / "trust.json").add(trust, "publisher")
        argv = ["--profile", profile, "--listen", f"{host.addr}:{LAN_PORT}", *args]
        d = LabDaemon(home, host.addr, argv, host=host).start()
        made.append(d)
        return d

    yield make
    for d in made:
        if d.pid:
            d.stop()
