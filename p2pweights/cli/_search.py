"""`p2pw search [WORDS] [--publisher KEY]`: releases in publishers' signed indexes."""

from __future__ import annotations

from typing import Any

import click

from ..names import NAME_SCHEME, parse_name
from ..search_index import INDEX_NAME, parse_words
from ._base import Ctx, cli, client_for, emit, json_option, pass_ctx

__all__: list[str] = []


def _who(row: dict[str, Any]) -> str:
    who = row["publisher_name"] or f"{row['publisher'][:24]}..."
    return who if row["trusted"] else f"{who} (UNTRUSTED)"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    head = ("PUBLISHER", "NAME", "VERSION", "LABEL", "TAGS")
    cells = [
        (
            _who(r),
            r["name"],
            str(r["version"]),
            r["label"][:40],
            ",".join(r["tags"]),
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [head, *cells]]  # fmt: skip


@cli.command()
@click.argument("words", nargs=-1)
@click.option(
    "--publisher",
    "publishers",
    multiple=True,
    metavar="KEY",
    help="Also read this key's index (a public key, or a trust-store name); its rows are "
    "marked untrusted unless the key is trusted. Repeatable.",
)
@click.option(
    "--timeout",
    type=click.IntRange(1, 300),
    default=30,
    show_default=True,
    help="Seconds to wait for each publisher's index to arrive.",
)
@json_option
@pass_ctx
def search(ctx: Ctx, words: tuple[str, ...], publishers: tuple[str, ...], timeout: int) -> None:
    """Find releases whose name, label or tags hold every one of WORDS (none: all).

    Reads the signed search index of each trusted publisher, and of each --publisher key,
    through the DHT and the swarm. No one can write into another publisher's index. A
    publisher whose index cannot be had is named on stderr; the others still answer. No
    match is not an error (exit 0, "no release matches" on stderr).
    """
    parse_words(words)  # hostile words never reach the daemon
    for p in publishers:
        parse_name(f"{NAME_SCHEME}{p}/{INDEX_NAME}")  # NameFormatError: a bad key text
    client = client_for(ctx)
    found = client.request_sync(
        "POST",
        "/search",
        body={"q": " ".join(words), "publishers": list(publishers), "timeout": timeout},
        timeout=timeout + 60,
    )
    rows = found["results"]
    emit(ctx, found, _table(rows) if rows else [])
    for p in found["publishers"]:
        if p["status"] != "ok":
            who = p["publisher_name"] or p["publisher"]
            click.echo(f"p2pw: {who}: {p['status']}: {p['error']}", err=True)
    if not found["publishers"]:
        click.echo(
            "p2pw: no publisher to search: trust one (`p2pw trust add`) or give --publisher KEY",
            err=True,
        )
    elif not rows:
        click.echo("p2pw: no release matches", err=True)
