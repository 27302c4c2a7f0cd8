"""`p2pw` verbs that work offline: keys, trust, pack, verify, export.

Each verb imports what it works with in its own body, so that loading the CLI to run a
verb that only talks to the daemon (``p2pw ls``) does not pay for these.
"""

# ruff: noqa: PLC0415 - the imports inside the verbs are the point (see above)

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import ExportError, KeyFileError, SourceError
from ..paths import default_key_path
from ._base import Ctx, cli, emit, json_option, load_key, pass_ctx, passphrase_from, progress_bar
from ._names import refuse_full_dir, release_path

if TYPE_CHECKING:
    from ..trust import Retired, TrustStore

__all__ = ["source_size"]

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
    from ..keys import generate_key

    path = out or default_key_path(ctx.home)
    secret = passphrase_from(passphrase_file, prompt="New passphrase", confirm=True, ask=ask)
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
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the key's passphrase from this file (else $P2PW_KEY_PASSPHRASE, or a prompt).",
)
@json_option
@pass_ctx
def key_show(ctx: Ctx, key_path: Path | None, passphrase_file: Path | None) -> None:
    """Print the public key, for others to trust."""
    priv = load_key(key_path or default_key_path(ctx.home), passphrase_file)
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
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="PATTERN",
    help="Trust the key only for release names (ORG/MODEL) matching this fnmatch pattern, "
    "e.g. 'org/*'. Repeatable. Default: every name.",
)
@json_option
@pass_ctx
def trust_add(ctx: Ctx, public_key: str, name: str, scopes: tuple[str, ...]) -> None:
    """Trust PUBLIC_KEY (ed25519:...) under NAME, replacing any entry of that key."""
    from ..keys import PublicKey

    try:
        pub = PublicKey.parse(public_key)
    except KeyFileError as exc:  # typed text, not a key file: a usage error (exit 2)
        raise click.BadParameter(str(exc), param_hint="PUBLIC_KEY") from None
    store = ctx.trust()
    before = store.name_of(pub)
    store.add(pub, name, scopes=scopes)
    entry = store.entry_of(pub)
    shown = _scopes_of(entry.scopes if entry else ())
    renamed = f" (renamed from {before})" if before is not None and before != name else ""
    emit(
        ctx,
        {
            "name": name,
            "previous_name": before,
            "public_key": pub.text,
            "fingerprint": pub.fingerprint,
            "scopes": shown,
        },
        [f"trusted {name}{renamed}: {pub.text} ({pub.fingerprint}) for {', '.join(shown)}"],
    )


def _scopes_of(scopes: tuple[str, ...]) -> list[str]:
    """The patterns an entry covers, for display: an unscoped entry covers ``*``."""
    return list(scopes) or ["*"]


@trust.command("list")
@json_option
@pass_ctx
def trust_list(ctx: Ctx) -> None:
    """List trusted publisher keys and the release names each may sign."""
    store = ctx.trust()
    entries = store.entries
    emit(
        ctx,
        {
            "keys": [
                {
                    "name": e.name,
                    "public_key": e.key.text,
                    "fingerprint": e.key.fingerprint,
                    "scopes": _scopes_of(e.scopes),
                    **_retired_of(e.retired),
                }
                for e in entries
            ],
            "revoked": [
                {"public_key": c.key.text, "fingerprint": c.key.fingerprint, "time": c.time}
                for c in store.revoked.values()
            ],
        },
        [
            f"{e.name}\t{e.key.text}\t{e.key.fingerprint}\t{','.join(_scopes_of(e.scopes))}"
            for e in entries
        ]
        + [f"(revoked)\t{c.key.text}\t{c.key.fingerprint}" for c in store.revoked.values()]
        or ["(no trusted keys)"],
    )


def _retired_of(retired: tuple[Retired, ...]) -> dict[str, object]:
    """An entry's former keys (rotated out), for ``--json``; nothing when it has none."""
    if not retired:
        return {}
    return {"retired": [{"public_key": r.key.text, "time": r.until} for r in retired]}


