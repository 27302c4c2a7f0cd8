"""Shared pieces of the `p2pw` CLI: the group, the context, --json, progress, keys."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .. import __version__
from ..client import DaemonClient, ensure_daemon_sync
from ..errors import ConfigError, DaemonUnavailableError, KeyFileError
from ..paths import data_dir, trust_path

if TYPE_CHECKING:
    from ..keys import PrivateKey
    from ..trust import TrustStore

__all__ = [
    "Ctx",
    "cli",
    "client_for",
    "emit",
    "json_option",
    "load_key",
    "pass_ctx",
    "passphrase_from",
    "progress_bar",
    "require_data_dir",
    "run",
]

ENV_PASSPHRASE = "P2PW_KEY_PASSPHRASE"  # noqa: S105 - the variable name, not a secret
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class Ctx:
    """Options shared by all commands, built once at the entry point."""

    def __init__(self, home: Path | None, debug: bool) -> None:
        self.home = data_dir(home)
        self.debug = debug
        self.json = False

    def trust(self) -> TrustStore:
        from ..trust import TrustStore  # noqa: PLC0415 - keeps the daemon verbs light

        return TrustStore.load(trust_path(self.home))


pass_ctx = click.make_pass_decorator(Ctx)


def json_option(fn: F) -> F:
    """Add ``--json`` to a command; the flag is stored on the shared context."""

    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> Any:
        click.get_current_context().find_object(Ctx).json = as_json  # type: ignore[union-attr]
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


_TIME_KEYS = frozenset({"added", "completed", "time"})
"""Fields that hold a point in time: ISO 8601 (UTC) in ``--json`` output."""


def _iso_times(value: Any) -> Any:
    """``value`` with the epoch seconds of every time field as ISO 8601 text."""
    from datetime import UTC, datetime  # noqa: PLC0415 - only for --json

    if isinstance(value, list):
        return [_iso_times(v) for v in value]
    if not isinstance(value, dict):
        return value
    return {
        k: datetime.fromtimestamp(v, UTC).isoformat(timespec="seconds")
        if k in _TIME_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
        else _iso_times(v)
        for k, v in value.items()
    }


def emit(ctx: Ctx, data: dict[str, Any], lines: list[str]) -> None:
    """Print ``data`` as JSON with ``--json`` (times in ISO 8601), else the human ``lines``."""
    if ctx.json:
        click.echo(json.dumps(_iso_times(data), indent=2, sort_keys=True))
    else:
        for line in lines:
            click.echo(line)


@contextmanager
def progress_bar(ctx: Ctx, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A byte-progress callback: a bar on a terminal, nothing otherwise."""
    if ctx.json or not sys.stderr.isatty() or total <= 0:
        yield lambda _n: None
        return
    with click.progressbar(
        length=total, label=label, file=sys.stderr, show_eta=True, show_percent=True
    ) as bar:
        yield bar.update


def passphrase_from(
    passphrase_file: Path | None, *, prompt: str, confirm: bool = False, ask: bool = False
) -> bytes | None:
    if passphrase_file is not None:
        try:
            return passphrase_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise KeyFileError(
                f"cannot read passphrase file {passphrase_file}: {exc.strerror}"
            ) from exc
    env = os.environ.get(ENV_PASSPHRASE)
    if env:
        return env.encode("utf-8")
    if ask:
        return str(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm)).encode()
    return None


def load_key(path: Path, passphrase_file: Path | None) -> PrivateKey:
    from ..keys import load_private_key  # noqa: PLC0415 - cryptography only where keys are

    try:
        return load_private_key(
            path, passphrase=passphrase_from(passphrase_file, prompt="Passphrase")
        )
    except KeyFileError as exc:
        if "needs a passphrase" in str(exc) and sys.stdin.isatty():
            secret = passphrase_from(None, prompt=f"Passphrase for {path}", ask=True)
            return load_private_key(path, passphrase=secret)
        raise


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    envvar="P2PW_HOME",
    help="Data dir (default: $P2PW_HOME, else the per-user data dir).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="p2pw")
@click.pass_context
def cli(click_ctx: click.Context, home: Path | None, debug: bool) -> None:
    """Publish, verify and load signed model weights."""
    click_ctx.obj = Ctx(home, debug)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion (each CLI verb is one short event loop)."""
    import asyncio  # noqa: PLC0415 - one-shot verbs use the client's sync calls instead

    return asyncio.run(coro)


def client_for(ctx: Ctx, *, autostart: bool = True, read_only: bool = False) -> DaemonClient:
    """A client whose daemon answers, started on demand.

    A ``read_only`` verb (``ls``, ``show``) never creates a data dir: a typo'd ``--home``
    must not leave a new dir and a daemon behind.

    Raises:
        DaemonUnavailableError: none answers and none may (or could) start.
    """
    if read_only:
        require_data_dir(ctx)
    return ensure_daemon_sync(ctx.home, autostart=autostart)


def require_data_dir(ctx: Ctx) -> None:
    """Refuse, in one line, a verb that would otherwise create a data dir that is not there.

    Raises:
        DaemonUnavailableError: there is no such data dir.
    """
    if ctx.home.exists() and not ctx.home.is_dir():
        raise ConfigError(f"data dir {ctx.home} is not a directory")
    if not ctx.home.is_dir():
        raise DaemonUnavailableError(
            f"no daemon at {ctx.home} (no such data dir); start one with `p2pw daemon start`"
        )
