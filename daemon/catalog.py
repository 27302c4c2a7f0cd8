"""The daemon's catalog: SQLite (WAL) on disk, one row per release, plus resume data.

The catalog records what the daemon is doing and what it has; the chunk files themselves
live in the store and stay the source of truth for bytes. Every write is one short
transaction, so a ``kill -9`` leaves either the old row or the new one.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from p2pweights.errors import CatalogError
from p2pweights.manifest import ChunkEntry, chunk_of_address
from p2pweights.release import Release

from .store import FileStamp

__all__ = ["Catalog", "ReleaseRow", "ReleaseState", "StoreChunk"]

ReleaseState = Literal[
    "metadata", "manifest", "downloading", "paused", "seeding", "complete", "damaged", "error"
]

_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS releases (
    id TEXT PRIMARY KEY,
    name TEXT, version INTEGER, label TEXT, publisher TEXT, manifest_sha256 TEXT,
    state TEXT NOT NULL, error TEXT,
    torrent BLOB, source TEXT NOT NULL,
    include_json TEXT NOT NULL DEFAULT '[]',
    peers_json TEXT NOT NULL DEFAULT '[]',
    trackers_json TEXT NOT NULL DEFAULT '[]',
    tofu INTEGER NOT NULL DEFAULT 0,
    total_bytes INTEGER NOT NULL DEFAULT 0,
    added REAL NOT NULL, completed REAL
);
CREATE TABLE IF NOT EXISTS release_chunks (
    release_id TEXT NOT NULL REFERENCES releases(id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    PRIMARY KEY (release_id, path)
);
CREATE INDEX IF NOT EXISTS release_chunks_path ON release_chunks(path);
CREATE TABLE IF NOT EXISTS chunks (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, sha256 TEXT NOT NULL, v2_root TEXT NOT NULL,
    mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER
);
CREATE TABLE IF NOT EXISTS resume (
    release_id TEXT PRIMARY KEY REFERENCES releases(id) ON DELETE CASCADE,
    data BLOB NOT NULL, saved REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS names (
    publisher TEXT NOT NULL, name TEXT NOT NULL,
    seq INTEGER NOT NULL, version INTEGER NOT NULL,
    item_json TEXT NOT NULL, info_hash TEXT NOT NULL,
    own INTEGER NOT NULL DEFAULT 0, web_seeds_json TEXT NOT NULL DEFAULT '[]',
    updated REAL NOT NULL,
    PRIMARY KEY (publisher, name)
);
CREATE TABLE IF NOT EXISTS follows (
    name TEXT PRIMARY KEY, include_json TEXT NOT NULL DEFAULT '[]',
    keep INTEGER NOT NULL DEFAULT 0, version INTEGER, added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS name_fetches (
    release_id TEXT PRIMARY KEY,
    publisher TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
    manifest_sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS index_entries (
    publisher TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
    info_hash TEXT NOT NULL, manifest_sha256 TEXT NOT NULL, label TEXT NOT NULL,
    tags_json TEXT NOT NULL DEFAULT '[]', issued INTEGER NOT NULL,
    PRIMARY KEY (publisher, name)
);
"""
"""``names``, ``name_fetches``, ``follows`` (p2pw:// names: ``daemon/names.py``,
``daemon/follow.py``) and ``index_entries`` (``daemon/search.py``) came later
than schema 2; ``CREATE TABLE IF NOT EXISTS`` adds them to an older catalog as it opens,
and a daemon that does not know them ignores them, so they need no new schema number."""
_MIGRATE_1_TO_2 = """
ALTER TABLE chunks ADD COLUMN mtime_ns INTEGER;
ALTER TABLE chunks ADD COLUMN ctime_ns INTEGER;
ALTER TABLE chunks ADD COLUMN inode INTEGER;
DELETE FROM chunks;
UPDATE meta SET value='2' WHERE key='schema';
"""
"""Schema 1 recorded a chunk's identity as soon as a signed manifest named it, before its
bytes were in the store; schema 2 records only files that were hashed when placed. The
old rows are dropped: the daemon hashes each store file once more when it restores the
releases that use it."""


