"""The `p2pw` command line: one click group, a subcommand per verb.

Only p2pweights' own errors are caught; each maps to its documented exit code with a
one-line message (``--debug`` shows the traceback). Every command takes ``--json`` for
scripts; progress bars go to stderr, and only when it is a terminal.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .client import DaemonClient, daemon_log_path, start_daemon
from .errors import DaemonError, KeyFileError, LoadError, P2PWeightsError
from .export import export as export_release
from .keys import PrivateKey, PublicKey, generate_key, load_private_key
from .loader import load as load_tensors
from .pack import pack as pack_release
from .paths import data_dir, default_key_path, trust_path
from .release import MANIFEST_NAME, is_release_dir, resolve_source
from .remote import ensure_daemon, fetch_async
from .trust import TrustStore
from .verify import verify_release

__all__ = ["main"]

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


def emit(ctx: Ctx, data: dict[str, Any], lines: list[str]) -> None:
    """Print ``data`` as JSON with ``--json``, else the human ``lines``."""
    if ctx.json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
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


def _passphrase(
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


def _load_key(path: Path, passphrase_file: Path | None) -> PrivateKey:
    try:
        return load_private_key(path, passphrase=_passphrase(passphrase_file, prompt="Passphrase"))
    except KeyFileError as exc:
        if "needs a passphrase" in str(exc) and sys.stdin.isatty():
            secret = _passphrase(None, prompt=f"Passphrase for {path}", ask=True)
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


# ------------------------------------------------------------------------------ keys


@cli.group()
def key() -> None:
    """Publisher signing keys (Ed25519)."""


@key.command("generate")
@click.option(
    "--out", type=click.Path(path_type=Path), help="Key file (default: DATA/keys/publisher.pem)."
)
@click.option("--passphrase", "ask", is_flag=True, help="Encrypt the key; asks for a passphrase.")
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Encrypt the key with the passphrase in this file.",
)
@click.option("--force", is_flag=True, help="Replace an existing key file.")
@json_option
@pass_ctx
def key_generate(
    ctx: Ctx, out: Path | None, ask: bool, passphrase_file: Path | None, force: bool
) -> None:
    """Create a new signing key, written with mode 0600."""
    path = out or default_key_path(ctx.home)
    secret = _passphrase(passphrase_file, prompt="New passphrase", confirm=True, ask=ask)
    priv = generate_key(path, passphrase=secret, overwrite=force)
    emit(
        ctx,
        {
            "path": str(path),
            "public_key": priv.public.text,
            "fingerprint": priv.public.fingerprint,
            "encrypted": bool(secret),
        },
        [f"wrote {path}", priv.public.text, f"fingerprint {priv.public.fingerprint}"],
    )


@key.command("show")
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path),
    help="Key file (default: DATA/keys/publisher.pem).",
)
@click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False))
@json_option
@pass_ctx
def key_show(ctx: Ctx, key_path: Path | None, passphrase_file: Path | None) -> None:
    """Print the public key, for others to trust."""
    priv = _load_key(key_path or default_key_path(ctx.home), passphrase_file)
    emit(
        ctx,
        {"public_key": priv.public.text, "fingerprint": priv.public.fingerprint},
        [priv.public.text, f"fingerprint {priv.public.fingerprint}"],
    )


# ------------------------------------------------------------------------------ trust


@cli.group()
def trust() -> None:
    """The publisher keys you trust."""


@trust.command("add")
@click.argument("public_key")
@click.option("--name", required=True, help="A name for this publisher, e.g. the org.")
@json_option
@pass_ctx
def trust_add(ctx: Ctx, public_key: str, name: str) -> None:
    """Trust PUBLIC_KEY (ed25519:...) under NAME."""
    pub = PublicKey.parse(public_key)
    store = ctx.trust()
    store.add(pub, name)
    emit(
        ctx,
        {"name": name, "public_key": pub.text, "fingerprint": pub.fingerprint},
        [f"trusted {name}: {pub.text} ({pub.fingerprint})"],
    )


@trust.command("list")
@json_option
@pass_ctx
def trust_list(ctx: Ctx) -> None:
    """List trusted publisher keys."""
    entries = ctx.trust().entries
    emit(
        ctx,
        {
            "keys": [
                {"name": e.name, "public_key": e.key.text, "fingerprint": e.key.fingerprint}
                for e in entries
            ]
        },
        [f"{e.name}\t{e.key.text}\t{e.key.fingerprint}" for e in entries] or ["(no trusted keys)"],
    )


@trust.command("remove")
@click.argument("name_or_key")
@json_option
@pass_ctx
def trust_remove(ctx: Ctx, name_or_key: str) -> None:
    """Stop trusting a key, by name or by key."""
    entry = ctx.trust().remove(name_or_key)
    emit(
        ctx,
        {"removed": entry.name, "public_key": entry.key.text},
        [f"removed {entry.name} ({entry.key.fingerprint})"],
    )


# ------------------------------------------------------------------------------ releases


def _source_size(src: Path) -> int:
    if src.is_file():
        return src.stat().st_size
    return sum(p.stat().st_size for p in src.rglob("*") if p.is_file())


@cli.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True))
@click.option("--name", required=True, help="Release name, ORG/MODEL.")
@click.option(
    "--version",
    "version",
    required=True,
    type=click.IntRange(min=0),
    help="Integer version; increase it for every release.",
)
@click.option("--label", default="", help="Free-text label, e.g. a tag.")
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path),
    help="Signing key (default: DATA/keys/publisher.pem).",
)
@click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Release dir to create."
)
@click.option(
    "--previous",
    type=click.Path(path_type=Path, exists=True),
    help="The previous release dir, to chain its manifest hash.",
)
@click.option("--expires-in-days", type=click.IntRange(min=1), help="Refuse loads after this.")
@click.option("--max-chunk-mib", type=click.IntRange(min=1), default=256, show_default=True)
@json_option
@pass_ctx
def pack(
    ctx: Ctx,
    src: Path,
    name: str,
    version: int,
    label: str,
    key_path: Path | None,
    passphrase_file: Path | None,
    out: Path,
    previous: Path | None,
    expires_in_days: int | None,
    max_chunk_mib: int,
) -> None:
    """Pack SRC (HF dir, .safetensors, .bin/.pt) into a signed release dir."""
    priv = _load_key(key_path or default_key_path(ctx.home), passphrase_file)
    prev_hash = None
    if previous is not None:
        prev_hash = hashlib.sha256(
            (resolve_source(previous) / MANIFEST_NAME).read_bytes()
        ).hexdigest()
    expires = int(time.time()) + expires_in_days * 86400 if expires_in_days else None
    with progress_bar(ctx, _source_size(src), "packing") as bar:
        result = pack_release(
            src,
            out,
            name=name,
            version=version,
            key=priv,
            label=label,
            previous=prev_hash,
            expires=expires,
            max_chunk_bytes=max_chunk_mib * 1024 * 1024,
            progress=bar,
        )
    m = result.manifest
    for skipped in result.skipped:
        click.echo(f"p2pw: note: left out {skipped}", err=True)
    emit(
        ctx,
        {
            "release": str(out),
            "name": m.name,
            "version": m.version,
            "chunks": len(m.chunks),
            "tensors": len(m.tensors),
            "bytes": result.total_bytes,
            "manifest_sha256": result.manifest_sha256,
            "seconds": round(result.seconds, 3),
            "skipped": list(result.skipped),
        },
        [
            f"packed {m.name} v{m.version}: {len(m.tensors)} tensors in {len(m.chunks)} chunks, "
            f"{result.total_bytes / 1e6:.1f} MB in {result.seconds:.2f}s",
            f"release {out}",
            f"manifest sha256 {result.manifest_sha256}",
        ],
    )


def _trust_for(ctx: Ctx, key_text: str | None) -> TrustStore:
    if key_text is None:
        return ctx.trust()
    if key_text.startswith("ed25519:"):
        return TrustStore.of_keys([PublicKey.parse(key_text)])
    return TrustStore.of_keys([_load_key(Path(key_text), None).public])


@cli.command()
@click.argument("release", type=click.Path(path_type=Path))
@click.option("--full", is_flag=True, help="Re-hash every chunk (default: size + stored records).")
@click.option("--key", "key_text", help="Trust only this key (ed25519:... or a key file).")
@json_option
@pass_ctx
def verify(ctx: Ctx, release: Path, full: bool, key_text: str | None) -> None:
    """Check a release's signature, manifest and chunks."""
    store = _trust_for(ctx, key_text)
    total = 0
    root = resolve_source(release)
    if full:
        total = sum(p.stat().st_size for p in (root / "chunks").glob("*") if p.is_file())
    with progress_bar(ctx, total, "verifying") as bar:
        rel = verify_release(root, store, mode="full" if full else "fast", progress=bar)
    m = rel.manifest
    emit(
        ctx,
        {
            "ok": True,
            "name": m.name,
            "version": m.version,
            "label": m.label,
            "publisher": m.publisher.text,
            "publisher_name": rel.publisher_name,
            "chunks": len(m.chunks),
            "tensors": len(m.tensors),
            "mode": "full" if full else "fast",
            "manifest_sha256": rel.manifest_sha256,
        },
        [
            f"ok: {m.name} v{m.version} signed by {rel.publisher_name} "
            f"({m.publisher.fingerprint}), {len(m.chunks)} chunks "
            f"{'re-hashed' if full else 'checked'}"
        ],
    )


