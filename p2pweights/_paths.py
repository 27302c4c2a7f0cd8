"""Path checks for names that come from manifests and other hostile input."""

from __future__ import annotations

from pathlib import Path

from .errors import UnsafePathError

__all__ = ["MAX_PATH_CHARS", "check_relative", "join_inside"]

MAX_PATH_CHARS = 1024


def check_relative(path: object, *, what: str) -> str:
    """Accept only plain relative POSIX paths: no `..`, no absolute, no odd characters.

    Args:
        path: the candidate, usually straight from JSON.
        what: a noun for the error message.

    Returns:
        The path, unchanged.

    Raises:
        UnsafePathError: anything that could name a place outside its directory.

    """
    if not isinstance(path, str) or not path:
        raise UnsafePathError(f"{what} must be a non-empty string")
    if len(path) > MAX_PATH_CHARS:
        raise UnsafePathError(f"{what} is longer than {MAX_PATH_CHARS} characters")
    if path.startswith("/") or "\\" in path or "\x00" in path or ":" in path.split("/")[0]:
        raise UnsafePathError(f"{what} {path[:80]!r} is not a plain relative path")
    if any(ord(c) < 0x20 for c in path):
        raise UnsafePathError(f"{what} {path[:80]!r} holds control characters")
    try:
        path.encode("utf-8")  # a lone surrogate names no file: os calls would fail on it
    except UnicodeEncodeError:
        raise UnsafePathError(f"{what} {path[:80]!r} holds an unpaired surrogate") from None
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePathError(f"{what} {path[:80]!r} has an empty, '.' or '..' component")
    return path


def join_inside(root: Path, rel: str, *, what: str) -> Path:
    """Join a checked relative path under ``root`` and prove it stays there.

    Raises:
        UnsafePathError: if the result would leave ``root`` (e.g. through a symlink).

    """
    check_relative(rel, what=what)
    target = root / rel
    base = root.resolve()
    if not target.resolve().is_relative_to(base):
        raise UnsafePathError(f"{what} {rel[:80]!r} resolves outside {root}")
    return target
