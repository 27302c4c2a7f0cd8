"""`p2pw` verbs about releases in the daemon: publish, fetch, mirror, ls, show, rm, load."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from ..client import (
    DEFAULT_TIMEOUT,
    fetch_body,
)
from ..errors import LoadError, SearchIndexError
from ..paths import default_key_path
from ..search_index import check_tags
from ._base import (
    Ctx,
    cli,
    client_for,
    emit,
    json_option,
    load_key,
    pass_ctx,
    progress_bar,
    run,
)
from ._fetch import foreground_fetch, release_name, summary
from ._names import STALE_WARNING, check_uri, release_info, release_path
from ._names import release_id as resolve_id

__all__: list[str] = []


def _release_line(r: dict[str, Any]) -> str:
    t = r.get("transfer") or {}
    prog = f"{100 * float(t.get('progress', 1.0 if r['state'] == 'seeding' else 0)):.0f}%"
    name = f"{r.get('name') or '?'} v{r.get('version') if r.get('version') is not None else '?'}"
    line = (
        f"{r['id'][:16]}  {name:<40} {r['state']:<11} {prog:>5}  {r['total_bytes'] / 1e6:9.1f} MB"
    )
    if r["state"] in ("error", "paused", "damaged") and r.get("error"):
        line += f"  ({str(r['error'])[:120]})"  # why it failed, or what it waits for
    return line


@cli.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True), required=False)
@click.option(
    "--from-hf-cache",
    "hf_ref",
    metavar="ORG/NAME[@REV]",
    help="Pack the snapshot of this repo in the local HF cache ($HF_HUB_CACHE, $HF_HOME/hub).",
)
@click.option("--name", help="Pack first: release name ORG/MODEL (default: the HF repo id).")
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=0),
    help="Pack first: version (default 1 with --from-hf-cache).",
)
@click.option("--label", default=None, help="Pack first: label (default hf:ORG/NAME@COMMIT).")
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path),
    help="Pack first: the signing key (default DATA/keys/publisher.pem).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the key's passphrase from this file (else $P2PW_KEY_PASSPHRASE, or a prompt).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Pack first: release dir (default DATA/published/ORG--MODEL-vN).",
)
@click.option("--hybrid", is_flag=True, help="Make a hybrid v1+v2 torrent (default v2 only).")
@click.option("--private", is_flag=True, help="BEP 27 private torrent: peers only from --tracker.")
@click.option("--tracker", "trackers", multiple=True, metavar="URL", help="Announce URL.")
@click.option(
    "--web-seed",
    "web_seeds",
    multiple=True,
    metavar="URL",
    help="BEP 19 web seed: the root URL of a `p2pw mirror` tree (url-list and ws=).",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="A word `p2pw search` finds the release by (your search index only, not the "
    "manifest). Repeatable.",
)
@json_option
@pass_ctx
def publish(
    ctx: Ctx,
    src: Path | None,
    hf_ref: str | None,
    name: str | None,
    version: int | None,
    label: str | None,
    key_path: Path | None,
    passphrase_file: Path | None,
    out: Path | None,
    hybrid: bool,
    private: bool,
    trackers: tuple[str, ...],
    web_seeds: tuple[str, ...],
    tags: tuple[str, ...],
) -> None:
    """Seed SRC: a release dir, or a checkpoint to pack first (--name, --version).

    With --from-hf-cache ORG/NAME[@REV] instead of SRC, the snapshot of that repo in the
    local Hugging Face cache is packed and seeded.
    """
    # Imported here, not at the top: the daemon-only verbs stay light.
    from ..hf_cache import resolve_snapshot  # noqa: PLC0415
    from ..pack import pack as pack_release  # noqa: PLC0415
    from ..release import is_release_dir  # noqa: PLC0415
    from ._local import source_size  # noqa: PLC0415

    if (src is None) == (hf_ref is None):
        raise LoadError("give either SRC or --from-hf-cache ORG/NAME[@REV], not both or neither")
    if private and not trackers:
        raise LoadError("--private needs at least one --tracker URL (no DHT, PEX or LSD)")
    try:
        check_tags(list(tags))
    except SearchIndexError as exc:
        raise click.BadParameter(str(exc), param_hint="--tag") from None
    if hf_ref is not None:
        snap = resolve_snapshot(hf_ref)
        src = snap.path
        name = name or snap.repo_id
        version = 1 if version is None else version
        label = f"hf:{snap.repo_id}@{snap.commit}" if label is None else label
    assert src is not None
    if hf_ref is not None or not is_release_dir(src):  # a repo's own manifest.json is data
        if name is None or version is None:
            raise LoadError(f"{src} is not a release dir; give --name and --version to pack it")
        priv = load_key(key_path or default_key_path(ctx.home), passphrase_file)
        from ._keys import refuse_own_revoked, write_release_statements  # noqa: PLC0415

        refuse_own_revoked(ctx, priv.public)
        out = out or ctx.home / "published" / f"{name.replace('/', '--')}-v{version}"
        with progress_bar(ctx, source_size(src), "packing") as bar:
            pack_release(
                src, out, name=name, version=version, key=priv, label=label or "", progress=bar
            )
        write_release_statements(ctx, priv.public, out)  # rotations travel with the release
        src = out
    info = run(
        client_for(ctx).publish(
            src,
            hybrid=hybrid,
            private=private,
            trackers=trackers,
            web_seeds=web_seeds,
            tags=tags,
        )
    )
    pointer = info.get("pointer")
    emit(
        ctx,
        info,
        [
            f"seeding {info['name']} v{info['version']} ({info['id'][:16]})",
            f"magnet  {info['magnet']}",
            f"torrent {info['torrent_path']}",
        ]
        + ([f"name    {pointer['name']}"] if pointer else [])
        + (
            [f"index   {pointer['index']['name']} ({pointer['index']['entries']} names)"]
            if pointer and pointer.get("index")
            else []
        ),
    )


@cli.command()
@click.argument("uri")
@click.option("--peer", "peers", multiple=True, help="IP:PORT of a peer to connect to.")
@click.option("--tracker", "trackers", multiple=True, help="Tracker announce URL.")
@click.option(
    "--web-seed",
    "web_seeds",
    multiple=True,
    metavar="URL",
    help="An HTTP mirror (root URL of a `p2pw mirror` tree) for this fetch; trusted.",
)
@click.option("--include", multiple=True, help="Only chunks holding tensors matching GLOB.")
@click.option(
    "--trust-on-first-use",
    is_flag=True,
    help="Trust the publisher key of this release, for this release's name only, if the "
    "key is not in the trust store yet.",
)
@click.option(
    "--no-wait",
    "--detach",
    "no_wait",
    is_flag=True,
    help="Return once the fetch has started; it goes on in the daemon.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Seconds to wait for the fetch (exit 14 after).",
)
@click.option(
    "--revision",
    help="Refuse the release unless it is this version (e.g. 3) or manifest sha256 prefix.",
)
@click.option(
    "--local-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also write a linked HF-layout dir there, for from_pretrained.",
)
@click.option("--keep", is_flag=True, help="Keep a fetch that fails or times out (in `ls`).")
@click.option(
    "--allow-stale",
    is_flag=True,
    help="A p2pw:// name: accept a record past its signed expiry (warns; see SECURITY.md).",
)
@json_option
@pass_ctx
def fetch(
    ctx: Ctx,
    uri: str,
    peers: tuple[str, ...],
    trackers: tuple[str, ...],
    web_seeds: tuple[str, ...],
    include: tuple[str, ...],
    trust_on_first_use: bool,
    no_wait: bool,
    timeout: float,
    revision: str | None,
    local_dir: Path | None,
    keep: bool,
    allow_stale: bool,
) -> None:
    """Fetch URI (magnet, p2pw:// name, info-hash or .torrent), verify it, and keep seeding it.

    Ctrl-C pauses the fetch (the same command goes on with it); --detach leaves it running.
    A fetch that fails or times out is removed with its partial data, unless --keep.
    """
    kw: dict[str, Any] = {
        "peers": peers,
        "trackers": trackers,
        "include": include,
        "trust_on_first_use": trust_on_first_use,
        "web_seeds": web_seeds,
        **({"allow_stale": True} if allow_stale else {}),
    }
    if allow_stale:
        click.echo(STALE_WARNING, err=True)
    check_uri(uri)
    if (revision is not None or local_dir is not None) and no_wait:
        raise LoadError("--revision and --local-dir need the fetch to finish; drop --no-wait")
    if local_dir is not None and include:
        raise LoadError("--local-dir with --include would write a model dir missing weights")
    if no_wait:
        info = client_for(ctx).request_sync("POST", "/fetch", body=fetch_body(uri, **kw))
    else:
        began = time.monotonic()
        info = foreground_fetch(ctx, uri, keep=keep, timeout=timeout, revision=revision, **kw)
        info["seconds"] = round(time.monotonic() - began, 3)
    lines = (
        [summary(ctx, info, info["seconds"])]
        if "seconds" in info
        else [f"{info['state']}: {release_name(info)} ({info['id'][:16]})"]
    )
    lines += [f"release {info['path']}"] if info["state"] in ("seeding", "complete") else []
    if local_dir is not None:
        from ..remote import export_to_local_dir  # noqa: PLC0415

        # `path` is what was asked for (as `fetch(local_dir=...)` returns it); the
        # daemon's copy stays at `release_path`.
        info["release_path"] = info["path"]
        info["path"] = str(export_to_local_dir(Path(info["path"]), local_dir, home=ctx.home))
        lines.append(f"local dir {info['path']}")
    emit(ctx, info, lines)


@cli.command()
@click.argument("release_id", metavar="RELEASE")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path, file_okay=False))
@json_option
@pass_ctx
def mirror(ctx: Ctx, release_id: str, directory: Path) -> None:
    """Write RELEASE as a static mirror tree in DIR (serve DIR; its URL is a web seed)."""
    info = run(client_for(ctx).mirror(release_id, directory))
    emit(
        ctx,
        info,
        [
            f"mirror {info['root']} ({info['files']} files, {info['bytes_copied']} bytes copied)",
            f"torrent {info['torrents'][0]}",
            "serve DIR over HTTP; its root URL (ending in /) is a --web-seed",
        ],
    )


@cli.command("ls")
@json_option
@pass_ctx
def ls(ctx: Ctx) -> None:
    """List the daemon's releases."""
    client = client_for(ctx, read_only=True)
    rows = list(client.request_sync("GET", "/releases")["releases"])
    follows = list(client.request_sync("GET", "/follows")["follows"])
    lines = [_release_line(r) for r in rows] or ["(no releases)"]
    lines += [
        f"following {f['name']}  (v{f['version'] if f['version'] is not None else '?'}"
        + (f", keep {f['keep']}" if f["keep"] else "")
        + ")"
        for f in follows
    ]
    emit(ctx, {"releases": rows, "follows": follows}, lines)


@cli.command()
@click.argument("release_id")
@json_option
@pass_ctx
def show(ctx: Ctx, release_id: str) -> None:
    """Show one release: an id or 6+ digit prefix, ORG/MODEL[@VERSION], a dir, or a magnet."""
    info = release_info(ctx, release_id)
    lines = [_release_line(info)] + [
        f"  {k}: {v}"
        for k, v in sorted(info.items())
        if k not in ("transfer",) and v not in (None, [], "")
    ]
    lines += [f"  transfer.{k}: {v}" for k, v in sorted((info.get("transfer") or {}).items())]
    if info.get("problem"):
        lines.insert(1, f"  PROBLEM: {info['problem']}")
    emit(ctx, info, lines)


@cli.command("rm")
@click.argument("release_id")
@click.option("--delete-data", is_flag=True, help="Also delete chunks no other release uses.")
@json_option
@pass_ctx
def rm(ctx: Ctx, release_id: str, delete_data: bool) -> None:
    """Forget a release: stop its fetch or seeding, delete its partial data.

    Its verified chunks stay (a later fetch reuses them) unless --delete-data.
    """
    rid = quote(resolve_id(ctx, release_id), safe="")
    info = client_for(ctx, read_only=True).request_sync(
        "DELETE", f"/releases/{rid}", params={"delete_data": "1" if delete_data else "0"}
    )
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
@click.option("--include", multiple=True, help="Only tensors matching GLOB (repeatable).")
@click.option("--full", is_flag=True, help="Re-hash every chunk.")
@click.option("--peer", "peers", multiple=True, help="IP:PORT of a peer to fetch from.")
@click.option("--key", "key_text", help="Trust only this key (ed25519:... or a key file).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for a remote release (exit 14 after; the daemon goes on).",
)
@json_option
@pass_ctx
def load_cmd(
    ctx: Ctx,
    source: str,
    include: tuple[str, ...],
    full: bool,
    peers: tuple[str, ...],
    key_text: str | None,
    timeout: float,
) -> None:
    """Fetch (if remote) and load a release into torch; prints what was loaded."""
    from ..loader import load as load_tensors  # noqa: PLC0415 - torch, only for this verb
    from ..remote import is_remote  # noqa: PLC0415
    from ._local import _trust_for  # noqa: PLC0415

    started = time.perf_counter()
    state = load_tensors(
        source if is_remote(source) else release_path(ctx, source),
        home=ctx.home,
        include=include or None,
        peers=peers,
        verify="full" if full else "fast",
        timeout=timeout,
        trust=_trust_for(ctx, key_text) if key_text is not None else None,
    )
    seconds = time.perf_counter() - started
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    emit(
        ctx,
        {"tensors": len(state), "bytes": nbytes, "seconds": round(seconds, 3)},
        [f"loaded {len(state)} verified tensors, {nbytes / 1e6:.1f} MB in {seconds:.2f}s"],
    )


# ------------------------------------------------------------------------------ ui
