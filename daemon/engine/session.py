"""One libtorrent session driven from asyncio: alerts, waiters, torrents."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self, cast, get_args

import libtorrent as lt

from p2pweights._paths import check_relative
from p2pweights.errors import FormatError

from .peers import PeerInfo, file_progress, peers_of
from .settings import EngineSettings
from .torrents import parse_magnet, torrent_from_info
from .values import (
    EngineError,
    EngineEvent,
    MagnetLink,
    TorrentFailedError,
    TorrentFile,
    TorrentFileEntry,
    TorrentState,
    TorrentStatus,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Waiter:
    ready: Callable[[], bool]
    future: asyncio.Future[None]


@dataclass(eq=False)
class _Torrent:
    id: str
    handle: Any
    waiters: list[_Waiter] = field(default_factory=list)
    once: dict[str, list[asyncio.Future[Any]]] = field(default_factory=dict)
    error: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    payload_down: int = 0
    """Payload counted before a reconnect (libtorrent resets its session counters)."""
    payload_up: int = 0
    disk_full: str | None = None
    """libtorrent's message while the torrent is stopped by a full disk."""

    def adjust(self, status: TorrentStatus) -> TorrentStatus:
        """``status`` with the payload counted before any reconnect added back."""
        if not (self.payload_down or self.payload_up):
            return status
        return replace(
            status,
            total_payload_download=status.total_payload_download + self.payload_down,
            total_payload_upload=status.total_payload_upload + self.payload_up,
        )


class EventStream:
    """Events of one subscriber; iterate with ``async for``, stop with :meth:`close`."""

    def __init__(self, engine: Engine, maxsize: int) -> None:
        self._engine = engine
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
        self._engine._subscribers.discard(self)
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


