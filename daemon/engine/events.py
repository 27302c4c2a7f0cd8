"""An engine event subscriber's stream."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self

from .values import EngineEvent

__all__ = ["EventStream"]


class EventStream:
    """Events of one subscriber; iterate with ``async for``, stop with :meth:`close`."""

    def __init__(self, subscribers: set[EventStream], maxsize: int) -> None:
        self._subscribers = subscribers
        self._queue: asyncio.Queue[EngineEvent | None] = asyncio.Queue(maxsize)
        self.dropped = 0
        """Events dropped because the subscriber fell behind (oldest go first)."""

    def _put(self, event: EngineEvent | None) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._queue.get_nowait()
                    self.dropped += 1

    def drain(self) -> list[EngineEvent]:
        """Every event queued so far, without waiting."""
        out: list[EngineEvent] = []
        while not self._queue.empty():
            event = self._queue.get_nowait()
            if event is None:
                self._put(None)
                break
            out.append(event)
        return out

    def close(self) -> None:
        """Stop this stream; a pending ``async for`` ends."""
        self._subscribers.discard(self)
        self._put(None)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> EngineEvent:
        event = await self._queue.get()
        if event is None:
            self._put(None)  # stay closed for later calls
            raise StopAsyncIteration
        return event

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