@cli.command()
@click.argument("release", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--exact", is_flag=True, help="Rebuild the original files byte for byte.")
@click.option("--full", is_flag=True, help="Re-hash every chunk first.")
@click.option("--key", "key_text", help="Trust only this key (ed25519:... or a key file).")
@json_option
@pass_ctx
def export(
    ctx: Ctx, release: Path, out: Path, exact: bool, full: bool, key_text: str | None
) -> None:
    """Write an HF-layout dir for `from_pretrained` (links; --exact copies)."""
    store = _trust_for(ctx, key_text)
    with progress_bar(ctx, 0, "exporting") as bar:
        result = export_release(
            release, out, exact=exact, verify="full" if full else "fast", trust=store, progress=bar
        )
    emit(
        ctx,
        {"out": str(result.root), "files": list(result.files), "exact": exact},
        [
            f"exported {len(result.files)} files to {result.root}"
            + (" (byte-identical originals)" if exact else " (linked, no copy)")
        ],
    )


# ------------------------------------------------------------------------------ daemon


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _client(ctx: Ctx, *, autostart: bool = True) -> DaemonClient:
    return _run(ensure_daemon(ctx.home, autostart=autostart))


@cli.group()
def daemon() -> None:
    """The background daemon that seeds and fetches."""


@daemon.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def daemon_run(ctx: Ctx, args: tuple[str, ...]) -> None:
    """Run the daemon in the foreground (flags go to p2pweightsd run)."""
    argv = [sys.executable, "-m", "p2pweightsd", "run", "--home", str(ctx.home), *args]
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and module


@daemon.command("start", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@json_option
@pass_ctx
def daemon_start(ctx: Ctx, args: tuple[str, ...]) -> None:
    """Start the daemon in the background (flags go to p2pweightsd run)."""
    client = DaemonClient(ctx.home)
    if client.is_running():
        info = _run(client.status())
        emit(ctx, {"started": False, **info}, [f"daemon already running (pid {info['pid']})"])
        return
    pid = start_daemon(ctx.home, extra_args=args)
    info = _run(client.status())
    emit(
        ctx,
        {"started": True, **info},
        [
            f"daemon started (pid {pid}), peer port {info['listen_port']}, log "
            f"{daemon_log_path(ctx.home)}"
        ],
    )


@daemon.command("stop")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@json_option
@pass_ctx
def daemon_stop(ctx: Ctx, timeout: float) -> None:
    """Stop the daemon cleanly (SIGTERM; it saves resume data first)."""
    pid_path = ctx.home / "daemon.pid"
    try:
        pid = int(pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
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


@daemon.command("status")
@json_option
@pass_ctx
def daemon_status(ctx: Ctx) -> None:
    """Report on the daemon (exit code 15 when none runs)."""
    info = _run(DaemonClient(ctx.home).status())
    emit(
        ctx,
        info,
        [
            f"running: pid {info['pid']}, peer port {info['listen_port']}, "
            f"{info['releases']} releases, profile {info['profile']}, "
            f"up {info['uptime']:.0f}s"
        ],
    )


def _release_line(r: dict[str, Any]) -> str:
    t = r.get("transfer") or {}
    prog = f"{100 * float(t.get('progress', 1.0 if r['state'] == 'seeding' else 0)):.0f}%"
    name = f"{r.get('name') or '?'} v{r.get('version') if r.get('version') is not None else '?'}"
    return (
        f"{r['id'][:16]}  {name:<40} {r['state']:<11} {prog:>5}  {r['total_bytes'] / 1e6:9.1f} MB"
    )


@cli.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True))
@click.option("--name", help="Pack first: release name ORG/MODEL.")
@click.option("--version", "version", type=click.IntRange(min=0), help="Pack first: version.")
@click.option("--label", default="")
@click.option("--key", "key_path", type=click.Path(path_type=Path))
@click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Pack first: release dir (default DATA/published/ORG--MODEL-vN).",
)
@click.option("--hybrid", is_flag=True, help="Make a hybrid v1+v2 torrent (default v2 only).")
@json_option
@pass_ctx
def publish(
    ctx: Ctx,
    src: Path,
    name: str | None,
    version: int | None,
    label: str,
    key_path: Path | None,
    passphrase_file: Path | None,
    out: Path | None,
    hybrid: bool,
) -> None:
    """Seed SRC: a release dir, or a checkpoint to pack first (--name, --version)."""
    if not is_release_dir(src):
        if name is None or version is None:
            raise LoadError(f"{src} is not a release dir; give --name and --version to pack it")
        priv = _load_key(key_path or default_key_path(ctx.home), passphrase_file)
        out = out or ctx.home / "published" / f"{name.replace('/', '--')}-v{version}"
        with progress_bar(ctx, _source_size(src), "packing") as bar:
            pack_release(src, out, name=name, version=version, key=priv, label=label, progress=bar)
        src = out
    info = _run(_client(ctx).publish(src, hybrid=hybrid))
    emit(
        ctx,
        info,
        [
            f"seeding {info['name']} v{info['version']} ({info['id'][:16]})",
            f"magnet  {info['magnet']}",
            f"torrent {info['torrent_path']}",
        ],
    )


