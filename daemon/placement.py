"""Placing a fetch's complete chunks in the store: hashed, under an absent name, recorded.

See :mod:`.store` for the one-writer rule this follows.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3

from p2pweights.manifest import ChunkEntry

from .admission import store_layout
from .engine import TorrentFile
from .store import FileStamp
from .upkeep import Upkeep

__all__ = ["Placement"]

log = logging.getLogger(__name__)

_SPACE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})
"""What reading or writing a chunk meets on a full disk (EIO: an mmap page it lost)."""


class Placement(Upkeep):
    """Moving verified chunks from a fetch's partial files into the shared store."""

    async def _place_when_possible(self, rid: str, tid: str, chunk: ChunkEntry, index: int) -> bool:
        """:meth:`_place`, after waiting for free space if a full disk got in the way.

        With mmap storage, pages a full disk could not hold read back as ``EIO``; once
        space is freed the fetch goes on (see :mod:`.upkeep`) and the chunk is placed
        then. Its bytes are hashed either way, so nothing unverified gets in.
        """
        waits = 0
        while True:
            try:
                return await self._place(rid, tid, chunk, index)
            except OSError as exc:
                waits += 1
                if exc.errno not in _SPACE_ERRORS or waits > 2:
                    raise
                log.warning("placing %s waits for free space: %s", chunk.path, exc)
                await self._wait_for_space()

    async def _place(self, rid: str, tid: str, chunk: ChunkEntry, index: int) -> bool:
        """Bring a fetch's complete partial chunk into the store (see :meth:`Store.place`).

        Held under one lock, so two fetches of the same chunk cannot both write its name.

        Returns:
            True when the chunk was moved under its store name (the torrent now reads it
            there), False when the store already had that name.
        """
        async with self._placing:
            known = self.catalog.store_chunks([chunk.path]).get(chunk.path)
            stamp = known.stamp if known is not None else None
            moved = await asyncio.to_thread(self.store.place, rid, chunk, stamp)
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
            self.catalog.record_chunk(chunk, FileStamp.of(self.store.root / chunk.path))
        return self.engine.add(
            tf,
            self.store.root,
            file_paths=store_layout(rid, tf, self.store, self.catalog),
            resume_data=resume,
        )
