"""The daemon as a process: its data dir, socket and log paths, its lock, starting it.

The library never imports the daemon; it finds a running one by the lock on its pid file
and starts one as ``python -m p2pweightsd run``, the way ``docker`` or ``ollama`` users
expect. :mod:`.client` talks to it once it serves.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import ConfigError, DaemonUnavailableError

__all__ = [
    "check_data_dir",
    "daemon_log_path",
    "running_daemon_pid",
    "save_start_args",
    "saved_start_args",
    "socket_path",
    "start_daemon",
]

_START_TIMEOUT = 60.0


def socket_path(home: Path) -> Path:
    """The control socket of the daemon that owns ``home``."""
    return home / "daemon.sock"


def daemon_log_path(home: Path) -> Path:
    """Where a background daemon writes its log."""
    return home / "daemon.log"


_MAX_SOCKET_PATH = 107
"""Bytes a Unix socket's path may have on Linux (``sun_path`` is 108, with its NUL)."""


def check_data_dir(home: Path) -> None:
    """Refuse, in one line, a data dir no daemon can run in.

    Raises:
        ConfigError: ``home`` is a file, or too long a path for the daemon's socket.
    """
    if home.exists() and not home.is_dir():
        raise ConfigError(f"data dir {home} is not a directory")
    size = len(os.fsencode(socket_path(home)))
    if size > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"data dir {str(home)[:60]}... is too long a path for the daemon's socket "
            f"({size} bytes, at most {_MAX_SOCKET_PATH}); use a shorter --home or $P2PW_HOME"
        )


def _start_args_path(home: Path) -> Path:
    return home / "daemon-start.json"


def saved_start_args(home: Path) -> list[str]:
    """The flags of the last explicit ``p2pw daemon start`` on ``home`` (an auto-start's)."""
    try:
        doc = json.loads(_start_args_path(home).read_text("utf-8"))
    except (OSError, ValueError):
        return []  # none saved (or unreadable): the daemon's config file and defaults
    args = doc.get("args") if isinstance(doc, dict) else None
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return []
    return list(args)


def save_start_args(home: Path, args: Sequence[str]) -> None:
    """Remember the flags of an explicit start, so that auto-starts use the same settings."""
    path = _start_args_path(home)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"args": list(args)}, indent=2) + "\n", "utf-8")
    os.replace(tmp, path)


def running_daemon_pid(home: Path) -> int | None:
    """The pid of the daemon that holds ``home``'s lock, or None.

    A pid file left by a crash names a process that may since be something else; only a
    file whose lock is held belongs to a live daemon.
    """
    try:
        fd = os.open(home / "daemon.pid", os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it: stale
    finally:
        os.close(fd)


def start_daemon(
    home: Path, *, extra_args: Sequence[str] = (), timeout: float = _START_TIMEOUT
) -> int:
    """Start a background daemon for ``home`` and wait until it serves.

    The daemon writes ``ready`` to a pipe once its socket is listening, so this waits on
    that event rather than polling the socket.

    Returns:
        The daemon's pid.

    Raises:
        ConfigError: ``home`` cannot hold a daemon (see :func:`check_data_dir`).
        DaemonUnavailableError: it exited or did not become ready in time (see its log).
    """
    check_data_dir(home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = daemon_log_path(home)
    read_fd, write_fd = os.pipe()
    try:
        # posix_spawn rather than Popen: the daemon outlives this process by design, and
        # a Popen object would complain when collected while its child still runs.
        os.set_inheritable(write_fd, True)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            pid = os.posix_spawn(
                sys.executable,
                [
                    sys.executable,
                    "-m",
                    "p2pweightsd",
                    "run",
                    "--home",
                    str(home),
                    "--ready-fd",
                    str(write_fd),
                    *extra_args,
                ],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(log_fd)
        os.close(write_fd)
        write_fd = -1
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([read_fd], [], [], max(left, 0))
            if not ready:
                raise DaemonUnavailableError(
                    f"daemon did not become ready in {timeout:.0f}s; see {log_path}"
                )
            chunk = os.read(read_fd, 256)
            if not chunk:
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
                raise DaemonUnavailableError(
                    f"daemon exited with code {code}: {tail[0] if tail else ''} (log {log_path})"
                )
            buf += chunk
        return pid
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
