"""The daemon's content-addressed store on disk: one writer per file, files immutable.

Layout under ``<data dir>/store``::

    chunks/<sha256>[.safetensors]       every verified chunk of every release, once (0444)
    partial/<id>/<sha256>[.safetensors] a fetch's own chunk files while they download
    releases/<id>/manifest.json         per release (id = v2 info-hash, hex)
    releases/<id>/manifest.sig
    releases/<id>/release.torrent
    releases/<id>/chunks -> ../../chunks
    staging/<pid>-<ns>/                 a pack in progress (swept at start)

Because each ``releases/<id>`` holds a ``chunks`` link to the shared directory, it is an
ordinary release directory: ``p2pweights.load`` and ``open_release`` read it unchanged,
and two releases that share a chunk share the file.

The rules that keep a second publisher from reaching another release's bytes:

- A chunk's name is the sha256 of its bytes (the manifest parser enforces it), so two
  releases share a store file only when they share the bytes.
- No torrent downloads into ``chunks/``: a fetch writes its own files under ``partial/``.
  :meth:`Store.check_partial` hashes a complete partial file against its name before it
  may enter; it is then moved under its name only if that name is absent (libtorrent's
  rename refuses to replace), and a name already present keeps the store's copy. A
  torrent is mapped onto a store file only once it is there, complete, so libtorrent
  only ever reads it.
- Store files are mode 0444, and their stat identity (size, mtime, ctime, inode) is
  recorded when they are placed. :meth:`Store.intact` re-checks it, and re-hashes a file
  whose stat moved, before anything is seeded from it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from p2pweights._atomic import TMP_SUFFIX, atomic_write_bytes
from p2pweights._reflink import copy_file
from p2pweights.errors import FormatError, ReleaseMismatchError
from p2pweights.hashing import hash_file, sha256_file
from p2pweights.key_statements import STATEMENTS_NAME
from p2pweights.manifest import ChunkEntry, chunk_of_address
from p2pweights.release import CHUNKS_DIR, MANIFEST_NAME, SIGNATURE_NAME, Release

__all__ = ["PARTIAL_DIR", "TORRENT_NAME", "FileStamp", "Store"]

TORRENT_NAME = "release.torrent"
PARTIAL_DIR = "partial"
_ID = re.compile(r"[0-9a-f]{64}")
_READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What a store file looked like when its bytes were last hashed."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        """The stamp of ``path`` now (``FileNotFoundError`` if it is gone)."""
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class Store:
    """Paths and file moves of the content-addressed store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.chunks = root / CHUNKS_DIR
        self.partial = root / PARTIAL_DIR
        self.releases = root / "releases"
        self.staging = root / "staging"
        """Where ``pack_and_publish`` packs a release before importing it."""

    def open(self) -> None:
        """Create the layout, and drop what a crash left behind.

        That is every temp file (``*.p2pw-tmp``: a chunk being linked in, a manifest or
        record being replaced) and every pack in ``staging/`` (``pack_and_publish``
        packs there, then imports into the store; a kill mid-way leaves a partial
        release there that nothing else would remove). Only the daemon that holds the
        data dir's lock calls this, so no live pack is swept.
        """
        self.chunks.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir(parents=True, exist_ok=True)
        self.releases.mkdir(parents=True, exist_ok=True)
        if self.staging.exists():
            for leftover_pack in self.staging.iterdir():
                if leftover_pack.is_dir() and not leftover_pack.is_symlink():
                    shutil.rmtree(leftover_pack, ignore_errors=True)
                else:
                    leftover_pack.unlink(missing_ok=True)
        for leftover in self.root.rglob(f"*{TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)

    # ------------------------------------------------------------------ paths

    def release_dir(self, rid: str) -> Path:
        """The release dir of release ``rid``, with its ``chunks`` link in place."""
        path = self.releases / _checked_id(rid)
        path.mkdir(parents=True, exist_ok=True)
        link = path / CHUNKS_DIR
        if not link.is_symlink():
            os.symlink(f"../../{CHUNKS_DIR}", link)
        return path

    def manifest_path(self, rid: str) -> str:
        """The manifest's path relative to the store root (a torrent file target)."""
        return f"releases/{rid}/{MANIFEST_NAME}"

    def signature_path(self, rid: str) -> str:
        """The signature's path relative to the store root."""
        return f"releases/{rid}/{SIGNATURE_NAME}"

    def statements_path(self, rid: str) -> str:
        """The key statements' path relative to the store root."""
        return f"releases/{rid}/{STATEMENTS_NAME}"

    def partial_path(self, rid: str, chunk_path: str) -> str:
        """Where release ``rid``'s fetch writes chunk ``chunk_path`` (store-relative)."""
        return f"{PARTIAL_DIR}/{_checked_id(rid)}/{chunk_path.removeprefix(CHUNKS_DIR + '/')}"

    def save_torrent(self, rid: str, data: bytes) -> Path:
        """Write the release's .torrent beside its manifest."""
        path = self.release_dir(rid) / TORRENT_NAME
        atomic_write_bytes(path, data)
        return path

    # ------------------------------------------------------------------ integrity

    def intact(self, chunk: ChunkEntry, stamp: FileStamp | None) -> FileStamp | None:
        """The store file of ``chunk``, if it holds the chunk's bytes; else None.

        A file whose stamp equals ``stamp`` (recorded when it was last hashed) is taken
        as is. Any other file under the name, or one with no stamp on record, is hashed:
        a moved ctime alone is often a harmless link-count change, but only a hash can
        tell it from a write that restored the mtime.

        Returns:
            The file's current stamp when its bytes are the chunk's, else None (absent,
            or other bytes).
        """
        path = self.root / chunk.path
        try:
            now = FileStamp.of(path)
        except FileNotFoundError:
            return None
        if stamp is not None and now == stamp:
            return now
        if now.size != chunk.size or sha256_file(path) != chunk.sha256:
            return None
        return now if FileStamp.of(path) == now else None  # not written while hashed

    def adopt(self, path: str, size: int, v2_root: str) -> FileStamp | None:
        """The stamp of a store file no record vouches for, if it holds its name's bytes.

        Such a file is left when a crash hits between a placement and its record. The
        name gives the sha256 it must have; the size and v2 root are what the torrent
        that wants to map it claims, so a torrent is never mapped onto a file it does not
        hold (libtorrent would then download into it).
        """
        file = self.root / path
        try:
            before = FileStamp.of(file)
            digest = hash_file(file)
        except FileNotFoundError:
            return None
        if (digest.size, digest.sha256, digest.v2_root) != (
            size,
            chunk_of_address(path, size, v2_root).sha256,
            v2_root,
        ):
            return None
        return before if FileStamp.of(file) == before else None

    def place(self, rid: str, chunk: ChunkEntry, store_stamp: FileStamp | None) -> bool:
        """Check a fetch's complete partial file of ``chunk``, then settle it in the store.

        :meth:`check_partial` then :meth:`settle`; a caller that serialises placements
        hashes outside its lock and settles inside it.
        """
        self.check_partial(rid, chunk)
        return self.settle(rid, chunk, store_stamp)

    def check_partial(self, rid: str, chunk: ChunkEntry) -> None:
        """Hash a fetch's complete partial file against its name, then make it read-only.

        Bytes that are not the chunk's name never reach the store.

        Raises:
            ReleaseMismatchError: the partial file's bytes are not the chunk's.
        """
        partial = self.root / self.partial_path(rid, chunk.path)
        if partial.stat().st_size != chunk.size or sha256_file(partial) != chunk.sha256:
            raise ReleaseMismatchError(
                f"chunk {chunk.path}: the downloaded bytes do not hash to its name; "
                "the release's signed v2 root and its sha256 disagree"
            )
        os.chmod(partial, _READ_ONLY)

    def settle(self, rid: str, chunk: ChunkEntry, store_stamp: FileStamp | None) -> bool:
        """Make the store name of a checked partial chunk hold its bytes.

        Returns:
            True when the store has no file of that name: the caller moves the partial
            file there through libtorrent, whose rename refuses to replace an existing
            name (one writer per name). False when the store already had the name: if
            that file is intact it stays and the partial name becomes a second link to
            it; if not (someone wrote to it), it is replaced atomically by the verified
            bytes (a repair, never a write into it). Either way the store name then holds
            the chunk, and the torrent may keep reading the partial name until it is
            re-added with the store layout.
        """
        partial = self.root / self.partial_path(rid, chunk.path)
        dest = self.root / chunk.path
        if not dest.exists():
            return True
        if self.intact(chunk, store_stamp) is not None:
            _replace_with_link(dest, partial)  # the store's copy stays; ours goes
        else:
            _replace_with_link(partial, dest)  # a damaged store file: repair it
        return False

    def drop_partial(self, rid: str, chunk_path: str | None = None) -> None:
        """Delete one partial file of ``rid``'s fetch, or all of them."""
        if chunk_path is not None:
            (self.root / self.partial_path(rid, chunk_path)).unlink(missing_ok=True)
        else:
            shutil.rmtree(self.partial / _checked_id(rid), ignore_errors=True)

    # ------------------------------------------------------------------ publish

    def import_release(
        self, release: Release, rid: str, stamps: dict[str, FileStamp | None]
    ) -> tuple[Path, list[str], dict[str, FileStamp]]:
        """Bring a verified local release into the store, writing no store file twice.

        A chunk the store already holds intact is used as it is. Any other is copied in
        (reflinked where the filesystem can), read-only, and linked under its name only
        if the name is absent; a damaged store file is replaced atomically. The store
        never shares an inode with the publisher's dir, so later edits there cannot
        reach what is seeded. A ``staging`` release (packed by the daemon itself) is moved
        in instead of copied.

        Args:
            release: the verified release (its chunks were checked against the manifest).
            rid: its info-hash.
            stamps: the recorded stamp of each chunk path the store already knows.

        Returns:
            The store's release dir, the chunk paths this call put into the store (for
            :meth:`undo_import` if what follows fails), and every chunk's stamp now.
        """
        created: list[str] = []
        now: dict[str, FileStamp] = {}
        fresh_dir = not (self.releases / rid).exists()
        try:
            target = self.release_dir(rid)
            own = self.staging in release.root.parents
            for chunk in release.manifest.chunks:
                kept = self.intact(chunk, stamps.get(chunk.path))
                if kept is not None:
                    now[chunk.path] = kept
                    continue
                dest = self.root / chunk.path
                src = release.chunk_path(chunk.path)
                # Absent, or not intact (then this is a repair): replaced atomically.
                if own:
                    os.chmod(src, _READ_ONLY)
                    os.replace(src, dest)
                else:
                    copy_file(src, dest, mode=_READ_ONLY)
                    os.chmod(dest, _READ_ONLY)  # the mode above is less the umask
                created.append(chunk.path)
                now[chunk.path] = FileStamp.of(dest)
            for name in (MANIFEST_NAME, SIGNATURE_NAME):
                atomic_write_bytes(target / name, (release.root / name).read_bytes())
            if (release.root / STATEMENTS_NAME).is_file():  # part of the torrent, if there
                data = (release.root / STATEMENTS_NAME).read_bytes()
                atomic_write_bytes(target / STATEMENTS_NAME, data)
        except BaseException:
            self.undo_import(rid, created, remove_dir=fresh_dir)
            raise
        return target, created, now

    def undo_import(self, rid: str, created: Iterable[str], *, remove_dir: bool) -> None:
        """Take back what a refused publish put into the store."""
        for rel in created:
            (self.root / rel).unlink(missing_ok=True)
        if remove_dir:
            shutil.rmtree(self.releases / rid, ignore_errors=True)

    def remove_release(self, rid: str, orphan_chunks: list[str]) -> None:
        """Delete a release's dir, its partial files and the chunks no other release uses."""
        shutil.rmtree(self.releases / rid, ignore_errors=True)
        self.drop_partial(rid)
        for rel in orphan_chunks:
            (self.root / rel).unlink(missing_ok=True)


def _checked_id(rid: str) -> str:
    if not _ID.fullmatch(rid):
        raise FormatError(f"release id {rid[:80]!r} is not a 64-digit hex info-hash")
    return rid


def _replace_with_link(existing: Path, name: Path) -> None:
    """Make ``name`` another link to ``existing``, atomically."""
    tmp = name.with_name(f".{name.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
    os.link(existing, tmp)
    os.replace(tmp, name)
