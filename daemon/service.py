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
from dataclasses import replace
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
    CHUNK_NAME,
    authenticate,
    manifest_only,
    parse_peer,
    store_layout,
    wanted_chunks,
)
from .catalog import Catalog, ReleaseRow, ReleaseState
from .config import DaemonConfig
from .download import Download
from .engine import (
    Engine,
    EngineError,
    EngineEvent,
    EventStream,
    MagnetLink,
    TorrentFile,
    TorrentStatus,
    make_torrent,
    parse_magnet,
    parse_torrent,
)
from .store import TORRENT_NAME, Store

__all__ = ["NotFoundError", "Service"]

log = logging.getLogger(__name__)

NotFoundError = UnknownReleaseError
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_DONE = ("seeding", "complete")
"""Every wanted chunk is in: seeding, or stopped after its seeding limits."""
_TERMINAL = (*_DONE, "error")
_WAIT_ENDS = (*_TERMINAL, "paused")
"""A wait also returns for a release a full disk paused: the caller should hear of it."""
_DISK_RETRY_EVERY = 2.0
_DISK_FREE_TO_RETRY = 16 * 1024 * 1024
"""A fetch a full disk paused is restarted once the store has this much free space."""
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
        self._downloads: dict[str, Download] = {}
        """Releases whose chunks are downloading now."""
        self._hash_failures: dict[str, int] = {}
        """Pieces of each release that failed the hash check since this daemon started."""
        self._paused_from: dict[str, tuple[ReleaseState, str]] = {}
        """Fetches a full disk paused: the state each was in, and why (kept here too: the
        catalog may be on the full disk)."""
        self._disk_watch: asyncio.Task[None] | None = None
        self._ordered: dict[str, list[str]] = {}
        """Fetches asked to download in order: chunk paths, or empty for layer order."""
        self._magnets: dict[str, str] = {}
        """Each release's magnet link, parsed once from its torrent."""

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
        tasks = [*self._tasks.values(), *self._background]
        if self._disk_watch is not None:
            tasks.append(self._disk_watch)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        saved = await self.engine.close()
        for rid, data in saved.items():
            self.catalog.save_resume(rid, data)
        for q in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)

    async def _restore(self, row: ReleaseRow) -> None:
        if row.state == "error":
            return
        resume = self.catalog.resume_data(row.id)
        if row.torrent is None:  # still waiting for metadata: start over from the link
            target: TorrentFile | MagnetLink = parse_magnet(row.source)
        else:
            target = parse_torrent(row.torrent)
        if row.state in _DONE and isinstance(target, TorrentFile):
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

    async def publish(
        self, path: str, *, hybrid: bool = False, private: bool = False,
        trackers: Sequence[str] = (),
    ) -> dict[str, Any]:
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
        tf = await asyncio.to_thread(
            make_torrent, root, hybrid=hybrid, private=private, trackers=trackers
        )
        rid = tf.id
        existing = self.catalog.get(rid)
        if existing is not None and existing.state in _DONE:
            return self.show(rid)
        target = await asyncio.to_thread(self.store.import_release, release, rid)
        self.store.save_torrent(rid, tf.data)
        records = ChunkRecords(target)
        for chunk in release.manifest.chunks:  # import_release checked each store file
            records.record(target / chunk.path, chunk.sha256)
        records.save()
        # One transaction: a kill -9 leaves no row, or a seeding row with its chunk list.
        self.catalog.add_published(rid, release, source=str(root), torrent=tf.data)
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
        staging = self.store.staging / f"{os.getpid()}-{time.monotonic_ns()}"  # swept at start
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
        ordered: bool = False,
    ) -> dict[str, Any]:
        """Start fetching a release; returns at once with its id and state.

        With ``ordered`` the chunks come in layer order (see :meth:`set_order`), for a
        reader that streams tensors as they land; otherwise libtorrent picks rarest first,
        which spreads pieces best across a swarm.
        """
        target = self._parse_target(uri)
        for p in peers:
            parse_peer(p)
        rid = target.id
        if ordered:
            download = self._downloads.get(rid)
            if download is not None and download.order is None:
                self.set_order(rid, [])
            self._ordered.setdefault(rid, [])
        row = self.catalog.get(rid)
        if row is not None and row.state == "paused":
            self._retry_paused(only=rid)  # asked again: go on now if there is room
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
                if rid in self.engine:
                    for host, port in map(parse_peer, fresh):
                        self.engine.connect_peer(rid, host, port)
            return self.show(rid)
        if row is not None and row.state in _DONE:
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
        if rid in self.engine:
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
        self._ordered.pop(rid, None)
        try:
            self.catalog.set_state(rid, "error", f"{type(exc).__name__}: {exc}")
        except sqlite3.Error as db_exc:  # e.g. a full disk: the row keeps its last state
            log.error("could not record the failure of %s: %s", rid, db_exc)
        if rid in self.engine:
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
            # Metadata first, with nothing wanted; then every file is mapped into the store.
            tid = self.engine.add(
                target, self.store.root, dont_download=True, peers=peers, trackers=row.trackers
            )
            tf = await self.engine.wait_metadata(tid)
            layout = store_layout(rid, tf, self.store, self.catalog)
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
            if any((self.store.root / rel).exists() for rel in layout.values()):
                # The store has some of it: add the torrent again, so the check at add
                # finds those files (a recheck would drop the peers; a re-add dials them
                # afresh).
                await self.engine.remove(tid)
                tid = self.engine.add(
                    tf,
                    self.store.root,
                    file_paths=layout,
                    file_priorities=manifest_only(tf),
                    peers=peers,
                    trackers=row.trackers,
                )
            else:
                # Nothing of it is on disk: move the (empty) files into the store in
                # place, keeping the connections a re-add would have to make again.
                await asyncio.gather(
                    *(self.engine.rename_file(tid, i, rel) for i, rel in layout.items())
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
        download = Download(tf, release, wanted)
        if rid in self._ordered:
            download.order = list(dict.fromkeys([*self._ordered[rid], *download.layer_order()]))
        self._downloads[rid] = download
        self.catalog.set_state(rid, "downloading")
        self._notify(rid, "downloading")
        stop_saver = asyncio.Event()
        saver = asyncio.create_task(self._save_resume_on_progress(tid, stop_saver))
        try:
            await self._want(tid, download.priorities(), peers, after_pause=True)
            await self._follow_chunks(rid, tid, download)
        except BaseException:
            saver.cancel()
            raise
        finally:
            self._progressed.pop(tid, None)
            self._downloads.pop(rid, None)
            self._ordered.pop(rid, None)
        # Let a save in flight finish: its alert must not answer the next request.
        stop_saver.set()
        await saver
        # _follow_chunks flushed libtorrent's cache, so the files hold the bytes now.
        self.catalog.save_resume(rid, await self.engine.save_resume_data(tid, pause=False))
        self.catalog.set_state(rid, "seeding")
        self._notify(rid, "complete")

    async def _follow_chunks(self, rid: str, tid: str, download: Download) -> None:
        """Announce each wanted chunk as it completes, until all have.

        libtorrent accepted every block of a complete chunk against the v2 roots the
        signed manifest lists, so its bytes are the publisher's: once flushed, the chunk
        is recorded for fast-mode loads and announced (a ``chunk`` event, and in
        ``ready_chunks``), so a streaming reader can map it while the rest arrives. An
        ordered download then moves its priority window on.
        """
        release, index = download.release, download.index
        records = ChunkRecords(release.root)
        by_path = {c.path: c for c in release.manifest.chunks}
        while pending := download.pending():
            done = set(await self.engine.wait_any_file(tid, [index[p] for p in pending]))
            await self.engine.flush(tid)
            finished = [p for p in pending if index[p] in done]
            for path in finished:
                records.record(release.root / path, by_path[path].sha256)
            records.save()  # on a full disk it stays dirty; loads hash these chunks meanwhile
            for path in finished:
                download.ready[path] = None
                self._notify(
                    rid,
                    "chunk",
                    path=path,
                    ready_chunks=len(download.ready),
                    wanted_chunks=len(download.wanted),
                )
            if download.order is not None and download.pending():
                await self.engine.set_file_priorities(tid, download.priorities())
        records.save()  # a no-op, unless a save failed while the disk was full

    def set_order(self, rid: str, chunks: Sequence[str]) -> dict[str, Any]:
        """Download a fetch's chunks in this order (most wanted first).

        Paths must be chunks of the release; chunks not named follow in layer order. A
        fetch still fetching its manifest takes the order when its download starts.

        Raises:
            UnknownReleaseError: no such release.
            LoadError: a path that is not one of the release's chunks.
        """
        bad = [c for c in chunks if not CHUNK_NAME.fullmatch(c)]
        if bad:
            raise LoadError(f"{bad[0][:80]!r} is not a chunk path (chunks/<sha256>[.safetensors])")
        row = self._row(rid)
        if row.state in _DONE:
            return self.show(row.id)
        download = self._downloads.get(row.id)
        if download is None:
            self._ordered[row.id] = list(dict.fromkeys(chunks))
            return self.show(row.id)
        known = set(download.wanted)
        bad = [c for c in chunks if c not in known]
        if bad:
            raise LoadError(f"{bad[0][:80]!r} is not a wanted chunk of release {row.id[:12]}")
        download.order = list(dict.fromkeys([*chunks, *download.layer_order()]))
        tid = row.id
        if tid in self.engine and download.pending():
            task = asyncio.create_task(self.engine.set_file_priorities(tid, download.priorities()))
            self._background.append(task)
            task.add_done_callback(self._background_done)
        return self.show(row.id)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._background.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("setting priorities failed: %s", task.exception())

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
        self._magnets[rid] = tf.magnet
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
            if len(matches) != 1:
                raise UnknownReleaseError(f"no release {rid[:80]!r}")
            row = matches[0]
        return self._effective(row)

    def _effective(self, row: ReleaseRow) -> ReleaseRow:
        if row.id in self._paused_from:  # whether or not the catalog could record it
            return replace(row, state="paused", error=self._paused_from[row.id][1])
        return row

    def _magnet(self, row: ReleaseRow) -> str | None:
        if row.torrent is None:
            return None
        magnet = self._magnets.get(row.id)
        if magnet is None:  # a release's torrent never changes: parse it once
            magnet = self._magnets[row.id] = parse_torrent(row.torrent).magnet
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
            if row.torrent
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
                **_status_fields(st),
                "all_time_download": st.all_time_download,
                "all_time_upload": st.all_time_upload,
                "seeds": st.num_seeds,
                "hash_failures": self._hash_failures.get(row.id, 0),
                "error": st.error,
                "state_history": list(self._states.get(row.id, [])),
            }
            if st.failed_bytes and row.state not in _DONE:
                info["problem"] = (
                    f"{self._hash_failures.get(row.id, 0)} pieces failed the hash check "
                    f"({st.failed_bytes} bytes thrown away): peers sent data that is not the "
                    f"signed release; they are dropped, and the fetch waits for an honest one "
                    f"({st.num_peers} peers connected now)"
                )
        if row.state == "paused":
            info["problem"] = row.error
        return info

    def list_releases(self) -> list[dict[str, Any]]:
        """Every release, oldest first."""
        return [self._info(self._effective(r)) for r in self.catalog.releases()]

    async def wait(self, rid: str, timeout: float) -> dict[str, Any]:
        """Return once the release is complete or failed, or ``timeout`` passes."""
        row = self._row(rid)
        deadline = time.monotonic() + timeout
        while row.state not in _WAIT_ENDS:
            event = self._changed.setdefault(row.id, asyncio.Event())
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)
            event.clear()
            row = self._row(row.id)
        info = self.show(row.id)
        info["timed_out"] = row.state not in _WAIT_ENDS
        return info

    async def remove(self, rid: str, *, delete_data: bool) -> dict[str, Any]:
        """Stop a release (cancel its fetch, stop seeding), optionally deleting its data."""
        row = self._row(rid)
        task = self._tasks.pop(row.id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if row.id in self.engine:
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
            # Tells the subscriber it will see every event from now on.
            yield {"kind": "subscribed", "id": None, "time": time.time()}
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
                elif event.kind == "hash_failed":
                    self._hash_failures[event.torrent] = (
                        self._hash_failures.get(event.torrent, 0) + 1
                    )
                elif event.kind == "disk_full":
                    self._on_disk_full(event.torrent, event.message)
                self._notify(event.torrent, event.kind, **_event_fields(event))

    # ------------------------------------------------------------------ a full disk

    def _on_disk_full(self, rid: str, message: str) -> None:
        """Record a fetch a full disk stopped as ``paused``, and watch for free space.

        Nothing is lost: libtorrent keeps every verified piece, and the blocks it could not
        write are fetched again once the fetch goes on.
        """
        row = self.catalog.get(rid)
        if row is None or row.state in _TERMINAL:
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
            for row in self.catalog.releases():
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


def _event_fields(event: EngineEvent) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if event.message:
        out["message"] = event.message
    if event.file_index is not None:
        out["file_index"] = event.file_index
    if event.status is not None:
        out.update(_status_fields(event.status))
    return out


def _status_fields(st: TorrentStatus) -> dict[str, Any]:
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
