"""The trust store: publisher keys this user believes, each under a name.

It is one small JSON file (``trust.json`` in the data dir), rewritten atomically.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ._atomic import atomic_write_bytes
from ._canonical import dumps, loads_strict
from .errors import KeyFileError, ManifestError, TrustStoreError, UntrustedKeyError
from .keys import PublicKey
from .paths import data_dir, trust_path

__all__ = ["TrustEntry", "TrustStore"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_MAX_FILE = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TrustEntry:
    """A trusted publisher key and the name the user gave it."""

    name: str
    key: PublicKey


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
            entries = [
                TrustEntry(_check_name(n), PublicKey.parse(k)) for n, k in doc["keys"].items()
            ]
        except (ManifestError, KeyFileError) as exc:
            raise TrustStoreError(f"trust store {path} is damaged: {exc}") from exc
        return cls(entries, path=path)

    @property
    def entries(self) -> list[TrustEntry]:
        """All entries, sorted by name."""
        return sorted(self._entries, key=lambda e: e.name)

    def name_of(self, key: PublicKey) -> str | None:
        """The name under which ``key`` is trusted, or None."""
        return next((e.name for e in self._entries if e.key == key), None)

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

    def add(self, key: PublicKey, name: str) -> None:
        """Trust ``key`` under ``name`` and save.

        Raises:
            TrustStoreError: if the name is taken by another key or is malformed.

        """
        _check_name(name)
        for e in self._entries:
            if e.name == name and e.key != key:
                raise TrustStoreError(f"name {name!r} already trusts key {e.key.fingerprint}")
        self._entries = [e for e in self._entries if e.key != key] + [TrustEntry(name, key)]
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
        doc = {"keys": {e.name: e.key.text for e in self._entries}}
        try:
            atomic_write_bytes(self.path, dumps(doc) + b"\n", mode=0o600)
        except OSError as exc:
            raise TrustStoreError(f"cannot write trust store {self.path}: {exc.strerror}") from exc


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise TrustStoreError("a trust name is 1-100 letters, digits, '.', '_' or '-'")
    return name


def trust_for(trust: TrustStore | None, home: Path | str | None) -> TrustStore:
    """``trust`` if given, else the trust store of the data dir ``home`` (or the default)."""
    return trust if trust is not None else TrustStore.load(trust_path(data_dir(home)))
