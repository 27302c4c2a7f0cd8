"""The daemon's shared state, and the views every part of it reads.

That is a release's row, its ``show`` shape, and events to subscribers.

:class:`~p2pweightsd.service.Service` is built in layers, each a module of its own:
this state, the background upkeep (:mod:`.upkeep`), the fetch flow (:mod:`.fetch_flow`),
and the service itself (lifecycle, publish, queries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import replace
from typing import Any

from p2pweights.errors import ConfigError, UnknownReleaseError

from .catalog import Catalog, ReleaseRow, ReleaseState
from .config import DaemonConfig, lan_address
from .download import Download
from .engine import Engine, EngineError, EngineEvent, TorrentStatus, parse_torrent
from .follow import Follower
from .names import Names
from .search import Search
from .store import TORRENT_NAME, Store
from .web_seeds import WebSeeds

__all__ = [
    "DONE",
    "HEX64",
    "TERMINAL",
    "USER_PAUSE",
    "WAIT_ENDS",
    "ServiceState",
    "event_fields",
    "peer_address",
    "status_fields",
]

log = logging.getLogger(__name__)

HEX64 = re.compile(r"[0-9a-fA-F]{64}")
DONE = ("seeding", "complete")
"""Every wanted chunk is in: seeding, or stopped after its seeding limits."""
TERMINAL = (*DONE, "error")
USER_PAUSE = "paused by the user; `p2pw fetch` of the same release goes on"
"""The ``error`` of a fetch the user paused (Ctrl-C): it waits for them, even over restarts."""
WAIT_ENDS = (*TERMINAL, "paused")
"""A wait also returns for a release a full disk paused: the caller should hear of it."""


class ServiceState:
    """The engine, catalog and store, the daemon's in-memory state, and the views of it."""

    def __init__(self, config: DaemonConfig, engine: Engine, catalog: Catalog, store: Store):
        self.config = config
        self.engine = engine
        self.catalog = catalog
        self.store = store
        self.started = time.time()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._progressed: dict[str, asyncio.Event] = {}
        """Set on each verified piece of a download, for the resume-data saver."""
        self._states: dict[str, list[str]] = {}
        """libtorrent states each release went through since this daemon started."""
        self._downloads: dict[str, Download] = {}
        """Releases whose chunks are downloading now."""
        self._hash_failures: dict[str, int] = {}
        """Pieces of each release that failed the hash check since this daemon started."""
        self._hit_full_disk: set[str] = set()
        """Fetches a full disk stopped since they started (their bytes may be lost)."""
        self._paused_from: dict[str, tuple[ReleaseState, str]] = {}
        """Fetches a full disk paused: the state each was in, and why (kept here too: the
        catalog may be on the full disk)."""
        self._disk_watch: asyncio.Task[None] | None = None
        self._ordered: dict[str, list[str]] = {}
        """Fetches asked to download in order: chunk paths, or empty for layer order."""
        self._magnets: dict[str, str] = {}
        """Each release's magnet link, parsed once from its torrent."""
        self._placing = asyncio.Lock()
        """Held while chunks move into the store: one writer per store name."""
        self._names: Names | None = None
        """:class:`~.names.Names`, made on first use (``Service.names``)."""
        self._follower: Follower | None = None
        """:class:`~.follow.Follower`, made on first use (``Service.follower``)."""
        self._search: Search | None = None
        """:class:`~.search.Search`, made on first use (``Service.search``)."""
        self._fresh_seeds: set[str] = set()
        """Releases published since start: announced again a few times (``upkeep.DhtRetry``)."""
        self.web = WebSeeds(
            engine,
            policy=config.web_seed_policy,
            retries=config.web_seed_retries,
            backoff=config.web_seed_backoff,
            mirrors=config.mirrors,
            spare=config.web_seed_spare,
            stall=config.web_seed_stall,
        )

    def _row(self, rid: str) -> ReleaseRow:
        row = self.catalog.get(rid.lower()) if HEX64.fullmatch(rid) else None
        if row is None:
            matches = self.catalog.ids_with_prefix(rid.lower()) if len(rid) >= 6 else []
            row = self.catalog.get(matches[0]) if len(matches) == 1 else None
            if row is None:
                raise UnknownReleaseError(f"no release {rid[:80]!r}")
        return self._effective(row)

    def _effective(self, row: ReleaseRow) -> ReleaseRow:
        if row.id in self._paused_from:  # whether or not the catalog could record it
            return replace(row, state="paused", error=self._paused_from[row.id][1])
        return row

    def _magnet(self, row: ReleaseRow) -> str | None:
        if not row.has_torrent:
            return None
        magnet = self._magnets.get(row.id)
        if magnet is None:  # a release's torrent never changes: parse it once
            torrent = row.torrent or self.catalog.torrent(row.id)
            if torrent is None:  # removed meanwhile
                return None
            magnet = self._magnets[row.id] = parse_torrent(torrent).magnet
        return magnet

    def show(self, rid: str) -> dict[str, Any]:
        """Everything about one release."""
        return self._info(self._row(rid))

    def _info(self, row: ReleaseRow) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": row.id,
            "name": row.name,
            "version": row.version,
            "label": row.label,
            "publisher": row.publisher,
            "manifest_sha256": row.manifest_sha256,
            "state": row.state,
            "error": row.error,
            "source": row.source,
            "include": list(row.include),
            "total_bytes": row.total_bytes,
            "added": row.added,
            "completed": row.completed,
            "path": str(self.store.releases / row.id),
            "torrent_path": str(self.store.releases / row.id / TORRENT_NAME)
            if row.has_torrent
            else None,
            "magnet": self._magnet(row),
        }
        download = self._downloads.get(row.id)
        if download is not None:
            info["ready_chunks"] = list(download.ready)
            info["ordered"] = download.order is not None
        try:
            st = self.engine.status(row.id) if row.id in self.engine else None
        except EngineError:
            st = None  # being removed or re-added right now
        if st is not None:
            info["transfer"] = {
                **status_fields(st),
                "all_time_download": st.all_time_download,
                "all_time_upload": st.all_time_upload,
                "seeds": st.num_seeds,
                "hash_failures": self._hash_failures.get(row.id, 0),
                "error": st.error,
                "state_history": list(self._states.get(row.id, [])),
            }
            if st.failed_bytes and row.state not in DONE:
                info["problem"] = (
                    f"{self._hash_failures.get(row.id, 0)} pieces failed the hash check "
                    f"({st.failed_bytes} bytes thrown away): peers sent data that is not the "
                    f"signed release; they are dropped, and the fetch waits for an honest one "
                    f"({st.num_peers} peers connected now)"
                )
        if row.state == "paused":
            info["problem"] = row.error
        web = self.web.info(row.id)
        if web is not None:
            info["web_seeds"] = web
            problem = self.web.problem(row.id)
            if problem:
                info["problem"] = "; ".join(filter(None, [info.get("problem"), problem]))
        return info

    def list_releases(self) -> list[dict[str, Any]]:
        """Every release, oldest first."""
        rows = self.catalog.releases(torrents=False)  # magnets are cached; no blob to read
        return [self._info(self._effective(r)) for r in rows]

    def _notify(self, rid: str, kind: str, **extra: Any) -> None:
        self._changed.setdefault(rid, asyncio.Event()).set()
        event = {"kind": kind, "id": rid, "time": time.time(), **extra}
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(event)

    async def _cancel_task(self, rid: str) -> None:
        """Stop the fetch task of a release, if one runs, and wait until it has."""
        task = self._tasks.pop(rid, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _background_done(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._background.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("setting priorities failed: %s", task.exception())


def peer_address(listen: str, port: int) -> str:
    """``IP:PORT`` that peers dial (``--peer``): the first listen address, or the LAN one."""
    host = listen.split(",", maxsplit=1)[0].strip().rsplit(":", 1)[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - read, not bound
        try:
            host = lan_address()
        except ConfigError:
            host = "127.0.0.1"  # no LAN address: only this host can reach it
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def event_fields(event: EngineEvent) -> dict[str, Any]:
    """An engine event's fields as the API reports them."""
    out: dict[str, Any] = {}
    if event.message:
        out["message"] = event.message
    if event.file_index is not None:
        out["file_index"] = event.file_index
    if event.url:
        out["url"] = event.url
    if event.status is not None:
        out.update(status_fields(event.status))
    return out


def status_fields(st: TorrentStatus) -> dict[str, Any]:
    """A torrent's progress as the API reports it, in ``show`` and in ``progress`` events."""
    return {
        "progress": st.progress,
        "state": st.state,
        "downloaded": st.total_payload_download,
        "uploaded": st.total_payload_upload,
        "download_rate": st.download_rate,
        "upload_rate": st.upload_rate,
        "peers": st.num_peers,
        "failed_bytes": st.failed_bytes,
        "wanted": st.total_wanted,
        "wanted_done": st.total_wanted_done,
    }
