"""Placing a fetch's complete chunks in the store: hashed, under an absent name, recorded.

See :mod:`.store` for the one-writer rule this follows.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3

from p2pweights.errors import ReleaseMismatchError
from p2pweights.manifest import ChunkEntry

from .admission import store_layout
from .engine import TorrentFile
from .store import FileStamp
from .upkeep import Upkeep

__all__ = ["Placement"]

log = logging.getLogger(__name__)

_SPACE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})
"""What reading or writing a chunk meets on a full disk (EIO: an mmap page it lost, with
the engine's mmap back end)."""


_HASHERS = max(2, os.cpu_count() or 2)
"""Chunks of one fetch hashed at once: chunks complete in bunches near a fetch's end."""


class Placement(Upkeep):
    """Moving verified chunks from a fetch's partial files into the shared store."""

    async def _place_all(
        self, rid: str, tid: str, chunks: list[tuple[ChunkEntry, int]]
    ) -> list[bool | None]:
        """:meth:`_place_when_possible` for chunks that completed together.

        Their partial files are hashed in parallel (one thread per core: pieces come in
        rarest-first order, so most chunks complete in the last seconds of a fetch) and
        then settled one by one, in order, exactly as one at a time would be.
        """
        gate = asyncio.Semaphore(_HASHERS)

        async def check(chunk: ChunkEntry) -> None:
            async with gate:
                await asyncio.to_thread(self.store.check_partial, rid, chunk)

        checks = await asyncio.gather(*(check(c) for c, _ in chunks), return_exceptions=True)
        placed: list[bool | None] = []
        for (chunk, index), checked in zip(chunks, checks, strict=True):
            if not isinstance(checked, Exception | None):
                raise checked  # cancelled: not a verdict on the chunk
            placed.append(await self._place_when_possible(rid, tid, chunk, index, checked))
        return placed

    async def _place_when_possible(
        self,
        rid: str,
        tid: str,
        chunk: ChunkEntry,
        index: int,
        checked: Exception | None = None,
    ) -> bool | None:
        """:meth:`_place`, or a refetch of the chunk if a full disk lost some of its bytes.

        With mmap storage (``EngineSettings.disk_io``), pages a full disk could not hold
        read back as ``EIO`` or as other bytes, though libtorrent had checked them as they
        arrived. For a fetch that met a full disk that is lost data, not a lying
        publisher: once space is back, libtorrent rechecks the torrent (finding what was
        lost) and the chunk comes again. Its bytes are hashed before placement either
        way, so nothing unverified gets in.

        ``checked`` is what :meth:`Store.check_partial` raised (None: it passed), where
        the caller hashed the chunk already.

        Returns:
            As :meth:`_place`; None when the chunk is being fetched again.

        Raises:
            ReleaseMismatchError: the bytes are not the chunk's, and no full disk explains it.
        """
        try:
            if checked is not None:
                raise checked
            return await self._place(rid, tid, chunk, index, hashed=True)
        except (OSError, ReleaseMismatchError) as exc:
            lost = isinstance(exc, ReleaseMismatchError) or exc.errno in _SPACE_ERRORS
            if not (lost and rid in self._hit_full_disk):
                raise
            log.warning("%s was damaged by the full disk; fetched again: %s", chunk.path, exc)
        await self._wait_for_space(tid)
        await self.engine.force_recheck(tid)
        self._redial(rid, tid)  # a recheck drops them
        return None

    async def _place(
        self, rid: str, tid: str, chunk: ChunkEntry, index: int, *, hashed: bool = False
    ) -> bool:
        """Bring a fetch's complete partial chunk into the store (see :meth:`Store.place`).

        The hash runs outside the lock; settling the store name runs under one lock, so
        two fetches of the same chunk cannot both write its name.

        ``hashed``: :meth:`Store.check_partial` passed already (see :meth:`_place_all`).

        Returns:
            True when the chunk was moved under its store name (the torrent now reads it
            there), False when the store already had that name.
        """
        # The partial file is this fetch's own: hash it before taking the lock, so one
        # fetch's hashing never holds up another's placement.
        if not hashed:
            await asyncio.to_thread(self.store.check_partial, rid, chunk)
        async with self._placing:
            known = self.catalog.store_chunks([chunk.path]).get(chunk.path)
            stamp = known.stamp if known is not None else None
            moved = await asyncio.to_thread(self.store.settle, rid, chunk, stamp)
            if moved:
                await self.engine.rename_file(tid, index, chunk.path)
            self._record_placed(chunk)
        return moved

    def _record_placed(self, chunk: ChunkEntry) -> bool:
        """Record a placed chunk's stamp; False if the catalog cannot write (a full disk).

        An unrecorded store file is safe: it is hashed again before anything maps it or
        seeds it (:meth:`_restamp`, the check before seeding).
        """
        try:
            self.catalog.record_chunk(chunk, FileStamp.of(self.store.root / chunk.path))
        except sqlite3.Error as exc:
            log.warning("could not record %s yet: %s", chunk.path, exc)
            return False
        return True

    async def _onto_store(
        self, rid: str, tf: TorrentFile, tid: str, relinked: list[ChunkEntry]
    ) -> str:
        """Re-add a finished torrent so it reads every chunk under its store name.

        A chunk whose store name existed when it completed was left to the torrent under
        its partial name (a second link to the store file: libtorrent will not rename
        onto an existing name). Once every chunk is in, the torrent is re-added from its
        resume data with the store layout, and the partial names are dropped.
        """
        resume = await self.engine.save_resume_data(tid, pause=True)
        await self.engine.remove(tid)
        self.store.drop_partial(rid)
        for chunk in relinked:  # dropping a link moved the store file's ctime
            self._record_placed(chunk)
        return self.engine.add(
            tf,
            self.store.root,
            file_paths=store_layout(rid, tf, self.store, self.catalog),
            resume_data=resume,
        )
