"""Running the daemon: lock, set up in order, serve, tear down in reverse on SIGTERM.

Set-up order: data dir (0700) → single-instance lock on the pid file → catalog → store →
engine → service (restores releases) → API on the Unix socket (0600) and, if asked, on
127.0.0.1 TCP with a bearer token → "ready" on the ready pipe. Teardown runs the other
way; resume data is saved before the engine stops. A ``dirty`` marker tells the next start
whether the last one ended cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import signal
from pathlib import Path

from aiohttp import web

from p2pweights.errors import DaemonError

from .api import make_app
from .catalog import Catalog
from .config import DaemonConfig
from .engine import Engine, EngineSettings
from .service import Service
from .store import Store

__all__ = ["PieceFailures", "engine_settings", "read_or_create_token", "serve"]

log = logging.getLogger(__name__)

_SHUTDOWN_GRACE = 1.0
"""Seconds open API requests get to finish when the daemon stops."""


_HASH_FAILED = "torrent %s: piece %d failed the hash check (from %s)"
_SUMMARY_EVERY = 30.0


class PieceFailures(logging.Filter):
    """Holds back the engine's line per failed piece; :meth:`flush` logs one per peer.

    A lying or broken peer can fail thousands of pieces: one line each buries the log.
    The engine names the peers that sent blocks of each failed piece; a piece several
    peers took part in counts against each of them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pieces: dict[tuple[str, str], list[int]] = {}
        """Failed pieces by (torrent id, sender)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Count a failed piece instead of logging it; pass every other record."""
        args = record.args
        if record.msg == _HASH_FAILED and isinstance(args, tuple) and len(args) == 3:
            tid, piece, senders = args
            for sender in str(senders).split(", "):
                self.pieces.setdefault((str(tid), sender), []).append(
                    piece if isinstance(piece, int) else -1
                )
            return False
        return True

    def flush(self) -> None:
        """Log what failed since the last flush, one line per torrent and peer."""
        for (tid, sender), pieces in sorted(self.pieces.items()):
            shown = ", ".join(map(str, sorted(pieces)[:8])) + (", ..." if len(pieces) > 8 else "")
            log.warning(
                "torrent %s: %d %s from %s failed the hash check (%s); thrown away and "
                "fetched again, and a peer that keeps sending bad data is banned",
                tid[:16],
                len(pieces),
                "piece" if len(pieces) == 1 else "pieces",
                sender,
                shown,
            )
        self.pieces.clear()

    async def run(self) -> None:
        """Flush every ``_SUMMARY_EVERY`` seconds, and once more when cancelled."""
        try:
            while True:
                await asyncio.sleep(_SUMMARY_EVERY)
                self.flush()
        finally:
            self.flush()


def engine_settings(config: DaemonConfig) -> EngineSettings:
    """The engine's settings for a daemon config."""
    return EngineSettings(
        listen_interfaces=config.listen,
        outgoing_interface=config.outgoing_interface,
        enable_dht=config.dht,
        dht_bootstrap_nodes=",".join(config.dht_bootstrap),
        dht_allow_local=config.profile in ("local", "lan") and config.dht,
        enable_lsd=config.lsd,
        lsd_interval=config.lsd_interval,
        enable_upnp=config.upnp,
        enable_natpmp=config.natpmp,
        enable_utp=config.utp,
        upload_rate_limit=config.upload_rate,
        unchoke_slots=config.upload_slots,
        download_rate_limit=config.download_rate,
        apply_limits_to_local=config.rate_limit_local,
        allow_multiple_connections_per_ip=config.profile == "local",
        # A fetch raises priorities after the manifest stage and redials its peers;
        # libtorrent's 60 s default would stall that. 0 only on loopback: elsewhere a
        # failing peer would be redialled without any back-off.
        min_reconnect_time=0 if config.profile == "local" else 5,
        max_torrent_files=config.max_torrent_files,
        # Keep the link to a seeder while we are briefly upload-only (manifest stage):
        # closing it costs a reconnect of a second or more per fetch.
        close_redundant_connections=False,
    )


def read_or_create_token(path: Path) -> str:
    """The API bearer token, created (mode 0600) on first use."""
    try:
        token = path.read_text("ascii").strip()
        if len(token) >= 32:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def _lock_pidfile(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DaemonError(f"another daemon already runs on {path.parent}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


async def serve(config: DaemonConfig, *, ready_fd: int | None = None) -> None:
    """Run the daemon until SIGTERM or SIGINT.

    Raises:
        DaemonError: another daemon holds the data dir.
        CatalogError: the catalog is damaged.
        EngineError: the engine could not listen.
    """
    config.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(config.home, 0o700)
    pid_fd = _lock_pidfile(config.pid_path)
    dirty = config.home / "daemon.dirty"
    unclean = dirty.exists()
    dirty.touch()
    catalog = Catalog(config.catalog_path)
    store = Store(config.store_dir)
    store.open()
    engine = await Engine.start(engine_settings(config))
    service = Service(config, engine, catalog, store)
    runner: web.AppRunner | None = None
    failures = PieceFailures()
    alerts_log = logging.getLogger(f"{__package__}.engine.alerts")
    alerts_log.addFilter(failures)
    summaries = asyncio.create_task(failures.run(), name="p2pw-piece-failures")
    try:
        await service.start(unclean=unclean)
        token = read_or_create_token(config.token_path) if config.tcp_port else None
        # Long polls and event streams never end by themselves: a stop gives them a moment,
        # then cancels them, so `p2pw daemon stop` returns within seconds (aiohttp: 60 s).
        runner = web.AppRunner(
            make_app(service, token=token),
            handle_signals=False,
            shutdown_timeout=_SHUTDOWN_GRACE,
        )
        await runner.setup()
        config.socket_path.unlink(missing_ok=True)
        old = os.umask(0o177)  # the socket is born 0600: no window with wider rights
        try:
            await web.UnixSite(runner, str(config.socket_path)).start()
        finally:
            os.umask(old)
        if config.tcp_port:
            await web.TCPSite(runner, "127.0.0.1", config.tcp_port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "daemon %d ready: socket %s, peer port %d",
            os.getpid(),
            config.socket_path,
            engine.listen_port,
        )
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, f"ready {engine.listen_port}\n".encode())
                os.close(ready_fd)
        await stop.wait()
        log.info("daemon stopping")
    finally:
        if runner is not None:
            await runner.cleanup()
        await service.close()
        summaries.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await summaries
        alerts_log.removeFilter(failures)
        catalog.close()
        config.socket_path.unlink(missing_ok=True)
        dirty.unlink(missing_ok=True)
        # Unlink while the lock is held: a new daemon cannot lock a file we then delete.
        config.pid_path.unlink(missing_ok=True)
        os.close(pid_fd)
