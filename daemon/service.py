"""What the daemon does: publish, fetch (verify before trust), seed, remove, report.

A fetch walks a release through these states, each recorded in the catalog:

``metadata``   the torrent's info dict is being fetched (magnet links)
``manifest``   only ``manifest.json`` and ``manifest.sig`` are wanted (every chunk has
               priority 0) until they arrive and are authenticated: trusted publisher key,
               good signature, and a chunk list equal to the torrent's files, v2 root by
               v2 root. Only then is any chunk downloaded.
``downloading`` the chunks are fetched; libtorrent checks every 16 KiB block against the
               v2 roots, which the signed manifest covers.
``seeding``    complete and verified; the daemon keeps seeding.
``error``      refused or failed; the reason is in the row, nothing of it is loadable.

Chunks land in the shared store under their content address, so a chunk that is already
there (from another release) is found complete by the check at add and never downloaded
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any

from p2pweights import __version__
from p2pweights.errors import (
    FormatError,
    LoadError,
    P2PWeightsError,
    UnknownReleaseError,
)
from p2pweights.keys import load_private_key
from p2pweights.pack import pack
from p2pweights.paths import trust_path
from p2pweights.release import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Release,
    open_self_signed,
    resolve_source,
)
from p2pweights.verify import ChunkRecords, verify_chunks

from .admission import (
    PRIO_CHUNK,
    authenticate,
    manifest_only,
    parse_peer,
    store_layout,
    wanted_chunks,
)
from .catalog import Catalog, ReleaseRow
from .config import DaemonConfig
from .engine import (
    Engine,
    EngineError,
    EngineEvent,
    EventStream,
    MagnetLink,
    TorrentFile,
    make_torrent,
    parse_magnet,
    parse_torrent,
)
from .store import Store

__all__ = ["NotFoundError", "Service"]

log = logging.getLogger(__name__)

NotFoundError = UnknownReleaseError
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_TERMINAL = ("seeding", "complete", "error")
_RESUME_EVERY = 0.25


class Service:
    """The daemon's behaviour, over one engine, one catalog and one store."""

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

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, unclean: bool) -> None:
        """Bring back every release in the catalog, then start the background loops.

        Args:
            unclean: the last run did not stop cleanly (only logged: progress is saved
                after every verified piece, so a restart goes on from there).
        """
        if unclean:
            log.warning("the last run did not stop cleanly; going on from saved progress")
        # Subscribe before restoring, so the restored torrents' first events are seen.
        stream = self.engine.subscribe()
        self._background.append(asyncio.create_task(self._forward_engine_events(stream)))
        for row in self.catalog.releases():
            try:
                await self._restore(row)
            except P2PWeightsError as exc:
                log.warning("could not restore %s: %s", row.id, exc)
                self.catalog.set_state(row.id, "error", f"{type(exc).__name__}: {exc}")
        self._background.append(asyncio.create_task(self._periodic_resume()))
        if self.config.seed_ratio_limit or self.config.seed_time_limit:
            self._background.append(asyncio.create_task(self._enforce_seed_limits()))

    async def close(self) -> None:
        """Stop tasks, save resume data of everything, end the engine."""
        for task in [*self._tasks.values(), *self._background]:
            task.cancel()
        for task in [*self._tasks.values(), *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        saved = await self.engine.close()
        for rid, data in saved.items():
            self.catalog.save_resume(rid, data)
        for q in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)

    async def _restore(self, row: ReleaseRow) -> None:
        resume = self.catalog.resume_data(row.id)
        if row.state == "error":
            return
        if row.torrent is None:  # still waiting for metadata: start over from the link
            target: TorrentFile | MagnetLink = parse_magnet(row.source)
        else:
            target = parse_torrent(row.torrent)
        if row.state in ("seeding", "complete") and isinstance(target, TorrentFile):
            self.engine.add(
                target,
                self.store.root,
                file_paths=store_layout(row.id, target, self.store, self.catalog),
                resume_data=resume,
                paused=row.state == "complete",
            )
            return
        # With resume data (saved after every verified piece) libtorrent goes on where it
        # stopped; without it, the check at add verifies what is on disk. A forced
        # recheck would be worse: a magnet's torrent lacks piece layers, so partly
        # downloaded chunks could not be verified and would be fetched again.
        self._start_fetch(row.id, target, row, resume=resume)

    # ------------------------------------------------------------------ publish

    async def publish(self, path: str, *, hybrid: bool = False) -> dict[str, Any]:
        """Seed a local release dir.

        The release must be self-consistent (its signature verifies under the key it
        names) and its chunks intact; the publisher need not be in our trust store.
        """
        src = Path(path)
        if not src.is_absolute():
            raise LoadError(f"publish needs an absolute path, not {path[:80]!r}")
        root = resolve_source(src)
        release = open_self_signed(root)
        await asyncio.to_thread(verify_chunks, root, release.manifest.chunks, "fast")
        tf = await asyncio.to_thread(make_torrent, root, hybrid=hybrid)
        rid = tf.id
        existing = self.catalog.get(rid)
        if existing is not None and existing.state in ("seeding", "complete"):
            return self.show(rid)
        target = await asyncio.to_thread(self.store.import_release, release, rid)
        self.store.save_torrent(rid, tf.data)
        records = ChunkRecords(target)
        for chunk in release.manifest.chunks:  # import_release checked each store file
            records.record(target / chunk.path, chunk.sha256)
        records.save()
        self.catalog.add_release(rid, source=str(root), state="seeding", torrent=tf.data)
        self._record_manifest(rid, release, tf)
        self.catalog.set_state(rid, "seeding")
        self.engine.add(
            tf,
            self.store.root,
            file_paths=store_layout(rid, tf, self.store, self.catalog),
            seed_mode=True,
        )
        self._notify(rid, "published")
        return self.show(rid)

    async def pack_and_publish(
        self,
        *,
        source: str,
        name: str,
        version: int,
        label: str,
        key_file: str,
        hybrid: bool = False,
    ) -> dict[str, Any]:
        """Pack ``source`` with an unencrypted key file, then publish the result."""
        key = load_private_key(Path(key_file))
        staging = self.store.root / "staging" / f"{os.getpid()}-{time.monotonic_ns()}"
        try:
            await asyncio.to_thread(
                pack, Path(source), staging, name=name, version=version, key=key, label=label
            )
            return await self.publish(str(staging), hybrid=hybrid)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------------ fetch

    def _parse_target(self, uri: str) -> TorrentFile | MagnetLink:
        if uri.startswith("magnet:"):
            return parse_magnet(uri)
        if _HEX64.fullmatch(uri):
            return parse_magnet(f"magnet:?xt=urn:btmh:1220{uri.lower()}")
        path = Path(uri)
        if uri.endswith(".torrent") and path.is_file():
            return parse_torrent(path.read_bytes())
        raise FormatError(f"{uri[:80]!r} is not a magnet link, a v2 info-hash or a .torrent file")

    async def fetch(
        self,
        uri: str,
        *,
        peers: Sequence[str] = (),
        trackers: Sequence[str] = (),
        include: Sequence[str] = (),
        trust_on_first_use: bool = False,
    ) -> dict[str, Any]:
        """Start fetching a release; returns at once with its id and state."""
        target = self._parse_target(uri)
        for p in peers:
            parse_peer(p)
        rid = target.id
        row = self.catalog.get(rid)
        if row is not None and rid in self._tasks:
            # A fetch under way: new peers join it now (the old ones may be gone), and
            # are remembered for a restart.
            fresh = [p for p in peers if p not in row.peers]
            if fresh:
                self.catalog.add_release(
                    rid,
                    source=row.source,
                    state=row.state,
                    torrent=row.torrent,
                    include=row.include,
                    peers=[*row.peers, *fresh],
                    trackers=row.trackers,
                    tofu=row.tofu,
                )
                if rid in self.engine.torrents():
                    for host, port in map(parse_peer, fresh):
                        self.engine.connect_peer(rid, host, port)
            return self.show(rid)
        if row is not None and row.state in ("seeding", "complete"):
            # An empty selection means every tensor; a wider one fetches what is missing.
            merged = (
                ()
                if not (row.include and include)
                else tuple(sorted(set(row.include) | set(include)))
            )
            if merged == row.include or row.torrent is None:
                return self.show(rid)
            include = merged
            target = parse_torrent(row.torrent)
        if rid in self.engine.torrents():
            await self.engine.remove(rid)
        self.catalog.add_release(
            rid,
            source=uri,
            state="metadata",
            torrent=target.data if isinstance(target, TorrentFile) else None,
            include=include,
            peers=peers,
            trackers=trackers,
            tofu=trust_on_first_use,
        )
        self.catalog.set_state(rid, "metadata")
        row = self.catalog.get(rid)
        assert row is not None
        self._start_fetch(rid, target, row, resume=None)
        return self.show(rid)

    def _start_fetch(
        self, rid: str, target: TorrentFile | MagnetLink, row: ReleaseRow, *, resume: bytes | None
    ) -> None:
        self._spawn(rid, self._fetch_flow(rid, target, row, resume=resume))

    def _spawn(self, rid: str, coro: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except P2PWeightsError as exc:
                log.warning("release %s failed: %s", rid, exc)
                await self._fail(rid, exc)
            except Exception as exc:  # keep the daemon up; record why
                log.exception("release %s failed unexpectedly", rid)
                await self._fail(rid, exc)
            finally:
                self._tasks.pop(rid, None)

        self._tasks[rid] = asyncio.create_task(run(), name=f"fetch-{rid[:12]}")

    async def _fail(self, rid: str, exc: BaseException) -> None:
        self.catalog.set_state(rid, "error", f"{type(exc).__name__}: {exc}")
        if rid in self.engine.torrents():
            with contextlib.suppress(P2PWeightsError):
                await self.engine.remove(rid)
        self._notify(rid, "error")

    async def _fetch_flow(
        self, rid: str, target: TorrentFile | MagnetLink, row: ReleaseRow, *, resume: bytes | None
    ) -> None:
        peers = [parse_peer(p) for p in row.peers]
        if isinstance(target, TorrentFile):
            layout = store_layout(rid, target, self.store, self.catalog)
            tid = self.engine.add(
                target,
                self.store.root,
                file_paths=layout,
                file_priorities=manifest_only(target),
                peers=peers,
                trackers=row.trackers,
                resume_data=resume,
            )
            tf = target
        else:
            # Metadata first, with nothing wanted; then add the torrent again with every
            # file mapped into the store. The check at add finds chunks the store already
            # has, and the peers are dialled afresh (a recheck would drop them).
            tid = self.engine.add(
                target, self.store.root, dont_download=True, peers=peers, trackers=row.trackers
            )
            tf = await self.engine.wait_metadata(tid)
            layout = store_layout(rid, tf, self.store, self.catalog)
            await self.engine.remove(tid)
            self.catalog.add_release(
                rid,
                source=row.source,
                state="manifest",
                torrent=tf.data,
                include=row.include,
                peers=row.peers,
                trackers=row.trackers,
                tofu=row.tofu,
            )
            tid = self.engine.add(
                tf,
                self.store.root,
                file_paths=layout,
                file_priorities=manifest_only(tf),
                peers=peers,
                trackers=row.trackers,
            )
        self.catalog.set_state(rid, "manifest")
        self._notify(rid, "manifest")
        await self._want(tid, manifest_only(tf), peers)
        meta = [tf.file(MANIFEST_NAME).index, tf.file(SIGNATURE_NAME).index]
        await self.engine.wait_files(tid, meta)
        release = authenticate(
            self.store.release_dir(rid), tf, trust_path(self.config.home), tofu=row.tofu
        )
        self._record_manifest(rid, release, tf)
        wanted = wanted_chunks(release, row.include)
        prios = manifest_only(tf)
        for path in wanted:
            prios[tf.file(path).index] = PRIO_CHUNK
        self.catalog.set_state(rid, "downloading")
        self._notify(rid, "downloading")
        stop_saver = asyncio.Event()
        saver = asyncio.create_task(self._save_resume_on_progress(tid, stop_saver))
        try:
            await self._want(tid, prios, peers, after_pause=True)
            await self.engine.wait_files(tid, [tf.file(p).index for p in wanted])
        except BaseException:
            saver.cancel()
            raise
        finally:
            self._progressed.pop(tid, None)
        # Let a save in flight finish: its alert must not answer the next request.
        stop_saver.set()
        await saver
        # wait_files flushed libtorrent's cache, so the files hold the bytes now.
        self.catalog.save_resume(rid, await self.engine.save_resume_data(tid, pause=False))
        # libtorrent accepted every block against the v2 roots the signed manifest lists,
        # so these bytes are the publisher's: record them for fast-mode loads.
        records = ChunkRecords(release.root)
        by_path = {c.path: c for c in release.manifest.chunks}
        for path in wanted:
            records.record(release.root / path, by_path[path].sha256)
        records.save()
        self.catalog.set_state(rid, "seeding")
        self._notify(rid, "complete")

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
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for fut in pending:
                fut.cancel()
            if stop.is_set():
                return
            progressed.clear()
            with contextlib.suppress(P2PWeightsError, sqlite3.Error):
                data = await self.engine.save_resume_data(tid, pause=False)
                self.catalog.save_resume(tid, data)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _RESUME_EVERY)

    async def _want(
        self,
        tid: str,
        prios: list[int],
        peers: Sequence[tuple[str, int]],
        *,
        after_pause: bool = False,
    ) -> None:
        """Set file priorities, then dial the explicit peers again.

        A torrent that wanted nothing was upload-only: a peer may have dropped it, and one
        that stayed is in libtorrent's slow start (a two-block request queue that takes
        about a second to grow). With ``after_pause``, where redialling is instant
        (``min_reconnect_time`` 0, the local profile), the peers are reconnected afresh;
        elsewhere a redial could wait seconds, so the slow start is the cheaper path.
        """
        await self.engine.set_file_priorities(tid, prios)
        instant = self.engine.settings.min_reconnect_time == 0
        if after_pause and instant and self.engine.status(tid).num_peers:
            await self.engine.reconnect(tid)
        for host, port in peers:
            self.engine.connect_peer(tid, host, port)

    def _record_manifest(self, rid: str, release: Release, tf: TorrentFile) -> None:
        self.catalog.record_release(rid, release, tf.data)
        self.store.save_torrent(rid, tf.data)

    # ------------------------------------------------------------------ queries

    def status(self) -> dict[str, Any]:
        """The daemon's own status."""
        rows = self.catalog.releases()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "home": str(self.config.home),
            "profile": self.config.profile,
            "listen_port": self.engine.listen_port,
            "uptime": round(time.time() - self.started, 1),
            "releases": len(rows),
            "active_fetches": len(self._tasks),
            "tcp_port": self.config.tcp_port or None,
        }

    def _row(self, rid: str) -> ReleaseRow:
        row = self.catalog.get(rid.lower()) if _HEX64.fullmatch(rid) else None
        if row is None:
            matches = [
                r for r in self.catalog.releases() if len(rid) >= 6 and r.id.startswith(rid.lower())
            ]
            if len(matches) == 1:
                return matches[0]
            raise UnknownReleaseError(f"no release {rid[:80]!r}")
        return row

    def show(self, rid: str) -> dict[str, Any]:
        """Everything about one release."""
        row = self._row(rid)
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
            "torrent_path": str(self.store.releases / row.id / "release.torrent")
            if row.torrent
            else None,
            "magnet": parse_torrent(row.torrent).magnet if row.torrent else None,
        }
        try:
            st = self.engine.status(row.id) if row.id in self.engine.torrents() else None
        except EngineError:
            st = None  # being removed or re-added right now
        if st is not None:
            info["transfer"] = {
                "progress": st.progress,
                "state": st.state,
                "downloaded": st.total_payload_download,
                "uploaded": st.total_payload_upload,
                "all_time_download": st.all_time_download,
                "all_time_upload": st.all_time_upload,
                "download_rate": st.download_rate,
                "upload_rate": st.upload_rate,
                "peers": st.num_peers,
                "seeds": st.num_seeds,
                "failed_bytes": st.failed_bytes,
                "wanted": st.total_wanted,
                "wanted_done": st.total_wanted_done,
                "error": st.error,
                "state_history": list(self._states.get(row.id, [])),
            }
        return info

    def list_releases(self) -> list[dict[str, Any]]:
        """Every release, oldest first."""
        return [self.show(r.id) for r in self.catalog.releases()]

    async def wait(self, rid: str, timeout: float) -> dict[str, Any]:
        """Return once the release is complete or failed, or ``timeout`` passes."""
        row = self._row(rid)
        deadline = time.monotonic() + timeout
        while row.state not in _TERMINAL:
            event = self._changed.setdefault(row.id, asyncio.Event())
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)
            event.clear()
            row = self._row(row.id)
        info = self.show(row.id)
        info["timed_out"] = row.state not in _TERMINAL
        return info

    async def remove(self, rid: str, *, delete_data: bool) -> dict[str, Any]:
        """Stop a release (cancel its fetch, stop seeding), optionally deleting its data."""
        row = self._row(rid)
        task = self._tasks.pop(row.id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if row.id in self.engine.torrents():
            await self.engine.remove(row.id)
        orphans = self.catalog.remove(row.id, forget_chunks=delete_data)
        if delete_data:
            self.store.remove_release(row.id, orphans)
        self._notify(row.id, "removed")
        return {"id": row.id, "removed": True, "deleted_chunks": len(orphans) if delete_data else 0}

    # ------------------------------------------------------------------ events

    def _notify(self, rid: str, kind: str, **extra: Any) -> None:
        self._changed.setdefault(rid, asyncio.Event()).set()
        event = {"kind": kind, "id": rid, "time": time.time(), **extra}
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(event)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Service and engine events for one subscriber, until the daemon stops."""
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(1024)
        self._subscribers.add(q)
        try:
            while (event := await q.get()) is not None:
                yield event
        finally:
            self._subscribers.discard(q)

    async def _forward_engine_events(self, stream: EventStream) -> None:
        with stream:
            async for event in stream:
                if event.kind == "piece":  # too many for subscribers; feeds the saver
                    if event.torrent in self._progressed:
                        self._progressed[event.torrent].set()
                    continue
                if event.kind == "state":
                    history = self._states.setdefault(event.torrent, [])
                    history[:] = [*history[-31:], event.message]
                self._notify(event.torrent, event.kind, **_event_fields(event))

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
            for row in self.catalog.releases():
                if row.state != "seeding" or row.id not in self.engine.torrents():
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


def _event_fields(event: EngineEvent) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if event.message:
        out["message"] = event.message
    if event.file_index is not None:
        out["file_index"] = event.file_index
    if event.status is not None:
        st = event.status
        out.update(
            progress=st.progress,
            downloaded=st.total_payload_download,
            uploaded=st.total_payload_upload,
            download_rate=st.download_rate,
            upload_rate=st.upload_rate,
            peers=st.num_peers,
            state=st.state,
            failed_bytes=st.failed_bytes,
            wanted=st.total_wanted,
            wanted_done=st.total_wanted_done,
        )
    return out
