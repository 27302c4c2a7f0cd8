"""The trust store: publisher keys this user believes, each under a name and a scope.

It is one small JSON file (``trust.json`` in the data dir), rewritten atomically::

    {"keys": {"org": "ed25519:...",
              "other": {"key": "ed25519:...", "scopes": ["other/*"]}}}

A plain key string trusts the key for every release name (the form every entry had
before scopes, so older files load as they are); the object form limits the key to
release names (``ORG/MODEL``) that match one of its ``fnmatch`` patterns, case-sensitive.

Key rotation and revocation (see :mod:`.key_statements`) add two things, written only
when present, so a file without them stays as it was:

- an entry moved to a new key by a rotation keeps the old key in ``"retired"``
  (``[{"key": ..., "until": UNIX_SECONDS}]``): it is believed, under the entry's name
  and scopes, only for releases created up to the rotation;
- ``"revoked"`` lists the revocation certificates seen. A revoked key is never trusted
  again: not by an entry, not on first use, not as either end of a rotation.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ._atomic import atomic_write_bytes
from ._canonical import dumps, loads_strict
from .errors import (
    FormatError,
    KeyFileError,
    ManifestError,
    OutOfScopeError,
    RevokedKeyError,
    SignatureError,
    TrustStoreError,
    UntrustedKeyError,
)
from .key_statements import Revocation, Rotation, Statement, parse_statement
from .keys import PublicKey, load_private_key
from .paths import data_dir, trust_path

__all__ = ["Admission", "Retired", "TrustEntry", "TrustStore", "own_keys", "trust_for"]

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SCOPE_RE = re.compile(r"[A-Za-z0-9._*?\[\]!/-]{1,201}")
"""A scope: the characters of a release name plus fnmatch's ``* ? [ ] !``."""
_MAX_SCOPES = 256
_MAX_FILE = 16 * 1024 * 1024
_MAX_RETIRED = 16


@dataclass(frozen=True, slots=True)
class Retired:
    """An entry's former key, handed over by a rotation at ``until`` (unix seconds)."""

    key: PublicKey
    until: int


@dataclass(frozen=True, slots=True)
class TrustEntry:
    """A trusted publisher key, the name the user gave it, and the names it may sign."""

    name: str
    key: PublicKey
    scopes: tuple[str, ...] = ()
    """``fnmatch`` patterns of release names this key is trusted for; empty = every name."""
    retired: tuple[Retired, ...] = ()
    """Former keys of the entry, believed only for releases created up to their rotation."""

    def covers(self, release_name: str) -> bool:
        """True when this entry trusts its key for releases named ``release_name``."""
        return not self.scopes or any(fnmatch.fnmatchcase(release_name, p) for p in self.scopes)


@dataclass(frozen=True, slots=True)
class Admission:
    """How a publisher key is believed, decided before its signature is checked."""

    key: PublicKey
    entry: TrustEntry | None
    """The entry that believes the key now; None when only ``moves`` will make one."""
    moves: tuple[Rotation, ...] = ()
    """Rotations, oldest first, from a trusted key to this one: applied once it signed."""
    retired_until: int | None = None
    """Set when the key is a retired key of ``entry``: the newest ``created`` it may sign."""


