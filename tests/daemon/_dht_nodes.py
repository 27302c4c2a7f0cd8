"""Plain libtorrent DHT nodes for the names and search tests (a loopback DHT)."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from pathlib import Path

from p2pweights.names import SignedItem
from p2pweightsd.engine.krpc import KrpcClient

_BASES = (f"127.0.{b}" for b in itertools.count(250, -1))
"""Address blocks for the plain DHT nodes (the daemons' come from conftest, 10 up)."""


class DhtNodes:
    """Plain libtorrent DHT nodes in a child process (``scripts/_dht_nodes.py``)."""

    def __init__(self, count: int = 6, *, base: str | None = None, ports: str = "") -> None:
        self.base = base or next(_BASES)
        helper = Path(__file__).parents[2] / "scripts" / "_dht_nodes.py"
        args = [sys.executable, str(helper), self.base, str(count)]
        self.proc = subprocess.Popen(
            [*args, *(["--ports", ports] if ports else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.nodes = [tuple(n) for n in json.loads(self.proc.stdout.readline())["nodes"]]

    @property
    def boot(self) -> str:
        return f"{self.nodes[0][0]}:{self.nodes[0][1]}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def restart_empty(self) -> None:
        """The same nodes (addresses and ports) again, having forgotten every item."""
        self.stop()
        ports = ",".join(str(p) for _, p in self.nodes)
        fresh = DhtNodes(len(self.nodes), base=self.base, ports=ports)
        self.proc, self.nodes = fresh.proc, fresh.nodes

    def holders(self, item: SignedItem) -> list[SignedItem]:
        """What each node holds under the item's key and salt (read over KRPC)."""

        async def ask() -> list[SignedItem]:
            client = KrpcClient(f"{self.base}.200")
            try:
                got = [await client.get(n, item.key, item.salt) for n in self.nodes]
            finally:
                client.close()
            return [g for g in got if g is not None]

        return asyncio.run(ask())

    def put(self, item: SignedItem) -> int:
        """Put ``item`` verbatim into these nodes, as a hostile or honest node would."""

        async def go() -> int:
            client = KrpcClient(f"{self.base}.201")
            try:
                return await client.put(item, list(self.nodes))
            finally:
                client.close()

        return asyncio.run(go())
