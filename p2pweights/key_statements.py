"""Key statements: a rotation from one publisher key to the next, and a key's revocation.

Both are canonical JSON objects, each with a type tag, signed over the canonical bytes
of the object without its signature fields::

    {"type": "p2pweights.key-rotation/1", "old_key": "ed25519:...",
     "new_key": "ed25519:...", "time": UNIX_SECONDS,
     "old_signature": B64URL, "new_signature": B64URL}

    {"type": "p2pweights.key-revocation/1", "key": "ed25519:...",
     "time": UNIX_SECONDS, "reason": TEXT, "signature": B64URL}

A rotation is signed by the old key *and* countersigned by the new key over the same
bytes: the old key's holder names its successor, and the successor proves it holds its
key (no one can be rotated onto a key they do not hold). A revocation is signed by the
revoked key itself, so only its holder (or a thief) can revoke it. Signatures are
unpadded base64url, like keys. The type tag is inside the signed bytes, so a signature
over one kind of statement never verifies as another, nor as a manifest (whose signed
object has other required fields).

Statements travel with releases in ``key-statements.json`` beside ``manifest.sig``
(``{"statements": [...]}``). That file is not signed as a whole and needs not be: each
statement carries its own signatures, and the torrent's info-hash pins the file anyway.
Everything here is parsed as hostile input, under size limits, with typed errors.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._atomic import atomic_write_bytes
from ._canonical import dumps, loads_strict
from .errors import (
    KeyFileError,
    KeyStatementError,
    ManifestError,
    RevokedKeyError,
    SignatureError,
)
from .keys import SIGNATURE_BYTES, PrivateKey, PublicKey

__all__ = [
    "DHT_SALT",
    "MAX_STATEMENTS",
    "MAX_STATEMENT_BYTES",
    "OWN_STATEMENTS",
    "REVOCATION_TYPE",
    "ROTATION_TYPE",
    "STATEMENTS_NAME",
    "Revocation",
    "Rotation",
    "Statement",
    "add_to_release",
    "dht_items",
    "dht_value",
    "parse_statement",
    "read_statements",
    "refuse_own_revoked",
    "revoke",
    "rotate",
    "statements_bytes",
    "statements_for",
]

ROTATION_TYPE = "p2pweights.key-rotation/1"
REVOCATION_TYPE = "p2pweights.key-revocation/1"
STATEMENTS_NAME = "key-statements.json"
"""The release file that carries statements, beside ``manifest.sig`` (not signed by it)."""

MAX_STATEMENT_BYTES = 2048
"""One statement is about 400 bytes; this also keeps it inside a BEP 44 value (1000)."""
MAX_STATEMENTS = 32
MAX_FILE_BYTES = MAX_STATEMENTS * MAX_STATEMENT_BYTES + 64
MAX_REASON_CHARS = 200
_MAX_TIME = 2**40  # unix seconds far past any real date, well inside 2**53

OWN_STATEMENTS = "keys/key-statements.json"
"""A publisher's own statements, in the data dir: what ``key rotate`` and ``key revoke`` made."""

DHT_SALT = b"p2pw-key"
"""BEP 44 salt of the item, under the signing key, that carries its latest statement."""


