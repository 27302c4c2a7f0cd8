"""One way to name a release on every verb.

A release is named by any of: its id (the v2 info-hash) or a unique prefix of 6+ hex
digits; ``ORG/MODEL`` or ``ORG/MODEL@VERSION`` (the newest version the daemon has, or
that one); a release dir (one in the daemon's store, or the dir it was published from);
or a magnet link. Daemon verbs (``show``, ``rm``) turn it into an id; local verbs
(``verify``, ``export``, ``load``) into a dir, asking the daemon only when the text is
not a path on disk.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import click

from ..errors import LoadError, UnknownReleaseError
from ..names import is_name, parse_name
from ._base import Ctx, client_for

__all__ = [
    "STALE_WARNING",
    "check_uri",
    "refuse_full_dir",
    "release_id",
    "release_info",
    "release_path",
]

STALE_WARNING = (
    "p2pw: WARNING: --allow-stale accepts a name record past its signed expiry: you may get "
    "an old version that an attacker keeps you on (a freeze attack)"
)

_BTMH = re.compile(r"urn:btmh:1220([0-9a-fA-F]{64})")
_HEX = re.compile(r"[0-9a-fA-F]{6,64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def _magnet_id(text: str) -> str:
    for xt in parse_qs(urlsplit(text).query).get("xt", []):
        m = _BTMH.fullmatch(xt)
        if m:
            return m.group(1).lower()
    raise LoadError(f"{text[:80]!r} is not a magnet link with a v2 info-hash (urn:btmh:1220...)")


def _rows(ctx: Ctx, autostart: bool) -> list[dict[str, Any]]:
    client = client_for(ctx, read_only=True, autostart=autostart)
    return list(client.request_sync("GET", "/releases")["releases"])


def release_id(ctx: Ctx, ref: str, *, autostart: bool = True) -> str:
    """The id (or id prefix, for the daemon to resolve) of the release ``ref`` names.

    Raises:
        UnknownReleaseError: a name or dir the daemon has no release for.
        LoadError: a magnet link without a v2 info-hash.
    """
    text = ref.strip()
    if text.startswith("magnet:"):
        return _magnet_id(text)
    if is_name(text):  # what the name points to now (checked by the daemon)
        client = client_for(ctx, autostart=autostart)
        return str(client.request_sync("POST", "/resolve", body={"name": text})["info_hash"])
    path = Path(text).expanduser()
    if path.is_dir():
        where = str(path.resolve())
        for r in _rows(ctx, autostart):
            if where in (r.get("path"), r.get("source")):
                return str(r["id"])
        raise UnknownReleaseError(f"the daemon has no release from {where}")
    if _NAME.fullmatch(text.partition("@")[0]):
        name, _, version = text.partition("@")
        rows = [
            r
            for r in _rows(ctx, autostart)
            if r.get("name") == name and (not version or str(r.get("version")) == version)
        ]
        if not rows:
            raise UnknownReleaseError(f"the daemon has no release named {text[:80]!r}")
        return str(max(rows, key=lambda r: int(r.get("version") or 0))["id"])
    return text


def release_info(ctx: Ctx, ref: str, *, autostart: bool = True) -> dict[str, Any]:
    """The daemon's record of the release ``ref`` names (``GET /v1/releases/{id}``).

    Raises:
        UnknownReleaseError: the daemon has no such release.
        DaemonUnavailableError: no daemon at a data dir that does not exist.
    """
    # An id is hex; anything else (a typo, a query string) stays one escaped path part.
    rid = quote(release_id(ctx, ref, autostart=autostart), safe="")
    client = client_for(ctx, read_only=True, autostart=autostart)
    return client.request_sync("GET", f"/releases/{rid}")


def release_path(ctx: Ctx, ref: str | Path) -> Path:
    """A local release dir for ``ref``: a path on disk as it is, else the daemon's copy.

    Raises:
        UnknownReleaseError: neither a path nor a release the daemon has.
        LoadError: the daemon's copy is not complete yet.
    """
    path = Path(ref).expanduser()
    text = str(ref)
    named = (
        text.startswith("magnet:")
        or is_name(text)
        or _HEX.fullmatch(text)
        or _NAME.fullmatch(text.partition("@")[0])
    )
    if path.exists() or not named:
        return path  # a path: the local verb says what is wrong with it
    if not (ctx.home / "daemon.sock").exists():  # local verbs never start a daemon
        raise UnknownReleaseError(
            f"{text[:80]!r} is not a path, and no daemon runs at {ctx.home} to look it up"
        )
    info = release_info(ctx, text, autostart=False)
    if info["state"] not in ("seeding", "complete"):
        raise LoadError(f"release {info['id'][:16]} is {info['state']}, not complete yet")
    return Path(info["path"])


def check_uri(uri: str) -> None:
    """Refuse, as a usage error (exit 2), a fetch source that cannot name a release.

    Raises:
        click.BadParameter: not a v2 magnet link, a 64-digit info-hash or a .torrent file.
    """
    if uri.startswith("magnet:"):
        try:
            _magnet_id(uri)
        except LoadError as exc:
            raise click.BadParameter(str(exc), param_hint="URI") from None
    elif is_name(uri):
        parse_name(uri)  # NameFormatError: a hostile name never reaches the daemon
    elif not (_HEX.fullmatch(uri) and len(uri) == 64) and not (
        uri.endswith(".torrent") and Path(uri).is_file()
    ):
        raise click.BadParameter(
            f"{uri[:80]!r} is not a magnet link, a p2pw:// name, a v2 info-hash or a .torrent file",
            param_hint="URI",
        )


def refuse_full_dir(out: Path, hint: str) -> None:
    """An output dir must be new or empty: anything else is a usage error (exit 2).

    Raises:
        click.BadParameter: ``out`` exists and is not an empty directory.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise click.BadParameter(f"{out} exists and is not an empty directory", param_hint=hint)
