"""`p2pw resolve NAME`, `p2pw follow NAME`, `p2pw unfollow NAME`: p2pw:// names."""

from __future__ import annotations

import click

from ..names import parse_name
from ._base import Ctx, cli, client_for, emit, json_option, pass_ctx
from ._names import STALE_WARNING

__all__: list[str] = []


@cli.command()
@click.argument("name")
@click.option(
    "--allow-stale",
    is_flag=True,
    help="Accept a record past its signed expiry (warns; see SECURITY.md).",
)
@json_option
@pass_ctx
def resolve(ctx: Ctx, name: str, allow_stale: bool) -> None:
    """Resolve NAME (p2pw://PUBLISHER/ORG/MODEL[@VERSION]) through the DHT.

    Prints the version, info-hash, manifest sha256, issue and expiry times, and where the
    record came from. A name under an untrusted key resolves, for display only: fetching
    it still needs `p2pw trust add` (or --trust-on-first-use).
    """
    parse_name(name)  # a hostile name never reaches the daemon
    if allow_stale:
        click.echo(STALE_WARNING, err=True)
    body = {"name": name, "allow_stale": allow_stale}
    info = client_for(ctx).request_sync("POST", "/resolve", body=body)
    who = info["publisher_name"] or f"UNTRUSTED key {info['publisher']}"
    lines = [
        f"{info['name']} -> {info['release']} v{info['version']}"
        + ("  (STALE: past its signed expiry)" if info["stale"] else ""),
        f"  info-hash        {info['info_hash']}",
        f"  manifest sha256  {info['manifest_sha256']}",
        f"  issued           {info['issued']}",
        f"  expires          {info['expires']}",
        f"  publisher        {who}",
        f"  sequence         {info['seq']}",
        f"  source           {info['source']}",
        f"  magnet           {info['magnet']}",
    ]
    emit(ctx, info, lines)


@cli.command()
@click.argument("name")
@click.option("--include", multiple=True, help="Only chunks holding tensors matching GLOB.")
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=0,
    help="Keep the N newest versions; remove older ones with their own chunks (0 = all).",
)
@json_option
@pass_ctx
def follow(ctx: Ctx, name: str, include: tuple[str, ...], keep: int) -> None:
    """Follow NAME: the daemon fetches each new version as it appears (only changed chunks).

    The daemon looks at every followed name each `follow_interval` seconds (300, with
    jitter). The publisher must be trusted for the name.
    """
    parse_name(name)
    body = {"name": name, "include": list(include), "keep": keep}
    info = client_for(ctx).request_sync("POST", "/follows", body=body)
    emit(ctx, info, [f"following {info['name']}" + (f" (keep {keep})" if keep else "")])


@cli.command()
@click.argument("name")
@json_option
@pass_ctx
def unfollow(ctx: Ctx, name: str) -> None:
    """Stop following NAME (what it fetched stays)."""
    parse_name(name)
    info = client_for(ctx).request_sync("DELETE", "/follows", params={"name": name})
    emit(ctx, info, [("stopped following " if info["removed"] else "not following ") + name])