def _b64(sig: bytes) -> str:
    return base64.urlsafe_b64encode(sig).decode("ascii").rstrip("=")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str) or len(text) != 86:  # 64 bytes, unpadded base64url
        raise KeyStatementError(f"{what} must be 86 characters of unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "==")
    except (binascii.Error, ValueError) as exc:
        raise KeyStatementError(f"{what} is not valid base64url") from exc
    if len(raw) != SIGNATURE_BYTES or _b64(raw) != text:  # one spelling per signature
        raise KeyStatementError(f"{what} is not canonical base64url of 64 bytes")
    return raw


def _time(value: object) -> int:
    if type(value) is not int or not 0 <= value < _MAX_TIME:
        raise KeyStatementError("a statement's time must be an integer of unix seconds")
    return value


def _key(value: object, what: str) -> PublicKey:
    try:
        return PublicKey.parse(value)
    except KeyFileError as exc:
        raise KeyStatementError(f"{what}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Rotation:
    """The old key hands its trust to the new one; both signed the same bytes."""

    old: PublicKey
    new: PublicKey
    time: int
    old_signature: bytes
    new_signature: bytes

    def signed_bytes(self) -> bytes:
        """The canonical bytes both keys sign."""
        return dumps(
            {
                "type": ROTATION_TYPE,
                "old_key": self.old.text,
                "new_key": self.new.text,
                "time": self.time,
            }
        )

    def to_doc(self) -> dict[str, Any]:
        """The statement as a JSON object."""
        return {
            "type": ROTATION_TYPE,
            "old_key": self.old.text,
            "new_key": self.new.text,
            "time": self.time,
            "old_signature": _b64(self.old_signature),
            "new_signature": _b64(self.new_signature),
        }

    def check(self) -> None:
        """Verify both signatures.

        Raises:
            KeyStatementError: the two keys are the same.
            SignatureError: either signature fails.
        """
        if self.old == self.new:
            raise KeyStatementError("a rotation must name two different keys")
        body = self.signed_bytes()
        try:
            self.old.verify(self.old_signature, body)
        except SignatureError:
            raise SignatureError(
                f"rotation statement is not signed by its old key {self.old.fingerprint}"
            ) from None
        try:
            self.new.verify(self.new_signature, body)
        except SignatureError:
            raise SignatureError(
                f"rotation statement is not countersigned by its new key {self.new.fingerprint}"
            ) from None


@dataclass(frozen=True, slots=True)
class Revocation:
    """A key declares itself revoked: never to be trusted again."""

    key: PublicKey
    time: int
    reason: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        """The canonical bytes the key signs."""
        doc = {"type": REVOCATION_TYPE, "key": self.key.text, "time": self.time}
        return dumps({**doc, "reason": self.reason})

    def to_doc(self) -> dict[str, Any]:
        """The certificate as a JSON object."""
        return {
            "type": REVOCATION_TYPE,
            "key": self.key.text,
            "time": self.time,
            "reason": self.reason,
            "signature": _b64(self.signature),
        }

    def check(self) -> None:
        """Verify the self-signature.

        Raises:
            SignatureError: it fails.
        """
        try:
            self.key.verify(self.signature, self.signed_bytes())
        except SignatureError:
            raise SignatureError(
                f"revocation certificate is not signed by the key it revokes "
                f"({self.key.fingerprint})"
            ) from None


Statement = Rotation | Revocation


def rotate(old: PrivateKey, new: PrivateKey, *, now: int | None = None) -> Rotation:
    """Sign a rotation from ``old`` to ``new`` with both keys.

    Raises:
        KeyStatementError: the two keys are the same.
    """
    if old.public == new.public:
        raise KeyStatementError("the new key is the old key; generate another one")
    when = int(time.time()) if now is None else now
    draft = Rotation(old.public, new.public, _time(when), b"", b"")
    body = draft.signed_bytes()
    return Rotation(old.public, new.public, when, old.sign(body), new.sign(body))


def revoke(key: PrivateKey, *, reason: str = "", now: int | None = None) -> Revocation:
    """Sign a revocation certificate for ``key``.

    Raises:
        KeyStatementError: the reason is too long or not printable.
    """
    _reason(reason)
    when = int(time.time()) if now is None else now
    draft = Revocation(key.public, _time(when), reason, b"")
    return Revocation(key.public, when, reason, key.sign(draft.signed_bytes()))


def _reason(value: object) -> str:
    if (
        not isinstance(value, str)
        or len(value) > MAX_REASON_CHARS
        or not all(c.isprintable() for c in value)
    ):
        raise KeyStatementError(
            f"a revocation's reason is printable text of at most {MAX_REASON_CHARS} characters"
        )
    return value


_ROTATION_FIELDS = {"type", "old_key", "new_key", "time", "old_signature", "new_signature"}
_REVOCATION_FIELDS = {"type", "key", "time", "reason", "signature"}


def parse_statement(doc: object) -> Statement:
    """A statement from a parsed JSON value (hostile), its signatures verified.

    Raises:
        KeyStatementError: not a statement: unknown type, missing or extra fields, bad
            key text, bad base64, a bad time.
        SignatureError: a signature (or the rotation's countersignature) fails.
    """
    if not isinstance(doc, dict):
        raise KeyStatementError("a key statement must be a JSON object")
    kind = doc.get("type")
    statement: Statement
    if kind == ROTATION_TYPE:
        if set(doc) != _ROTATION_FIELDS:
            raise KeyStatementError(
                f"a rotation statement has exactly the fields {sorted(_ROTATION_FIELDS)}"
            )
        statement = Rotation(
            _key(doc["old_key"], "old_key"),
            _key(doc["new_key"], "new_key"),
            _time(doc["time"]),
            _unb64(doc["old_signature"], "old_signature"),
            _unb64(doc["new_signature"], "new_signature"),
        )
    elif kind == REVOCATION_TYPE:
        if set(doc) != _REVOCATION_FIELDS:
            raise KeyStatementError(
                f"a revocation certificate has exactly the fields {sorted(_REVOCATION_FIELDS)}"
            )
        statement = Revocation(
            _key(doc["key"], "key"),
            _time(doc["time"]),
            _reason(doc["reason"]),
            _unb64(doc["signature"], "signature"),
        )
    else:
        raise KeyStatementError(
            f"unknown key statement type {str(kind)[:60]!r} "
            f"(expected {ROTATION_TYPE} or {REVOCATION_TYPE})"
        )
    statement.check()
    return statement


def parse_statement_bytes(data: bytes) -> Statement:
    """A statement from its bytes (a certificate file, a DHT value): see :func:`parse_statement`.

    Raises:
        KeyStatementError: over the size limit, not JSON, or not a statement.
        SignatureError: a signature fails.
    """
    try:
        doc = loads_strict(data, max_bytes=MAX_STATEMENT_BYTES, what="key statement")
    except ManifestError as exc:
        raise KeyStatementError(str(exc)) from exc
    return parse_statement(doc)


def read_statements(path: Path) -> list[Statement]:
    """The statements of a ``key-statements.json`` file; none when it is absent.

    Raises:
        KeyStatementError: unreadable, over the limits, or a malformed statement.
        SignatureError: a statement's signature fails.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyStatementError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        doc = loads_strict(data, max_bytes=MAX_FILE_BYTES, what=str(path))
    except ManifestError as exc:
        raise KeyStatementError(str(exc)) from exc
    if not isinstance(doc, dict) or set(doc) != {"statements"}:
        raise KeyStatementError(f'{path} must be {{"statements": [STATEMENT, ...]}}')
    items = doc["statements"]
    if not isinstance(items, list) or len(items) > MAX_STATEMENTS:
        raise KeyStatementError(f"{path} holds a list of at most {MAX_STATEMENTS} statements")
    return [parse_statement(item) for item in items]


def statements_bytes(statements: Iterable[Statement]) -> bytes:
    """The canonical bytes of a ``key-statements.json`` file holding ``statements``.

    Raises:
        KeyStatementError: more than :data:`MAX_STATEMENTS`.
    """
    docs = list(dict.fromkeys(dumps(s.to_doc()) for s in statements))  # no duplicates
    if len(docs) > MAX_STATEMENTS:
        raise KeyStatementError(f"a release carries at most {MAX_STATEMENTS} key statements")
    return b'{"statements":[' + b",".join(docs) + b"]}\n"


def statements_for(signer: PublicKey, statements: Sequence[Statement]) -> list[Statement]:
    """What a release signed by ``signer`` should carry, from a publisher's own statements.

    The chain of rotations that ends at ``signer`` (oldest first), so a client that trusts
    any earlier key of the chain can follow it, and the revocations of keys in that chain.
    """
    chain: list[Rotation] = []
    keys, at = {signer}, signer
    while True:
        step = next(
            (
                s
                for s in statements
                if isinstance(s, Rotation) and s.new == at and s.old not in keys
            ),
            None,
        )
        if step is None:
            break
        chain.insert(0, step)
        keys.add(step.old)
        at = step.old
    revoked = [s for s in statements if isinstance(s, Revocation) and s.key in keys - {signer}]
    return [*chain, *revoked]


def add_to_release(home: Path, signer: PublicKey, release_dir: Path) -> int:
    """Write into ``release_dir`` what a release signed by ``signer`` carries; how many.

    The statements come from :data:`OWN_STATEMENTS` in ``home``, chosen by
    :func:`statements_for`.

    Raises:
        KeyStatementError: the publisher's own statements file is damaged.
    """
    chosen = statements_for(signer, read_statements(home / OWN_STATEMENTS))
    if chosen:
        atomic_write_bytes(release_dir / STATEMENTS_NAME, statements_bytes(chosen))
    return len(chosen)


def refuse_own_revoked(home: Path, signer: PublicKey) -> None:
    """A publisher never signs with a key they revoked.

    Raises:
        RevokedKeyError: the publisher's own statements in ``home`` revoke ``signer``.
    """
    own = read_statements(home / OWN_STATEMENTS)
    if any(isinstance(s, Revocation) and s.key == signer for s in own):
        raise RevokedKeyError(f"you revoked key {signer.fingerprint}; sign with another key")


def dht_value(statement: Statement) -> tuple[PublicKey, bytes, bytes]:
    """What to put on the DHT for ``statement``: the signing key, the salt and the value.

    A rotation goes under its old key (where clients that trust it look), a revocation
    under the revoked key. The value is the statement's canonical bytes, under BEP 44's
    1000-byte cap; the reader checks it with :func:`parse_statement_bytes`, so a DHT
    node that alters it gains nothing. The BEP 44 put itself belongs to the daemon's
    engine (``daemon/key_items.py``): it signs the item with the private key of the returned key.
    """
    key = statement.old if isinstance(statement, Rotation) else statement.key
    value = dumps(statement.to_doc())
    if len(value) > 990:  # the bencoded length prefix takes the rest of 1000
        raise KeyStatementError(f"statement of {len(value)} bytes does not fit a BEP 44 item")
    return key, DHT_SALT, value


def dht_items(statements: Sequence[Statement]) -> list[tuple[PublicKey, bytes, int, bytes]]:
    """The DHT items for a publisher's own statements: one per key, its latest word.

    A key's revocation wins over its rotation (a client that sees it must stop trusting
    the key, and must not follow the rotation either); else its newest rotation. Each
    item is ``(key, salt, seq, value)``: ``seq`` is twice the newest time among the key's
    statements, plus one for a revocation, so it only grows as statements are added and
    a revocation outranks a rotation of the same second (BEP 44 keeps the highest seq).
    """
    latest: dict[PublicKey, Statement] = {}
    newest: dict[PublicKey, int] = {}
    for s in statements:
        key = s.old if isinstance(s, Rotation) else s.key
        newest[key] = max(newest.get(key, 0), s.time)
        held = latest.get(key)
        if (
            held is None
            or (isinstance(s, Revocation) and isinstance(held, Rotation))
            or (type(s) is type(held) and s.time >= held.time)
        ):
            latest[key] = s
    items = []
    for key, s in latest.items():
        _, salt, value = dht_value(s)
        items.append((key, salt, 2 * newest[key] + isinstance(s, Revocation), value))
    return items
