"""`p2pw` verbs that run the daemon itself: daemon run|start|stop|status, doctor, ui."""

from __future__ import annotations

import os
import select
import signal
import sys
from typing import Any

import click

from ..client import (
    DaemonClient,
    check_data_dir,
    daemon_log_path,
    running_daemon_pid,
    save_start_args,
    saved_start_args,
    start_daemon,
)
from ..errors import ConfigError, DaemonError, DaemonUnavailableError
from ._base import (
    Ctx,
    cli,
    client_for,
    emit,
    json_option,
    pass_ctx,
    require_data_dir,
    run,
)

__all__: list[str] = []

# ------------------------------------------------------------------------------ daemon


@cli.group()
def daemon() -> None:
    """The background daemon that seeds and fetches."""


@daemon.command("run", context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def daemonrun(ctx: Ctx, args: tuple[str, ...]) -> None:
    """Run the daemon in the foreground. `p2pw daemon run --help` lists its flags."""
    # The daemon's flags are defined once, in p2pweightsd.cli; the daemon is a process of
    # its own that this CLI starts, never a module it imports.
    argv = [sys.executable, "-m", "p2pweightsd", "run", "--home", str(ctx.home), *args]
    env = {**os.environ, "P2PWEIGHTSD_PROG_NAME": "p2pw daemon"}  # its help: `p2pw daemon run`
    os.execve(sys.executable, argv, env)  # noqa: S606 - our own interpreter and module


@daemon.command("start", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@json_option
@pass_ctx
def daemon_start(ctx: Ctx, args: tuple[str, ...]) -> None:
    """Start the daemon in the background. It takes the flags of `p2pw daemon run`.

    The flags are saved in the data dir: a daemon started on demand later (by ls, fetch,
    load or the Python API) uses the same ones.
    """
    check_data_dir(ctx.home)
    client = DaemonClient(ctx.home)
    try:
        info: dict[str, Any] | None = client.request_sync("GET", "/status")
    except DaemonUnavailableError:
        info = None
    if info is not None:
        if args and list(args) != saved_start_args(ctx.home):
            raise ConfigError(
                f"a daemon already runs on {ctx.home} with other settings; "
                "`p2pw daemon stop` first to start it with these flags"
            )
        emit(ctx, {"started": False, **info}, [f"daemon already running (pid {info['pid']})"])
        return
    pid = start_daemon(ctx.home, extra_args=args)
    save_start_args(ctx.home, args)  # an auto-start (ls, fetch, load) uses the same flags
    info = client.request_sync("GET", "/status")
    emit(
        ctx,
        {"started": True, **info},
        [
            f"daemon started (pid {pid}), peers dial {info.get('peer_address')}, log "
            f"{daemon_log_path(ctx.home)}"
        ],
    )


@daemon.command("stop")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the daemon to exit.",
)
@json_option
@pass_ctx
def daemon_stop(ctx: Ctx, timeout: float) -> None:
    """Stop the daemon cleanly (SIGTERM; it saves resume data first).

    Attached clients are cut off; fetches go on at the next start.
    """
    pid = running_daemon_pid(ctx.home)
    if pid is None:
        emit(ctx, {"stopped": False, "running": False}, ["daemon is not running"])
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        emit(ctx, {"stopped": False, "running": False}, ["daemon is not running"])
        return
    try:
        os.kill(pid, signal.SIGTERM)
        ready, _, _ = select.select([pidfd], [], [], timeout)  # readable when it exits
    finally:
        os.close(pidfd)
    if not ready:
        raise DaemonError(f"daemon {pid} did not stop within {timeout:.0f}s")
    emit(ctx, {"stopped": True, "pid": pid}, [f"daemon {pid} stopped"])


@cli.command("doctor")
@click.option("--repair", is_flag=True, help="Rebuild the catalog from the store (daemon stopped).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@pass_ctx
def doctor(ctx: Ctx, repair: bool, as_json: bool) -> None:
    """Check the catalog and the store; --repair rebuilds a damaged catalog."""
    argv = [sys.executable, "-m", "p2pweightsd", "doctor", "--home", str(ctx.home)]
    argv += ["--repair"] * repair + ["--json"] * as_json
    env = {**os.environ, "P2PWEIGHTSD_PROG_NAME": "p2pw"}
    os.execve(sys.executable, argv, env)  # noqa: S606 - our own interpreter and module


@daemon.command("status")
@json_option
@pass_ctx
def daemon_status(ctx: Ctx) -> None:
    """Report on the daemon (exit code 15 when none runs)."""
    require_data_dir(ctx)
    info = DaemonClient(ctx.home).request_sync("GET", "/status")
    emit(
        ctx,
        info,
        [
            f"running: pid {info['pid']}, peers dial {info.get('peer_address')}, "
            f"{info['releases']} releases, profile {info['profile']}, "
            f"up {info['uptime']:.0f}s"
        ],
    )


@cli.command("ui")
@click.option("--open", "open_browser", is_flag=True, help="Open the URL in a web browser.")
@json_option
@pass_ctx
def ui(ctx: Ctx, open_browser: bool) -> None:
    """Print a one-time login URL for the daemon's web page (needs its tcp_port)."""
    # Minted over the 0600 Unix socket: only this user can log a browser in. The daemon
    # refuses with a clear message when it has no TCP listener for the page.
    info = run(client_for(ctx).request("POST", "/ui/login"))
    url = str(info["url"])
    opened = False
    if open_browser:
        import webbrowser  # noqa: PLC0415 - only --open needs it

        opened = webbrowser.open(url)
    lines = [url, f"(good for one login, within {info['expires_in']:.0f} s)"]
    if open_browser and not opened:
        lines.append("no browser could be opened: open the URL yourself")
    emit(ctx, {**info, "opened": opened}, lines)
