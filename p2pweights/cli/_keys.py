"""`p2pw key rotate|revoke` and `p2pw trust revoke`: key statements (see SECURITY.md).

A publisher's own statements are kept in ``DATA/keys/key-statements.json``; ``pack``
copies the ones a release's signing key needs (:func:`write_release_statements`) into
the release dir, from where they travel in the torrent beside ``manifest.sig``.
"""

# ruff: noqa: PLC0415 - imports inside the verbs keep the daemon verbs light

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import KeyStatementError
from ..paths import default_key_path
from ._base import Ctx, emit, json_option, load_key, pass_ctx
from ._local import key, trust

if TYPE_CHECKING:
    from ..key_statements import Statement
    from ..keys import PublicKey

__all__ = ["refuse_own_revoked", "write_release_statements"]

def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _own_path(ctx: Ctx) -> Path:
    from ..key_statements import OWN_STATEMENTS

    return ctx.home / OWN_STATEMENTS


def _keep(ctx: Ctx, statement: Statement) -> Path:
    """Add ``statement`` to the publisher's own statements (the newest last)."""
    from .._atomic import atomic_write_bytes
    from ..key_statements import MAX_STATEMENTS, read_statements, statements_bytes

    path = _own_path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The oldest go first when the file is full; a release needs only its own chain.
    kept = [*read_statements(path), statement][-MAX_STATEMENTS:]
    atomic_write_bytes(path, statements_bytes(kept), mode=0o600)
    return path


def _write_one(path: Path, statement: Statement) -> None:
    from .._atomic import atomic_write_bytes
    from .._canonical import dumps

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, dumps(statement.to_doc()) + b"\n", mode=0o644)


def write_release_statements(ctx: Ctx, signer: PublicKey, release_dir: Path) -> int:
    """Copy into ``release_dir`` the statements a release by ``signer`` carries; how many."""
    from ..key_statements import add_to_release

    return add_to_release(ctx.home, signer, release_dir)


def refuse_own_revoked(ctx: Ctx, signer: PublicKey) -> None:
    """A publisher never packs with a key they revoked.

    Raises:
        RevokedKeyError: the publisher's own statements revoke ``signer``.
    """
    from ..key_statements import refuse_own_revoked as refuse

    refuse(ctx.home, signer)


_KEY_OPT = click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path),
    help="The signing key: the old one for rotate (default: DATA/keys/publisher.pem).",
)
_PASS_OPT = click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the key's passphrase from this file (else $P2PW_KEY_PASSPHRASE, or a prompt).",
)


@key.command("rotate")
@click.option(
    "--new",
    "new_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The new key file (make it with `p2pw key generate --out`).",
)
@_KEY_OPT
@_PASS_OPT
@click.option("--out", type=click.Path(path_type=Path), help="Also write the statement here.")
@json_option
@pass_ctx
def key_rotate(
    ctx: Ctx, new_path: Path, key_path: Path | None, passphrase_file: Path | None, out: Path | None
) -> None:
    """Hand the old key's trust to the new key: both sign one statement.

    Clients that trust the old key move to the new one when they meet a release signed
    by it, which carries the statement (pack adds it). Sign new releases with --key NEW.
    """
    from ..key_statements import rotate

    old = load_key(key_path or default_key_path(ctx.home), passphrase_file)
    new = load_key(new_path, passphrase_file)
    statement = rotate(old, new)
    path = _keep(ctx, statement)
    if out is not None:
        _write_one(out, statement)
    emit(
        ctx,
        {
            "path": str(out or path),
            "old_key": old.public.text,
            "old_fingerprint": old.public.fingerprint,
            "new_key": new.public.text,
            "new_fingerprint": new.public.fingerprint,
            "time": statement.time,
            "statement": statement.to_doc(),
        },
        [
            f"rotated {old.public.fingerprint} -> {new.public.fingerprint} at "
            f"{_iso(statement.time)}",
            f"kept in {path}; `p2pw pack --key {new_path}` adds it to new releases",
        ],
    )


@key.command("revoke")
@_KEY_OPT
@_PASS_OPT
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Certificate file (default: DATA/keys/<key file name>.revocation.json).",
)
@click.option("--reason", default="", help="A short reason, printed to those who import it.")
@json_option
@pass_ctx
def key_revoke(
    ctx: Ctx, key_path: Path | None, passphrase_file: Path | None, out: Path | None, reason: str
) -> None:
    """Write a self-signed revocation certificate: the key is never trusted again.

    Give the file to those who trust the key (`p2pw trust revoke --certificate FILE`).
    Your own data dir stops trusting the key at once.
    """
    from ..key_statements import revoke

    path = key_path or default_key_path(ctx.home)
    priv = load_key(path, passphrase_file)
    cert = revoke(priv, reason=reason)
    dest = out or path.with_name(f"{path.stem}.revocation.json")
    _write_one(dest, cert)
    _keep(ctx, cert)
    ctx.trust().revoke(cert)
    emit(
        ctx,
        {
            "path": str(dest),
            "public_key": priv.public.text,
            "fingerprint": priv.public.fingerprint,
            "time": cert.time,
            "reason": reason,
        },
        [f"revoked {priv.public.fingerprint}: certificate in {dest}"],
    )


@trust.command("revoke")
@click.option(
    "--certificate",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A revocation certificate (from `p2pw key revoke`).",
)
@json_option
@pass_ctx
def trust_revoke(ctx: Ctx, certificate: Path) -> None:
    """Record a revocation certificate: its key is never trusted again."""
    from ..key_statements import MAX_STATEMENT_BYTES, Revocation, parse_statement_bytes

    with open(certificate, "rb") as fh:
        data = fh.read(MAX_STATEMENT_BYTES + 1)
    cert = parse_statement_bytes(data)
    if not isinstance(cert, Revocation):
        raise KeyStatementError(f"{certificate} is a rotation statement, not a revocation")
    dropped = ctx.trust().revoke(cert)
    emit(
        ctx,
        {
            "revoked": True,
            "name": dropped[0] if dropped else None,
            "public_key": cert.key.text,
            "fingerprint": cert.key.fingerprint,
            "time": cert.time,
            "reason": cert.reason,
        },
        [
            f"revoked {cert.key.fingerprint} (certificate of {_iso(cert.time)})"
            + (f"; dropped trust entry {dropped[0]}" if dropped else "")
        ],
    )
