"""Checking chunks on disk against an authenticated manifest.

Two modes:

- ``fast``: each chunk's size, plus the local record of the last time its sha256 was
  checked (size, mtime, inode, ctime and the digest). A chunk whose stat no longer matches
  its record, or that has no record, is hashed on the spot, so fast mode still never
  returns bytes that were not checked at some point since they were last written.
- ``full``: every chunk is hashed again, in parallel threads.

The records live in ``.p2pw-verified.json`` in the release dir. They are local state, not
part of the release: a copied release dir has stale inodes, and is re-hashed once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from ._atomic import atomic_write_bytes
from ._canonical import dumps, loads_strict
from .errors import CorruptChunkError, LoadError, ManifestError, MissingChunkError
from .hashing import sha256_file
from .manifest import ChunkEntry
from .release import Release, open_release, resolve_source
from .trust import TrustStore

__all__ = [
    "RECORDS_NAME",
    "ChunkRecords",
    "VerifyMode",
    "check_digest",
    "check_mode",
    "verify_chunks",
    "verify_release",
]

VerifyMode = Literal["fast", "full"]
RECORDS_NAME = ".p2pw-verified.json"
_MAX_RECORDS_FILE = 64 * 1024 * 1024


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class ChunkRecords:
    """The record of which chunk files were hashed, and what they looked like then."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._records: dict[str, list[object]] = {}
        self._dirty = False
        try:
            data = (root / RECORDS_NAME).read_bytes()
            doc = loads_strict(data, max_bytes=_MAX_RECORDS_FILE, what="verify records")
            if isinstance(doc, dict):
                self._records = {k: v for k, v in doc.items() if isinstance(v, list)}
        except (OSError, ManifestError):
            # Lost or damaged records only cost a re-hash; they never make a chunk trusted.
            self._records = {}

    def matches(self, path: Path, sha256: str, st: os.stat_result) -> bool:
        """True when ``path`` was hashed to ``sha256`` and has not changed since."""
        return self._records.get(self._key(path)) == [*_stamp(st), sha256]

    def record(self, path: Path, sha256: str) -> None:
        """Note that ``path`` was just hashed to ``sha256``."""
        key, entry = self._key(path), [*_stamp(path.stat()), sha256]
        # An unchanged record leaves the file alone: re-verifying intact chunks then costs
        # no rewrite (and no fsync) of the records.
        if self._records.get(key) != entry:
            self._records[key] = entry
            self._dirty = True

    def save(self) -> None:
        """Write the records if they changed; a read-only dir is not an error."""
        if not self._dirty:
            return
        try:
            atomic_write_bytes(self.root / RECORDS_NAME, dumps(self._records))
            self._dirty = False
        except OSError:
            pass

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _stat_checked(path: Path, chunk: ChunkEntry) -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MissingChunkError(f"chunk {chunk.path} is missing") from None
    if st.st_size != chunk.size:
        raise CorruptChunkError(
            f"chunk {chunk.path} has {st.st_size} bytes; the manifest says {chunk.size}"
        )
    return st


def check_mode(mode: str) -> None:
    """Refuse a verify mode other than ``fast`` and ``full``.

    Raises:
        LoadError: an unknown mode.
    """
    if mode not in ("fast", "full"):
        raise LoadError(f"verify must be 'fast' or 'full', not {mode!r}")


def check_digest(chunk: ChunkEntry, digest: str) -> None:
    """Refuse chunk bytes whose sha256 is not the signed one.

    Raises:
        CorruptChunkError: ``digest`` is not ``chunk.sha256``.
    """
    if digest != chunk.sha256:
        raise CorruptChunkError(
            f"chunk {chunk.path} is corrupt: sha256 {digest[:16]}… is not the "
            f"signed {chunk.sha256[:16]}…"
        )


def verify_chunks(
    root: Path,
    chunks: Sequence[ChunkEntry],
    mode: VerifyMode,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Check that every chunk in ``chunks`` is on disk and intact.

    Args:
        root: the release dir the chunk paths are relative to.
        chunks: the entries to check.
        mode: ``fast`` or ``full`` (see the module docstring).
        workers: hashing threads; defaults to the CPU count.
        progress: called with the bytes of each chunk once it is checked.

    Raises:
        MissingChunkError: a chunk file is absent.
        CorruptChunkError: wrong size or wrong sha256.
        LoadError: an unknown mode.

    """
    check_mode(mode)
    if not chunks:
        return  # nothing to check: do not read the records
    records = ChunkRecords(root)
    to_hash: list[ChunkEntry] = []
    for chunk in chunks:
        path = root / chunk.path
        st = _stat_checked(path, chunk)
        if mode == "fast" and records.matches(path, chunk.sha256, st):
            if progress:
                progress(chunk.size)
            continue
        to_hash.append(chunk)
    try:
        for chunk, digest in zip(to_hash, _hash_all(root, to_hash, workers), strict=True):
            check_digest(chunk, digest)
            records.record(root / chunk.path, chunk.sha256)
            if progress:
                progress(chunk.size)
    finally:
        records.save()


def _hash_all(root: Path, chunks: Iterable[ChunkEntry], workers: int | None) -> Iterable[str]:
    items = list(chunks)
    n = min(workers or os.cpu_count() or 1, max(len(items), 1))
    if n <= 1:
        yield from (sha256_file(root / c.path) for c in items)
        return
    # Largest first, so one big chunk does not run alone at the end.
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="p2pw-verify") as pool:
        futures = {
            c.path: pool.submit(sha256_file, root / c.path)
            for c in sorted(items, key=lambda c: -c.size)
        }
        for c in items:
            try:
                yield futures[c.path].result()
            except FileNotFoundError:
                raise MissingChunkError(f"chunk {c.path} vanished while being checked") from None


def verify_release(
    source: str | Path,
    trust: TrustStore,
    *,
    mode: VerifyMode = "fast",
    progress: Callable[[int], None] | None = None,
) -> Release:
    """Authenticate a release and check all of its chunks.

    Returns:
        The authenticated release.

    Raises:
        ManifestError, UnsafePathError: malformed manifest.
        UntrustedKeyError, SignatureError, ReleaseExpiredError: not authentic.
        MissingChunkError, CorruptChunkError: damaged chunks.

    """
    release = open_release(resolve_source(source), trust)
    verify_chunks(release.root, release.manifest.chunks, mode, progress=progress)
    return release
