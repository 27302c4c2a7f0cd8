"""A release as a static mirror tree: plain files any web server can serve as a BEP 19 origin.

The layout is BEP 19's multi-file one, so the tree's root URL is a web seed as is::

    DIR/<torrent name>/manifest.json
    DIR/<torrent name>/manifest.sig
    DIR/<torrent name>/chunks/<sha256>[.safetensors] ...
    DIR/<torrent name>.torrent
    DIR/<v2 info-hash>.torrent

The two ``.torrent`` copies let a fetch that has only a magnet and the web seed get the
metadata from the mirror when no peer is up (it checks the info-hash before use). The
server needs no code: nginx, an S3 bucket, or a hub repository holding plain files.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ._atomic import atomic_write_bytes
from ._paths import check_relative
from .errors import ExportError
from .key_statements import STATEMENTS_NAME
from .release import MANIFEST_NAME, SIGNATURE_NAME, open_self_signed

__all__ = ["MirrorResult", "write_mirror"]


@dataclass(frozen=True, slots=True)
class MirrorResult:
    """What a mirror write produced."""

    root: Path
    """``DIR/<torrent name>``: the files a web seed serves."""
    torrent_paths: tuple[Path, ...]
    files: int
    bytes_copied: int
    """Bytes copied this time (files already there with the right size are kept)."""


def write_mirror(
    release_dir: Path, torrent: bytes, *, name: str, info_hash: str, dest: Path
) -> MirrorResult:
    """Write the release at ``release_dir`` and its torrent as a mirror tree under ``dest``.

    Args:
        release_dir: a verified release dir (``manifest.json``, ``manifest.sig``, chunks).
        torrent: the release's bencoded .torrent.
        name: the torrent's root directory name.
        info_hash: the torrent's v2 info-hash (hex).
        dest: the tree's root; created if missing.

    Returns:
        What was written.

    Raises:
        ExportError: a file cannot be read or written.
        ManifestError, SignatureError: the release dir is not a self-consistent release.
    """
    check_relative(name, what="torrent name")
    if "/" in name or len(info_hash) != 64:
        raise ExportError(f"bad torrent name {name[:60]!r} or info-hash")
    release = open_self_signed(release_dir)
    root = dest / name
    copied = 0
    files = [MANIFEST_NAME, SIGNATURE_NAME, *(c.path for c in release.manifest.chunks)]
    if (release_dir / STATEMENTS_NAME).is_file():  # a file of the torrent like the others
        files.insert(2, STATEMENTS_NAME)
    sizes = {c.path: c.size for c in release.manifest.chunks}
    try:
        (root / "chunks").mkdir(parents=True, exist_ok=True)
        for rel in files:
            src, dst = release_dir / rel, root / rel
            size = sizes.get(rel, -1)
            if size >= 0 and dst.is_file() and dst.stat().st_size == size:
                continue  # an earlier mirror of a release sharing the chunk
            tmp = dst.with_name(dst.name + ".p2pw-tmp")
            shutil.copyfile(src, tmp)  # copy_file_range where the kernel has it
            os.replace(tmp, dst)
            copied += dst.stat().st_size
        torrents = (dest / f"{name}.torrent", dest / f"{info_hash}.torrent")
        for path in torrents:
            atomic_write_bytes(path, torrent)
    except OSError as exc:
        raise ExportError(f"cannot write the mirror at {dest}: {exc}") from exc
    return MirrorResult(root, torrents, len(files), copied)
