"""`p2pw resolve NAME`: what a p2pw:// name points to, after every check."""

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
