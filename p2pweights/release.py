"""A release on disk, and the only way to read its manifest: authenticated first.

A release directory holds ``manifest.json``, ``manifest.sig`` and ``chunks/``, and may
hold ``key-statements.json`` (key rotations and revocations, see :mod:`.key_statements`).
Opening one reads the manifest under a size limit, checks that its publisher is trusted
(and not revoked; a key that a trusted key rotated to is trusted through the statements),
checks the Ed25519 signature over the exact bytes, then parses the full schema, checks
that the publisher's trust entry covers the release's name, and the expiry. Only then does
any caller see a :class:`Manifest`, and only then is a rotation applied to the trust store.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from ._canonical import loads_strict
from .errors import LoadError, ManifestError, ReleaseExpiredError, SignatureError
from .key_statements import STATEMENTS_NAME, read_statements
from .keys import SIGNATURE_BYTES
from .manifest import LIMITS, Limits, Manifest, publisher_in
from .trust import TrustStore

__all__ = [
    "CHUNKS_DIR",
    "EXPORT_POINTER",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "Release",
    "is_release_dir",
    "open_release",
    "open_self_signed",
    "resolve_source",
]

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
CHUNKS_DIR = "chunks"
EXPORT_POINTER = ".p2pweights-export.json"


@dataclass(frozen=True, slots=True)
class Release:
    """An authenticated release: its manifest was signed by a trusted publisher."""

    root: Path
    manifest: Manifest
    manifest_sha256: str
    publisher_name: str

    def chunk_path(self, rel: str) -> Path:
        """Where a chunk named by the manifest lives (paths were checked at parse time)."""
        return self.root / rel


def is_release_dir(path: Path) -> bool:
    """True when ``path`` looks like a release directory."""
    return (path / MANIFEST_NAME).is_file()


def resolve_source(source: str | Path) -> Path:
    """The release dir behind a source: a release dir itself, or an exported dir.

    Raises:
        LoadError: if the source is neither.

    """
    path = Path(source).expanduser()
    if is_release_dir(path):
        return path
    pointer = path / EXPORT_POINTER
    if pointer.is_file():
        try:
            doc = loads_strict(pointer.read_bytes(), max_bytes=1 << 16, what="export pointer")
        except ManifestError as exc:
            raise LoadError(f"{pointer} is damaged: {exc}") from exc
        release = doc.get("release") if isinstance(doc, dict) else None
        if isinstance(release, str) and is_release_dir(Path(release)):
            return Path(release)
        raise LoadError(f"{path} was exported from a release that is no longer at {release!r}")
    if "://" in str(source) or str(source).startswith("magnet:"):
        raise LoadError(
            f"{str(source)[:80]!r}: URIs are fetched by the daemon; this is not a local path"
        )
    raise LoadError(f"{path} is not a release dir (no manifest.json) nor an exported dir")


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise ManifestError(f"{path} is missing: not a release directory") from None
    except OSError as exc:
        raise ManifestError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if len(data) > limit:
        raise ManifestError(f"{what} {path} is over the limit of {limit} bytes")
    return data


def open_self_signed(root: Path, *, limits: Limits = LIMITS) -> Release:
    """Authenticate the release at ``root`` under the key it names, trusted or not.

    This proves the release is intact and self-consistent (for seeding it, repairing a
    store, or deciding to trust its key on first use); it says nothing about who the
    publisher is. Loading always goes through :func:`open_release` with a trust store.

    Raises:
        The same as :func:`open_release`, except ``UntrustedKeyError`` and
        ``OutOfScopeError``.
    """
    return _open(root, None, limits=limits)


def open_release(
    root: Path, trust: TrustStore, *, now: float | None = None, limits: Limits = LIMITS
) -> Release:
    """Authenticate and parse the release at ``root``.

    Args:
        root: the release directory.
        trust: the keys to believe, each for the release names of its entry's scope.
        now: the time to check expiry against (tests).
        limits: the manifest's caps (the daemon passes its config's, which are lower).

    Returns:
        The release.

    Raises:
        ManifestError: missing or malformed manifest, or over ``limits``.
        UntrustedKeyError: the publisher is not trusted.
        RevokedKeyError: the publisher key was revoked.
        KeyStatementError: ``key-statements.json`` is malformed.
        SignatureError: the signature is missing, malformed, or wrong.
        OutOfScopeError: the publisher is trusted, but not for this release's name.
        ReleaseExpiredError: past its expiry.

    """
    return _open(root, trust, now=now, limits=limits)


def _open(
    root: Path, trust: TrustStore | None, *, now: float | None = None, limits: Limits = LIMITS
) -> Release:
    data = _read_limited(root / MANIFEST_NAME, limits.manifest_bytes, "manifest")
    try:
        sig = _read_limited(root / SIGNATURE_NAME, SIGNATURE_BYTES, "signature")
    except ManifestError as exc:
        raise SignatureError(str(exc)) from exc
    doc = loads_strict(data, max_bytes=limits.manifest_bytes)  # parsed once, used twice
    key = publisher_in(doc)
    admission = None
    statements = read_statements(root / STATEMENTS_NAME)  # checked even when self-signed
    if trust is not None:
        trust.learn(statements)  # revocations count whatever release carries them
        admission = trust.admission(key, statements)
    key.verify(sig, data)
    manifest = Manifest.from_parsed(doc, data, limits=limits)
    # The name is the publisher's word only once the signature held; so is a rotation.
    name = (
        trust.admit(admission, manifest.name, manifest.created)
        if trust is not None and admission is not None
        else f"key-{key.fingerprint}"
    )
    when = time.time() if now is None else now
    if manifest.expires is not None and when > manifest.expires:
        raise ReleaseExpiredError(
            f"release {manifest.name} v{manifest.version} expired at unix time {manifest.expires}"
        )
    return Release(root, manifest, hashlib.sha256(data).hexdigest(), name)
