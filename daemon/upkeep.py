"""Background upkeep: store files that changed, a full disk, resume saves, seed limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import time
from typing import Any

from p2pweights.errors import P2PWeightsError
from p2pweights.release import open_self_signed

from .admission import parse_peer, store_layout
from .engine import EngineError, parse_torrent
from .service_state import DONE, TERMINAL, USER_PAUSE, ServiceState

__all__ = ["Upkeep"]

log = logging.getLogger(__name__)

_DISK_RETRY_EVERY = 2.0
_DISK_FREE_TO_RETRY = 16 * 1024 * 1024
"""A fetch a full disk paused is restarted once the store has this much free space."""


class Upkeep(ServiceState):
    """The loops that keep the store honest and the catalog current."""

    # ------------------------------------------------------------------ store integrity

    async def check(self, rid: str) -> dict[str, Any]:
        """Check a release's store files now (``POST /v1/releases/{id}/verify``).

        A seeding release with a changed file becomes ``damaged`` and stops seeding; a
        damaged one whose files are all intact again (a re-fetch of another release
        repaired a shared chunk) goes back to seeding.
        """
        row = self._row(rid)
        if row.state in (*DONE, "damaged"):
            await self._check_store_files(row.id)
        return self.show(row.id)

    async def _check_store_files(self, rid: str) -> list[str]:
        """Re-check the store files of a complete or damaged release; returns the bad ones.

        A file whose stamp (size, mtime, ctime, inode) still equals the one recorded when
        it was hashed costs one ``stat``; any other is hashed again. Bad files mark the
        release ``damaged``: it is no longer seeded, and ``show`` and ``doctor`` say why.
        """
        paths = self.catalog.release_chunk_paths(rid)
        known = self.catalog.store_chunks(paths)
        chunks = {p: k.entry() for p, k in known.items()}
        if len(chunks) < len(paths):  # files never stamped (a catalog from schema 1)
            manifest = open_self_signed(self.store.releases / rid).manifest
            chunks.update({c.path: c for c in manifest.chunks if c.path not in chunks})
        stamps = {p: k.stamp for p, k in known.items()}
        now = await asyncio.to_thread(
            lambda: {p: self.store.intact(c, stamps.get(p)) for p, c in chunks.items()}
        )
        bad = sorted(p for p, stamp in now.items() if stamp is None)
        for path, stamp in now.items():
            if stamp is not None and stamp != stamps.get(path):
                self.catalog.record_chunk(chunks[path], stamp)  # hashed just now
        row = self.catalog.get(rid)
        if row is None:
            return bad
        if bad and row.state != "damaged":
            why = (
                f"DamagedError: {len(bad)} chunk file(s) changed in the store since they were "
                f"verified (e.g. {bad[0]}); it is not seeded. `p2pw fetch {rid[:16]}` repairs it"
            )
            log.error("release %s: %s", rid, why)
            if rid in self.engine:
                await self.engine.remove(rid)
            self.catalog.set_state(rid, "damaged", why)
            self._notify(rid, "damaged", message=why)
        elif not bad and row.state == "damaged" and row.torrent is not None:
            tf = parse_torrent(row.torrent)
            self.catalog.set_state(rid, "seeding")
            self.engine.add(
                tf,
                self.store.root,
                file_paths=store_layout(rid, tf, self.store, self.catalog),
                seed_mode=True,  # every file was just checked
            )
            self._notify(rid, "repaired")
        return bad

    async def _periodic_store_check(self) -> None:
        """Every ``store_check_interval`` s, check the files of every complete release."""
        while True:
            await asyncio.sleep(self.config.store_check_interval)
            for row in self.catalog.releases(torrents=False):
                if row.state in (*DONE, "damaged"):
                    with contextlib.suppress(P2PWeightsError, sqlite3.Error, OSError):
                        await self._check_store_files(row.id)

    # ------------------------------------------------------------------ pauses

    async def pause_fetch(self, rid: str) -> dict[str, Any]:
        """Pause a fetch the user stopped (``POST /v1/releases/{id}/pause``).

        Its resume data is saved and it leaves the engine; it stays paused over restarts
        until a fetch of the same release asks for it again.
        """
        row = self._row(rid)
        if row.state in (*DONE, "error", "damaged"):
            return self.show(row.id)  # nothing is being fetched
        task = self._tasks.pop(row.id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if row.id in self.engine:
            # Only a torrent with metadata has a state worth saving (and libtorrent may not
            # answer for one without); the user waits on this, so it is bounded too.
            if row.has_torrent:
                with contextlib.suppress(P2PWeightsError, EngineError, sqlite3.Error, TimeoutError):
                    data = await asyncio.wait_for(self.engine.save_resume_data(row.id), 10)
                    self.catalog.save_resume(row.id, data)
            await self.engine.remove(row.id)
        self._paused_from.pop(row.id, None)
        self.catalog.set_state(row.id, "paused", USER_PAUSE)
        self._notify(row.id, "paused", message=USER_PAUSE)
        return self.show(row.id)

    # ------------------------------------------------------------------ a full disk

    def _on_disk_full(self, rid: str, message: str) -> None:
        """Record a fetch a full disk stopped as ``paused``, and watch for free space.

        Nothing is lost: libtorrent keeps every verified piece, and the blocks it could not
        write are fetched again once the fetch goes on.
        """
        row = self.catalog.get(rid)
        if row is None or row.state in TERMINAL:
            return
        why = (
            f"DiskFullError: {message}; the fetch goes on by itself once "
            f"{_DISK_FREE_TO_RETRY // 2**20} MiB are free"
        )
        self._paused_from[rid] = (
            self._paused_from[rid][0] if rid in self._paused_from else row.state,
            why,
        )
        try:
            self.catalog.set_state(rid, "paused", why)
        except sqlite3.Error as exc:  # the catalog may share the full disk
            log.error("could not record the pause of %s: %s", rid, exc)
        if self._disk_watch is None or self._disk_watch.done():
            self._disk_watch = asyncio.create_task(self._retry_when_space_is_freed())

    async def _retry_when_space_is_freed(self) -> None:
        """Every ``_DISK_RETRY_EVERY`` s, restart the paused fetches if space was freed."""
        while self._paused_from:
            await asyncio.sleep(_DISK_RETRY_EVERY)
            self._retry_paused()

    def _retry_paused(self, only: str | None = None) -> None:
        free = shutil.disk_usage(self.store.root).free
        if free < _DISK_FREE_TO_RETRY:
            return
        for rid in list(self._paused_from):
            if only is not None and rid != only:
                continue
            state, _ = self._paused_from.pop(rid)
            if rid not in self.engine or self.engine.disk_full(rid) is None:
                continue
            log.info("%d MiB free again: %s goes on", free // 2**20, rid)
            self.engine.clear_disk_full(rid)
            with contextlib.suppress(sqlite3.Error):
                self.catalog.set_state(rid, state)
            row = self.catalog.get(rid)
            for host, port in map(parse_peer, row.peers if row else ()):
                self.engine.connect_peer(rid, host, port)  # dropped while it was stopped
            self._notify(rid, "space_freed", message=f"{free} bytes free")

    async def _periodic_resume(self) -> None:
        """Every ``resume_interval`` s, save every torrent's state (upload totals too)."""
        while True:
            await asyncio.sleep(self.config.resume_interval)
            for rid in self.engine.torrents():
                row = self.catalog.get(rid)
                if row is not None and row.state not in ("error", "metadata"):
                    # A release removed meanwhile must not end this loop for good.
                    with contextlib.suppress(P2PWeightsError, sqlite3.Error):
                        data = await self.engine.save_resume_data(rid, pause=False)
                        self.catalog.save_resume(rid, data)

    async def _enforce_seed_limits(self) -> None:
        """Stop seeding a release once its ratio or seeding time reaches the limit."""
        ratio, seconds = self.config.seed_ratio_limit, self.config.seed_time_limit
        while True:
            await asyncio.sleep(5.0)
            for row in self.catalog.releases(torrents=False):
                if row.state != "seeding" or row.id not in self.engine:
                    continue
                try:
                    st = self.engine.status(row.id)
                except EngineError:
                    continue  # removed meanwhile
                done_ratio = st.all_time_upload / max(row.total_bytes, 1)
                seeded = time.time() - (row.completed or time.time())
                if (ratio and done_ratio >= ratio) or (seconds and seeded >= seconds):
                    self.engine.pause(row.id)
                    self.catalog.set_state(row.id, "complete")
                    self._notify(row.id, "seeding_stopped", ratio=round(done_ratio, 3))
