"""A stalled fetch: stuck ones are rechecked and redialled (a few times), starved ones wait.

The engine is a fake: what it reports is what each test sets, and the file wait ends
when the test's script says so.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from daemon.engine import EngineError, StallReport
from daemon.stall_watch import MAX_RECOVERIES, StallWatch

TID = "ab" * 32


@dataclass
class Status:
    total_payload_download: int


@dataclass
class FakeEngine:
    """payload: the downloaded total each status() returns, in turn (the last repeats)."""

    payload: list[int]
    idle_senders: int = 1
    unstuck_by_recheck: bool = True
    recheck_fails: bool = False
    done_after_reports: int | None = None
    done_after_status: int | None = None
    rechecks: int = 0
    reports: int = 0
    statuses: int = 0
    files: asyncio.Future[list[int]] | None = None
    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the watch waits on the files."""
    log: list[str] = field(default_factory=list)

    def _finish(self) -> None:
        assert self.files is not None
        if not self.files.done():
            self.files.set_result([3])

    async def wait_any_file(self, tid: str, indices: list[int]) -> list[int]:
        self.files = asyncio.get_running_loop().create_future()
        self.waiting.set()
        return await self.files

    def status(self, tid: str) -> Status:
        self.statuses += 1
        if self.done_after_status is not None and self.statuses >= self.done_after_status:
            self._finish()
        return Status(self.payload[min(self.statuses - 1, len(self.payload) - 1)])

    def stall_report(self, tid: str) -> StallReport:
        self.reports += 1
        if self.done_after_reports is not None and self.reports >= self.done_after_reports:
            self._finish()
        return StallReport(missing=4, idle_senders=self.idle_senders, text="state downloading")

    async def force_recheck(self, tid: str) -> None:
        self.log.append("recheck")
        if self.recheck_fails:
            raise EngineError(f"torrent {tid} is paused; resume it before a recheck")
        self.rechecks += 1
        if self.unstuck_by_recheck:
            self._finish()


def _watch(engine: FakeEngine) -> StallWatch:
    def redial() -> None:
        engine.log.append("redial")

    return StallWatch(engine, "r" * 64, TID, redial, stall_s=0.01)  # type: ignore[arg-type]


def _next(engine: FakeEngine) -> tuple[list[int], StallWatch]:
    watch = _watch(engine)

    async def go() -> list[int]:
        return await asyncio.wait_for(watch.next_files([1, 3]), 10)

    return asyncio.run(go()), watch


def test_a_stuck_fetch_is_rechecked_and_its_peers_dialled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = FakeEngine(payload=[500])
    files, watch = _next(engine)
    assert files == [3]
    assert engine.log == ["recheck", "redial"] and watch.recoveries == 1
    assert "stuck for" in caplog.text and "not asked for anything" in caplog.text


def test_a_starved_fetch_waits_without_a_recheck(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    engine = FakeEngine(payload=[500], idle_senders=0, done_after_reports=3)
    files, watch = _next(engine)
    assert files == [3] and engine.reports == 3
    assert engine.log == [] and watch.recoveries == 0
    assert "starved" in caplog.text


def test_a_moving_fetch_is_not_looked_at() -> None:
    engine = FakeEngine(payload=list(range(0, 10_000, 100)), done_after_status=5)
    files, watch = _next(engine)
    assert files == [3]
    assert engine.reports == 0 and engine.log == [] and watch.recoveries == 0


def test_rechecks_stop_after_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(
        payload=[500], unstuck_by_recheck=False, done_after_reports=MAX_RECOVERIES + 2
    )
    files, watch = _next(engine)
    assert files == [3]
    assert engine.rechecks == MAX_RECOVERIES == watch.recoveries
    assert engine.log == ["recheck", "redial"] * MAX_RECOVERIES
    assert "not rechecked any more" in caplog.text


def test_a_recheck_the_engine_refuses_dials_nobody(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    engine = FakeEngine(payload=[500], recheck_fails=True, done_after_reports=2)
    files, _ = _next(engine)
    assert files == [3]
    assert engine.log == ["recheck", "recheck"] and engine.rechecks == 0
    assert "not rechecked: torrent" in caplog.text


def test_the_file_wait_is_cancelled_when_the_watch_is() -> None:
    engine = FakeEngine(payload=list(range(0, 10_000, 100)))

    async def go() -> None:
        task = asyncio.ensure_future(_watch(engine).next_files([1]))
        await asyncio.wait_for(engine.waiting.wait(), 10)
        assert engine.files is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.files.cancelled()

    asyncio.run(go())
