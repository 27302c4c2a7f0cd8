"""SHA-256 digests and BitTorrent v2 file roots, computed in one pass over the bytes.

A BitTorrent v2 file root (BEP 52) is the root of a binary SHA-256 Merkle tree whose
leaves are the hashes of the file's 16 KiB blocks, padded with zero hashes to a power of
two. The manifest records both the plain sha256 (what users compare) and the v2 root
(what the swarm checks every block against), so each chunk is read once for both.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "BLOCK_SIZE",
    "Digest",
    "StreamHasher",
    "hash_file",
    "hash_files",
    "merkle_root",
    "sha256_file",
]

BLOCK_SIZE = 16 * 1024
_ZERO = bytes(32)
_READ_SIZE = 1024 * 1024
"""Read size: the buffer stays in a core's cache between the read and the hash."""


@dataclass(frozen=True, slots=True)
class Digest:
    """What the manifest records about a byte string."""

    size: int
    sha256: str
    v2_root: str
    """Hex BitTorrent v2 file root; the empty string for an empty file (BEP 52 has none)."""


def merkle_root(leaves: list[bytes]) -> bytes:
    """The BEP 52 root over block hashes, zero-padded to a power of two."""
    if not leaves:
        return _ZERO
    width = 1
    while width < len(leaves):
        width *= 2
    layer = leaves + [_ZERO] * (width - len(leaves))
    while len(layer) > 1:
        layer = [hashlib.sha256(layer[i] + layer[i + 1]).digest() for i in range(0, len(layer), 2)]
    return layer[0]


class StreamHasher:
    """Feed bytes in any slicing; get the sha256 and the v2 root at the end."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._leaves: list[bytes] = []
        self._partial = bytearray()
        self._size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add the next bytes of the stream."""
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self._size += len(view)
        pos = 0
        if self._partial:
            take = min(BLOCK_SIZE - len(self._partial), len(view))
            self._partial += view[:take]
            pos = take
            if len(self._partial) == BLOCK_SIZE:
                self._leaves.append(hashlib.sha256(self._partial).digest())
                self._partial.clear()
        end = len(view)
        while end - pos >= BLOCK_SIZE:
            self._leaves.append(hashlib.sha256(view[pos : pos + BLOCK_SIZE]).digest())
            pos += BLOCK_SIZE
        if pos < end:
            self._partial += view[pos:end]

    def digest(self) -> Digest:
        """Finish and return the digest; the hasher must not be fed afterwards."""
        leaves = list(self._leaves)
        if self._partial:
            leaves.append(hashlib.sha256(self._partial).digest())
        root = merkle_root(leaves).hex() if self._size else ""
        return Digest(self._size, self._sha.hexdigest(), root)


def _read_buffer(fh: BinaryIO) -> bytearray:
    """A read buffer no bigger than the file: a small file need not zero a whole one."""
    return bytearray(max(1, min(_READ_SIZE, os.fstat(fh.fileno()).st_size)))


def hash_file(path: Path) -> Digest:
    """sha256 and v2 root of a file, read once."""
    hasher = StreamHasher()
    with open(path, "rb", buffering=0) as fh:
        buf = _read_buffer(fh)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            hasher.update(view[:n])
    return hasher.digest()


def sha256_file(path: Path) -> str:
    """Plain sha256 hex of a file (what a full verify needs; no tree)."""
    sha = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = _read_buffer(fh)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            sha.update(view[:n])
    return sha.hexdigest()


def hash_files(paths: Iterable[Path], *, workers: int | None = None) -> list[str]:
    """sha256 of many files in parallel threads (hashlib releases the GIL).

    Args:
        paths: the files.
        workers: threads; defaults to the number of CPUs.

    Returns:
        Hex digests in the order of ``paths``.

    """
    items = list(paths)
    n = workers or os.cpu_count() or 1
    if n <= 1 or len(items) <= 1:
        return [sha256_file(p) for p in items]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="p2pw-hash") as pool:
        return list(pool.map(sha256_file, items))