def _fetch_with_progress(ctx: Ctx, uri: str, **kw: Any) -> dict[str, Any]:
    bar: Any = None
    done = 0

    def on_event(event: dict[str, Any]) -> None:
        nonlocal bar, done
        if ctx.json or not sys.stderr.isatty() or "wanted" not in event:
            return
        if bar is None:
            bar = click.progressbar(
                length=max(int(event["wanted"]), 1),
                label="fetching",
                file=sys.stderr,
                show_eta=True,
                show_percent=True,
            )
            bar.__enter__()
        now = int(event.get("wanted_done", 0))
        bar.label = (
            f"fetching {event.get('download_rate', 0) / 1e6:6.1f} MB/s "
            f"{event.get('peers', 0)} peers"
        )
        bar.update(max(now - done, 0))
        done = now

    try:
        return _run(fetch_async(uri, home=ctx.home, on_event=on_event, **kw))
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


@cli.command()
@click.argument("uri")
@click.option("--peer", "peers", multiple=True, help="IP:PORT of a peer to connect to.")
@click.option("--tracker", "trackers", multiple=True, help="Tracker announce URL.")
@click.option("--include", multiple=True, help="Only chunks holding tensors matching GLOB.")
@click.option(
    "--trust-on-first-use",
    is_flag=True,
    help="Trust the publisher key of this release if it is not trusted yet.",
)
@click.option("--no-wait", is_flag=True, help="Return once the fetch has started.")
@click.option("--timeout", type=float, default=3600.0, show_default=True)
@json_option
@pass_ctx
def fetch(
    ctx: Ctx,
    uri: str,
    peers: tuple[str, ...],
    trackers: tuple[str, ...],
    include: tuple[str, ...],
    trust_on_first_use: bool,
    no_wait: bool,
    timeout: float,
) -> None:
    """Fetch URI (magnet, info-hash or .torrent), verify it, and keep seeding it."""
    kw: dict[str, Any] = {
        "peers": peers,
        "trackers": trackers,
        "include": include,
        "trust_on_first_use": trust_on_first_use,
    }
    if no_wait:
        info = _run(_client(ctx).fetch(uri, **kw))
    else:
        info = _fetch_with_progress(ctx, uri, timeout=timeout, **kw)
    emit(
        ctx,
        info,
        [
            f"{info['state']}: {info.get('name') or '?'} v{info.get('version')} "
            f"({info['id'][:16]})",
            f"release {info['path']}",
        ],
    )


