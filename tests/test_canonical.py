"""Unit tests of canonical JSON: the exact bytes that get signed, and the strict parser."""

from __future__ import annotations

import json

import pytest

from p2pweights import ManifestError
from p2pweights._canonical import MAX_DEPTH, dumps, encode_parsed, loads_strict


def _nested(levels: int) -> list[object]:
    value: list[object] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_dumps_is_sorted_compact_utf8() -> None:
    doc = {"b": [1, {"é": "ü", "a": None}], "a": True, "c": -(2**60)}
    assert dumps(doc) == '{"a":true,"b":[1,{"a":null,"é":"ü"}],"c":-1152921504606846976}'.encode()
    assert dumps((1, 2)) == b"[1,2]"
    assert encode_parsed({"z": 1, "y": [2]}) == b'{"y":[2],"z":1}'


@pytest.mark.parametrize("value", [1.5, [0.0], {"a": [1, {"b": 2.0}]}, (1, 1e3), float("nan")])
def test_dumps_refuses_floats_anywhere(value: object) -> None:
    with pytest.raises(ManifestError, match=r"^floats are not allowed in canonical JSON$"):
        dumps(value)


def test_dumps_depth_limit() -> None:
    assert dumps(_nested(MAX_DEPTH + 1)) == b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    with pytest.raises(ManifestError, match=rf"^JSON nesting deeper than {MAX_DEPTH}$"):
        dumps(_nested(MAX_DEPTH + 2))
    with pytest.raises(ManifestError, match="nesting deeper"):
        dumps({"a": _nested(MAX_DEPTH + 1)})
    assert dumps({"a": _nested(MAX_DEPTH)}).startswith(b'{"a":[[')  # a dict is one level


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({1: 2, "a": 3}, "^value cannot be encoded as canonical JSON: "),
        ({"a": object()}, "^value cannot be encoded as canonical JSON: "),
        ("\ud800", "^value holds an unpaired UTF-16 surrogate$"),
    ],
)
def test_dumps_refuses_what_json_cannot_express(value: object, says: str) -> None:
    with pytest.raises(ManifestError, match=says):
        dumps(value)
    with pytest.raises(ManifestError, match=says):
        encode_parsed(value)


def test_encode_parsed_refuses_nan() -> None:
    with pytest.raises(ManifestError, match="cannot be encoded"):
        encode_parsed([float("nan")])


def test_loads_strict_size_boundary_and_message() -> None:
    data = b"[" + b"1," * 10 + b"1]"
    assert loads_strict(data, max_bytes=len(data)) == [1] * 11
    with pytest.raises(ManifestError, match=rf"^thing is {len(data)} bytes, over the limit of 5$"):
        loads_strict(data, max_bytes=5, what="thing")
    with pytest.raises(ManifestError, match=r"^manifest is "):
        loads_strict(data, max_bytes=len(data) - 1)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'["a\xff"]', r"^doc is not valid UTF-8 \(byte 3\)$"),
        (b'{"a":1,"a":2}', r"^doc is not acceptable JSON: duplicate JSON key 'a'$"),
        (b"[NaN]", "^doc is not acceptable JSON: JSON constant NaN is not allowed$"),
        (b"[-Infinity]", "^doc is not acceptable JSON: JSON constant -Infinity is not"),
        (b"[1.5]", r"^doc is not acceptable JSON: non-integer number '1\.5' is not"),
        (b"[1e3]", "^doc is not acceptable JSON: non-integer number '1e3' is not"),
        (b"[1,]", r"^doc is not valid JSON: Expecting value at byte 3$"),
        (b"[" + b"9" * 5000 + b"]", "^doc is not acceptable JSON: "),
        (b'["\\ud800"]', "^doc holds an unpaired UTF-16 surrogate$"),
        (b'{"\\uDC00":1}', "^doc holds an unpaired UTF-16 surrogate$"),
        (b'{"a":[["x","\\ud83d"]]}', "^doc holds an unpaired UTF-16 surrogate$"),
    ],
)
def test_loads_strict_refusals(data: bytes, says: str) -> None:
    with pytest.raises(ManifestError, match=says):
        loads_strict(data, max_bytes=1 << 20, what="doc")


def test_loads_strict_accepts_escaped_pairs_and_brackets_in_strings() -> None:
    assert loads_strict(b'{"k":"\\ud83d\\ude00"}', max_bytes=100) == {"k": "\U0001f600"}
    assert loads_strict(b'{"\\ud83d\\ude00":["\\u00e9"]}', max_bytes=100) == {"\U0001f600": ["é"]}
    brackets = '["' + "[{" * 100 + '\\"]"]'
    assert loads_strict(brackets.encode(), max_bytes=1000) == ["[{" * 100 + '"]']


def test_nesting_is_measured_not_counted() -> None:
    # Many brackets, shallow nesting: accepted.
    wide = b"[" + b"[]," * (MAX_DEPTH * 3) + b"{}]"
    assert len(loads_strict(wide, max_bytes=1000)) == MAX_DEPTH * 3 + 1
    deep = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert loads_strict(deep, max_bytes=1000) == _nested(MAX_DEPTH)
    with pytest.raises(ManifestError, match=rf"^doc nests deeper than {MAX_DEPTH} levels$"):
        loads_strict(b"[" + deep + b"]", max_bytes=1000, what="doc")
    mixed = b'{"a":' * (MAX_DEPTH - 1) + b"[]" + b"}" * (MAX_DEPTH - 1)
    assert loads_strict(mixed, max_bytes=1000) is not None
    with pytest.raises(ManifestError, match="nests deeper"):
        loads_strict(b"[" + mixed + b"]", max_bytes=1000)


def test_nesting_counts_siblings_right() -> None:
    # A closed sibling lowers the depth by one, no more and no less.
    at_limit = json.dumps([_nested(MAX_DEPTH - 1), []]).encode()
    assert loads_strict(at_limit, max_bytes=1000) == [_nested(MAX_DEPTH - 1), []]
    for over in ([[], _nested(MAX_DEPTH)], _wrap([[], _nested(15)], MAX_DEPTH - 14)):
        with pytest.raises(ManifestError, match="nests deeper"):
            loads_strict(json.dumps(over).encode(), max_bytes=10_000)


def _wrap(value: object, times: int) -> object:
    for _ in range(times):
        value = [value]
    return value


def test_messages_quote_a_bounded_part_of_the_input() -> None:
    key = "k" * 100
    with pytest.raises(ManifestError) as info:
        loads_strict(f'{{"{key}":1,"{key}":2}}'.encode(), max_bytes=1000, what="doc")
    assert str(info.value) == f"doc is not acceptable JSON: duplicate JSON key {key[:80]!r}"
    number = "1." + "0" * 100
    with pytest.raises(ManifestError) as info:
        loads_strict(f"[{number}]".encode(), max_bytes=1000, what="doc")
    assert str(info.value) == (
        f"doc is not acceptable JSON: non-integer number {number[:40]!r} is not allowed"
    )
    with pytest.raises(ManifestError) as info:
        loads_strict(b"[" + b"9" * 5000 + b"]", max_bytes=10_000, what="doc")
    reason = str(info.value).removeprefix("doc is not acceptable JSON: ")
    assert len(reason) == 120 and reason.startswith("Exceeds the limit")
