"""Copy-on-write clones (``FICLONE``) and plain copies, each written under a temp name.

A reflink shares the source's blocks until either side is written, so cloning a chunk
costs no data copy, and a later write into the clone (``save_pretrained`` into an export)
never reaches the store's file. Filesystems without reflinks (ext4, tmpfs) refuse the
ioctl; callers then fall back to a copy or a read-only link.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
from pathlib import Path

from ._atomic import TMP_SUFFIX

__all__ = ["clone_file", "copy_file"]

# _IOW(0x94, 9, int) from <linux/fs.h>: make the destination share the source's extents.
_FICLONE = 0x40049409
# What a filesystem (or a cross-device pair) without reflinks answers.
_NO_REFLINK = {
    errno.EOPNOTSUPP,
    errno.ENOTTY,
    errno.EXDEV,
    errno.EINVAL,
    errno.ENOSYS,
    errno.EBADF,
    errno.EPERM,
}


def _write_new(dest: Path, mode: int, fill_from: Path, *, clone_only: bool) -> bool:
    """Write ``dest`` from ``fill_from`` through a fresh temp file, then rename it over.

    The temp file is created with ``O_EXCL`` (never following a link planted under its
    name) and ``mode``, less the umask. Returns False (nothing written) when
    ``clone_only`` and no clone was possible.
    """
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
    with open(fill_from, "rb") as src:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            with os.fdopen(fd, "wb") as dst:
                try:
                    fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
                except OSError as exc:
                    if exc.errno not in _NO_REFLINK:
                        raise
                    if clone_only:
                        tmp.unlink()
                        return False
                    shutil.copyfileobj(src, dst, 1024 * 1024)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return True


def clone_file(src: Path, dest: Path, *, mode: int = 0o644) -> bool:
    """Make ``dest`` a copy-on-write clone of ``src``, if the filesystem can.

    Returns:
        True when ``dest`` was written; False when the filesystem has no reflinks (or
        ``src`` and ``dest`` are on different filesystems), and nothing was written.

    Raises:
        OSError: any other failure (no space, permissions).
    """
    return _write_new(dest, mode, src, clone_only=True)


def copy_file(src: Path, dest: Path, *, mode: int = 0o644) -> None:
    """Make ``dest`` an independent copy of ``src``: a clone where possible, else bytes.

    Raises:
        OSError: the copy failed.
    """
    _write_new(dest, mode, src, clone_only=False)
