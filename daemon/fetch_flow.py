"""The fetch flow: verify before trust, then download into partial files and place.

A fetch walks a release through these states, each recorded in the catalog:

``metadata``   the torrent's info dict is being fetched (magnet links)
``manifest``   ``manifest.json`` and ``manifest.sig`` are wanted first, until they arrive
               and are authenticated: trusted publisher key, good signature, and a chunk
               list equal to the torrent's files, v2 root by v2 root. A fetch of every
               chunk in no order also downloads chunks behind them, speculatively, into
               its partial files, an ordered one the largest chunk (its warm-up); an
               ``include`` fetch wants no chunk yet. No chunk is placed, recorded or
               announced before the manifest is authenticated.
``downloading`` the chunks are fetched into the fetch's own partial files; libtorrent
               checks every 16 KiB block against the v2 roots, which the signed manifest
               covers; each complete chunk is hashed against its name and placed in the
               store (see :mod:`.store`).
``seeding``    complete and verified; the daemon keeps seeding.
``error``      refused or failed; the reason is in the row, nothing of it is loadable.

A chunk the store already holds verified and unchanged (from another release) is mapped
onto the store file, found complete by the check at add, and never downloaded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from p2pweights.errors import FormatError, LoadError, P2PWeightsError
from p2pweights.manifest import ChunkEntry
from p2pweights.names import is_name
from p2pweights.paths import trust_path
from p2pweights.release import Release
from p2pweights.verify import ChunkRecords

from .admission import (
    CHUNK_NAME,
    PRIO_CHUNK,
    authenticate,
    manifest_and_warmup,
    manifest_first,
    manifest_only,
    meta_files,
    parse_peer,
    store_layout,
    wanted_chunks,
)
from .catalog import ReleaseRow
from .download import Download
from .engine import MagnetLink, TorrentFile, parse_magnet, parse_torrent
from .names import Names
from .placement import Placement
from .search import check_index_torrent, index_signer
from .service_state import DONE, HEX64
from .spread import ask_share_first, keep_share
from .stall_watch import StallWatch

__all__ = ["FetchFlow"]

log = logging.getLogger(__name__)


class FetchFlow(Placement):
    """Fetching a release: metadata, the authenticated manifest, then its chunks."""

    @property
    def names(self) -> Names:
        """p2pw:// names: publish, keep alive, resolve (``daemon/names.py``)."""
        if self._names is None:
            self._names = Names(
                self.config,
                self.engine,
                self.catalog,
                self._notify,
                lambda rid: (row := self.catalog.get(rid)) is not None and row.state in DONE,
            )
        return self._names

    def _parse_target(self, uri: str) -> TorrentFile | MagnetLink:
        if uri.startswith("magnet:"):
            return parse_magnet(uri)
        if HEX64.fullmatch(uri):
            return parse_magnet(f"magnet:?xt=urn:btmh:1220{uri.lower()}")
        path = Path(uri)
        if uri.endswith(".torrent") and path.is_file():
            return parse_torrent(path.read_bytes(), max_files=self.config.max_torrent_files)
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
        web_seeds: Sequence[str] = (),
        allow_stale: bool = False,
    ) -> dict[str, Any]:
        """Start fetching a release; returns at once with its id and state.

        A ``p2pw://`` name is resolved first (see :mod:`.names`); ``allow_stale`` accepts
        a record past its signed expiry, with a warning.

        With ``ordered`` the chunks come in layer order (see :meth:`set_order`), for a
        reader that streams tensors as they land; otherwise libtorrent picks rarest first,
        which spreads pieces best across a swarm.
        """
        if is_name(uri):
            uri, _ = await self.names.for_fetch(
                uri, tofu=trust_on_first_use, allow_stale=allow_stale
            )
        target = self._parse_target(uri)
        for p in peers:
            parse_peer(p)
        rid = target.id
        self.web.remember(rid, web_seeds)
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
        if row is not None and row.state == "damaged" and row.torrent is not None:
            # A re-fetch repairs it: changed store files are fetched again into partial
            # files and replace the damaged ones once verified.
            include = row.include
            target = parse_torrent(row.torrent)
        elif row is not None and row.state in DONE:
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
        resume = None
        if row is not None and row.state == "paused" and rid not in self._paused_from:
            # Paused by the user: go on from the saved state, with the torrent if known,
            # the peers it knew and the selection it had.
            resume = self.catalog.resume_data(rid)
            if row.torrent is not None:
                target = parse_torrent(row.torrent)
            include = include or row.include
        if row is not None and row.state in ("paused", "damaged", "error"):
            # Asked again (a failed fetch too): the peers and trackers it knew still count;
            # without them a magnet waits for metadata that nobody it knows can send.
            peers = list(dict.fromkeys([*row.peers, *peers]))
            trackers = list(dict.fromkeys([*row.trackers, *trackers]))
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
        self._start_fetch(rid, target, row, resume=resume)
        self._notify(rid, "added")  # the progress bar's first stage: waiting for metadata
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
                self.web.unsteer(rid)

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
        self.store.drop_partial(rid)  # unverified bytes of a refused or failed fetch
        self._notify(rid, "error")

    async def _fetch_flow(
        self, rid: str, target: TorrentFile | MagnetLink, row: ReleaseRow, *, resume: bytes | None
    ) -> None:
        peers = [parse_peer(p) for p in row.peers]
        seeds = await self.web.select(rid, untrusted=target.web_seeds)
        # A fetch of every chunk in no order wants the chunks from the start, behind the
        # manifest, into its partial files: nothing of them is placed, recorded or handed
        # to a reader before the manifest is authenticated (below), and a refused fetch
        # drops them. The peers never see it lose interest, so it needs no reconnect.
        speculate = not row.include and rid not in self._ordered
        # An ordered fetch of every chunk wants one chunk behind the manifest: its peers
        # stay interested, so the window starts without a reconnect or a slow start.
        warm = not row.include and not speculate
        first = manifest_first if speculate else manifest_and_warmup if warm else manifest_only
        if isinstance(target, TorrentFile):
            check_index_torrent(self.catalog, rid, target)
            await self._restamp(target)
            layout = store_layout(rid, target, self.store, self.catalog)
            tid = self.engine.add(
                target,
                self.store.root,
                file_paths=layout,
                file_priorities=first(target),
                peers=peers,
                trackers=row.trackers,
                resume_data=resume,
                web_seeds=seeds,
            )
            tf = target
        else:
            # Metadata first, with nothing wanted; then every file is mapped into the store.
            tid = self.engine.add(
                target,
                self.store.root,
                dont_download=True,
                peers=peers,
                trackers=row.trackers,
                web_seeds=seeds,
            )
            tf, mirrored = await self.web.metadata(tid, target, seeds, peers=bool(peers))
            check_index_torrent(self.catalog, rid, tf)
            if mirrored:  # from a mirror: its url-list is untrusted, like the magnet's
                seeds = await self.web.select(rid, untrusted=[*seeds, *tf.web_seeds])
            await self._restamp(tf)
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
            if mirrored or any((self.store.root / rel).exists() for rel in layout.values()):
                # The store has some of it: add the torrent again, so the check at add
                # finds those files (a recheck would drop the peers; a re-add dials them
                # afresh).
                await self.engine.remove(tid)
                tid = self.engine.add(
                    tf,
                    self.store.root,
                    file_paths=layout,
                    file_priorities=first(tf),
                    peers=peers,
                    trackers=row.trackers,
                    web_seeds=seeds,
                )
            else:
                # Nothing of it is on disk: move the (empty) files into the store in
                # place, keeping the connections a re-add would have to make again.
                await asyncio.gather(
                    *(self.engine.rename_file(tid, i, rel) for i, rel in layout.items())
                )
        self.web.steer(rid)  # spare the web seeds while peers can send (origin_rule.py)
        # One piece plan per fetch: the web seed rule's owners, or else the shares.
        speculate_shares = speculate and not self.web.steering(rid)
        self.catalog.set_state(rid, "manifest")
        self._notify(rid, "manifest")
        await self._want(tid, first(tf), peers)
        if speculate_shares:
            ask_share_first(self.engine, tid, tf, peers)
        await self.engine.wait_files(tid, meta_files(tf))
        release = authenticate(
            self.store.release_dir(rid),
            tf,
            trust_path(self.config.home),
            tofu=row.tofu,
            limits=self.config.manifest_limits,
            signer=index_signer(self.catalog, rid),  # a search index: its name's key only
        )
        self.names.check_fetched(rid, release)  # a name's fetch: its record's manifest
        # A warm-up chunk that is in already left the peers told "not interested".
        redial = not speculate and (not warm or self.engine.status(tid).is_finished)
        self._record_manifest(rid, release, tf)
        wanted = wanted_chunks(release, row.include)
        download = Download(tf, release, wanted)
        if rid in self._ordered:
            download.order = list(dict.fromkeys([*self._ordered[rid], *download.layer_order()]))
        self._downloads[rid] = download
        self.catalog.set_state(rid, "downloading")
        self._notify(rid, "downloading")
        stop_saver = asyncio.Event()
        keeper: asyncio.Task[None] | None = None
        saver = asyncio.create_task(self._save_resume_on_progress(tid, stop_saver))
        try:
            await self._want(tid, download.priorities(), peers, after_pause=redial)
            if speculate_shares and download.order is None:  # a stream's window comes first
                share = ask_share_first(self.engine, tid, tf, peers)
                keeper = asyncio.create_task(
                    keep_share(self.engine, tid, share, PRIO_CHUNK, lambda: download.order is None)
                )
            relinked = await self._follow_chunks(rid, tid, download, layout)
        except BaseException:
            saver.cancel()
            raise
        finally:
            if keeper is not None:
                keeper.cancel()
            self._progressed.pop(tid, None)
            self._downloads.pop(rid, None)
            self._ordered.pop(rid, None)
        # Let a save in flight finish: its alert must not answer the next request.
        stop_saver.set()
        await saver
        if relinked:
            tid = await self._onto_store(rid, tf, tid, relinked)
        self.store.drop_partial(rid)
        # _follow_chunks flushed libtorrent's cache, so the files hold the bytes now.
        self.catalog.save_resume(rid, await self.engine.save_resume_data(tid, pause=False))
        self.catalog.set_state(rid, "seeding")
        self._notify(rid, "complete")

    async def _follow_chunks(
        self, rid: str, tid: str, download: Download, layout: dict[int, str]
    ) -> list[ChunkEntry]:
        """Place each wanted chunk in the store as it completes, and announce it.

        libtorrent accepted every block of a complete chunk against the v2 roots the
        signed manifest lists; :meth:`_place` then hashes it against its name and brings
        it into the store. Only then is it recorded for fast-mode loads and announced (a
        ``chunk`` event, and in ``ready_chunks``), so a streaming reader can map it while
        the rest arrives. An ordered download moves its priority window on as soon as
        libtorrent has a chunk, before the chunk is hashed and placed.

        Returns:
            The chunks whose store name already existed: the torrent still reads them
            through their partial names (see :meth:`_onto_store`).
        """
        release, index = download.release, download.index
        records = ChunkRecords(release.root)
        by_path = {c.path: c for c in release.manifest.chunks}
        relinked: list[ChunkEntry] = []
        watch = StallWatch(self.engine, rid, tid, lambda: self._redial(rid, tid))
        while pending := download.pending():
            done = set(await watch.next_files([index[p] for p in pending]))
            await self.engine.flush(tid)
            finished = [p for p in pending if index[p] in done]
            download.complete.update(dict.fromkeys(finished))
            if download.order is not None and download.pending():
                # The window moves on now, so the next chunks download while these are
                # hashed and placed.
                self._move_window(tid, download)
            # Chunks mapped at add are the store's own copies already.
            partial = [p for p in finished if layout[index[p]] != p]
            outcomes = await self._place_all(rid, tid, [(by_path[p], index[p]) for p in partial])
            moves = dict(zip(partial, outcomes, strict=True))
            settled = []
            for path in finished:
                moved = moves.get(path, True)
                if moved is None:  # a full disk lost some of it: it comes again
                    download.complete.pop(path, None)
                    continue
                if not moved:
                    relinked.append(by_path[path])
                records.record(release.root / path, by_path[path].sha256)
                settled.append(path)
            records.save()  # on a full disk it stays dirty; loads hash these chunks meanwhile
            for path in settled:
                download.ready[path] = None
                self._notify(
                    rid,
                    "chunk",
                    path=path,
                    ready_chunks=len(download.ready),
                    wanted_chunks=len(download.wanted),
                )
        records.save()  # a no-op, unless a save failed while the disk was full
        self._hit_full_disk.discard(rid)
        # Stamps a full disk kept out of the catalog, now that the fetch got through.
        placed = [by_path[p] for p in download.wanted]
        known = self.catalog.store_chunks([c.path for c in placed])
        for chunk in placed:
            if chunk.path not in known:
                self._record_placed(chunk)
        return relinked

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
        if row.state in DONE:
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
        if row.id in self.engine and download.pending():
            self._move_window(row.id, download)
        return self.show(row.id)

    def _move_window(self, tid: str, download: Download) -> None:
        """Apply the download's priorities now, without waiting for libtorrent's answer.

        Priority changes queue behind the disk thread's writes; nothing here needs them
        applied before it goes on, and they reach libtorrent in the order they are made.
        """
        task = asyncio.create_task(self.engine.set_file_priorities(tid, download.priorities()))
        self._background.append(task)
        task.add_done_callback(self._background_done)

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
