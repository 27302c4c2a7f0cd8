"""Background upkeep: store files that changed, a full disk, resume saves, seed limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import time
from typing import Any

from p2pweights.errors import CorruptChunkError, LoadError, P2PWeightsError
from p2pweights.manifest import ChunkEntry, chunk_of_address
from p2pweights.release import open_self_signed

from .admission import CHUNK_NAME, parse_peer, store_layout
from .engine import EngineError, TorrentFile, parse_torrent
from .service_state import DONE, TERMINAL, USER_PAUSE, ServiceState
from .store import FileStamp

__all__ = ["DhtRetry", "Upkeep"]

log = logging.getLogger(__name__)

_DISK_RETRY_EVERY = 2.0
_RESUME_EVERY = 0.25
"""Seconds at the least between two resume saves of one fetch."""
_DISK_FREE_TO_RETRY = 16 * 1024 * 1024
"""A fetch a full disk paused is restarted once the store has this much free space."""
_DHT_RETRY_TICK = 2.5
FRESH_ASKS = 4
"""Times a newly published release is announced again (5, 15, 35 and 75 s on)."""


class DhtRetry:
    """When to announce a torrent on the DHT again, and ask for its peers, meanwhile.

    libtorrent announces a torrent, and asks for its peers, as it is added and then
    once every ``dht_announce_interval`` (15 minutes). On a small private DHT that is
    not enough (seen with three daemons, one the others' bootstrap node): a release
    published at once reached only the one node that had joined by then, and a fetch
    that asked before anyone else held the announce found no peer for as long. So a
    fetch with no peer asks again 5 s after it is first seen so, then 10, 20 and 40 s
    after each ask, then once a minute (it starts over if it has peers and loses them);
    and a release published since the start is announced again on the same schedule,
    :data:`FRESH_ASKS` times.
    """

    DELAYS = (5.0, 10.0, 20.0, 40.0, 60.0)

    def __init__(self) -> None:
        self._due: dict[str, tuple[float, int]] = {}

    def due(self, rid: str, now: float, *, lonely: bool) -> bool:
        """Whether to ask the DHT for ``rid``'s peers now (``lonely``: it has none)."""
        if not lonely:
            self._due.pop(rid, None)
            return False
        at, tries = self._due.setdefault(rid, (now + self.DELAYS[0], 0))
        if now < at:
            return False
        tries += 1
        self._due[rid] = (now + self.DELAYS[min(tries, len(self.DELAYS) - 1)], tries)
        return True

    def tries(self, rid: str) -> int:
        """How many times ``rid`` was asked again since it was first seen lonely."""
        return self._due.get(rid, (0.0, 0))[1]

    def keep_only(self, rids: set[str]) -> None:
        """Forget the fetches not in ``rids`` (ended)."""
        for rid in set(self._due) - rids:
            del self._due[rid]


class Upkeep(ServiceState):
    """The loops that keep the store honest and the catalog current."""

    # ------------------------------------------------------------------ store integrity

    async def check(self, rid: str, *, full: bool = False) -> dict[str, Any]:
        """Check a complete release's store files now (``POST /v1/releases/{id}/verify``).

        Args:
            rid: the release (id or id prefix).
            full: hash every file, not only those whose stamp moved.

        Returns:
            ``id``, ``ok``, ``chunks`` and ``bytes`` checked, ``seconds``. A damaged
            release whose files are all intact again (a re-fetch of another release
            repaired a shared chunk) goes back to seeding.

        Raises:
            LoadError: the release is not complete.
            CorruptChunkError: a file changed; every complete release using it is now
                ``damaged`` and no longer seeded.
        """
        row = self._row(rid)
        if row.state not in (*DONE, "damaged"):
            raise LoadError(f"only a complete release can be verified; this one is {row.state}")
        started = time.monotonic()
        bad, checked = await self._check_store_files(row.id, full=full)
        if bad:
            raise CorruptChunkError(
                f"release {row.id[:16]}: {len(bad)} chunk file(s) changed in the store since "
                f"they were verified ({', '.join(bad[:3])}); it is no longer seeded, and "
                f"`p2pw fetch {row.id[:16]}` repairs it"
            )
        return {
            "id": row.id,
            "ok": True,
            "chunks": len(checked),
            "bytes": sum(c.size for c in checked),
            "seconds": round(time.monotonic() - started, 3),
        }

    async def _check_store_files(
        self, rid: str, *, full: bool = False
    ) -> tuple[list[str], list[ChunkEntry]]:
        """Re-check the store files of a complete or damaged release.

        A file whose stamp (size, mtime, ctime, inode) still equals the one recorded when
        it was hashed costs one ``stat`` (unless ``full``); any other is hashed again.
        Only files the release has in the store count: a selective fetch has none of the
        chunks it did not want. Bad files mark every complete release using them
        ``damaged``: no longer seeded, and ``show`` and ``doctor`` say why.

        Returns:
            The bad chunk paths, and every chunk checked.
        """
        paths = self.catalog.release_chunk_paths(rid)
        known = self.catalog.store_chunks(paths)
        chunks = {p: k.entry() for p, k in known.items()}
        # Files never stamped (a catalog from schema 1): the signed manifest names them.
        unstamped = {p for p in paths if p not in known and (self.store.root / p).exists()}
        if unstamped:
            manifest = open_self_signed(self.store.releases / rid).manifest
            chunks.update({c.path: c for c in manifest.chunks if c.path in unstamped})
        stamps = {} if full else {p: k.stamp for p, k in known.items()}
        now = await asyncio.to_thread(
            lambda: {p: self.store.intact(c, stamps.get(p)) for p, c in chunks.items()}
        )
        bad = sorted(p for p, stamp in now.items() if stamp is None)
        for path, stamp in now.items():
            if stamp is not None and stamp != (known[path].stamp if path in known else None):
                self.catalog.record_chunk(chunks[path], stamp)  # hashed just now
        checked = list(chunks.values())
        row = self.catalog.get(rid)
        if row is None:
            return bad, checked
        if bad and row.state != "damaged":
            # Every complete release that uses a changed file stops seeding, not just this.
            users = {r for path in bad for r in self.catalog.releases_using(path)}
            for other in sorted(users):  # this release among them
                other_row = self.catalog.get(other)
                if other_row is not None and other_row.state in DONE:
                    await self._mark_damaged(other, bad)
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
        return bad, checked

    async def _restamp(self, tf: TorrentFile) -> None:
        """Re-stamp store files of ``tf`` whose stamp moved or was never recorded.

        So a fetch after a crash maps those files instead of downloading them again: a
        file with a record is hashed against it (a link-count change moves ctime alone),
        one without (a crash between placing it and recording it) against its name and
        the torrent's size and v2 root. Files that fail stay unmapped.
        """
        files = [f for f in tf.files if CHUNK_NAME.fullmatch(f.path)]
        known = self.catalog.store_chunks([f.path for f in files])

        def stale(path: str) -> bool:
            try:
                now = FileStamp.of(self.store.root / path)
            except FileNotFoundError:
                return False
            return path not in known or known[path].stamp != now

        todo = [f for f in files if stale(f.path)]
        if not todo:
            return

        def check() -> list[tuple[ChunkEntry, FileStamp | None]]:
            out = []
            for f in todo:
                rec = known.get(f.path)
                if rec is not None:
                    out.append((rec.entry(), self.store.intact(rec.entry(), rec.stamp)))
                else:
                    chunk = chunk_of_address(f.path, f.size, f.v2_root)
                    out.append((chunk, self.store.adopt(f.path, f.size, f.v2_root)))
            return out

        for chunk, stamp in await asyncio.to_thread(check):
            if stamp is not None:
                self.catalog.record_chunk(chunk, stamp)

    async def _mark_damaged(self, rid: str, bad: list[str]) -> None:
        why = (
            f"CorruptChunkError: {len(bad)} chunk file(s) changed in the store since they "
            f"were verified (e.g. {bad[0]}); it is not seeded. `p2pw fetch {rid[:16]}` "
            "repairs it"
        )
        log.error("release %s: %s", rid, why)
        if rid in self.engine:
            await self.engine.remove(rid)
        self.catalog.set_state(rid, "damaged", why)
        self._notify(rid, "damaged", message=why)

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
        await self._cancel_task(row.id)
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
        self._hit_full_disk.add(rid)
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

    def _redial(self, rid: str, tid: str) -> None:
        """Dial the peers named for fetch ``rid`` again, for its torrent ``tid``."""
        row = self.catalog.get(rid)
        for host, port in map(parse_peer, row.peers if row else ()):
            self.engine.connect_peer(tid, host, port)

    async def _wait_for_space(self, tid: str | None = None) -> None:
        """Return once the store has room again (checked every ``_DISK_RETRY_EVERY`` s).

        With ``tid``, also once the engine has let that torrent go on.
        """
        while shutil.disk_usage(self.store.root).free < _DISK_FREE_TO_RETRY or (
            tid is not None and tid in self.engine and self.engine.disk_full(tid) is not None
        ):
            await asyncio.sleep(_DISK_RETRY_EVERY)

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
            self._redial(rid, rid)  # dropped while it was stopped
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

    async def _ask_dht_for_lonely_fetches(self) -> None:
        """Announce lonely fetches and fresh releases on the DHT again (:class:`DhtRetry`)."""
        retry = DhtRetry()
        while self.engine.dht_enabled:
            await asyncio.sleep(_DHT_RETRY_TICK)
            self._fresh_seeds &= set(self.engine.torrents())
            watched = {rid for rid in self._tasks if rid in self.engine} | self._fresh_seeds
            retry.keep_only(watched)
            now = time.monotonic()
            for rid in watched:
                # A torrent removed meanwhile must not end this loop for good.
                with contextlib.suppress(EngineError):
                    fresh = rid in self._fresh_seeds
                    lonely = fresh or not any(
                        "web_seed" not in p.sources for p in self.engine.peers(rid)
                    )
                    if retry.due(rid, now, lonely=lonely):
                        log.debug("release %s: announced on the DHT again", rid[:16])
                        self.engine.force_dht_announce(rid)
                        if fresh and retry.tries(rid) >= FRESH_ASKS:
                            self._fresh_seeds.discard(rid)

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

    async def _save_resume_on_progress(self, tid: str, stop: asyncio.Event) -> None:
        """Save resume data as verified pieces arrive: at most every ``_RESUME_EVERY`` s.

        A ``kill -9`` then loses at most the pieces verified in that window, instead of
        everything since the last timer tick; the floor keeps the cost (each save encodes
        the whole torrent's state, hash trees included) to a few saves per second.
        Returns once ``stop`` is set, between saves.
        """
        progressed = self._progressed.setdefault(tid, asyncio.Event())
        while True:
            waits = [asyncio.ensure_future(progressed.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # Also when this task is cancelled: asyncio.wait leaves its futures be, and
                # a pending one dropped with its Event is "destroyed but it is pending".
                for fut in waits:
                    fut.cancel()
            if stop.is_set():
                return
            progressed.clear()
            with contextlib.suppress(P2PWeightsError, sqlite3.Error):
                data = await self.engine.save_resume_data(tid, pause=False)
                self.catalog.save_resume(tid, data)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _RESUME_EVERY)
