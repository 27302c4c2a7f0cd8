"""A fetch that stops moving: told apart from a starved one, logged, and set going again.

A fetch can stop for two reasons. It is *stuck* when not one payload byte arrives
for ``stall_s`` seconds while a connected peer has a piece it lacks, does not choke it,
and is asked for nothing: libtorrent's piece picker has then lost track of a piece
(seen in CI: a piece that failed its hash check was never asked for again, and the
fetch hung with every other byte in). Otherwise it is *starved* (every holder chokes
it, none is connected, or the holders do not answer what they are asked): only the
swarm can change that, so it waits.
A stuck fetch is checked again (libtorrent's ``force_recheck``, which rebuilds the
picker's state from the files on disk) and its named peers are dialled again, at most
``MAX_RECOVERIES`` times per fetch. Both cases are logged with libtorrent's view of
the torrent (:func:`daemon.engine.stall_report`), so a report says which it was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .engine import Engine, EngineError

__all__ = ["MAX_RECOVERIES", "STALL_S", "StallWatch"]

log = logging.getLogger(__name__)

STALL_S = 30.0
"""Seconds without a payload byte after which a fetch is looked at."""
MAX_RECOVERIES = 3
"""Rechecks one fetch may get; past that a stuck fetch is only reported."""


class StallWatch:
    """Waits for a fetch's next complete files, and recovers it if it gets stuck."""

    def __init__(
        self,
        engine: Engine,
        rid: str,
        tid: str,
        redial: Callable[[], None],
        *,
        stall_s: float = STALL_S,
    ) -> None:
        self.engine, self.rid, self.tid = engine, rid, tid
        self.redial = redial
        self.stall_s = stall_s
        self.recoveries = 0

    async def next_files(self, indices: list[int]) -> list[int]:
        """:meth:`Engine.wait_any_file`, looking at the fetch every ``stall_s`` seconds."""
        waiting = asyncio.ensure_future(self.engine.wait_any_file(self.tid, indices))
        try:
            moved = self.engine.status(self.tid).total_payload_download
            while True:
                done, _ = await asyncio.wait([waiting], timeout=self.stall_s)
                if done:
                    return waiting.result()
                now = self.engine.status(self.tid).total_payload_download
                if now == moved:
                    await self._stalled()
                moved = now
        finally:
            waiting.cancel()

    async def _stalled(self) -> None:
        stall = self.engine.stall_report(self.tid)
        name = self.rid[:16]
        if not stall.idle_senders:
            log.info("%s: starved for %.0f s: %s", name, self.stall_s, stall.text)
            return
        if self.recoveries >= MAX_RECOVERIES:
            log.warning("%s: stuck again, not rechecked any more: %s", name, stall.text)
            return
        self.recoveries += 1
        log.warning(
            "%s: stuck for %.0f s, %d peer(s) able to send not asked for anything; its "
            "files are checked again (%d of %d): %s",
            name,
            self.stall_s,
            stall.idle_senders,
            self.recoveries,
            MAX_RECOVERIES,
            stall.text,
        )
        try:
            await self.engine.force_recheck(self.tid)
        except EngineError as exc:  # paused or removed meanwhile: nothing to recover
            log.info("%s: not rechecked: %s", name, exc)
            return
        self.redial()
