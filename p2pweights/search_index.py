"""A publisher's search index: the signed list of its names that ``p2pw search`` reads.

Each publisher's daemon keeps one index per key: an ordinary release, signed by that key,
named :data:`INDEX_NAME` (reserved), whose one file :data:`INDEX_FILE` is canonical JSON::

    {"entries":[{"iat":ISSUED,"ih":"<v2 info-hash>","label":"...","ms":"<manifest sha256>",
                 "n":"ORG/MODEL","tags":["..."],"v":VERSION}, ...],
     "f":1,"issued":ISSUED,"publisher":"ed25519:<key>"}

Its ``p2pw://`` name (:data:`INDEX_NAME` under the key) points to the latest one, so a
reader gets the name's defences (forgery, rollback, freeze) for it. An entry holds no key
of its own: every name an index lists is a name under the key that signed the index, and
:func:`decode_index` refuses a document whose ``publisher`` is not that key. So no one
can write into another publisher's index. This module is the format only (no network).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._canonical import dumps, loads_strict
from .errors import ManifestError, SearchIndexError, SearchQueryError

if TYPE_CHECKING:
    from .keys import PublicKey

__all__ = [
    "INDEX_FILE",
    "INDEX_NAME",
    "MAX_INDEX_BYTES",
    "IndexEntry",
    "SearchIndex",
    "check_tags",
    "decode_index",
    "parse_words",
]

INDEX_NAME = "p2pw.index"
"""The reserved release name of a publisher's index (a plain release name may not take it)."""
INDEX_FILE = "p2pw-index.json"
"""The index release's one file: the document."""
FORMAT = 1
MAX_INDEX_BYTES = 1 << 20
MAX_ENTRIES = 4096
MAX_TAGS = 16
MAX_LABEL = 256
MAX_WORDS = 16
MAX_WORD = 64
MAX_QUERY = 512
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,31}")
_RELEASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99})?")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENTRY_FIELDS = {"iat", "ih", "label", "ms", "n", "tags", "v"}
_TOP_FIELDS = {"entries", "f", "issued", "publisher"}


def check_tags(tags: object) -> tuple[str, ...]:
    """Tags as an index holds them: at most 16, each 1-32 of ``A-Za-z0-9._+-``.

    Raises:
        SearchIndexError: too many tags, or one that breaks the grammar.
    """
    if not isinstance(tags, list | tuple) or len(tags) > MAX_TAGS:
        raise SearchIndexError(f"tags are a list of at most {MAX_TAGS}")
    for t in tags:
        if not (isinstance(t, str) and _TAG.fullmatch(t)):
            raise SearchIndexError(
                f"tag {str(t)[:40]!r} is not 1-32 characters of A-Z a-z 0-9 . _ + - "
                "(starting with a letter or digit)"
            )
    return tuple(dict.fromkeys(tags))