class TrustStore:
    """Trusted publisher keys, either from a file or given in memory."""

    def __init__(
        self,
        entries: Iterable[TrustEntry] = (),
        *,
        path: Path | None = None,
        revoked: Mapping[PublicKey, Revocation] | None = None,
        transient: Iterable[TrustEntry] = (),
    ) -> None:
        """A store; ``transient`` entries are believed but never saved (own keys)."""
        self._transient = list(transient)
        self._entries = [*entries, *self._transient]
        self.revoked: dict[PublicKey, Revocation] = dict(revoked or {})
        self.path = path

    @classmethod
    def of_keys(cls, keys: Iterable[PublicKey]) -> TrustStore:
        """An in-memory store trusting exactly ``keys``."""
        return cls(TrustEntry(f"key-{k.fingerprint}", k) for k in keys)

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        """Read the store; a missing file is an empty store.

        Raises:
            TrustStoreError: if the file is damaged.

        """
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls(path=path)
        except OSError as exc:
            raise TrustStoreError(f"cannot read trust store {path}: {exc.strerror}") from exc
        try:
            doc = loads_strict(data, max_bytes=_MAX_FILE, what="trust store")
            if (
                not isinstance(doc, dict)
                or "keys" not in doc
                or not set(doc) <= {"keys", "revoked"}
                or not isinstance(doc["keys"], dict)
                or not isinstance(doc.get("revoked", []), list)
            ):
                raise ManifestError('trust store must be {"keys": {name: key}}')
            entries = [_entry_of(n, v) for n, v in doc["keys"].items()]
            revoked = [parse_statement(c) for c in doc.get("revoked", [])]
            if not all(isinstance(c, Revocation) for c in revoked):
                raise ManifestError('"revoked" holds only revocation certificates')
        except (ManifestError, KeyFileError, TrustStoreError, SignatureError) as exc:
            raise TrustStoreError(f"trust store {path} is damaged: {exc}") from exc
        certs = {c.key: c for c in revoked if isinstance(c, Revocation)}
        return cls(entries, path=path, revoked=certs)

    @property
    def entries(self) -> list[TrustEntry]:
        """All entries, sorted by name."""
        return sorted(self._entries, key=lambda e: e.name)

    def name_of(self, key: PublicKey) -> str | None:
        """The name under which ``key`` is trusted, or None."""
        entry = self.entry_of(key)
        return None if entry is None else entry.name

    def entry_of(self, key: PublicKey) -> TrustEntry | None:
        """The entry that trusts ``key``, or None."""
        return next((e for e in self._entries if e.key == key), None)

    def require(self, key: PublicKey) -> str:
        """The trusted name of ``key``.

        Raises:
            UntrustedKeyError: if the key is not trusted.

        """
        name = self.name_of(key)
        if name is None:
            raise UntrustedKeyError(
                f"publisher key {key.fingerprint} ({key.text}) is not in the trust store; "
                "add it with `p2pw trust add` if you trust it"
            )
        return name

    def require_scope(self, key: PublicKey, release_name: str) -> None:
        """Check that the trusted ``key`` may sign releases named ``release_name``.

        Call it only with the name of a manifest whose signature by ``key`` verified.

        Raises:
            UntrustedKeyError: if the key is not trusted at all.
            OutOfScopeError: if its entry is limited to names that do not match.

        """
        entry = self.entry_of(key)
        if entry is None:
            self.require(key)  # raises UntrustedKeyError
        elif not entry.covers(release_name):
            raise OutOfScopeError(
                f"publisher key {key.fingerprint} is trusted as {entry.name!r} only for "
                f"{', '.join(entry.scopes)[:200]}, not for release {release_name!r}; "
                f"widen it with `p2pw trust add {key.text} --name {entry.name} --scope ...` "
                "if you trust it for that name"
            )

    # ------------------------------------------------------------ revocation

    def refuse_revoked(self, key: PublicKey) -> None:
        """Raise if ``key`` was revoked.

        Raises:
            RevokedKeyError: a revocation certificate of the key was seen.
        """
        cert = self.revoked.get(key)
        if cert is not None:
            raise RevokedKeyError(
                f"publisher key {key.fingerprint} ({key.text}) was revoked by its own "
                f"certificate of {_iso(cert.time)}; it is never trusted again"
            )

    def revoke(self, cert: Revocation) -> list[str]:
        """Record a (verified) revocation certificate, and save.

        The key's entry, and its place as a retired key of any entry, are dropped.

        Returns:
            The names of the entries that trusted the key as their current key.
        """
        dropped = [e.name for e in self._entries if e.key == cert.key]

        def strip(e: TrustEntry) -> TrustEntry:  # equal in both lists: transient stays so
            return replace(e, retired=tuple(r for r in e.retired if r.key != cert.key))

        self._entries = [strip(e) for e in self._entries if e.key != cert.key]
        self._transient = [strip(e) for e in self._transient if e.key != cert.key]
        self.revoked.setdefault(cert.key, cert)
        for name in dropped:
            log.warning("trust entry %r dropped: key %s is revoked", name, cert.key.fingerprint)
        self._save()
        return dropped

    def learn(self, statements: Iterable[Statement]) -> None:
        """Record the revocations among verified statements (a release's, a DHT item's).

        A rotation alone changes nothing: the move waits for a release the new key signed.
        """
        for s in statements:
            if isinstance(s, Revocation) and s.key not in self.revoked:
                self.revoke(s)

    # ------------------------------------------------------------ rotation

    def admission(self, key: PublicKey, statements: Sequence[Statement] = ()) -> Admission:
        """How ``key`` is believed: by an entry, as a retired key, or through rotations.

        Raises:
            RevokedKeyError: the key was revoked.
            UntrustedKeyError: none of the three.
        """
        self.refuse_revoked(key)
        entry = self.entry_of(key)
        if entry is not None:
            return Admission(key, entry)
        for e in self._entries:
            for r in e.retired:
                if r.key == key:
                    return Admission(key, e, retired_until=r.until)
        moves = self._chain_to(key, statements, set())
        if moves is None:
            self.require(key)  # raises UntrustedKeyError: the key has no entry
        return Admission(key, None, tuple(moves or ()))

    def _chain_to(
        self, key: PublicKey, statements: Sequence[Statement], seen: set[PublicKey]
    ) -> list[Rotation] | None:
        """Rotations from a trusted key to ``key``, oldest first; never through a revoked key."""
        seen.add(key)
        for r in statements:
            if not isinstance(r, Rotation) or r.new != key or r.old in seen:
                continue
            if r.old in self.revoked:  # no rotation by a revoked key is followed
                continue
            if self.entry_of(r.old) is not None:
                return [r]
            earlier = self._chain_to(r.old, statements, seen)
            if earlier is not None:
                return [*earlier, r]
        return None

    def admit(self, admission: Admission, release_name: str, created: int) -> str:
        """Believe a key for a release whose signature by it verified; its entry's name.

        Rotations in ``admission`` are applied (and saved, and logged): the entry keeps
        its name and scopes, and its old key stays only as a retired key.

        Raises:
            UntrustedKeyError: a retired key signing a release created after its rotation.
            OutOfScopeError: the entry does not cover ``release_name``.
        """
        key = admission.key
        if admission.retired_until is not None and created > admission.retired_until:
            raise UntrustedKeyError(
                f"publisher key {key.fingerprint} was rotated out at "
                f"{_iso(admission.retired_until)}; it is not trusted for a release created "
                f"at {_iso(created)}"
            )
        for r in admission.moves:
            self._move(r)
        if admission.retired_until is None:
            self.require_scope(key, release_name)
            return self.require(key)
        entry = admission.entry
        assert entry is not None
        if not entry.covers(release_name):
            raise OutOfScopeError(
                f"retired key {key.fingerprint} of {entry.name!r} is trusted only for "
                f"{', '.join(entry.scopes)[:200]}, not for release {release_name!r}"
            )
        return entry.name

    def _move(self, r: Rotation) -> None:
        old = self.entry_of(r.old)
        if old is None or self.entry_of(r.new) is not None:
            return  # moved already (by another caller), or the new key has its own entry
        # The old key keeps signing what it signed up to the rotation, never later.
        until = min(r.time, int(time.time()))
        retired = (*old.retired, Retired(r.old, until))[-_MAX_RETIRED:]
        new = TrustEntry(old.name, r.new, old.scopes, retired)
        self._entries = [new if e is old else e for e in self._entries]
        transient = old in self._transient
        if transient:
            self._transient = [new if e is old else e for e in self._transient]
        log.warning(
            "trust entry %r moved from key %s to key %s by a rotation statement of %s",
            old.name,
            r.old.fingerprint,
            r.new.fingerprint,
            _iso(r.time),
        )
        if not transient:
            self._save()

    def add(self, key: PublicKey, name: str, *, scopes: Iterable[str] = ()) -> None:
        """Trust ``key`` under ``name`` for release names matching ``scopes``, and save.

        An existing entry of the key is replaced, scopes included; no scopes means every
        release name.

        Raises:
            TrustStoreError: if the name is taken by another key, or the name or a scope
                is malformed.
            RevokedKeyError: the key was revoked.

        """
        _check_name(name)
        patterns = _check_scopes(list(scopes))
        self.refuse_revoked(key)
        for e in self._entries:
            if e.name == name and e.key != key:
                raise TrustStoreError(f"name {name!r} already trusts key {e.key.fingerprint}")
        entry = TrustEntry(name, key, patterns)
        self._entries = [e for e in self._entries if e.key != key] + [entry]
        self._save()

    def remove(self, name_or_key: str) -> TrustEntry:
        """Stop trusting an entry, by its name or key text, and save.

        Raises:
            TrustStoreError: if nothing matches.

        """
        match = [e for e in self._entries if name_or_key in (e.name, e.key.text)]
        if not match:
            raise TrustStoreError(f"no trusted key named {name_or_key!r}")
        self._entries = [e for e in self._entries if e not in match]
        self._save()
        return match[0]

    def _save(self) -> None:
        if self.path is None:
            return
        doc: dict[str, object] = {
            "keys": {e.name: _entry_doc(e) for e in self._entries if e not in self._transient}
        }
        if self.revoked:
            doc["revoked"] = [c.to_doc() for c in self.revoked.values()]
        try:
            atomic_write_bytes(self.path, dumps(doc) + b"\n", mode=0o600)
        except OSError as exc:
            raise TrustStoreError(f"cannot write trust store {self.path}: {exc.strerror}") from exc


