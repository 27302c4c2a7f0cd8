"""One libtorrent session driven from asyncio: the engine's operations on torrents.

The alert handling lives in :mod:`.alerts`, the waiters in :mod:`.waiters`, the event
streams in :mod:`.events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, cast

import libtorrent as lt

from p2pweights._paths import check_relative
from p2pweights.errors import FormatError

from .alerts import CHECKING_STATES, complete_files
from .dht_items import DhtItems
from .events import EventStream
from .peer_control import PeerControl
from .pieces import steer_pieces
from .queries import TorrentQueries
from .settings import EngineSettings
from .torrents import parse_magnet, without_url_list
from .values import (
    EngineError,
    EngineEvent,
    MagnetLink,
    TorrentFile,
)
from .waiters import Tracked

__all__ = ["Engine", "EventStream"]

log = logging.getLogger(__name__)


class Engine(TorrentQueries, PeerControl, DhtItems):
    """One libtorrent session driven from asyncio. Create it with :meth:`start`.

    Every method must be called from the event loop that started the engine.
    """

    # ---- lifecycle

    @classmethod
    async def start(cls, settings: EngineSettings, *, listen_timeout: float = 10.0) -> Engine:
        """Start a session and wait until it listens.

        Raises:
            EngineError: the session could not listen on any interface.

        """
        loop = asyncio.get_running_loop()
        pack = settings.settings_pack()
        # A whole 20-byte fingerprint is the peer id libtorrent sends (it pads a short one
        # with random bytes per torrent): this node's own id, which the web seed rule
        # ranks against the ids its peers send (``daemon/origin_rule.py``).
        prefix = str(lt.default_settings()["peer_fingerprint"])[:8]
        pack["peer_fingerprint"] = prefix + secrets.token_hex(6)
        params = lt.session_params(cast(Any, pack))
        # Only these exact strings select a back end; anything else silently means pread.
        params.disk_io_constructor = f"{settings.disk_io}_disk_io_constructor"
        session: Any = lt.session(params)
        engine = cls(session, settings, loop)
        engine.peer_id = str(pack["peer_fingerprint"]).encode()
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
        self._close_dht()
        closed = EngineError("engine closed")
        for t in list(self._torrents.values()):
            t.fail(closed)
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
        web_seeds: Iterable[str] = (),
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
            web_seeds: the only web seeds used (``url-list`` and ``ws=`` are untrusted).

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
                atp.ti = lt.torrent_info(without_url_list(torrent.data))
        elif isinstance(torrent, TorrentFile):
            atp = lt.add_torrent_params()
            atp.ti = lt.torrent_info(without_url_list(torrent.data))
        else:
            atp = lt.parse_magnet_uri(torrent.uri)
        atp.save_path = str(save_path)
        atp.url_seeds = list(dict.fromkeys(web_seeds))
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
        self._torrents[tid] = Tracked(tid, handle)
        log.info("added torrent %s (%s)", tid, "resume" if resume_data else "new")
        self._emit(EngineEvent("added", tid))
        return tid

    def steer_pieces(self, tid: str, boost: Collection[int], mask: Collection[int]) -> None:
        """Boost (priority 7) and mask (0) pieces over their files' priorities.

        Both empty: every piece has its file's priority again. A file priority set later
        (:meth:`set_file_priorities`) resets its pieces; steer again after it.

        Raises:
            EngineError: no such torrent.
        """
        steer_pieces(self._get(tid).handle, boost, mask)

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
        fut = t.expect(self._loop, "file_prio")
        t.handle.prioritize_files(prios)
        await fut

    def set_piece_priorities(self, tid: str, priorities: Mapping[int, int]) -> None:
        """Set the 0-7 priority of some pieces (by piece index); the others keep theirs.

        A later :meth:`set_file_priorities` sets every piece from its file again.
        """
        self._get(tid).handle.prioritize_pieces([(int(i), int(p)) for i, p in priorities.items()])

    async def reconnect(self, tid: str) -> None:
        """Drop and redial the torrent's peers (pause, wait for the pause, resume).

        A peer we told "not interested" is back in libtorrent's slow start with a request
        queue of two blocks, which costs about a second to ramp up; a fresh connection
        starts at full speed. Worth it only where ``min_reconnect_time`` is 0.
        """
        t = self._get(tid)
        async with t.lock:  # never between a save_resume_data's pause and its alert
            fut = t.expect(self._loop, "paused")
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

    def pause(self, tid: str) -> None:
        """Pause the torrent (it disconnects its peers)."""
        self._get(tid).handle.pause()

    async def wait_metadata(self, tid: str) -> TorrentFile:
        """Wait until the torrent's metadata is known, and return it.

        Raises:
            OverCapError: the torrent has more files than ``settings.max_torrent_files``.
        """
        t = self._get(tid)
        await t.wait(self._loop, lambda: t.handle.torrent_file() is not None)
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
        await t.wait(
            self._loop,
            lambda: (
                t.handle.torrent_file() is not None and complete_files(t.handle, wanted) == wanted
            ),
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
            done[:] = complete_files(t.handle, wanted)
            return bool(done) or not wanted

        await t.wait(self._loop, ready)
        return done

    async def flush(self, tid: str) -> None:
        """Write out whatever libtorrent still holds in memory for the torrent."""
        t = self._get(tid)
        fut = t.expect(self._loop, "flushed")
        t.handle.flush_cache()
        await fut

    async def wait_finished(self, tid: str) -> None:
        """Wait until every wanted piece is there (state finished or seeding)."""
        t = self._get(tid)

        def ready() -> bool:
            st = t.handle.status()
            return bool(st.has_metadata and st.is_finished and st.state not in CHECKING_STATES)

        await t.wait(self._loop, ready)

    async def rename_file(self, tid: str, index: int, new_path: str) -> str:
        """Move file ``index`` to ``new_path`` (relative to the save path) and wait.

        Returns:
            The new path as libtorrent reports it.

        """
        t = self._get(tid)
        check_relative(new_path, what="file path")
        fut = t.expect(self._loop, f"renamed:{index}")
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
        fut = t.expect(self._loop, "checked")
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
                fut = t.expect(self._loop, "paused")
                handle.pause()
                await fut
                paused_here = True
            fut = t.expect(self._loop, "resume_data")
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
        removed = t.expect(self._loop, "removed", even_failed=True)
        deleted = t.expect(self._loop, "deleted", even_failed=True) if delete_files else None
        self._ses.remove_torrent(t.handle, lt.options_t.delete_files if delete_files else 0)
        await removed
        if deleted is not None:
            await deleted
        self._torrents.pop(tid, None)
        t.fail(EngineError(f"torrent {tid} was removed"))
        self._emit(EngineEvent("removed", tid))