@dataclass(frozen=True, slots=True)
class StoreChunk:
    """A verified file of the store: its signed identity, and its stamp when placed."""

    path: str
    size: int
    sha256: str
    v2_root: str
    stamp: FileStamp | None
    """None only in rows not yet re-stamped; such a file is hashed before use."""

    def entry(self) -> ChunkEntry:
        """The chunk as a manifest lists it (its kind follows from its name)."""
        return chunk_of_address(self.path, self.size, self.v2_root)


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    """One release the daemon knows."""

    id: str
    name: str | None
    version: int | None
    label: str | None
    publisher: str | None
    manifest_sha256: str | None
    state: ReleaseState
    error: str | None
    torrent: bytes | None
    source: str
    include: tuple[str, ...]
    peers: tuple[str, ...]
    trackers: tuple[str, ...]
    tofu: bool
    total_bytes: int
    added: float
    completed: float | None
    has_torrent: bool
    """Whether the catalog holds the torrent (``torrent`` is None in a listing without it)."""


class Catalog:
    """Typed access to the catalog database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            check = self._db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise CatalogError(f"catalog {path} is damaged: {check}")
            self._db.executescript(_SCHEMA)  # idempotent; executescript commits by itself
            with self._tx():
                row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO meta VALUES ('schema', ?)", (str(_SCHEMA_VERSION),)
                    )
            if row is not None and row[0] == "1":
                self._db.executescript(f"BEGIN IMMEDIATE;{_MIGRATE_1_TO_2}COMMIT;")
            elif row is not None and row[0] != str(_SCHEMA_VERSION):
                raise CatalogError(f"catalog {path} has schema {row[0]}, not {_SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"catalog {path} is damaged or unreadable: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for the tables other modules own (``daemon/names.py``)."""
        return self._db

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """One ``BEGIN IMMEDIATE`` transaction, rolled back on an exception."""
        return self._tx()

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def add_release(
        self,
        rid: str,
        *,
        source: str,
        state: ReleaseState,
        torrent: bytes | None = None,
        include: Sequence[str] = (),
        peers: Sequence[str] = (),
        trackers: Sequence[str] = (),
        tofu: bool = False,
    ) -> None:
        """Insert a release, or reset an existing row's request fields."""
        with self._tx():
            self._upsert(rid, source, state, torrent, include, peers, trackers, tofu)

    def _upsert(
        self,
        rid: str,
        source: str,
        state: ReleaseState,
        torrent: bytes | None,
        include: Sequence[str],
        peers: Sequence[str],
        trackers: Sequence[str],
        tofu: bool,
    ) -> None:
        self._db.execute(
            """INSERT INTO releases (id, state, torrent, source, include_json, peers_json,
                   trackers_json, tofu, added) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET source=excluded.source,
                   include_json=excluded.include_json, peers_json=excluded.peers_json,
                   trackers_json=excluded.trackers_json, tofu=excluded.tofu,
                   torrent=COALESCE(releases.torrent, excluded.torrent)""",
            (
                rid,
                state,
                torrent,
                source,
                json.dumps(list(include)),
                json.dumps(list(peers)),
                json.dumps(list(trackers)),
                int(tofu),
                time.time(),
            ),
        )

    def set_manifest(
        self,
        rid: str,
        *,
        name: str,
        version: int,
        label: str,
        publisher: str,
        manifest_sha256: str,
        total_bytes: int,
        chunks: Sequence[tuple[str, int, str, str]],
        torrent: bytes | None,
    ) -> None:
        """Record the authenticated manifest of a release and its (path, size, sha, root)s."""
        with self._tx():
            self._manifest(
                rid, name, version, label, publisher, manifest_sha256, total_bytes, chunks, torrent
            )

    def _manifest(
        self,
        rid: str,
        name: str,
        version: int,
        label: str,
        publisher: str,
        manifest_sha256: str,
        total_bytes: int,
        chunks: Sequence[tuple[str, int, str, str]],
        torrent: bytes | None,
    ) -> None:
        self._db.execute(
            """UPDATE releases SET name=?, version=?, label=?, publisher=?,
               manifest_sha256=?, total_bytes=?, torrent=COALESCE(?, torrent) WHERE id=?""",
            (name, version, label, publisher, manifest_sha256, total_bytes, torrent, rid),
        )
        self._db.execute("DELETE FROM release_chunks WHERE release_id=?", (rid,))
        self._db.executemany(
            "INSERT INTO release_chunks VALUES (?, ?)", [(rid, c[0]) for c in chunks]
        )

    def record_release(self, rid: str, release: Release, torrent: bytes | None) -> None:
        """:meth:`set_manifest` with the fields an authenticated release gives."""
        with self._tx():
            self._manifest(rid, *_manifest_fields(release), torrent)

    def add_published(
        self,
        rid: str,
        release: Release,
        *,
        source: str,
        torrent: bytes,
        stamps: dict[str, FileStamp],
    ) -> None:
        """Add a published release as seeding, with its manifest, in one transaction.

        A ``kill -9`` then leaves either no row or a seeding row with its chunk list and
        the stamps of its (verified, imported) store files.
        """
        with self._tx():
            self._upsert(rid, source, "seeding", torrent, (), (), (), False)
            self._manifest(rid, *_manifest_fields(release), torrent)
            for chunk in release.manifest.chunks:
                self._record_chunk(chunk, stamps[chunk.path])
            self._set_state(rid, "seeding", None)

    def record_chunk(self, chunk: ChunkEntry, stamp: FileStamp) -> None:
        """Note that the store file of ``chunk`` was hashed and looked like ``stamp``."""
        with self._tx():
            self._record_chunk(chunk, stamp)

    def _record_chunk(self, chunk: ChunkEntry, stamp: FileStamp) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                chunk.path,
                chunk.size,
                chunk.sha256,
                chunk.v2_root,
                stamp.mtime_ns,
                stamp.ctime_ns,
                stamp.inode,
            ),
        )

    def store_chunks(self, paths: Sequence[str] | None = None) -> dict[str, StoreChunk]:
        """The records of the store files at ``paths`` (every one when None)."""
        query = "SELECT path, size, sha256, v2_root, mtime_ns, ctime_ns, inode FROM chunks"
        if paths is None:
            rows = self._db.execute(query).fetchall()
        else:
            rows = []
            wanted = list(paths)
            for i in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
                part = wanted[i : i + 500]
                marks = ",".join("?" * len(part))
                rows += self._db.execute(f"{query} WHERE path IN ({marks})", part).fetchall()
        return {str(r[0]): _store_chunk(r) for r in rows}

    def release_chunk_paths(self, rid: str) -> list[str]:
        """The chunk paths an authenticated release uses."""
        return [
            str(r[0])
            for r in self._db.execute(
                "SELECT path FROM release_chunks WHERE release_id=? ORDER BY path", (rid,)
            )
        ]

    def releases_using(self, path: str) -> list[str]:
        """The releases whose manifest lists chunk ``path``."""
        return [
            str(r[0])
            for r in self._db.execute("SELECT release_id FROM release_chunks WHERE path=?", (path,))
        ]

    def set_state(self, rid: str, state: ReleaseState, error: str | None = None) -> None:
        """Move a release to ``state``; ``complete``/``seeding`` stamp the completion time."""
        with self._tx():
            self._set_state(rid, state, error)

    def _set_state(self, rid: str, state: ReleaseState, error: str | None) -> None:
        self._db.execute(
            """UPDATE releases SET state=?, error=?,
               completed=CASE WHEN ? IN ('seeding','complete') THEN COALESCE(completed, ?)
               ELSE completed END WHERE id=?""",
            (state, error, state, time.time(), rid),
        )

    def save_resume(self, rid: str, data: bytes) -> None:
        """Store the latest resume data of a release."""
        with self._tx():
            self._db.execute(
                "INSERT INTO resume VALUES (?, ?, ?) ON CONFLICT(release_id) DO UPDATE "
                "SET data=excluded.data, saved=excluded.saved",
                (rid, data, time.time()),
            )

    def resume_data(self, rid: str) -> bytes | None:
        """The saved resume data of a release, if any."""
        row = self._db.execute("SELECT data FROM resume WHERE release_id=?", (rid,)).fetchone()
        return None if row is None else bytes(row[0])

    def get(self, rid: str) -> ReleaseRow | None:
        """One release, or None."""
        # _COLUMNS is a constant of this module, not input.
        query = f"SELECT {_COLUMNS} FROM releases WHERE id=?"  # noqa: S608
        row = self._db.execute(query, (rid,)).fetchone()
        return None if row is None else _row(row)

    def torrent(self, rid: str) -> bytes | None:
        """One release's torrent, or None."""
        row = self._db.execute("SELECT torrent FROM releases WHERE id=?", (rid,)).fetchone()
        return bytes(row[0]) if row is not None and row[0] is not None else None

    def count(self) -> int:
        """How many releases there are."""
        return int(self._db.execute("SELECT count(*) FROM releases").fetchone()[0])

    def ids_with_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        """Up to ``limit`` release ids that start with ``prefix`` (lowercase hex).

        A range over the primary key's index: no row is read whole, however many there are.
        """
        query = "SELECT id FROM releases WHERE id >= ? AND id < ? ORDER BY id LIMIT ?"
        return [r[0] for r in self._db.execute(query, (prefix, prefix + "~", limit))]

    def releases(self, *, torrents: bool = True) -> list[ReleaseRow]:
        """All releases, oldest first.

        Args:
            torrents: read each torrent too. A listing leaves them out: a big model's
                torrent carries megabytes of v2 piece hashes.
        """
        columns = _COLUMNS if torrents else _COLUMNS.replace(" torrent,", " NULL,", 1)
        query = f"SELECT {columns} FROM releases ORDER BY added"  # noqa: S608
        rows = self._db.execute(query).fetchall()
        return [_row(r) for r in rows]

    def remove(self, rid: str, *, forget_chunks: bool) -> list[str]:
        """Forget a release; returns its chunk paths that no other release uses.

        Args:
            rid: the release.
            forget_chunks: also drop those chunks' signed identities (only when their
                files are deleted: while a file stays, its identity guards its name).
        """
        with self._tx():
            orphans = [
                r[0]
                for r in self._db.execute(
                    """SELECT path FROM release_chunks WHERE release_id=? AND path NOT IN
                       (SELECT path FROM release_chunks WHERE release_id != ?)""",
                    (rid, rid),
                )
            ]
            self._db.execute("DELETE FROM releases WHERE id=?", (rid,))
            if forget_chunks:
                self._db.executemany("DELETE FROM chunks WHERE path=?", [(p,) for p in orphans])
        return orphans