def _int(value: object) -> bool:
    return type(value) is int and 0 <= value < 2**53


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One name of the publisher: its latest version, and what a search matches."""

    name: str
    version: int
    info_hash: str
    manifest_sha256: str
    label: str = ""
    tags: tuple[str, ...] = field(default=())
    issued_at: int = 0

    def doc(self) -> dict[str, object]:
        """The entry as it sits in the document."""
        return {
            "iat": self.issued_at,
            "ih": self.info_hash,
            "label": self.label,
            "ms": self.manifest_sha256,
            "n": self.name,
            "tags": list(self.tags),
            "v": self.version,
        }

    @classmethod
    def of_doc(cls, doc: object) -> IndexEntry:
        """Parse one entry (hostile input).

        Raises:
            SearchIndexError: missing, unknown or ill-typed fields.
        """
        if not isinstance(doc, dict) or set(doc) != _ENTRY_FIELDS:
            raise SearchIndexError(
                f"an index entry has exactly the fields {sorted(_ENTRY_FIELDS)}"
            )
        name, label = doc["n"], doc["label"]
        if not (isinstance(name, str) and _RELEASE_NAME.fullmatch(name)) or name == INDEX_NAME:
            raise SearchIndexError(f"index entry name {str(name)[:80]!r} is not a release name")
        if not (_int(doc["v"]) and _int(doc["iat"])):
            raise SearchIndexError(f"index entry {name}: version and time must be integers")
        for k in ("ih", "ms"):
            if not (isinstance(doc[k], str) and _HEX64.fullmatch(doc[k])):
                raise SearchIndexError(f"index entry {name}: {k} is not 64 hex digits")
        if not (isinstance(label, str) and len(label) <= MAX_LABEL):
            raise SearchIndexError(f"index entry {name}: the label is not text of <= {MAX_LABEL}")
        return cls(name, doc["v"], doc["ih"], doc["ms"], label, check_tags(doc["tags"]), doc["iat"])

    def matches(self, words: tuple[str, ...]) -> bool:
        """True when every word (lower case) is in the name, the label or a tag."""
        fields = [self.name.lower(), self.label.lower(), *(t.lower() for t in self.tags)]
        return all(any(w in f for f in fields) for w in words)


@dataclass(frozen=True, slots=True)
class SearchIndex:
    """A publisher's index: its key (as text), when it was made, and its entries."""

    publisher: str
    issued_at: int
    entries: tuple[IndexEntry, ...]

    def encode(self) -> bytes:
        """The document's canonical bytes.

        Raises:
            SearchIndexError: over the entry or byte cap.
        """
        if len(self.entries) > MAX_ENTRIES:
            raise SearchIndexError(f"an index lists at most {MAX_ENTRIES} names")
        data = dumps(
            {
                "entries": [e.doc() for e in sorted(self.entries, key=lambda e: e.name)],
                "f": FORMAT,
                "issued": self.issued_at,
                "publisher": self.publisher,
            }
        )
        if len(data) > MAX_INDEX_BYTES:
            raise SearchIndexError(f"the index is {len(data)} bytes, over {MAX_INDEX_BYTES}")
        return data


def decode_index(data: bytes, publisher: PublicKey) -> SearchIndex:
    """Parse an index document that ``publisher`` signed (hostile input).

    Args:
        data: the document's bytes (its sha256 was checked against the signed manifest).
        publisher: the key that signed the index release and its name record.

    Raises:
        SearchIndexError: not an index of this format, over a limit, a duplicate or
            reserved name, or a ``publisher`` other than the key that signed it.
    """
    try:
        doc = loads_strict(data, max_bytes=MAX_INDEX_BYTES, what="search index")
    except ManifestError as exc:
        raise SearchIndexError(str(exc)) from None
    if not isinstance(doc, dict) or doc.get("f") != FORMAT or set(doc) != _TOP_FIELDS:
        raise SearchIndexError("not a p2pw search index of format 1")
    if doc["publisher"] != publisher.text:
        # Only the signer's own names: an index never speaks for another key.
        raise SearchIndexError(
            f"the index signed by {publisher.fingerprint} claims another publisher"
        )
    entries = doc["entries"]
    if not _int(doc["issued"]) or not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise SearchIndexError(f"an index has an issue time and at most {MAX_ENTRIES} entries")
    parsed = tuple(IndexEntry.of_doc(e) for e in entries)
    if len({e.name for e in parsed}) != len(parsed):
        raise SearchIndexError("the index lists a name twice")
    return SearchIndex(publisher.text, doc["issued"], parsed)


def parse_words(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Search words, lower case, from a query string or a list of them.

    Raises:
        SearchQueryError: over 512 characters, 16 words or 64 characters a word, or
            control characters.
    """
    joined = " ".join(text) if isinstance(text, list | tuple) else text
    if len(joined) > MAX_QUERY or not joined.isprintable():
        raise SearchQueryError(
            f"search words are printable text of at most {MAX_QUERY} characters"
        )
    words = tuple(dict.fromkeys(w.lower() for w in joined.split()))
    if len(words) > MAX_WORDS or any(len(w) > MAX_WORD for w in words):
        raise SearchQueryError(
            f"at most {MAX_WORDS} search words of at most {MAX_WORD} characters each"
        )
    return words
