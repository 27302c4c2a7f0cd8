"""Ed25519 publisher keys: generate, store, load, sign, verify, and print.

A public key is written as ``ed25519:<base64url of the 32 raw bytes, unpadded>``: one
token that survives copy and paste, shells and JSON. The fingerprint is the first 16 hex
digits of the sha256 of the raw key, grouped by four, for people comparing keys by eye.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import KeyFileError, SignatureError

__all__ = [
    "SIGNATURE_BYTES",
    "PrivateKey",
    "PublicKey",
    "generate_key",
    "load_private_key",
]

SIGNATURE_BYTES = 64
_PREFIX = "ed25519:"
_MAX_KEY_FILE = 64 * 1024


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise KeyFileError(f"an Ed25519 public key has 32 bytes, not {len(self.raw)}")

    @classmethod
    def parse(cls, text: object) -> PublicKey:
        """Parse ``ed25519:<base64url>``.

        Raises:
            KeyFileError: if the text is not such a key.

        """
        if not isinstance(text, str) or not text.startswith(_PREFIX) or len(text) > 100:
            raise KeyFileError(f"public key must look like {_PREFIX}<base64url>")
        body = text[len(_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as exc:
            raise KeyFileError(f"public key {text[:60]!r} is not valid base64url") from exc
        key = cls(raw)
        if key.text != text:  # one spelling per key, so trust-store lookups are exact
            raise KeyFileError(f"public key {text[:60]!r} is not in canonical form")
        return key

    @property
    def text(self) -> str:
        """The copy-pasteable form."""
        return _PREFIX + base64.urlsafe_b64encode(self.raw).decode("ascii").rstrip("=")

    @property
    def fingerprint(self) -> str:
        """A short form for eyes: 16 hex digits of sha256, grouped by four."""
        h = hashlib.sha256(self.raw).hexdigest()[:16]
        return ":".join(h[i : i + 4] for i in range(0, 16, 4))

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check an Ed25519 signature.

        Raises:
            SignatureError: if it does not match.

        """
        if len(signature) != SIGNATURE_BYTES:
            raise SignatureError(
                f"signature has {len(signature)} bytes; Ed25519 signatures have 64"
            )
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            raise SignatureError(
                f"signature does not match the manifest and key {self.fingerprint}"
            ) from None

    def __str__(self) -> str:
        return self.text


class PrivateKey:
    """An Ed25519 signing key held in memory."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)

    def sign(self, data: bytes) -> bytes:
        """Sign ``data``; returns the 64-byte signature."""
        return self._key.sign(data)


def generate_key(
    path: Path, *, passphrase: bytes | None = None, overwrite: bool = False
) -> PrivateKey:
    """Create a new key and write it as PKCS#8 PEM with mode 0600.

    Args:
        path: where to write; parent directories are created (mode 0700).
        passphrase: encrypt the PEM with it when given.
        overwrite: replace an existing file instead of refusing.

    Returns:
        The new key.

    Raises:
        KeyFileError: if the file exists (and not ``overwrite``) or cannot be written.

    """
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, flags, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists: never clobber a key by accident
            tmp.unlink()
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise KeyFileError(f"{path} already exists; pass --force to replace it") from None
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror}") from exc
    return PrivateKey(key)


def load_private_key(path: Path, *, passphrase: bytes | None = None) -> PrivateKey:
    """Read a PKCS#8 PEM Ed25519 key.

    Raises:
        KeyFileError: missing, too large, not Ed25519, or wrong/missing passphrase.

    """
    try:
        if path.stat().st_size > _MAX_KEY_FILE:
            raise KeyFileError(f"{path} is too large to be a key file")
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as exc:
        needs = "needs a passphrase" if passphrase is None else "is not encrypted"
        raise KeyFileError(f"key file {path} {needs}") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(
            f"key file {path} is not a readable PEM key (or wrong passphrase)"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return PrivateKey(key)