def _manifest_fields(
    release: Release,
) -> tuple[str, int, str, str, str, int, list[tuple[str, int, str, str]]]:
    m = release.manifest
    return (
        m.name,
        m.version,
        m.label,
        m.publisher.text,
        release.manifest_sha256,
        sum(c.size for c in m.chunks),
        [(c.path, c.size, c.sha256, c.v2_root) for c in m.chunks],
    )


_COLUMNS = (
    "id, name, version, label, publisher, manifest_sha256, state, error, torrent, source, "
    "include_json, peers_json, trackers_json, tofu, total_bytes, added, completed, "
    "torrent IS NOT NULL"
)


def _store_chunk(r: tuple[object, ...]) -> StoreChunk:
    size = int(r[1])  # type: ignore[call-overload]
    stamp = None
    if isinstance(r[4], int) and isinstance(r[5], int) and isinstance(r[6], int):
        stamp = FileStamp(size, r[4], r[5], r[6])
    return StoreChunk(str(r[0]), size, str(r[2]), str(r[3]), stamp)


def _row(r: tuple[object, ...]) -> ReleaseRow:
    return ReleaseRow(
        id=str(r[0]),
        name=r[1] if isinstance(r[1], str) else None,
        version=r[2] if isinstance(r[2], int) else None,
        label=r[3] if isinstance(r[3], str) else None,
        publisher=r[4] if isinstance(r[4], str) else None,
        manifest_sha256=r[5] if isinstance(r[5], str) else None,
        state=str(r[6]),  # type: ignore[arg-type]
        error=r[7] if isinstance(r[7], str) else None,
        torrent=bytes(r[8]) if isinstance(r[8], bytes | bytearray | memoryview) else None,
        source=str(r[9]),
        include=tuple(json.loads(str(r[10]))),
        peers=tuple(json.loads(str(r[11]))),
        trackers=tuple(json.loads(str(r[12]))),
        tofu=bool(r[13]),
        total_bytes=int(r[14]),  # type: ignore[call-overload]
        added=float(r[15]),  # type: ignore[arg-type]
        completed=float(r[16]) if isinstance(r[16], int | float) else None,
        has_torrent=bool(r[17]),
    )
