r"""Signed release names: ``p2pw://<publisher>/<org>/<model>[@<version>]``.

A name resolves, with no central host, through a BEP 44 mutable DHT item that the
publisher signs with the same Ed25519 key that signs its manifests. This module is the
format only (no network): the name grammar, the salt an item is stored under, the record
it carries, and the BEP 44 signature over it. ``docs/architecture.md`` ("Names") is the
reference for the wire format.

* **Publisher.** A trust-store entry name (``meta``), resolved locally first, or the
  publisher's public key in URL-safe form: the 43 base64url characters of the raw key
  (``ed25519:`` and its colon are optional).
* **Salt.** ``sha256("p2pw-name/1\0" + NAME)`` (32 bytes) for the latest release of
  ``ORG/MODEL``, and ``sha256("p2pw-name/1\0" + NAME + "@" + VERSION)`` for one pinned
  version. BEP 44 caps a salt at 64 bytes and a release name may have 201: hashing maps
  every name to one fixed size, and the record repeats the name, so a client checks that
  the item it got is the one it asked for.
* **Record.** The libtorrent Python binding stores a mutable value only as a bencoded
  string, so the record is canonical JSON inside that string (see :class:`NameRecord`).
  BEP 44 caps the bencoded value at 1000 bytes; a record over it is refused at publish.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._canonical import dumps, loads_strict
from .errors import (
    KeyFileError,
    ManifestError,
    NameFormatError,
    NameRecordError,
    SignatureError,
    TrustStoreError,
)

if TYPE_CHECKING:  # keys pull in cryptography: the CLI's daemon verbs parse names without it
    from .keys import PrivateKey, PublicKey
    from .trust import TrustStore

__all__ = [
    "DEFAULT_TTL",
    "MAX_NAME_URI",
    "MAX_VALUE_BYTES",
    "NAME_SCHEME",
    "NameRecord",
    "NameRef",
    "SignedItem",
    "is_name",
    "key_text",
    "name_uri",
    "parse_name",
    "salt_for",
]

NAME_SCHEME = "p2pw://"
MAX_NAME_URI = 400
"""Longest name accepted: a key (51), a release name (201) and a version, with room."""
MAX_VALUE_BYTES = 1000
"""BEP 44's cap on a mutable item's bencoded value."""
DEFAULT_TTL = 7 * 24 * 3600
"""Seconds a record stays valid after it is issued, unless configured otherwise."""
FORMAT = 1
_SALT_PREFIX = b"p2pw-name/1\x00"
_RELEASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99})?")
_TRUST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_B64_KEY = re.compile(r"[A-Za-z0-9_-]{43}")
_VERSION = re.compile(r"(0|[1-9][0-9]{0,8})")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_WEB_SEEDS = 16
SIGNATURE_BYTES = 64


def is_name(text: object) -> bool:
    """True when ``text`` is meant as a ``p2pw://`` name (it may still be malformed)."""
    return isinstance(text, str) and text[: len(NAME_SCHEME)].lower() == NAME_SCHEME


def key_text(key: PublicKey) -> str:
    """The URL-safe form of a publisher key, as a name's first part."""
    return base64.urlsafe_b64encode(key.raw).decode("ascii").rstrip("=")


def name_uri(key: PublicKey, name: str, version: int | None = None) -> str:
    """The ``p2pw://`` name of ``name`` under ``key`` (pinned to ``version`` if given)."""
    return f"{NAME_SCHEME}{key_text(key)}/{name}" + ("" if version is None else f"@{version}")


