"""Admission: what a torrent must be before any of it touches the store.

Three checks, in the order a fetch meets them:

1. :func:`store_layout` — on metadata: the torrent holds only ``manifest.json``, a 64-byte
   ``manifest.sig``, an optional small ``key-statements.json`` and
   ``chunks/<sha256>[.safetensors]`` files, and a chunk name the store
   already has carries the same size and v2 root. Chunks download into the fetch's own
   partial files; only verified, unchanged store files are mapped, read-only in effect.
2. :func:`authenticate` — once the manifest files are in: trusted publisher (or trust on
   first use, when asked), good signature, valid schema, and a chunk list equal to the
   torrent's files, size and v2 root for each.
3. :func:`wanted_chunks` — which chunks an ``include`` selection needs.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from p2pweights.errors import (
    FormatError,
    LoadError,
    OutOfScopeError,
    ReleaseMismatchError,
    SignatureError,
    UntrustedKeyError,
)
from p2pweights.key_statements import MAX_FILE_BYTES, STATEMENTS_NAME
from p2pweights.keys import PublicKey
from p2pweights.manifest import LIMITS, Limits
from p2pweights.release import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Release,
    open_release,
    open_self_signed,
)
from p2pweights.trust import TrustStore

from .catalog import Catalog
from .engine import TorrentFile
from .store import FileStamp, Store

__all__ = [
    "CHUNK_NAME",
    "PRIO_CHUNK",
    "authenticate",
    "manifest_and_warmup",
    "manifest_first",
    "manifest_only",
    "meta_files",
    "parse_peer",
    "store_layout",
    "wanted_chunks",
]

log = logging.getLogger(__name__)

CHUNK_NAME = re.compile(r"chunks/[0-9a-f]{64}(\.safetensors)?")
PRIO_META = 7
PRIO_CHUNK = 4


def parse_peer(text: str) -> tuple[str, int]:
    """``HOST:PORT`` with an IP literal host (``[v6]:port`` for IPv6).

    Raises:
        FormatError: anything else.
    """
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(text)
    except ValueError:
        raise FormatError(f"peer {text[:80]!r} is not IP:PORT") from None
    return host, int(port)


def meta_files(tf: TorrentFile) -> list[int]:
    """Indices of the files read before any chunk: manifest, signature, key statements."""
    names = (MANIFEST_NAME, SIGNATURE_NAME, STATEMENTS_NAME)
    return [f.index for f in tf.files if f.path in names]


def manifest_only(tf: TorrentFile) -> list[int]:
    """File priorities that want only the :func:`meta_files`."""
    prios = [0] * tf.num_files
    for index in meta_files(tf):
        prios[index] = PRIO_META
    return prios


def manifest_first(tf: TorrentFile) -> list[int]:
    """File priorities that want the manifest files first, then every chunk.

    The chunks are fetched speculatively while the manifest is: libtorrent checks their
    blocks against the torrent's v2 roots, but they stay unusable partial files until
    :func:`authenticate` has matched those roots to the signed chunk list.
    """
    prios = manifest_only(tf)
    for f in tf.files:
        prios[f.index] = prios[f.index] or PRIO_CHUNK
    return prios


def manifest_and_warmup(tf: TorrentFile) -> list[int]:
    """File priorities that want the manifest files first, then the largest chunk.

    For an ordered (streaming) fetch: its window is known only once the manifest is, and
    a fetch that wanted nothing past the manifest would tell its peers "not interested",
    which ends libtorrent's slow start (its request queue then starts from two blocks
    and waits a second for a rate estimate). One chunk wanted behind the manifest keeps
    the peers interested and the queue growing, so the window starts at speed. Its bytes
    are speculative like :func:`manifest_first`'s, and the largest chunk is often the
    embeddings, which a stream wants first.
    """
    prios = manifest_only(tf)
    chunks = [f for f in tf.files if CHUNK_NAME.fullmatch(f.path)]
    if chunks:
        prios[max(chunks, key=lambda f: f.size).index] = PRIO_CHUNK
    return prios


def store_layout(rid: str, tf: TorrentFile, store: Store, catalog: Catalog) -> dict[int, str]:
    """Where each torrent file goes; refuses anything not of a release.

    A chunk goes onto its store file only when the store holds it verified and unchanged
    (its stamp still equals the one recorded when it was hashed): libtorrent then finds
    it complete and only ever reads it. Every other chunk goes to the fetch's own partial
    file, and reaches the store only through :meth:`Store.place`, which hashes it first.
    A chunk name the store knows under another size or v2 root is refused outright: the
    torrent claims bytes for that name that the store's verified file does not hold.
    """
    layout: dict[int, str] = {}
    names = {f.path for f in tf.files}
    if MANIFEST_NAME not in names or SIGNATURE_NAME not in names:
        raise ReleaseMismatchError("the torrent has no manifest.json and manifest.sig")
    known = catalog.store_chunks([f.path for f in tf.files if CHUNK_NAME.fullmatch(f.path)])
    for f in tf.files:
        if f.path == MANIFEST_NAME:
            if f.size > LIMITS.manifest_bytes:
                raise ReleaseMismatchError("the torrent's manifest.json is over the limit")
            layout[f.index] = store.manifest_path(rid)
        elif f.path == SIGNATURE_NAME:
            if f.size != 64:
                raise ReleaseMismatchError("the torrent's manifest.sig is not 64 bytes")
            layout[f.index] = store.signature_path(rid)
        elif f.path == STATEMENTS_NAME:
            if f.size > MAX_FILE_BYTES:
                raise ReleaseMismatchError(f"the torrent's {STATEMENTS_NAME} is over the limit")
            layout[f.index] = store.statements_path(rid)
        elif CHUNK_NAME.fullmatch(f.path):
            rec = known.get(f.path)
            if rec is not None and (rec.size, rec.v2_root) != (f.size, f.v2_root):
                raise ReleaseMismatchError(
                    f"torrent file {f.path} claims other bytes than the store's verified "
                    "chunk of that name"
                )
            now = _stamp(store, f.path)
            # Only the very bytes the store verified (same root, unchanged file) may be
            # mapped: libtorrent would write into any file whose pieces fail its check.
            unchanged = (
                rec is not None
                and (rec.size, rec.v2_root) == (f.size, f.v2_root)
                and now is not None
                and rec.stamp == now
            )
            layout[f.index] = f.path if unchanged else store.partial_path(rid, f.path)
        else:
            raise ReleaseMismatchError(
                f"torrent file {f.path[:80]!r} is not part of a p2pweights release"
            )
    store.release_dir(rid)
    return layout


def _stamp(store: Store, path: str) -> FileStamp | None:
    try:
        return FileStamp.of(store.root / path)
    except FileNotFoundError:
        return None


def authenticate(
    root: Path,
    tf: TorrentFile,
    trust_file: Path,
    *,
    tofu: bool,
    limits: Limits = LIMITS,
    signer: PublicKey | None = None,
) -> Release:
    """The release at ``root``, authenticated and checked against the torrent ``tf``.

    With ``tofu`` an unknown publisher is trusted, but only once the signature, schema,
    expiry and the torrent's file list all check out under its key, and only for this
    release's name. A key already in the trust store is never trusted on first use: one
    accepted for another name stays refused (``OutOfScopeError``).

    With ``signer`` (a search index, whose name record that key signed: see
    ``daemon/search.py``) a release that the trust store does not cover is accepted if
    it is signed by that key, and refused under any other; nothing is added to the trust
    store, and loading it still needs trust.

    Raises:
        UntrustedKeyError, OutOfScopeError, SignatureError, ManifestError,
        ReleaseExpiredError: the manifest (``ManifestError`` too when over ``limits``).
        ReleaseMismatchError: the torrent's files differ from the signed chunk list.
    """
    trust = TrustStore.load(trust_file)
    try:
        release = open_release(root, trust, limits=limits)
        new_key = None
    except (UntrustedKeyError, OutOfScopeError) as exc:
        if signer is not None:
            release, new_key = open_self_signed(root, limits=limits), None
        elif tofu and isinstance(exc, UntrustedKeyError):
            release = open_self_signed(root, limits=limits)
            new_key = release.manifest.publisher
        else:
            raise
    if signer is not None and release.manifest.publisher != signer:
        raise SignatureError(
            f"the release fetched as the index of {signer.fingerprint} is signed by "
            f"{release.manifest.publisher.fingerprint}"
        )
    chunks = {c.path: c for c in release.manifest.chunks}
    meta = (MANIFEST_NAME, SIGNATURE_NAME, STATEMENTS_NAME)
    files = {f.path: f for f in tf.files if f.path not in meta}
    if set(chunks) != set(files):
        extra = sorted(set(files) ^ set(chunks))[:3]
        raise ReleaseMismatchError(
            f"the torrent's files differ from the signed chunk list (e.g. {extra})"
        )
    for path, chunk in chunks.items():
        f = files[path]
        if f.size != chunk.size or f.v2_root != chunk.v2_root:
            raise ReleaseMismatchError(
                f"torrent file {path} has another size or v2 root than the signed manifest"
            )
    if new_key is not None:
        # Scoped to this release's exact name (names hold no fnmatch wildcards): the key
        # signs nothing else the user loads, until they widen it with `p2pw trust add`.
        trust.add(
            new_key,
            f"tofu-{new_key.fingerprint.replace(':', '')}",
            scopes=[release.manifest.name],
        )
        log.warning(
            "trusting publisher %s on first use, for %s only",
            new_key.fingerprint,
            release.manifest.name,
        )
    return release


def wanted_chunks(release: Release, include: Sequence[str]) -> list[str]:
    """Chunk paths holding tensors that match ``include`` (all chunks when empty)."""
    manifest = release.manifest
    if not include:
        return [c.path for c in manifest.chunks]
    tensors = manifest.tensors
    wanted = {
        tensors.chunk_of(name)
        for name in tensors
        if any(fnmatch.fnmatchcase(name, pat) for pat in include)
    }
    if not wanted:
        raise LoadError(f"include patterns {list(include)[:5]} match no tensor")
    return sorted(wanted)
