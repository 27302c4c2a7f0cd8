"""What a caller of the engine waits on: one tracked torrent's futures and conditions.

Milestones (metadata, renames, pauses, resume data…) are futures keyed by name, resolved
from alerts; conditions (a file complete, the torrent finished) are re-checked after each
batch of alerts that touched the torrent. A torrent error fails every waiter of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .values import EngineError, TorrentFailedError, TorrentStatus

__all__ = ["Tracked", "Waiter"]


@dataclass(eq=False)
class Waiter:
    """A condition someone awaits, re-checked as alerts arrive."""

    ready: Callable[[], bool]
    future: asyncio.Future[None]


@dataclass(eq=False)
class Tracked:
    """A torrent of the engine, with its waiters and what libtorrent forgets."""

    id: str
    handle: Any
    waiters: list[Waiter] = field(default_factory=list)
    once: dict[str, list[asyncio.Future[Any]]] = field(default_factory=dict)
    error: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    payload_down: int = 0
    """Payload counted before a reconnect (libtorrent resets its session counters)."""
    payload_up: int = 0
    disk_full: str | None = None
    """libtorrent's message while the torrent is stopped by a full disk."""
    failed_pieces: set[int] = field(default_factory=set)
    """Pieces that failed the hash check once (a second failure may be the first's
    leftovers, so it blames no web seed)."""
    hashfails: dict[str, int] = field(default_factory=dict)
    """Per peer address, its failed pieces as libtorrent counted them last time."""
    banned: set[str] = field(default_factory=set)
    """Peers libtorrent banned for sending bad data (``peer_ban_alert``)."""
    just_banned: set[str] = field(default_factory=set)
    """Peers banned since the last failed piece was logged: that piece's senders."""

    def adjust(self, status: TorrentStatus) -> TorrentStatus:
        """``status`` with the payload counted before any reconnect added back."""
        if not (self.payload_down or self.payload_up):
            return status
        return replace(
            status,
            total_payload_download=status.total_payload_download + self.payload_down,
            total_payload_upload=status.total_payload_upload + self.payload_up,
        )

    def expect(
        self, loop: asyncio.AbstractEventLoop, key: str, *, even_failed: bool = False
    ) -> asyncio.Future[Any]:
        """A future for the next milestone ``key`` (resolved by :meth:`fire`)."""
        if self.error is not None and not even_failed:
            raise TorrentFailedError(f"torrent {self.id}: {self.error}")
        fut: asyncio.Future[Any] = loop.create_future()
        self.once.setdefault(key, []).append(fut)
        return fut

    def fire(self, key: str, value: object = None) -> None:
        """Resolve every future waiting for milestone ``key``."""
        for fut in self.once.pop(key, []):
            if not fut.done():
                fut.set_result(value)

    def fail_key(self, key: str, exc: BaseException) -> None:
        """Fail every future waiting for milestone ``key``."""
        for fut in self.once.pop(key, []):
            if not fut.done():
                fut.set_exception(exc)

    def fail(self, exc: BaseException) -> None:
        """Fail every waiter of this torrent."""
        for key in list(self.once):
            self.fail_key(key, exc)
        for w in self.waiters:
            if not w.future.done():
                w.future.set_exception(exc)
        self.waiters.clear()

    async def wait(self, loop: asyncio.AbstractEventLoop, ready: Callable[[], bool]) -> None:
        """Return once ``ready()`` holds; it is re-checked after each batch of alerts."""
        if self.error is not None:
            raise TorrentFailedError(f"torrent {self.id}: {self.error}")
        if ready():
            return
        waiter = Waiter(ready, loop.create_future())
        self.waiters.append(waiter)
        try:
            await waiter.future
        finally:
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)

    def recheck_waiters(self) -> None:
        """Resolve the waiters whose condition holds now."""
        for w in list(self.waiters):
            if w.future.done():
                continue
            try:
                if w.ready():
                    w.future.set_result(None)
            except RuntimeError as exc:  # the handle went invalid
                w.future.set_exception(EngineError(f"torrent {self.id}: {exc}"))