def salt_for(name: str, version: int | None = None) -> bytes:
    """The 32-byte BEP 44 salt of a release name (and pinned version)."""
    text = name if version is None else f"{name}@{version}"
    return hashlib.sha256(_SALT_PREFIX + text.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class NameRef:
    """A parsed name: who publishes it, which release name, and an optional version."""

    publisher: str
    """The publisher as written: a trust-store entry name or a URL-safe key."""
    name: str
    version: int | None = None

    @property
    def text(self) -> str:
        """The name as a ``p2pw://`` URI."""
        tail = "" if self.version is None else f"@{self.version}"
        return f"{NAME_SCHEME}{self.publisher}/{self.name}{tail}"

    @property
    def salt(self) -> bytes:
        """The BEP 44 salt this name's item is stored under."""
        return salt_for(self.name, self.version)

    @property
    def key_name(self) -> str:
        """The name as the high-water mark is kept for it: ``NAME`` or ``NAME@VERSION``."""
        return self.name if self.version is None else f"{self.name}@{self.version}"

    def publisher_key(self, trust: TrustStore | None) -> PublicKey:
        """The publisher's key: a trust-store entry of that name first, else the key itself.

        Raises:
            TrustStoreError: neither a trusted key's name nor a public key.
        """
        if trust is not None:
            for entry in trust.entries:
                if entry.name == self.publisher:
                    return entry.key
        from .keys import PublicKey  # noqa: PLC0415 - see the imports at the top

        body = self.publisher.removeprefix("ed25519:")
        if _B64_KEY.fullmatch(body):
            try:
                return PublicKey(base64.urlsafe_b64decode(body + "="))
            except (binascii.Error, ValueError, KeyFileError):
                pass
        raise TrustStoreError(
            f"publisher {self.publisher[:60]!r} is neither the name of a trusted key nor a "
            "public key (43 base64url characters)"
        )


def parse_name(text: object) -> NameRef:
    """Parse ``p2pw://<publisher>/<org>/<model>[@<version>]``.

    Raises:
        NameFormatError: not a name, too long, a traversal or an empty part, odd
            characters, a bad version, or publisher text that is neither a trust-store
            name nor a key.
    """
    if not isinstance(text, str) or not is_name(text):
        raise NameFormatError(f"{str(text)[:80]!r} is not a p2pw:// name")
    if len(text) > MAX_NAME_URI:
        raise NameFormatError(f"a p2pw:// name has at most {MAX_NAME_URI} characters")
    rest = text[len(NAME_SCHEME) :]
    if any(c in rest for c in "\\%?#\x00") or not rest.isprintable() or not rest.isascii():
        raise NameFormatError(f"{text[:80]!r}: a name has no escapes, queries or odd characters")
    publisher, sep, release = rest.partition("/")
    base, at, version_text = release.partition("@")
    parts = base.split("/")
    if not sep or any(p in ("", ".", "..") for p in parts):
        raise NameFormatError(
            f"{text[:80]!r} is not p2pw://PUBLISHER/ORG/MODEL[@VERSION] (empty part or traversal)"
        )
    if not _RELEASE_NAME.fullmatch(base):
        raise NameFormatError(f"{base[:80]!r} is not a release name ORG/MODEL")
    version = None
    if at:
        if not _VERSION.fullmatch(version_text):
            raise NameFormatError(f"version {version_text[:20]!r} is not a decimal number")
        version = int(version_text)
    key_body = publisher.removeprefix("ed25519:")
    if not (_TRUST_NAME.fullmatch(publisher) or _B64_KEY.fullmatch(key_body)):
        raise NameFormatError(
            f"publisher {publisher[:60]!r} is neither a trust-store name nor a public key"
        )
    if publisher.startswith("ed25519:") and not _B64_KEY.fullmatch(key_body):
        raise NameFormatError(f"publisher key {publisher[:60]!r} is not 43 base64url characters")
    return NameRef(publisher, base, version)


@dataclass(frozen=True, slots=True)
class NameRecord:
    """What a name points to.

    Its wire form is canonical JSON with short keys::

    {"exp":EXPIRES,"f":1,"iat":ISSUED,"ih":"<v2 info-hash>","ms":"<manifest sha256>",
     "n":"ORG/MODEL","v":VERSION[,"ws":["URL",...]]}

    Times are Unix seconds. ``ws`` lists web seeds (mirror roots) the publisher names;
    a fetch treats them like a magnet's ``ws=``: untrusted input under the daemon's
    web-seed policy, every byte still checked against the signed roots.
    """

    name: str
    version: int
    info_hash: str
    manifest_sha256: str
    issued_at: int
    expires_at: int
    web_seeds: tuple[str, ...] = field(default=())

    def encode(self) -> bytes:
        """The record as the string stored in the item.

        Raises:
            NameRecordError: once bencoded it would exceed BEP 44's 1000 bytes.
        """
        doc: dict[str, object] = {
            "exp": self.expires_at,
            "f": FORMAT,
            "iat": self.issued_at,
            "ih": self.info_hash,
            "ms": self.manifest_sha256,
            "n": self.name,
            "v": self.version,
        }
        if self.web_seeds:
            doc["ws"] = list(self.web_seeds)
        data = dumps(doc)
        size = len(bencode_string(data))
        if size > MAX_VALUE_BYTES:
            raise NameRecordError(
                f"the name record of {self.name} is {size} bytes bencoded; BEP 44 allows "
                f"{MAX_VALUE_BYTES} (fewer or shorter web seeds, or a shorter name)"
            )
        return data

    @classmethod
    def decode(cls, data: bytes) -> NameRecord:
        """Parse a record from a DHT item's value (hostile input).

        Raises:
            NameRecordError: not a record of this format.
        """
        try:
            doc = loads_strict(data, max_bytes=MAX_VALUE_BYTES, what="name record")
        except ManifestError as exc:
            raise NameRecordError(str(exc)) from None
        if not isinstance(doc, dict) or doc.get("f") != FORMAT:
            raise NameRecordError("the DHT item is not a p2pw name record of format 1")
        if set(doc) - {"exp", "f", "iat", "ih", "ms", "n", "v", "ws"}:
            raise NameRecordError("the name record has unknown fields")
        ints = [doc.get(k) for k in ("exp", "iat", "v")]
        if not all(type(i) is int and 0 <= i < 2**53 for i in ints):
            raise NameRecordError("the name record's times and version must be integers")
        ih, ms, name = doc.get("ih"), doc.get("ms"), doc.get("n")
        if not (isinstance(ih, str) and _HEX64.fullmatch(ih)):
            raise NameRecordError("the name record's info-hash is not 64 hex digits")
        if not (isinstance(ms, str) and _HEX64.fullmatch(ms)):
            raise NameRecordError("the name record's manifest sha256 is not 64 hex digits")
        if not (isinstance(name, str) and _RELEASE_NAME.fullmatch(name)):
            raise NameRecordError("the name record's name is not a release name")
        seeds = doc.get("ws", [])
        if not (
            isinstance(seeds, list)
            and len(seeds) <= _MAX_WEB_SEEDS
            and all(isinstance(s, str) and s.startswith(("http://", "https://")) for s in seeds)
        ):
            raise NameRecordError("the name record's web seeds are not http(s) URLs")
        return cls(name, doc["v"], ih, ms, doc["iat"], doc["exp"], tuple(seeds))

    def expired(self, now: float | None = None) -> bool:
        """True once the signed expiry has passed."""
        return (time.time() if now is None else now) >= self.expires_at


def bencode_string(data: bytes) -> bytes:
    """``data`` as a bencoded string (``<length>:<bytes>``)."""
    return str(len(data)).encode("ascii") + b":" + data


@dataclass(frozen=True, slots=True)
class SignedItem:
    """A BEP 44 mutable item whose value is a bencoded string: kept and re-put verbatim."""

    key: bytes
    salt: bytes
    seq: int
    signature: bytes
    value: bytes
    """The string's bytes (the record), not its bencoding."""

    def signed_bytes(self) -> bytes:
        """What BEP 44 signs: ``4:salt<salt>3:seqi<seq>e1:v<bencoded value>``."""
        salt = b"4:salt" + bencode_string(self.salt) if self.salt else b""
        return salt + b"3:seqi" + str(self.seq).encode() + b"e1:v" + bencode_string(self.value)

    def verify(self) -> None:
        """Check the item's signature under its key, whatever a DHT node said.

        Raises:
            SignatureError: a bad signature, or a malformed key, salt or sequence number.
        """
        from .keys import PublicKey  # noqa: PLC0415 - see the imports at the top

        if len(self.key) != 32 or len(self.salt) > 64 or not 0 <= self.seq < 2**63:
            raise SignatureError("the DHT item's key, salt or sequence number is malformed")
        if len(self.signature) != SIGNATURE_BYTES:
            raise SignatureError("the DHT item's signature is not 64 bytes")
        try:
            PublicKey(self.key).verify(self.signature, self.signed_bytes())
        except SignatureError:
            raise SignatureError(
                f"the DHT item under key {PublicKey(self.key).fingerprint} is forged: "
                "its signature does not match"
            ) from None

    @classmethod
    def sign(cls, key: PrivateKey, salt: bytes, seq: int, value: bytes) -> SignedItem:
        """Sign ``value`` under ``salt`` with sequence number ``seq``."""
        unsigned = cls(key.public.raw, salt, seq, b"\x00" * SIGNATURE_BYTES, value)
        return cls(key.public.raw, salt, seq, key.sign(unsigned.signed_bytes()), value)

    def to_json(self) -> dict[str, object]:
        """The item as JSON-safe fields (hex), for the catalog."""
        return {
            "k": self.key.hex(),
            "salt": self.salt.hex(),
            "seq": self.seq,
            "sig": self.signature.hex(),
            "v": self.value.hex(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> SignedItem:
        """The inverse of :meth:`to_json`.

        Raises:
            NameRecordError: fields missing or of the wrong type.
        """
        try:
            seq = doc["seq"]
            if type(seq) is not int:
                raise TypeError(seq)
            return cls(
                bytes.fromhex(str(doc["k"])),
                bytes.fromhex(str(doc["salt"])),
                seq,
                bytes.fromhex(str(doc["sig"])),
                bytes.fromhex(str(doc["v"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NameRecordError(f"a stored name item is damaged: {exc}") from None
