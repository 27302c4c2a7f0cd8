"""The daemon's content-addressed store on disk.

Layout under ``<data dir>/store``::

    chunks/<sha256>[.safetensors]       every chunk of every release, once
    releases/<id>/manifest.json         per release (id = v2 info-hash, hex)
    releases/<id>/manifest.sig
    releases/<id>/release.torrent
    releases/<id>/chunks -> ../../chunks
    staging/<pid>-<ns>/                 a pack in progress (swept at start)

Because each ``releases/<id>`` holds a ``chunks`` link to the shared directory, it is an
ordinary release directory: ``p2pweights.load`` and ``open_release`` read it unchanged,
and two releases that share a chunk share the file.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from p2pweights._atomic import TMP_SUFFIX, atomic_write_bytes
from p2pweights.errors import FormatError
from p2pweights.hashing import sha256_file
from p2pweights.release import CHUNKS_DIR, MANIFEST_NAME, SIGNATURE_NAME, Release

__all__ = ["TORRENT_NAME", "Store"]

TORRENT_NAME = "release.torrent"
_ID = re.compile(r"[0-9a-f]{64}")


class Store:
    """Paths and file moves of the content-addressed store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.chunks = root / CHUNKS_DIR
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
        self.releases.mkdir(parents=True, exist_ok=True)
        if self.staging.exists():
            for leftover_pack in self.staging.iterdir():
                if leftover_pack.is_dir() and not leftover_pack.is_symlink():
                    shutil.rmtree(leftover_pack, ignore_errors=True)
                else:
                    leftover_pack.unlink(missing_ok=True)
        for leftover in self.root.rglob(f"*{TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)

    def release_dir(self, rid: str) -> Path:
        """The release dir of release ``rid``, with its ``chunks`` link in place."""
        if not _ID.fullmatch(rid):
            raise FormatError(f"release id {rid[:80]!r} is not a 64-digit hex info-hash")
        path = self.releases / rid
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

    def save_torrent(self, rid: str, data: bytes) -> Path:
        """Write the release's .torrent beside its manifest."""
        path = self.release_dir(rid) / TORRENT_NAME
        atomic_write_bytes(path, data)
        return path

    def import_release(self, release: Release, rid: str) -> Path:
        """Bring a verified local release into the store: hard links, else copies.

        A chunk file the store already holds is kept only when it is the release's own
        file or hashes to the signed sha256; anything else there is replaced. So every
        store chunk of the release is verified when this returns.

        Returns:
            The store's release dir.
        """
        target = self.release_dir(rid)
        for chunk in release.manifest.chunks:
            dest = self.root / chunk.path
            src = release.chunk_path(chunk.path)
            if dest.exists() and (os.path.samefile(src, dest) or sha256_file(dest) == chunk.sha256):
                continue  # the verified file itself, or a file with the same bytes
            # Absent, partial (an interrupted fetch) or damaged: replace it.
            tmp = dest.with_name(f".{dest.name}{TMP_SUFFIX}")
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        for name in (MANIFEST_NAME, SIGNATURE_NAME):
            atomic_write_bytes(target / name, (release.root / name).read_bytes())
        return target

    def remove_release(self, rid: str, orphan_chunks: list[str]) -> None:
        """Delete a release's dir and the chunks no other release uses."""
        shutil.rmtree(self.releases / rid, ignore_errors=True)
        for rel in orphan_chunks:
            (self.root / rel).unlink(missing_ok=True)