def _iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))


def _entry_doc(e: TrustEntry) -> object:
    """An entry as the file holds it (unscoped, unrotated: the old plain string form)."""
    if not e.scopes and not e.retired:
        return e.key.text
    doc: dict[str, object] = {"key": e.key.text}
    if e.scopes:
        doc["scopes"] = list(e.scopes)
    if e.retired:
        doc["retired"] = [{"key": r.key.text, "until": r.until} for r in e.retired]
    return doc


def _entry_of(name: object, value: object) -> TrustEntry:
    """An entry of the file: a key string, or ``{"key", "scopes"?, "retired"?}``."""
    if isinstance(value, dict):
        if (
            "key" not in value
            or not set(value) <= {"key", "scopes", "retired"}
            or len(value) < 2
            or not isinstance(value.get("scopes", []), list)
            or not isinstance(value.get("retired", []), list)
        ):
            raise ManifestError(
                'a trust entry object must be {"key": KEY, "scopes": [PATTERN], '
                '"retired": [{"key": KEY, "until": TIME}]} with scopes or retired keys'
            )
        if "scopes" in value and not value["scopes"]:
            raise ManifestError(f"trust entry {name!r} has an empty scope list")
        return TrustEntry(
            _check_name(name),
            PublicKey.parse(value["key"]),
            _check_scopes(value.get("scopes", [])),
            tuple(_retired_of(r) for r in value.get("retired", [])[:_MAX_RETIRED]),
        )
    return TrustEntry(_check_name(name), PublicKey.parse(value))