@cli.command("ls")
@json_option
@pass_ctx
def ls(ctx: Ctx) -> None:
    """List the daemon's releases."""
    rows = _run(_client(ctx).releases())
    emit(ctx, {"releases": rows}, [_release_line(r) for r in rows] or ["(no releases)"])


@cli.command()
@click.argument("release_id")
@json_option
@pass_ctx
def show(ctx: Ctx, release_id: str) -> None:
    """Show one release (id or a unique id prefix of 6+ characters)."""
    info = _run(_client(ctx).show(release_id))
    lines = [_release_line(info)] + [
        f"  {k}: {v}"
        for k, v in sorted(info.items())
        if k not in ("transfer",) and v not in (None, [], "")
    ]
    lines += [f"  transfer.{k}: {v}" for k, v in sorted((info.get("transfer") or {}).items())]
    emit(ctx, info, lines)


@cli.command("rm")
@click.argument("release_id")
@click.option("--delete-data", is_flag=True, help="Also delete chunks no other release uses.")
@json_option
@pass_ctx
def rm(ctx: Ctx, release_id: str, delete_data: bool) -> None:
    """Stop seeding a release, optionally deleting its data."""
    info = _run(_client(ctx).remove(release_id, delete_data=delete_data))
    emit(
        ctx,
        info,
        [
            f"removed {info['id'][:16]}"
            + (f", deleted {info['deleted_chunks']} chunks" if delete_data else "")
        ],
    )