@trust.command("remove")
@click.argument("name_or_key")
@json_option
@pass_ctx
def trust_remove(ctx: Ctx, name_or_key: str) -> None:
    """Stop trusting a key, by name or by key."""
    entry = ctx.trust().remove(name_or_key)
    emit(
        ctx,
        {"removed": True, "name": entry.name, "public_key": entry.key.text},
        [f"removed {entry.name} ({entry.key.fingerprint})"],
    )


# ------------------------------------------------------------------------------ releases


def source_size(src: Path) -> int:
    if src.is_file():
        return src.stat().st_size
    return sum(p.stat().st_size for p in src.rglob("*") if p.is_file())


@cli.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True), required=False)
@click.option(
    "--from-hf-cache",
    "hf_ref",
    metavar="ORG/NAME[@REV]",
    help="Pack the snapshot of this repo in the local HF cache instead of SRC.",
)
@click.option("--name", help="Release name, ORG/MODEL (default: the HF repo id).")
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
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the key's passphrase from this file (else $P2PW_KEY_PASSPHRASE, or a prompt).",
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Release dir to create."
)
@click.option(
    "--previous",
    type=click.Path(path_type=Path, exists=True),
    help="The previous release dir, to chain its manifest hash.",
)
@click.option("--expires-in-days", type=click.IntRange(min=1), help="Refuse loads after this.")
@click.option(
    "--max-chunk-mib",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Cap on the tensor bytes of one chunk.",
)
@json_option
@pass_ctx
def pack(
    ctx: Ctx,
    src: Path | None,
    hf_ref: str | None,
    name: str | None,
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
    from ..hf_cache import resolve_snapshot
    from ..pack import pack as pack_release
    from ..release import MANIFEST_NAME, resolve_source

    if (src is None) == (hf_ref is None):
        raise SourceError("give either SRC or --from-hf-cache ORG/NAME[@REV], not both or neither")
    if hf_ref is not None:
        snap = resolve_snapshot(hf_ref)
        src, name = snap.path, name or snap.repo_id
        label = label or f"hf:{snap.repo_id}@{snap.commit}"
    if name is None:
        raise SourceError("give --name ORG/MODEL")
    assert src is not None
    refuse_full_dir(out, "--out")
    priv = load_key(key_path or default_key_path(ctx.home), passphrase_file)
    from ._keys import refuse_own_revoked, write_release_statements

    refuse_own_revoked(ctx, priv.public)
    prev_hash = None
    if previous is not None:
        prev_hash = hashlib.sha256(
            (resolve_source(previous) / MANIFEST_NAME).read_bytes()
        ).hexdigest()
    expires = int(time.time()) + expires_in_days * 86400 if expires_in_days else None
    with progress_bar(ctx, source_size(src), "packing") as bar:
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
    statements = write_release_statements(ctx, priv.public, out)  # rotations travel along
    for skipped in result.skipped:
        click.echo(f"p2pw: note: left out {skipped}", err=True)
    emit(
        ctx,
        {
            "path": str(out),
            "name": m.name,
            "version": m.version,
            "chunks": len(m.chunks),
            "tensors": len(m.tensors),
            "bytes": result.total_bytes,
            "manifest_sha256": result.manifest_sha256,
            "seconds": round(result.seconds, 3),
            "skipped": list(result.skipped),
            "key_statements": statements,
        },
        [
            f"packed {m.name} v{m.version}: {len(m.tensors)} tensors in {len(m.chunks)} chunks, "
            f"{result.total_bytes / 1e6:.1f} MB in {result.seconds:.2f}s",
            f"release {out}",
            f"manifest sha256 {result.manifest_sha256}",
        ],
    )


def _trust_for(ctx: Ctx, key_text: str | None) -> TrustStore:
    from ..keys import PublicKey
    from ..trust import TrustStore

    if key_text is None:  # the trust store, and the user's own keys (see SECURITY.md)
        from ..trust import trust_for

        return trust_for(None, ctx.home)
    pub = (
        PublicKey.parse(key_text)
        if key_text.startswith("ed25519:")
        else load_key(Path(key_text), None).public
    )
    # The one key given is believed, unless a revocation of it was recorded.
    return TrustStore(TrustStore.of_keys([pub]).entries, revoked=ctx.trust().revoked)


@cli.command()
@click.argument("release", type=click.Path(path_type=Path))
@click.option("--full", is_flag=True, help="Re-hash every chunk (default: size + stored records).")
@click.option("--key", "key_text", help="Trust only this key (ed25519:... or a key file).")
@json_option
@pass_ctx
def verify(ctx: Ctx, release: Path, full: bool, key_text: str | None) -> None:
    """Check a release's signature, manifest and chunks."""
    from ..release import open_release, resolve_source
    from ..verify import verify_chunks

    store = _trust_for(ctx, key_text)
    rel = open_release(resolve_source(release_path(ctx, release)), store)
    chunks = rel.manifest.chunks
    with progress_bar(ctx, sum(c.size for c in chunks) if full else 0, "verifying") as bar:
        verify_chunks(rel.root, chunks, "full" if full else "fast", progress=bar)
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
@click.argument("out", type=click.Path(path_type=Path), required=False)
@click.option("--exact", is_flag=True, help="Rebuild the original files byte for byte.")
@click.option("--full", is_flag=True, help="Re-hash every chunk first.")
@click.option("--key", "key_text", help="Trust only this key (ed25519:... or a key file).")
@click.option(
    "--hf-cache",
    "hf_repo",
    metavar="ORG/NAME",
    help="Write into the HF cache as this repo (byte-identical files), instead of OUT.",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="With --hf-cache: the HF hub cache dir (default $HF_HUB_CACHE, else $HF_HOME/hub).",
)
@json_option
@pass_ctx
def export(
    ctx: Ctx,
    release: Path,
    out: Path | None,
    exact: bool,
    full: bool,
    key_text: str | None,
    hf_repo: str | None,
    cache_dir: Path | None,
) -> None:
    """Write an HF-layout dir for `from_pretrained` (tensors shared read-only; --exact copies).

    With --hf-cache ORG/NAME (and no OUT), write the release into the local Hugging Face
    cache instead, so `from_pretrained("ORG/NAME")` finds it with HF_HUB_OFFLINE=1.
    """
    from ..export import export as export_release
    from ..hf_cache import export_to_hf_cache

    store = _trust_for(ctx, key_text)
    release = release_path(ctx, release)
    if (out is None) == (hf_repo is None):
        raise ExportError("give either OUT or --hf-cache ORG/NAME, not both or neither")
    if hf_repo is not None:
        with progress_bar(ctx, _export_bytes(release, store, exact=True), "exporting") as bar:
            hf = export_to_hf_cache(
                release,
                hf_repo,
                cache_dir=cache_dir,
                verify="full" if full else "fast",
                trust=store,
                progress=bar,
            )
        emit(
            ctx,
            {
                "cache_dir": str(hf.cache_dir),
                "repo_id": hf.repo_id,
                "commit": hf.commit,
                "snapshot": str(hf.snapshot),
                "path": str(hf.snapshot),
                "files": list(hf.files),
                "exact": True,
            },
            [f"exported {len(hf.files)} files to the HF cache as {hf.repo_id}@{hf.commit}"],
        )
        return
    if cache_dir is not None:
        raise ExportError("--cache-dir goes with --hf-cache")
    assert out is not None
    refuse_full_dir(out, "OUT")
    with progress_bar(ctx, _export_bytes(release, store, exact=exact), "exporting") as bar:
        result = export_release(
            release, out, exact=exact, verify="full" if full else "fast", trust=store, progress=bar
        )
    emit(
        ctx,
        {"path": str(result.root), "files": list(result.files), "exact": exact},
        [
            f"exported {len(result.files)} files to {result.root}"
            + (" (byte-identical originals)" if exact else " (tensor data shared, not copied)")
        ],
    )


def _export_bytes(release: Path, store: TrustStore, *, exact: bool) -> int:
    """What an export reports progress in: the original files' bytes, or the chunks'."""
    from ..release import open_release, resolve_source

    manifest = open_release(resolve_source(release), store).manifest
    return sum(f.size for f in manifest.files) if exact else sum(c.size for c in manifest.chunks)
