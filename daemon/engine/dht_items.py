"""BEP 44 mutable items: read through libtorrent's DHT, written verbatim through KRPC.

* **Get.** ``session.dht_get_mutable_item(key, salt)`` walks the DHT; libtorrent posts a
  ``dht_mutable_item_alert`` each time it finds a higher sequence number (it drops items
  whose signature fails), and once more, ``authoritative``, when the walk is over. A get
  here is a future resolved from those alerts, never a poll; the caller still checks the
  signature itself (:meth:`p2pweights.names.SignedItem.verify`).
* **Put.** Through :class:`~.krpc.KrpcClient`, with the item exactly as signed: see that
  module for why the binding's own put cannot serve. The walk starts at this session's
  own DHT node and its bootstrap nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from p2pweights.names import SignedItem

from .krpc import KrpcClient, resolve_nodes
from .settings import EngineSettings
from .values import EngineError

__all__ = ["DhtGet", "DhtItems", "on_mutable_item"]

log = logging.getLogger(__name__)

_NO_SIGNATURE = bytes(64)


@dataclass(eq=False)
class DhtGet:
    """One get in flight: the best item its alerts brought so far."""

    future: asyncio.Future[None]
    best: SignedItem | None = None
    authoritative: bool = False
    answers: list[int] = field(default_factory=list)
    """Sequence numbers of the items the walk found, in order (for logs and tests)."""


def on_mutable_item(gets: dict[tuple[bytes, bytes], list[DhtGet]], a: Any) -> None:
    """Feed one ``dht_mutable_item_alert`` to the gets waiting for its key and salt."""
    slot = (bytes(a.key), bytes(a.salt))
    waiting = gets.get(slot)
    if not waiting:
        return
    raw, signature = a.item, bytes(a.signature)
    item = None
    if isinstance(raw, bytes) and raw and signature != _NO_SIGNATURE:  # a string value found
        item = SignedItem(slot[0], slot[1], int(a.seq), signature, raw)
    for g in waiting:
        if item is not None:
            g.answers.append(item.seq)
            if g.best is None or item.seq > g.best.seq:
                g.best = item
    if a.authoritative:
        for g in gets.pop(slot, []):
            g.authoritative = True
            if not g.future.done():
                g.future.set_result(None)


class DhtItems:
    """The engine's BEP 44 operations (a mixin of :class:`~.session.Engine`)."""

    _ses: Any
    _loop: asyncio.AbstractEventLoop
    settings: EngineSettings
    _dht_gets: dict[tuple[bytes, bytes], list[DhtGet]]
    _krpc: KrpcClient | None

    @property
    def dht_enabled(self) -> bool:
        """Whether this session runs a DHT node."""
        return bool(self.settings.enable_dht) and self._ses is not None

    async def dht_get(self, key: bytes, salt: bytes, timeout: float) -> DhtGet:
        """Walk the DHT for the mutable item under ``key`` and ``salt``.

        Returns:
            The get: ``best`` is the highest sequence number found with a good signature
            (libtorrent's check), None if nothing was; ``authoritative`` is False when
            ``timeout`` ended the walk first.

        Raises:
            EngineError: the DHT is off.
        """
        if not self.dht_enabled:
            raise EngineError("the DHT is off")
        g = DhtGet(self._loop.create_future())
        slot = (bytes(key), bytes(salt))
        self._dht_gets.setdefault(slot, []).append(g)
        self._ses.dht_get_mutable_item(slot[0], slot[1])
        try:
            await asyncio.wait_for(asyncio.shield(g.future), timeout)
        except TimeoutError:
            log.info("DHT get %s: no authoritative answer in %.1fs", slot[1].hex()[:12], timeout)
        finally:
            with contextlib.suppress(ValueError, KeyError):
                self._dht_gets[slot].remove(g)
                if not self._dht_gets[slot]:
                    del self._dht_gets[slot]
        return g

    def _dht_host(self) -> str:
        host = self.settings.outgoing_interface
        if not host:
            first = self.settings.listen_interfaces.split(",")[0].strip()
            host = first.rpartition(":")[0].strip("[]")
        return host or "0.0.0.0"  # noqa: S104 - the socket's source, as libtorrent's

    def dht_nodes(self) -> list[tuple[str, int]]:
        """The session's own DHT node (it answers on the listen port), to start a walk."""
        host = self._dht_host()
        try:
            if ipaddress.ip_address(host).is_unspecified:
                host = "::1" if ":" in host else "127.0.0.1"
        except ValueError:
            host = "127.0.0.1"
        return [(host, int(self._ses.listen_port()))]

    async def dht_put(self, item: SignedItem, extra_nodes: Iterable[tuple[str, int]] = ()) -> int:
        """Put ``item`` verbatim on the nodes closest to it.

        Returns:
            How many nodes accepted it.

        Raises:
            EngineError: the DHT is off.
        """
        if not self.dht_enabled:
            raise EngineError("the DHT is off")
        if self._krpc is None:
            self._krpc = KrpcClient(self._dht_host())
        boot = await resolve_nodes(self.settings.dht_bootstrap_nodes.split(","))
        seeds = list(dict.fromkeys([*self.dht_nodes(), *boot, *extra_nodes]))
        stored = await self._krpc.put(item, seeds)
        log.info("DHT put seq %d under %s: %d node(s)", item.seq, item.salt.hex()[:12], stored)
        return stored

    def _close_dht(self) -> None:
        for gets in self._dht_gets.values():
            for g in gets:
                if not g.future.done():
                    g.future.set_result(None)
        self._dht_gets.clear()
        if self._krpc is not None:
            self._krpc.close()
            self._krpc = None
