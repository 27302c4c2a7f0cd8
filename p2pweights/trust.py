"""The trust store: publisher keys this user believes, each under a name and a scope.

It is one small JSON file (``trust.json`` in the data dir), rewritten atomically::

    {"keys": {"org": "ed25519:...",
              "other": {"key": "ed25519:...", "scopes": ["other/*"]}}}

A plain key string trusts the key for every release name (the form every entry had
before scopes, so older files load as they are); the object form limits the key to
release names (``ORG/MODEL``) that match one of its ``fnmatch`` patterns, case-sensitive.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ._atomic import atomic_write_bytes
from ._canonical import dumps, loads_strict
from .errors import (
    FormatError,
    KeyFileError,
    ManifestError,
    OutOfScopeError,
    TrustStoreError,
    UntrustedKeyError,
)
from .keys import PublicKey, load_private_key
from .paths import data_dir, trust_path

__all__ = ["TrustEntry", "TrustStore", "own_keys", "trust_for"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SCOPE_RE = re.compile(r"[A-Za-z0-9._*?\[\]!/-]{1,201}")
"""A scope: the characters of a release name plus fnmatch's ``* ? [ ] !``."""
_MAX_SCOPES = 256
_MAX_FILE = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TrustEntry:
    """A trusted publisher key, the name the user gave it, and the names it may sign."""

    name: str
    key: PublicKey
    scopes: tuple[str, ...] = ()
    """``fnmatch`` patterns of release names this key is trusted for; empty = every name."""

    def covers(self, release_name: str) -> bool:
        """True when this entry trusts its key for releases named ``release_name``."""
        return not self.scopes or any(fnmatch.fnmatchcase(release_name, p) for p in self.scopes)


class TrustStore:
    """Trusted publisher keys, either from a file or given in memory."""

    def __init__(self, entries: Iterable[TrustEntry] = (), *, path: Path | None = None) -> None:
        self._entries = list(entries)
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
                or set(doc) != {"keys"}
                or not isinstance(doc["keys"], dict)
            ):
                raise ManifestError('trust store must be {"keys": {name: key}}')
            entries = [_entry_of(n, v) for n, v in doc["keys"].items()]
        except (ManifestError, KeyFileError, TrustStoreError) as exc:
            raise TrustStoreError(f"trust store {path} is damaged: {exc}") from exc
        return cls(entries, path=path)

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

    def add(self, key: PublicKey, name: str, *, scopes: Iterable[str] = ()) -> None:
        """Trust ``key`` under ``name`` for release names matching ``scopes``, and save.

        An existing entry of the key is replaced, scopes included; no scopes means every
        release name.

        Raises:
            TrustStoreError: if the name is taken by another key, or the name or a scope
                is malformed.

        """
        _check_name(name)
        patterns = _check_scopes(list(scopes))
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
        # An unscoped entry keeps the plain string form, readable by older versions.
        doc = {
            "keys": {
                e.name: {"key": e.key.text, "scopes": list(e.scopes)} if e.scopes else e.key.text
                for e in self._entries
            }
        }
        try:
            atomic_write_bytes(self.path, dumps(doc) + b"\n", mode=0o600)
        except OSError as exc:
            raise TrustStoreError(f"cannot write trust store {self.path}: {exc.strerror}") from exc


def _entry_of(name: object, value: object) -> TrustEntry:
    """An entry of the file: a key string, or ``{"key": ..., "scopes": [...]}``."""
    if isinstance(value, dict):
        if set(value) != {"key", "scopes"} or not isinstance(value["scopes"], list):
            raise ManifestError('a scoped trust entry must be {"key": KEY, "scopes": [PATTERN]}')
        if not value["scopes"]:
            raise ManifestError(f"trust entry {name!r} has an empty scope list")
        return TrustEntry(
            _check_name(name), PublicKey.parse(value["key"]), _check_scopes(value["scopes"])
        )
    return TrustEntry(_check_name(name), PublicKey.parse(value))


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
    own = [e for e in own_keys(home_dir) if store.entry_of(e.key) is None]
    return TrustStore([*store.entries, *own]) if own else store


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
