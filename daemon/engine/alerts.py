"""libtorrent's alerts, turned into waiter resolutions and engine events.

:class:`AlertDispatch` holds the session and the tracked torrents; the
:class:`~.session.Engine` built on it adds the operations. Alerts reach the event loop
through ``session.set_alert_fd`` on a socket pair watched with ``loop.add_reader``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import socket
import urllib.parse
from typing import Any, cast, get_args

import libtorrent as lt

from .dht_items import DhtGet, on_mutable_item
from .events import EventStream
from .krpc import KrpcClient
from .peers import endpoint_text
from .settings import EngineSettings
from .values import (
    EngineError,
    EngineEvent,
    TorrentFailedError,
    TorrentState,
    TorrentStatus,
)
from .waiters import Tracked

__all__ = ["CHECKING_STATES", "AlertDispatch", "complete_files", "status_of"]

log = logging.getLogger(__name__)


class AlertDispatch:
    """One libtorrent session's state, and the handling of its alerts."""

    def __init__(
        self, session: Any, settings: EngineSettings, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._ses: Any = session
        self.settings = settings
        self._loop = loop
        self._torrents: dict[str, Tracked] = {}
        self._subscribers: set[EventStream] = set()
        self._listen: asyncio.Future[int] = loop.create_future()
        self._listen_failures: list[str] = []
        self._closed = False
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._ticker: asyncio.Task[None] | None = None
        self._dht_gets: dict[tuple[bytes, bytes], list[DhtGet]] = {}
        self._krpc: KrpcClient | None = None
        self._dht_ready = asyncio.Event()

    async def dht_bootstrapped(self, timeout: float) -> bool:
        """Wait until the DHT's first bootstrap is done; False if not within ``timeout``."""
        try:
            await asyncio.wait_for(self._dht_ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def listen_port(self) -> int:
        """The TCP port the session listens on."""
        return int(self._ses.listen_port())

    def subscribe(self, maxsize: int = 1024) -> EventStream:
        """A stream of :class:`EngineEvent`; close it when done (it is a context manager)."""
        stream = EventStream(self._subscribers, maxsize)
        self._subscribers.add(stream)
        return stream

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("engine is closed")

    def _get(self, tid: str) -> Tracked:
        self._check_open()
        try:
            return self._torrents[tid]
        except KeyError:
            raise EngineError(f"no torrent {tid[:64]!r} in this engine") from None

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
                t.recheck_waiters()

    def _dispatch(self, a: Any) -> str | None:
        if isinstance(a, lt.state_update_alert):
            for st in a.status:
                status = status_of(st)
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
                t.fire("removed")
            return None
        if isinstance(a, lt.torrent_deleted_alert | lt.torrent_delete_failed_alert):
            tid = str(a.info_hashes.v2)
            t = self._torrents.get(tid)
            if t is not None:
                if isinstance(a, lt.torrent_delete_failed_alert):
                    t.fail_key("deleted", EngineError(a.message()))
                else:
                    t.fire("deleted")
            return None
        if isinstance(a, lt.dht_mutable_item_alert):
            on_mutable_item(self._dht_gets, a)
            return None
        if isinstance(a, lt.dht_bootstrap_alert):
            # A torrent added before the DHT had nodes (at start: restored releases, a
            # search index remade) announced to nobody, and would wait for the next
            # dht_announce_interval (15 min) before a get_peers could find it.
            for t in list(self._torrents.values()):
                t.handle.force_dht_announce()
            log.info("DHT bootstrapped: %d torrents announced", len(self._torrents))
            self._dht_ready.set()
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

    def add_web_seed(self, tid: str, url: str, *, remove: bool = False) -> None:
        """Use the BEP 19 web seed ``url`` (the caller checked it), or stop using it.

        Raises:
            EngineError: no such torrent.
        """
        t = self._torrents.get(tid)
        if t is None:
            raise EngineError(f"no torrent {tid}")
        if remove:
            t.handle.remove_url_seed(url)
        else:
            t.handle.add_url_seed(url)

    def _torrent_alert(self, t: Tracked, a: Any) -> None:
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
            t.fire("checked")
            self._emit(EngineEvent("checked", tid))
        elif isinstance(a, lt.state_changed_alert):
            self._emit(EngineEvent("state", tid, message=state_name(a.state)))
        elif isinstance(a, lt.torrent_paused_alert):
            t.fire("paused")
            self._emit(EngineEvent("paused", tid))
        elif isinstance(a, lt.torrent_resumed_alert):
            self._emit(EngineEvent("resumed", tid))
        elif isinstance(a, lt.save_resume_data_alert):
            t.fire("resume_data", bytes(lt.write_resume_data_buf(a.params)))
        elif isinstance(a, lt.save_resume_data_failed_alert):
            t.fail_key("resume_data", EngineError(f"torrent {tid}: {a.message()}"))
        elif isinstance(a, lt.file_renamed_alert):
            new_name = str(a.new_name())
            t.fire(f"renamed:{a.index}", new_name)
            self._emit(EngineEvent("renamed", tid, file_index=int(a.index), message=new_name))
        elif isinstance(a, lt.file_rename_failed_alert):
            t.fail_key(f"renamed:{a.index}", EngineError(f"torrent {tid}: {a.message()}"))
        elif isinstance(a, lt.cache_flushed_alert):
            t.fire("flushed")
        elif isinstance(a, lt.file_prio_alert):
            t.fire("file_prio")
        elif isinstance(a, lt.hash_failed_alert):
            piece = int(a.piece_index)
            # libtorrent bans a peer that sent a whole failed piece alone before it posts
            # the failure, so that peer is gone from the peer list: its ban alert named it.
            # A piece whose senders all left counts against the torrent's banned peers.
            senders = sorted({*blame_senders(t, a.handle), *t.just_banned}) or sorted(t.banned)
            t.just_banned.clear()
            log_failed_piece(tid, piece, ", ".join(senders) or "a peer now gone")
            self._emit(EngineEvent("hash_failed", tid, message=str(piece)))
            fresh = piece not in t.failed_pieces
            t.failed_pieces.add(piece)
            for url in lying_web_seeds(a.handle) if fresh else []:
                # libtorrent bans a web seed at once only when it alone sent the piece;
                # one piece that failed is enough for the daemon.
                a.handle.remove_url_seed(url)
                self._emit(EngineEvent("web_seed_failed", tid, url=url, message="banned"))
        elif isinstance(a, lt.url_seed_alert):
            # A banned web seed (a piece from it failed the check, ban_web_seeds) is gone
            # for good; any other failure libtorrent retries: the caller decides on backoff.
            msg = str(a.error_message()) or (a.error.message() if a.error.value() else "")
            if a.error.value() and a.error.message() == "peer banned":
                msg = "banned"
            msg = msg or "the connection failed"
            log.warning("torrent %s: web seed %s failed: %s", tid, a.server_url(), msg)
            self._emit(EngineEvent("web_seed_failed", tid, url=str(a.server_url()), message=msg))
        elif isinstance(a, lt.peer_ban_alert):
            banned = endpoint_text(a.endpoint)
            t.just_banned.add(banned)
            if banned not in t.banned:  # banned again for each piece it took part in
                t.banned.add(banned)
                log.warning(
                    "torrent %s: peer %s banned for sending data that failed the hash check",
                    tid,
                    banned,
                )
        elif isinstance(a, lt.fastresume_rejected_alert):
            log.warning("%s", a.message())
            self._emit(EngineEvent("resume_rejected", tid, message=a.message()))
        elif isinstance(a, lt.file_error_alert) and a.error.value() in DISK_FULL_ERRORS:
            # libtorrent stops the torrent; it can go on once space is freed, so this is
            # not a failure: waiters keep waiting, and clear_error() restarts it.
            if t.disk_full is None:
                t.disk_full = a.message()
                log.error("%s", t.disk_full)
                self._emit(EngineEvent("disk_full", tid, message=t.disk_full))
        elif isinstance(a, lt.torrent_error_alert | lt.file_error_alert) and t.disk_full:
            # Errors that follow on a full disk (with mmap storage, reading back a page
            # the disk could not hold fails with EIO) are symptoms of the same cause,
            # cured by the same clear_disk_full().
            log.warning("while the disk is full: %s", a.message())
        elif isinstance(a, lt.torrent_error_alert | lt.file_error_alert):
            msg = a.message()
            log.error("%s", msg)
            t.error = msg
            t.fail(TorrentFailedError(msg))
            self._emit(EngineEvent("error", tid, message=msg))
        else:
            log.debug("%s", a.message())


def log_failed_piece(tid: str, piece: int, senders: str) -> None:
    """One line per failed piece; the daemon's log filter folds them into one per peer."""
    log.warning("torrent %s: piece %d failed the hash check (from %s)", tid, piece, senders)


def blame_senders(t: Tracked, handle: Any) -> list[str]:
    """The peers whose count of failed pieces rose since the last failure: a piece's senders.

    libtorrent counts, per peer, the failed pieces it sent blocks of (``num_hashfails``)
    but does not say which peers sent a given piece; the counts' rise since the previous
    failure does. A peer banned meanwhile is no longer listed (``peer_ban_alert`` names it).
    """
    blamed = []
    for p in handle.get_peer_info():
        count = int(p.num_hashfails)
        if count <= 0:
            continue
        web = int(p.connection_type) in (int(lt.peer_info.web_seed), int(lt.peer_info.http_seed))
        who = endpoint_text(p.ip) + (" (web seed)" if web else "")
        if count > t.hashfails.get(who, 0):
            blamed.append(who)
        t.hashfails[who] = count
    return sorted(blamed)


def lying_web_seeds(handle: Any) -> list[str]:
    """The web seeds of ``handle`` whose connection took part in a piece that failed.

    A connection is matched to its URL by the URL's literal address and port; a URL with
    a host name (or one that redirected) is matched only when it is the torrent's only web
    seed. Only the source with strictly the most failed pieces is named: where a piece
    was mixed, nobody is blamed until one source fails more than the others, so an honest
    mirror is not dropped for a liar's blocks (libtorrent's own ban is the backstop).
    """
    urls = [str(u) for u in handle.url_seeds()]
    if not urls:
        return []
    failing = [p for p in handle.get_peer_info() if p.num_hashfails > 0]
    top = max((p.num_hashfails for p in failing), default=0)
    leaders = [p for p in failing if p.num_hashfails == top]
    if len(leaders) != 1 or leaders[0].connection_type != lt.peer_info.web_seed:
        return []
    endpoint = (str(leaders[0].ip[0]), int(leaders[0].ip[1]))
    found = []
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if (parts.hostname or "", port) == endpoint:
            found.append(url)
    return found or (urls if len(urls) == 1 else [])


def complete_files(handle: Any, indices: list[int]) -> list[int]:
    """The files of ``indices`` whose every piece passed the hash check (none before metadata)."""
    ti = handle.torrent_file()
    if ti is None:
        return []
    fs = ti.layout()
    progress = handle.file_progress(lt.file_progress_flags_t.piece_granularity)
    return [i for i in indices if progress[i] == fs.file_size(i)]


DISK_FULL_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""Write errors that freeing space (or raising a file size limit) cures."""

CHECKING_STATES = frozenset(
    {
        lt.torrent_status.states.checking_files,
        lt.torrent_status.states.checking_resume_data,
        lt.torrent_status.states.queued_for_checking,
    }
)


def state_name(state: Any) -> TorrentState:
    name = getattr(state, "name", "unknown")
    return cast(TorrentState, name) if name in STATE_NAMES else "unknown"


STATE_NAMES = frozenset(get_args(TorrentState))


def status_of(st: Any) -> TorrentStatus:
    """A libtorrent ``torrent_status`` as a typed value."""
    errc = st.errc
    error = errc.message() if errc.value() else None
    progress = float(st.progress)
    return TorrentStatus(
        id=str(st.info_hashes.v2),
        name=str(st.name),
        state=state_name(st.state),
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
