"""What the daemon does: publish, fetch (verify before trust), seed, remove, report.

The behaviour is built in layers, one module each: :mod:`.service_state` (the shared
state and the ``show`` shape), :mod:`.upkeep` (store checks, a full disk, resume saves,
seed limits), :mod:`.fetch_flow` (a fetch's states, from metadata to seeding) and this
module (lifecycle, publish, queries, events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from p2pweights import __version__
from p2pweights._sources import needs_torch
from p2pweights.errors import LoadError, P2PWeightsError, SourceError, UnknownReleaseError
from p2pweights.key_statements import add_to_release, refuse_own_revoked
from p2pweights.keys import load_private_key
from p2pweights.mirror import write_mirror
from p2pweights.names import NameRecord
from p2pweights.pack import pack
from p2pweights.release import Release, open_self_signed, resolve_source
from p2pweights.search_index import INDEX_NAME, check_tags
from p2pweights.verify import ChunkRecords, verify_chunks

from .admission import store_layout
from .catalog import ReleaseRow
from .engine import (
    EngineError,
    EventStream,
    MagnetLink,
    TorrentFile,
    make_torrent,
    parse_magnet,
    parse_torrent,
)
from .fetch_flow import FetchFlow
from .follow import Follower
from .search import Search
from .service_state import DONE, USER_PAUSE, WAIT_ENDS, event_fields, peer_address

__all__ = ["NotFoundError", "Service"]

log = logging.getLogger(__name__)

NotFoundError = UnknownReleaseError


class Service(FetchFlow):
    """The daemon's behaviour, over one engine, one catalog and one store."""

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
        self._background.append(asyncio.create_task(self._periodic_store_check()))
        self._background.append(asyncio.create_task(self.names.republish_forever()))
        self._background.append(asyncio.create_task(self.follower.run_forever()))
        self._background.append(asyncio.create_task(self.search.refresh()))
        self._background.append(asyncio.create_task(self._ask_dht_for_lonely_fetches()))
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
        if row.state in ("error", "damaged"):  # a damaged release waits for a re-fetch
            return
        if row.state == "paused" and row.error == USER_PAUSE:
            return  # it waits for the user to ask again
        resume = self.catalog.resume_data(row.id)
        if row.torrent is None:  # still waiting for metadata: start over from the link
            target: TorrentFile | MagnetLink = parse_magnet(row.source)
        else:
            target = parse_torrent(row.torrent)
            self._magnets[row.id] = target.magnet  # parsed here anyway: `ls` need not again
        if row.state in DONE and isinstance(target, TorrentFile):
            # Checked before it seeds: a store file changed while the daemon was down
            # must not go out as the release.
            bad, _ = await self._check_store_files(row.id)
            if bad:
                return
            self.store.drop_partial(row.id)  # a crash after the last chunk was placed
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
        self,
        path: str,
        *,
        hybrid: bool = False,
        private: bool = False,
        trackers: Sequence[str] = (),
        web_seeds: Sequence[str] = (),
        tags: Sequence[str] = (),
        index: bool = False,
    ) -> dict[str, Any]:
        """Seed a local release dir.

        When its name is put (``pointer``), the release goes into its publisher's search
        index with ``tags`` (``index``: this is that index, made by :mod:`.search`).

        The release must be self-consistent (its signature verifies under the key it
        names, and every chunk is named after its sha256) and its chunks intact; the
        publisher need not be in our trust store. Checks come before writes: identity
        (signature, chunk bytes, the torrent against the store's verified chunks), then
        the import, then the catalog in one transaction. A refused publish leaves nothing
        behind, and never writes into a store file another release uses.
        """
        src = Path(path)
        if not src.is_absolute():
            raise LoadError(f"publish needs an absolute path, not {path[:80]!r}")
        root = resolve_source(src)
        release = open_self_signed(root)
        if (release.manifest.name == INDEX_NAME) != index:
            raise LoadError(f"{INDEX_NAME!r} is the reserved name of a publisher's search index")
        check_tags(list(tags))
        await asyncio.to_thread(verify_chunks, root, release.manifest.chunks, "fast")
        tf = await asyncio.to_thread(
            make_torrent,
            root,
            hybrid=hybrid,
            private=private,
            trackers=trackers,
            web_seeds=web_seeds,
        )
        rid = tf.id
        record = self.names.record_for(release, rid, web_seeds)  # refused here if too big
        existing = self.catalog.get(rid)
        if existing is not None and existing.state in DONE:
            return {**self.show(rid), "pointer": await self._announce(release, rid, record, tags)}
        async with self._placing:
            store_layout(rid, tf, self.store, self.catalog)  # refuses a name-colliding torrent
            known = self.catalog.store_chunks([c.path for c in release.manifest.chunks])
            target, created, stamps = await asyncio.to_thread(
                self.store.import_release,
                release,
                rid,
                {p: k.stamp for p, k in known.items()},
            )
            try:
                self.store.save_torrent(rid, tf.data)
                records = ChunkRecords(target)
                for chunk in release.manifest.chunks:  # each one hashed or stamp-checked
                    records.record(target / chunk.path, chunk.sha256)
                records.save()
                # One transaction: a kill -9 leaves no row, or a seeding row with its chunks.
                self.catalog.add_published(
                    rid, release, source=str(root), torrent=tf.data, stamps=stamps
                )
            except BaseException:
                self.store.undo_import(rid, created, remove_dir=existing is None)
                raise
        self.engine.add(
            tf,
            self.store.root,
            file_paths=store_layout(rid, tf, self.store, self.catalog),
            seed_mode=True,
        )
        if self.engine.dht_enabled:  # announced again soon: DHT nodes that join late miss it
            self._fresh_seeds.add(rid)
        self._notify(rid, "published")
        return {**self.show(rid), "pointer": await self._announce(release, rid, record, tags)}

    async def _announce(
        self, release: Release, rid: str, record: NameRecord, tags: Sequence[str]
    ) -> dict[str, Any] | None:
        """Put the release's name, then (a release, not an index) remake its index."""
        pointer = await self.names.announce(release, record)
        if pointer is not None and release.manifest.name != INDEX_NAME:
            try:
                pointer["index"] = await self.search.update(release, rid, tags)
            except (P2PWeightsError, EngineError, OSError) as exc:  # the release is seeded
                log.warning("search index of %s not remade: %s", release.manifest.name, exc)
                pointer["index_error"] = f"{type(exc).__name__}: {exc}"
        return pointer

    @property
    def follower(self) -> Follower:
        """Followed names (``daemon/follow.py``)."""
        if self._follower is None:
            self._follower = Follower(
                self.config,
                self.catalog,
                self.names,
                fetch=self.fetch,
                wait=self.wait,
                remove=self.remove,
                notify=self._notify,
            )
        return self._follower

    @property
    def search(self) -> Search:
        """Search indexes, own and others' (``daemon/search.py``)."""
        if self._search is None:
            self._search = Search(
                self.config,
                self.catalog,
                self.names,
                staging=self.store.staging,
                release_dir=self.store.release_dir,
                publish=self.publish,
                fetch=self.fetch,
                wait=self.wait,
                remove=self.remove,
            )
        return self._search

    async def mirror(self, rid: str, directory: str) -> dict[str, Any]:
        """Write a complete release as a static mirror tree (see :mod:`p2pweights.mirror`).

        Raises:
            UnknownReleaseError: no such release.
            LoadError: the release is not complete, or ``directory`` is not absolute.
        """
        row = self._row(rid)
        if row.state not in DONE or row.torrent is None or row.include:
            raise LoadError(f"release {row.id[:12]} is not complete ({row.state}): no mirror")
        if not Path(directory).is_absolute():
            raise LoadError(f"mirror needs an absolute path, not {directory[:80]!r}")
        tf = parse_torrent(row.torrent)
        result = await asyncio.to_thread(
            write_mirror,
            self.store.release_dir(row.id),
            tf.data,
            name=tf.name,
            info_hash=tf.info_hash_v2,
            dest=Path(directory),
        )
        return {
            "id": row.id,
            "root": str(result.root),
            "torrents": [str(p) for p in result.torrent_paths],
            "files": result.files,
            "bytes_copied": result.bytes_copied,
        }

    async def pack_and_publish(
        self,
        *,
        source: str,
        name: str,
        version: int,
        label: str,
        key_file: str,
        hybrid: bool = False,
        tags: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Pack ``source`` with an unencrypted key file, then publish the result.

        Raises:
            SourceError: pickle weights (the daemon never imports torch).
        """
        if await asyncio.to_thread(needs_torch, Path(source)):
            raise SourceError(
                f"{source[:200]} holds pickle weights, which the daemon does not read (it "
                "never imports torch): pack it with `p2pw pack`, then publish the release dir"
            )
        key = load_private_key(Path(key_file))
        refuse_own_revoked(self.config.home, key.public)
        staging = self.store.staging / f"{os.getpid()}-{time.monotonic_ns()}"  # swept at start
        try:
            await asyncio.to_thread(
                pack, Path(source), staging, name=name, version=version, key=key, label=label
            )
            add_to_release(self.config.home, key.public, staging)  # rotations travel along
            return await self.publish(str(staging), hybrid=hybrid, tags=tags)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------------ queries

    def status(self) -> dict[str, Any]:
        """The daemon's own status."""
        return {
            "version": __version__,
            "pid": os.getpid(),
            "home": str(self.config.home),
            "profile": self.config.profile,
            "listen_port": self.engine.listen_port,
            "peer_address": peer_address(self.config.listen, self.engine.listen_port),
            "uptime": round(time.time() - self.started, 1),
            "releases": self.catalog.count(),
            "active_fetches": len(self._tasks),
            "tcp_port": self.config.tcp_port or None,
            # Read at request time, so a test can see that nothing the daemon did since
            # it started (publish, fetch, seed) pulled torch in.
            "modules_loaded": {m: sys.modules.get(m) is not None for m in ("torch", "numpy")},
        }

    async def wait(self, rid: str, timeout: float) -> dict[str, Any]:
        """Return once the release is complete or failed, or ``timeout`` passes."""
        row = self._row(rid)
        deadline = time.monotonic() + timeout
        while row.state not in WAIT_ENDS:
            event = self._changed.setdefault(row.id, asyncio.Event())
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)
            event.clear()
            row = self._row(row.id)
        info = self.show(row.id)
        info["timed_out"] = row.state not in WAIT_ENDS
        return info

    async def remove(self, rid: str, *, delete_data: bool) -> dict[str, Any]:
        """Forget a release (cancel its fetch, stop seeding), optionally deleting its chunks."""
        row = self._row(rid)
        await self._cancel_task(row.id)
        if row.id in self.engine:
            await self.engine.remove(row.id)
        self.web.forget(row.id)
        orphans = self.catalog.remove(row.id, forget_chunks=delete_data)
        # Its dir (metadata and a link) and partial files go either way: left behind, the
        # doctor would offer to re-add a release the user removed. Chunks stay unless asked.
        self.store.remove_release(row.id, orphans if delete_data else [])
        self._notify(row.id, "removed")
        return {"id": row.id, "removed": True, "deleted_chunks": len(orphans) if delete_data else 0}

    # ------------------------------------------------------------------ events

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
                if event.kind == "renamed":  # the store's own moves; a `chunk` event follows
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
                elif event.kind == "web_seed_failed":
                    self.web.on_failure(event.torrent, event.url, event.message)
                fields = event_fields(event)
                if event.kind == "progress" and event.torrent in self._downloads:
                    fields["peer_sources"] = self._peer_sources(event.torrent)
                self._notify(event.torrent, event.kind, **fields)

    def _peer_sources(self, tid: str) -> dict[str, int]:
        """How many connected peers each way of finding them gave (a peer may count twice)."""
        counts: dict[str, int] = {}
        with contextlib.suppress(EngineError):  # removed meanwhile
            for peer in self.engine.peers(tid):
                for source in peer.sources:
                    counts[source] = counts.get(source, 0) + 1
        return counts