@cli.command("load")
@click.argument("source")
@click.option("--include", multiple=True)
@click.option("--full", is_flag=True, help="Re-hash every chunk.")
@click.option("--peer", "peers", multiple=True)
@json_option
@pass_ctx
def load_cmd(
    ctx: Ctx, source: str, include: tuple[str, ...], full: bool, peers: tuple[str, ...]
) -> None:
    """Fetch (if remote) and load a release into torch; prints what was loaded."""
    started = time.perf_counter()
    state = load_tensors(
        source,
        home=ctx.home,
        include=include or None,
        peers=peers,
        verify="full" if full else "fast",
    )
    seconds = time.perf_counter() - started
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    emit(
        ctx,
        {"tensors": len(state), "bytes": nbytes, "seconds": round(seconds, 3)},
        [f"loaded {len(state)} verified tensors, {nbytes / 1e6:.1f} MB in {seconds:.2f}s"],
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="p2pw", standalone_mode=False)
    except P2PWeightsError as exc:
        if debug:
            raise
        as_json = "--json" in (argv if argv is not None else sys.argv[1:])
        if as_json:
            click.echo(
                json.dumps(
                    {"error": str(exc), "type": type(exc).__name__, "exit_code": exc.exit_code}
                )
            )
        click.echo(f"p2pw: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("p2pw: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