class Engine:
    """One libtorrent session driven from asyncio. Create it with :meth:`start`.

    Every method must be called from the event loop that started the engine.
    """

    def __init__(
        self, session: Any, settings: EngineSettings, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._ses: Any = session
        self.settings = settings
        self._loop = loop
        self._torrents: dict[str, _Torrent] = {}
        self._subscribers: set[EventStream] = set()
        self._listen: asyncio.Future[int] = loop.create_future()
        self._listen_failures: list[str] = []
        self._closed = False
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._ticker: asyncio.Task[None] | None = None

    # ---- lifecycle

    @classmethod
    async def start(cls, settings: EngineSettings, *, listen_timeout: float = 10.0) -> Engine:
        """Start a session and wait until it listens.

        Raises:
            EngineError: the session could not listen on any interface.

        """
        loop = asyncio.get_running_loop()
        params = lt.session_params(cast(Any, settings.settings_pack()))
        # Only these exact strings select a back end; anything else silently means pread.
        params.disk_io_constructor = f"{settings.disk_io}_disk_io_constructor"
        session: Any = lt.session(params)
        engine = cls(session, settings, loop)
        if settings.apply_limits_to_local:
            flt = lt.ip_filter()
            everyone = 1 << lt.session.global_peer_class_id
            flt.add_rule("0.0.0.0", "255.255.255.255", everyone)  # noqa: S104 - a filter, not a bind
            flt.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", everyone)
            session.set_peer_class_filter(flt)
        loop.add_reader(engine._rsock.fileno(), engine._on_readable)
        session.set_alert_fd(engine._wsock.fileno())
        engine._pump()  # alerts posted before the fd was set
        try:
            await asyncio.wait_for(asyncio.shield(engine._listen), listen_timeout)
        except TimeoutError:
            await engine.close()
            raise EngineError(
                f"session did not listen on {settings.listen_interfaces!r}: "
                + ("; ".join(engine._listen_failures) or "no answer")
            ) from None
        except EngineError:
            await engine.close()
            raise
        engine._ticker = loop.create_task(engine._tick(), name="p2pw-engine-ticker")
        log.info("engine listening on port %d", engine.listen_port)
        return engine

    @property
    def listen_port(self) -> int:
        """The TCP port the session listens on."""
        return int(self._ses.listen_port())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(
        self, *, save_resume: bool = True, resume_timeout: float = 30.0
    ) -> dict[str, bytes]:
        """Save resume data of every torrent (pausing each first), then end the session.

        Returns:
            Resume data by torrent id, for torrents whose save worked. Feed one back to
            :meth:`add` (``resume_data=``) in a later engine.

        """
        if self._closed:
            return {}
        saved: dict[str, bytes] = {}
        if save_resume and self._torrents:
            ids = [t.id for t in self._torrents.values() if t.error is None]
            results = await asyncio.gather(
                *(
                    asyncio.wait_for(self.save_resume_data(i, keep_paused=True), resume_timeout)
                    for i in ids
                ),
                return_exceptions=True,
            )
            for tid, res in zip(ids, results, strict=True):
                if isinstance(res, bytes):
                    saved[tid] = res
                else:
                    log.warning("resume data of %s not saved: %s", tid, res)
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self._ses.set_alert_fd(-1)
        self._loop.remove_reader(self._rsock.fileno())
        closed = EngineError("engine closed")
        for t in list(self._torrents.values()):
            self._fail(t, closed)
        self._torrents.clear()
        if not self._listen.done():
            self._listen.set_exception(closed)
            self._listen.exception()
        for sub in list(self._subscribers):
            sub.close()
        holder = [self._ses]
        self._ses = None
        # The session's destructor joins libtorrent's threads; keep the loop free meanwhile.
        await asyncio.to_thread(holder.clear)
        self._rsock.close()
        self._wsock.close()
        return saved

    # ---- torrents

    def add(
        self,
        torrent: TorrentFile | MagnetLink | str,
        save_path: Path,
        *,
        seed_mode: bool = False,
        file_paths: Mapping[int, str] | None = None,
        file_priorities: Sequence[int] | None = None,
        peers: Iterable[tuple[str, int]] = (),
        trackers: Iterable[str] = (),
        resume_data: bytes | None = None,
        paused: bool = False,
        dont_download: bool = False,
    ) -> str:
        """Add a torrent to the session.

        Args:
            torrent: a parsed torrent, a magnet link or a magnet URI string.
            save_path: the directory files are placed under.
            seed_mode: trust that all files are complete and hash pieces lazily on first
                request (a publisher seeding its own release).
            file_paths: libtorrent's ``renamed_files``: file index -> path relative to
                ``save_path``. Files not named keep ``<name>/<path>``.
            file_priorities: one 0-7 priority per file index, pad files included.
            peers: peers to connect to at once.
            trackers: extra announce URLs.
            resume_data: from :meth:`save_resume_data`/:meth:`close`; the files are not
                hashed again when it matches the disk.
            paused: add paused (otherwise the torrent starts at once; not auto-managed).
            dont_download: every file starts at priority 0 (libtorrent's
                ``default_dont_download``); useful for magnets whose layout must be set
                after the metadata arrives.

        Returns:
            The torrent's id (v2 info-hash, hex).

        Raises:
            FormatError: bad magnet, torrent or resume data, or an unsafe file path.
            EngineError: libtorrent refused the torrent (e.g. it is already added).

        """
        self._check_open()
        if isinstance(torrent, str):
            torrent = parse_magnet(torrent)
        if resume_data is not None:
            try:
                atp = lt.read_resume_data(resume_data)
            except RuntimeError as exc:
                raise FormatError(f"resume data is not valid: {exc}") from exc
            if str(atp.info_hashes.v2) != torrent.id:
                raise FormatError("resume data belongs to another torrent")
            if atp.ti is None and isinstance(torrent, TorrentFile):
                atp.ti = lt.torrent_info(torrent.data)
        elif isinstance(torrent, TorrentFile):
            atp = lt.add_torrent_params()
            atp.ti = lt.torrent_info(torrent.data)
        else:
            atp = lt.parse_magnet_uri(torrent.uri)
        atp.save_path = str(save_path)
        if file_paths is not None:
            atp.renamed_files = {
                int(i): check_relative(p, what="file path") for i, p in file_paths.items()
            }
        if file_priorities is not None:
            atp.file_priorities = [int(p) for p in file_priorities]
        extra_peers = list(peers)
        if extra_peers:
            atp.peers = list(atp.peers) + extra_peers
        extra_trackers = list(trackers)
        if extra_trackers:
            atp.trackers = list(atp.trackers) + extra_trackers
        flags = atp.flags & ~(
            lt.torrent_flags.paused
            | lt.torrent_flags.auto_managed
            | lt.torrent_flags.seed_mode
            | lt.torrent_flags.default_dont_download
        )
        if paused:
            flags |= lt.torrent_flags.paused
        if seed_mode:
            flags |= lt.torrent_flags.seed_mode
        if dont_download:
            flags |= lt.torrent_flags.default_dont_download
        atp.flags = flags
        try:
            handle = self._ses.add_torrent(atp)
        except RuntimeError as exc:
            raise EngineError(f"libtorrent refused torrent {torrent.id}: {exc}") from exc
        tid = str(handle.info_hashes().v2)
        self._torrents[tid] = _Torrent(tid, handle)
        log.info("added torrent %s (%s)", tid, "resume" if resume_data else "new")
        self._emit(EngineEvent("added", tid))
        return tid

    def torrents(self) -> list[str]:
        """Ids of the torrents in the session."""
        return list(self._torrents)

    def __contains__(self, tid: object) -> bool:
        """Whether the torrent is in the session (without copying the id list)."""
        return tid in self._torrents

    def status(self, tid: str) -> TorrentStatus:
        """A snapshot of the torrent.

        Raises:
            EngineError: no such torrent, or it is being removed.
        """
        t = self._get(tid)
        try:
            return t.adjust(_status_of(t.handle.status()))
        except RuntimeError as exc:  # the handle went invalid under us (removal)
            raise EngineError(f"torrent {tid} is gone: {exc}") from exc

    def torrent_file(self, tid: str) -> TorrentFile | None:
        """The torrent, once its metadata is known (None before).

        For a torrent added by magnet the bytes hold the info dict only (libtorrent
        fetches v2 piece layers from peers as it goes); they load as a torrent all the
        same.
        """
        ti = self._get(tid).handle.torrent_file()
        if ti is None:
            return None
        data = lt.bencode({b"info": lt.bdecode(ti.info_section())})
        return torrent_from_info(ti, data)

    def torrent_files(self, tid: str) -> tuple[TorrentFileEntry, ...]:
        """The torrent's real files (paths below the root), once metadata is known.

        Raises:
            EngineError: no metadata yet.

        """
        tf = self.torrent_file(tid)
        if tf is None:
            raise EngineError(f"torrent {tid} has no metadata yet")
        return tf.files

    def file_paths(self, tid: str) -> dict[int, str]:
        """Where each real file is, relative to the save path (renames applied)."""
        handle = self._get(tid).handle
        ti = handle.torrent_file()
        if ti is None:
            raise EngineError(f"torrent {tid} has no metadata yet")
        fs = ti.layout()
        renamed = handle.get_renamed_files()
        pad = lt.file_storage.flag_pad_file
        return {
            i: str(renamed.file_path(fs, i))
            for i in range(fs.num_files())
            if not fs.file_flags(i) & pad
        }

    async def set_file_priorities(self, tid: str, priorities: Sequence[int]) -> None:
        """Set one 0-7 priority per file index (0 = do not download) and wait until applied.

        libtorrent applies priorities asynchronously; until ``file_prio_alert`` a torrent
        that wanted nothing still reads as finished, so waiting here keeps a following
        :meth:`wait_finished` honest. Before metadata there is nothing to wait for.
        """
        t = self._get(tid)
        prios = [int(p) for p in priorities]
        if t.handle.torrent_file() is None:
            t.handle.prioritize_files(prios)
            return
        fut = self._expect(t, "file_prio")
        t.handle.prioritize_files(prios)
        await fut

    async def reconnect(self, tid: str) -> None:
        """Drop and redial the torrent's peers (pause, wait for the pause, resume).

        A peer we told "not interested" is back in libtorrent's slow start with a request
        queue of two blocks, which costs about a second to ramp up; a fresh connection
        starts at full speed. Worth it only where ``min_reconnect_time`` is 0.
        """
        t = self._get(tid)
        async with t.lock:  # never between a save_resume_data's pause and its alert
            fut = self._expect(t, "paused")
            t.handle.pause()
            await fut
            st = t.handle.status()
            t.payload_down += int(st.total_payload_download)
            t.payload_up += int(st.total_payload_upload)
            t.handle.resume()

    def disk_full(self, tid: str) -> str | None:
        """Why the torrent is stopped by a full disk, or None if it is not."""
        return self._get(tid).disk_full

    def clear_disk_full(self, tid: str) -> None:
        """Restart a torrent that a full disk stopped (blocks not written are refetched)."""
        t = self._get(tid)
        t.disk_full = None
        # libtorrent answers a full disk with upload mode (no more requests), which only
        # auto-managed torrents leave by themselves; some versions stop the torrent too.
        t.handle.unset_flags(lt.torrent_flags.upload_mode)
        t.handle.clear_error()
        t.handle.resume()
        self._emit(EngineEvent("resumed", tid))

    def connect_peer(self, tid: str, host: str, port: int) -> None:
        """Ask the torrent to connect to a peer."""
        # Tagged like the peers given at add (resume data): the page shows them as named.
        self._get(tid).handle.connect_peer((host, port), lt.peer_info.resume_data)

    def peers(self, tid: str) -> list[PeerInfo]:
        """The torrent's connected peers and web seeds, and how each was found."""
        return peers_of(self._get(tid).handle)

    def file_progress(self, tid: str, *, verified: bool = True) -> list[int]:
        """Bytes of each file by index, verified only or all in (empty before metadata)."""
        return file_progress(self._get(tid).handle, verified=verified)

    def pause(self, tid: str) -> None:
        """Pause the torrent (it disconnects its peers)."""
        self._get(tid).handle.pause()

    async def wait_metadata(self, tid: str) -> TorrentFile:
        """Wait until the torrent's metadata is known, and return it."""
        t = self._get(tid)
        await self._wait(t, lambda: t.handle.torrent_file() is not None)
        tf = self.torrent_file(tid)
        assert tf is not None
        return tf

    async def wait_files(self, tid: str, indices: Iterable[int]) -> None:
        """Wait until every file in ``indices`` is complete, hash-checked and written.

        A piece passes its hash check before libtorrent's disk thread has necessarily
        written it, so this ends with a cache flush: afterwards the files hold the bytes.
        """
        t = self._get(tid)
        wanted = sorted(set(indices))
        await self._wait(
            t, lambda: t.handle.torrent_file() is not None and _complete(t.handle, wanted) == wanted
        )
        await self.flush(tid)

    async def wait_any_file(self, tid: str, indices: Iterable[int]) -> list[int]:
        """Wait until at least one file in ``indices`` is complete and hash-checked.

        Returns:
            Every file of ``indices`` complete by then, in the order given. Unlike
            :meth:`wait_files` this does not flush; call :meth:`flush` before reading.
        """
        t = self._get(tid)
        wanted = list(dict.fromkeys(indices))
        done: list[int] = []

        def ready() -> bool:
            done[:] = _complete(t.handle, wanted)
            return bool(done) or not wanted

        await self._wait(t, ready)
        return done

    async def flush(self, tid: str) -> None:
        """Write out whatever libtorrent still holds in memory for the torrent."""
        t = self._get(tid)
        fut = self._expect(t, "flushed")
        t.handle.flush_cache()
        await fut

    async def wait_finished(self, tid: str) -> None:
        """Wait until every wanted piece is there (state finished or seeding)."""
        t = self._get(tid)

        def ready() -> bool:
            st = t.handle.status()
            return bool(st.has_metadata and st.is_finished and st.state not in _CHECKING_STATES)

        await self._wait(t, ready)

    async def rename_file(self, tid: str, index: int, new_path: str) -> str:
        """Move file ``index`` to ``new_path`` (relative to the save path) and wait.

        Returns:
            The new path as libtorrent reports it.

        """
        t = self._get(tid)
        check_relative(new_path, what="file path")
        fut = self._expect(t, f"renamed:{index}")
        t.handle.rename_file(index, new_path)
        result: str = await fut
        return result

    async def force_recheck(self, tid: str) -> None:
        """Hash every file again and wait for the check to end.

        Raises:
            EngineError: the torrent is paused (libtorrent would not check it until resumed).

        """
        t = self._get(tid)
        if t.handle.flags() & lt.torrent_flags.paused:
            raise EngineError(f"torrent {tid} is paused; resume it before a recheck")
        fut = self._expect(t, "checked")
        t.handle.force_recheck()
        await fut

    async def save_resume_data(
        self, tid: str, *, pause: bool = True, keep_paused: bool = False
    ) -> bytes:
        """The torrent's resume data (with its info dict), as bytes.

        With ``pause`` (the default) the torrent is paused first and the save waits for
        ``torrent_paused_alert``, so no piece is in flight and a restart continues at
        exactly the saved progress; it is resumed afterwards unless ``keep_paused``.
        Without ``pause`` peers stay connected, at the price of re-fetching blocks that
        were in flight.
        """
        t = self._get(tid)
        async with t.lock:
            handle = t.handle
            paused_here = False
            if pause and not handle.flags() & lt.torrent_flags.paused:
                fut = self._expect(t, "paused")
                handle.pause()
                await fut
                paused_here = True
            fut = self._expect(t, "resume_data")
            handle.save_resume_data(
                lt.torrent_handle.flush_disk_cache | lt.torrent_handle.save_info_dict
            )
            try:
                data: bytes = await asyncio.shield(fut)
            except asyncio.CancelledError:
                # The alert carries no request id: hold the lock until libtorrent answers,
                # so this answer cannot be taken for the next caller's request.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(fut, 30)
                raise
            if paused_here and not keep_paused:
                handle.resume()
            return data

    async def remove(self, tid: str, *, delete_files: bool = False) -> None:
        """Remove the torrent; with ``delete_files`` also its files (shared ones too!)."""
        t = self._get(tid)
        # A torrent that failed must still be removable.
        removed = self._expect(t, "removed", even_failed=True)
        deleted = self._expect(t, "deleted", even_failed=True) if delete_files else None
        self._ses.remove_torrent(t.handle, lt.options_t.delete_files if delete_files else 0)
        await removed
        if deleted is not None:
            await deleted
        self._torrents.pop(tid, None)
        self._fail(t, EngineError(f"torrent {tid} was removed"))
        self._emit(EngineEvent("removed", tid))

    def subscribe(self, maxsize: int = 1024) -> EventStream:
        """A stream of :class:`EngineEvent`; close it when done (it is a context manager)."""
        stream = EventStream(self, maxsize)
        self._subscribers.add(stream)
        return stream

    # ---- internals

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("engine is closed")

    def _get(self, tid: str) -> _Torrent:
        self._check_open()
        try:
            return self._torrents[tid]
        except KeyError:
            raise EngineError(f"no torrent {tid[:64]!r} in this engine") from None

    def _expect(self, t: _Torrent, key: str, *, even_failed: bool = False) -> asyncio.Future[Any]:
        if t.error is not None and not even_failed:
            raise TorrentFailedError(f"torrent {t.id}: {t.error}")
        fut: asyncio.Future[Any] = self._loop.create_future()
        t.once.setdefault(key, []).append(fut)
        return fut

    def _fire(self, t: _Torrent, key: str, value: object = None) -> None:
        for fut in t.once.pop(key, []):
            if not fut.done():
                fut.set_result(value)

    def _fail_key(self, t: _Torrent, key: str, exc: BaseException) -> None:
        for fut in t.once.pop(key, []):
            if not fut.done():
                fut.set_exception(exc)

    def _fail(self, t: _Torrent, exc: BaseException) -> None:
        for key in list(t.once):
            self._fail_key(t, key, exc)
        for w in t.waiters:
            if not w.future.done():
                w.future.set_exception(exc)
        t.waiters.clear()

    async def _wait(self, t: _Torrent, ready: Callable[[], bool]) -> None:
        if t.error is not None:
            raise TorrentFailedError(f"torrent {t.id}: {t.error}")
        if ready():
            return
        waiter = _Waiter(ready, self._loop.create_future())
        t.waiters.append(waiter)
        try:
            await waiter.future
        finally:
            with contextlib.suppress(ValueError):
                t.waiters.remove(waiter)

    def _recheck_waiters(self, t: _Torrent) -> None:
        for w in list(t.waiters):
            if w.future.done():
                continue
            try:
                if w.ready():
                    w.future.set_result(None)
            except RuntimeError as exc:  # the handle went invalid
                w.future.set_exception(EngineError(f"torrent {t.id}: {exc}"))

    def _emit(self, event: EngineEvent) -> None:
        for sub in list(self._subscribers):
            sub._put(event)

    async def _tick(self) -> None:
        interval = self.settings.status_interval
        while True:
            await asyncio.sleep(interval)
            if self._subscribers and self._torrents:
                self._ses.post_torrent_updates()

    def _on_readable(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._rsock.recv(4096):
                pass
        self._pump()

    def _pump(self) -> None:
        if self._ses is None:
            return
        touched: set[str] = set()
        for alert in self._ses.pop_alerts():
            try:
                tid = self._dispatch(alert)
            except Exception:  # one odd alert must not stop the loop
                log.exception("error while handling %s", type(alert).__name__)
                continue
            if tid is not None:
                touched.add(tid)
        for tid in touched:
            t = self._torrents.get(tid)
            if t is not None and t.waiters:
                self._recheck_waiters(t)

    def _dispatch(self, a: Any) -> str | None:
        if isinstance(a, lt.state_update_alert):
            for st in a.status:
                status = _status_of(st)
                t = self._torrents.get(status.id)
                if t is not None:
                    self._emit(EngineEvent("progress", status.id, t.adjust(status)))
            return None
        if isinstance(a, lt.listen_succeeded_alert):
            if a.socket_type == lt.socket_type_t.tcp and not self._listen.done():
                self._listen.set_result(int(a.port))
            return None
        if isinstance(a, lt.listen_failed_alert):
            msg = a.message()
            log.warning("%s", msg)
            self._listen_failures.append(msg)
            wanted = len([s for s in self.settings.listen_interfaces.split(",") if s.strip()])
            if len(self._listen_failures) >= 2 * wanted and not self._listen.done():
                self._listen.set_exception(EngineError("; ".join(self._listen_failures)))
            return None
        if isinstance(a, lt.torrent_removed_alert):
            tid = str(a.info_hashes.v2)
            t = self._torrents.get(tid)
            if t is not None:
                self._fire(t, "removed")
            return None
        if isinstance(a, lt.torrent_deleted_alert | lt.torrent_delete_failed_alert):
            tid = str(a.info_hashes.v2)
            t = self._torrents.get(tid)
            if t is not None:
                if isinstance(a, lt.torrent_delete_failed_alert):
                    self._fail_key(t, "deleted", EngineError(a.message()))
                else:
                    self._fire(t, "deleted")
            return None
        if not isinstance(a, lt.torrent_alert):
            log.debug("%s", a.message())
            return None
        try:
            tid = str(a.handle.info_hashes().v2)
        except RuntimeError:
            return None
        t = self._torrents.get(tid)
        if t is None:
            return None
        self._torrent_alert(t, a)
        return tid

    def _torrent_alert(self, t: _Torrent, a: Any) -> None:
        tid = t.id
        if isinstance(a, lt.metadata_received_alert):
            self._emit(EngineEvent("metadata", tid))
        elif isinstance(a, lt.piece_finished_alert):
            self._emit(EngineEvent("piece", tid, message=str(int(a.piece_index))))
        elif isinstance(a, lt.file_completed_alert):
            self._emit(EngineEvent("file_completed", tid, file_index=int(a.index)))
        elif isinstance(a, lt.torrent_finished_alert):
            self._emit(EngineEvent("finished", tid))
        elif isinstance(a, lt.torrent_checked_alert):
            self._fire(t, "checked")
            self._emit(EngineEvent("checked", tid))
        elif isinstance(a, lt.state_changed_alert):
            self._emit(EngineEvent("state", tid, message=_state_name(a.state)))
        elif isinstance(a, lt.torrent_paused_alert):
            self._fire(t, "paused")
            self._emit(EngineEvent("paused", tid))
        elif isinstance(a, lt.torrent_resumed_alert):
            self._emit(EngineEvent("resumed", tid))
        elif isinstance(a, lt.save_resume_data_alert):
            self._fire(t, "resume_data", bytes(lt.write_resume_data_buf(a.params)))
        elif isinstance(a, lt.save_resume_data_failed_alert):
            self._fail_key(t, "resume_data", EngineError(f"torrent {tid}: {a.message()}"))
        elif isinstance(a, lt.file_renamed_alert):
            new_name = str(a.new_name())
            self._fire(t, f"renamed:{a.index}", new_name)
            self._emit(EngineEvent("renamed", tid, file_index=int(a.index), message=new_name))
        elif isinstance(a, lt.file_rename_failed_alert):
            self._fail_key(t, f"renamed:{a.index}", EngineError(f"torrent {tid}: {a.message()}"))
        elif isinstance(a, lt.cache_flushed_alert):
            self._fire(t, "flushed")
        elif isinstance(a, lt.file_prio_alert):
            self._fire(t, "file_prio")
        elif isinstance(a, lt.hash_failed_alert):
            log.warning("torrent %s: piece %d failed the hash check", tid, a.piece_index)
            self._emit(EngineEvent("hash_failed", tid, message=str(a.piece_index)))
        elif isinstance(a, lt.fastresume_rejected_alert):
            log.warning("%s", a.message())
            self._emit(EngineEvent("resume_rejected", tid, message=a.message()))
        elif isinstance(a, lt.file_error_alert) and a.error.value() in _DISK_FULL:
            # libtorrent stops the torrent; it can go on once space is freed, so this is
            # not a failure: waiters keep waiting, and clear_error() restarts it.
            if t.disk_full is None:
                t.disk_full = a.message()
                log.error("%s", t.disk_full)
                self._emit(EngineEvent("disk_full", tid, message=t.disk_full))
        elif isinstance(a, lt.torrent_error_alert | lt.file_error_alert) and t.disk_full:
            # With mmap storage, reading back a page the full disk could not hold fails
            # too (EIO); a symptom of the same cause, cured by the same clear_disk_full().
            log.warning("while the disk is full: %s", a.message())
        elif isinstance(a, lt.torrent_error_alert | lt.file_error_alert):
            msg = a.message()
            log.error("%s", msg)
            t.error = msg
            self._fail(t, TorrentFailedError(msg))
            self._emit(EngineEvent("error", tid, message=msg))
        else:
            log.debug("%s", a.message())


def _complete(handle: Any, indices: list[int]) -> list[int]:
    """The files of ``indices`` whose every piece passed the hash check (none before metadata)."""
    ti = handle.torrent_file()
    if ti is None:
        return []
    fs = ti.layout()
    progress = handle.file_progress(lt.file_progress_flags_t.piece_granularity)
    return [i for i in indices if progress[i] == fs.file_size(i)]


_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""Write errors that freeing space (or raising a file size limit) cures."""

_CHECKING_STATES = frozenset(
    {
        lt.torrent_status.states.checking_files,
        lt.torrent_status.states.checking_resume_data,
        lt.torrent_status.states.queued_for_checking,
    }
)


def _state_name(state: Any) -> TorrentState:
    name = getattr(state, "name", "unknown")
    return cast(TorrentState, name) if name in _STATE_NAMES else "unknown"


_STATE_NAMES = frozenset(get_args(TorrentState))


def _status_of(st: Any) -> TorrentStatus:
    errc = st.errc
    error = errc.message() if errc.value() else None
    progress = float(st.progress)
    return TorrentStatus(
        id=str(st.info_hashes.v2),
        name=str(st.name),
        state=_state_name(st.state),
        paused=bool(st.flags & lt.torrent_flags.paused),
        has_metadata=bool(st.has_metadata),
        is_finished=bool(st.is_finished),
        is_seeding=bool(st.is_seeding),
        progress=progress if math.isfinite(progress) else 0.0,
        total_done=int(st.total_done),
        total_wanted=int(st.total_wanted),
        total_wanted_done=int(st.total_wanted_done),
        total_payload_download=int(st.total_payload_download),
        total_payload_upload=int(st.total_payload_upload),
        all_time_download=int(st.all_time_download),
        all_time_upload=int(st.all_time_upload),
        download_rate=int(st.download_payload_rate),
        upload_rate=int(st.upload_payload_rate),
        num_peers=int(st.num_peers),
        num_seeds=int(st.num_seeds),
        failed_bytes=int(st.total_failed_bytes),
        redundant_bytes=int(st.total_redundant_bytes),
        error=error,
    )
