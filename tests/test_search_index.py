"""The search index document: its round trip, its matching, and hostile documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from p2pweights import generate_key
from p2pweights.errors import SearchIndexError, SearchQueryError
from p2pweights.keys import PublicKey
from p2pweights.search_index import (
    INDEX_NAME,
    MAX_ENTRIES,
    MAX_INDEX_BYTES,
    IndexEntry,
    SearchIndex,
    check_tags,
    decode_index,
    parse_words,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[PublicKey, PublicKey]:
    home = tmp_path_factory.mktemp("keys")
    return generate_key(home / "a.pem").public, generate_key(home / "b.pem").public


def _entry(name: str = "org/llama-chat", **kw: Any) -> IndexEntry:
    fields: dict[str, Any] = {
        "version": 3,
        "info_hash": "a" * 64,
        "manifest_sha256": "b" * 64,
        "label": "Chat Model",
        "tags": ("llama", "instruct"),
        "issued_at": 1_700_000_000,
    }
    return IndexEntry(name, **{**fields, **kw})


def _doc(key: PublicKey, entries: list[Any], **top: Any) -> bytes:
    doc = {"entries": entries, "f": 1, "issued": 1_700_000_000, "publisher": key.text, **top}
    return json.dumps(doc).encode()


def test_round_trip_is_canonical_and_sorted(keys: tuple[PublicKey, PublicKey]) -> None:
    a, _ = keys
    index = SearchIndex(a.text, 5, (_entry("org/z"), _entry("org/a", tags=())))
    data = index.encode()
    assert data == SearchIndex(a.text, 5, tuple(reversed(index.entries))).encode()
    back = decode_index(data, a)
    assert [e.name for e in back.entries] == ["org/a", "org/z"]
    assert set(back.entries) == set(index.entries)


def test_matching_needs_every_word_in_name_label_or_tags() -> None:
    e = _entry()
    assert e.matches(()) and e.matches(("llama",)) and e.matches(("chat", "instruct"))
    assert e.matches(parse_words("LLAMA Model"))  # the label, case-insensitively
    assert not e.matches(("llama", "vision"))
    assert parse_words(["Llama", "llama  chat"]) == ("llama", "chat")


def test_an_index_speaks_only_for_the_key_that_signed_it(
    keys: tuple[PublicKey, PublicKey],
) -> None:
    a, b = keys
    data = SearchIndex(a.text, 1, (_entry(),)).encode()
    with pytest.raises(SearchIndexError, match="claims another publisher"):
        decode_index(data, b)
    # An entry cannot name another key: entries have no such field.
    other = {**_entry().doc(), "publisher": b.text}
    with pytest.raises(SearchIndexError, match="exactly the fields"):
        decode_index(_doc(a, [other]), a)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"n": 7}, "not a release name"),
        ({"n": "../../etc/passwd"}, "not a release name"),
        ({"n": INDEX_NAME}, "not a release name"),
        ({"v": "3"}, "integers"),
        ({"v": -1}, "integers"),
        ({"iat": 2.5}, "non-integer"),
        ({"ih": "A" * 64}, "64 hex"),
        ({"ms": None}, "64 hex"),
        ({"label": "x" * 257}, "label"),
        ({"label": ["x"]}, "label"),
        ({"tags": "llama"}, "tags are a list"),
        ({"tags": ["ok"] * 17}, "tags are a list"),
        ({"tags": ["bad tag"]}, "is not 1-32"),
        ({"tags": [{"t": 1}]}, "is not 1-32"),
    ],
)
def test_hostile_entries_are_refused(
    keys: tuple[PublicKey, PublicKey], entry: dict[str, Any], match: str
) -> None:
    a, _ = keys
    with pytest.raises(SearchIndexError, match=match):
        decode_index(_doc(a, [{**_entry().doc(), **entry}]), a)


def test_hostile_documents_are_refused(keys: tuple[PublicKey, PublicKey]) -> None:
    a, _ = keys
    good = _entry().doc()
    for data in (
        b"[]",
        b"not json",
        _doc(a, [good], f=2),
        _doc(a, [good], extra=1),
        _doc(a, {"n": "x"}),  # type: ignore[arg-type]
        _doc(a, [good], issued="now"),
        _doc(a, [good, good]),  # a name twice
        b'{"f":1,"f":1}',  # duplicate keys
        b"[" * 100 + b"]" * 100,  # deep nesting
        b" " * (MAX_INDEX_BYTES + 1),
    ):
        with pytest.raises(SearchIndexError):
            decode_index(data, a)
    too_many = [{**good, "n": f"org/m{i}"} for i in range(MAX_ENTRIES + 1)]
    with pytest.raises(SearchIndexError):
        decode_index(_doc(a, too_many), a)
    with pytest.raises(SearchIndexError, match="at most"):
        SearchIndex(a.text, 1, tuple(_entry(f"o/m{i}") for i in range(MAX_ENTRIES + 1))).encode()


def test_tags_and_query_limits() -> None:
    assert check_tags(["a", "b", "a"]) == ("a", "b")
    with pytest.raises(SearchIndexError):
        check_tags(["-leading-dash"])
    for hostile in ("x" * 600, " ".join(f"w{i}" for i in range(17)), "x" * 65, "a\x00b", "a\nb"):
        with pytest.raises(SearchQueryError):
            parse_words(hostile)
    assert SearchQueryError.exit_code == 2 and SearchIndexError.exit_code == 5