def _retired_of(value: object) -> Retired:
    if (
        not isinstance(value, dict)
        or set(value) != {"key", "until"}
        or type(value["until"]) is not int
    ):
        raise ManifestError('a retired key must be {"key": KEY, "until": UNIX_SECONDS}')
    return Retired(PublicKey.parse(value["key"]), value["until"])


def _check_scopes(scopes: list[object]) -> tuple[str, ...]:
    if len(scopes) > _MAX_SCOPES:
        raise TrustStoreError(f"a trust entry takes at most {_MAX_SCOPES} scopes")
    for pattern in scopes:
        if not isinstance(pattern, str) or not _SCOPE_RE.fullmatch(pattern):
            raise TrustStoreError(
                f"scope {str(pattern)[:80]!r} is not a release-name pattern "
                "(letters, digits, '.', '_', '-', '/' and the wildcards * ? [ ] !)"
            )
    return tuple(dict.fromkeys(str(p) for p in scopes))


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise TrustStoreError("a trust name is 1-100 letters, digits, '.', '_' or '-'")
    return name


def trust_for(trust: TrustStore | None, home: Path | str | None) -> TrustStore:
    """``trust`` if given, else the data dir's trust store plus the user's own keys.

    The user's own keys (:func:`own_keys`) let a publisher verify and load what they just
    packed. The result is in memory: adding to it never writes them into ``trust.json``.
    """
    if trust is not None:
        return trust
    home_dir = data_dir(home)
    store = TrustStore.load(trust_path(home_dir))
    own = [
        e
        for e in own_keys(home_dir)
        if store.entry_of(e.key) is None and e.key not in store.revoked
    ]
    if not own:
        return store
    # Kept on the file, so that a rotation it meets is saved, but the own keys never are.
    return TrustStore(store.entries, path=store.path, revoked=store.revoked, transient=own)


def own_keys(home: Path) -> list[TrustEntry]:
    """The public keys of the signing keys in ``home/keys``, named after their files.

    A key whose PEM is encrypted counts once its public key sits beside it in
    ``NAME.pub`` (``ed25519:...``); files that are not keys are skipped.
    """
    keys_dir = home / "keys"
    found: list[TrustEntry] = []
    for pem in sorted(keys_dir.glob("*.pem")) if keys_dir.is_dir() else []:
        pub = pem.with_suffix(".pub")
        try:
            if pub.is_file():
                key = PublicKey.parse(pub.read_text("ascii").strip())
            else:
                key = load_private_key(pem).public
        except (KeyFileError, FormatError, OSError, UnicodeDecodeError, ValueError):
            continue  # encrypted without a .pub, or not a key at all
        found.append(TrustEntry(f"your own key {pem}", key))
    return found
