"""Property tests that start from valid input: generated manifests and safetensors headers.

``test_properties.py`` throws arbitrary and structured junk at the parsers; most of it is
refused early. Here Hypothesis builds inputs that are valid by construction (each one
must parse, and round-trip), then mutates them slightly, so the checks deep in the parsers
(canonical form, offsets, alignment, overlaps, sizes) are reached on input that is
otherwise accepted. ``pytest --hypothesis-show-statistics`` prints the share of examples
that parse (the ``manifest parses`` and ``header parses`` events); docs/testing.md has
the figures.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from p2pweights import ManifestError, P2PWeightsError, SafetensorsHeaderError
from p2pweights._canonical import dumps
from p2pweights._safetensors import DTYPES, ParsedHeader, expected_nbytes, read_header
from p2pweights.keys import PublicKey
from p2pweights.manifest import ChunkEntry, FileEntry, Manifest, TensorEntry


def _settings(n: int) -> settings:
    return settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=n,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# ---------------------------------------------------------------- valid manifests

hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
segment = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}", fullmatch=True)
# Any text but NUL and lone surrogates (which have no canonical encoding).
plain_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=12,
)
ints = st.integers(min_value=0, max_value=2**53)


@st.composite
def valid_manifests(draw: st.DrawFn) -> Manifest:
    """A manifest that is valid by construction: every example must parse."""
    tensors: dict[str, TensorEntry] = {}
    chunks: dict[str, ChunkEntry] = {}
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = "chunks/" + draw(hex64) + ".safetensors"
        if path in chunks:
            continue
        pos = 8 + draw(st.integers(min_value=0, max_value=40))
        for _ in range(draw(st.integers(min_value=0, max_value=4))):
            dtype = draw(st.sampled_from(sorted(DTYPES)))
            shape = tuple(draw(st.lists(st.integers(min_value=0, max_value=5), max_size=3)))
            item = DTYPES[dtype].itemsize
            pos += (-pos) % item + item * draw(st.integers(min_value=0, max_value=2))
            name = draw(plain_text.filter(bool))
            if name not in tensors:
                n = expected_nbytes(dtype, shape)
                tensors[name] = TensorEntry(name, path, dtype, shape, pos, pos + n)
                pos += n
        chunks[path] = ChunkEntry(path, pos, draw(hex64), draw(hex64), "tensors")
    files: dict[str, FileEntry] = {}
    names = list(tensors)
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        fname = "/".join(draw(st.lists(segment, min_size=1, max_size=3)))
        kind = draw(st.sampled_from(["blob", "empty", "safetensors", "torch"]))
        order = tuple(draw(st.lists(st.sampled_from(names), unique=True)) if names else [])
        if kind == "blob":
            size, sha = draw(st.integers(min_value=1, max_value=2**40)), draw(hex64)
            path = "chunks/" + sha
            if path in chunks:
                continue
            chunks[path] = ChunkEntry(path, size, sha, draw(hex64), "blob")
            entry = FileEntry(fname, size, sha, "blob", path)
        elif kind == "empty":
            entry = FileEntry(fname, 0, draw(hex64), "blob")
        elif kind == "safetensors":
            header = draw(plain_text)
            body = sum(tensors[n].end - tensors[n].begin for n in order)
            size = 8 + len(header.encode()) + body
            entry = FileEntry(fname, size, draw(hex64), "safetensors", header=header, order=order)
        else:
            size = draw(st.integers(min_value=0, max_value=2**50))
            entry = FileEntry(fname, size, draw(hex64), "torch", order=order)
        files.setdefault(fname, entry)
    created = draw(st.integers(min_value=0, max_value=2**53 - 1))
    expires = draw(st.one_of(st.none(), st.integers(min_value=created + 1, max_value=2**53)))
    name = draw(segment) + draw(st.one_of(st.just(""), segment.map(lambda s: "/" + s)))
    return Manifest(
        name=name,
        version=draw(ints),
        label=draw(plain_text),
        publisher=PublicKey(draw(st.binary(min_size=32, max_size=32))),
        created=created,
        expires=expires,
        previous=draw(st.one_of(st.none(), hex64)),
        chunks=tuple(sorted(chunks.values(), key=lambda c: c.path)),
        tensors=tensors,
        files=tuple(sorted(files.values(), key=lambda f: f.name)),
    )


def _parse(data: bytes) -> Manifest | None:
    try:
        m = Manifest.from_bytes(data)
    except P2PWeightsError:
        event("manifest refused")
        return None
    event("manifest parses")
    return m


def _positions(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _positions(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _positions(v, (*prefix, i))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


@_settings(100)
@given(valid_manifests())
def test_generated_manifests_parse_and_round_trip(m: Manifest) -> None:
    data = m.to_bytes()
    back = Manifest.from_bytes(data)
    assert back == m
    assert back.to_bytes() == data


@_settings(150)
@given(
    valid_manifests(),
    st.sampled_from(["indent", "spaces", "unsorted", "ascii", "newline", "bom", "escape"]),
)
def test_non_canonical_encodings_of_a_valid_manifest_are_refused(m: Manifest, how: str) -> None:
    data = m.to_bytes()
    doc = json.loads(data)
    if how == "indent":
        other = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False).encode()
    elif how == "spaces":
        other = json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()
    elif how == "unsorted":
        other = json.dumps(dict(reversed(doc.items())), separators=(",", ":")).encode()
        other = json.dumps(json.loads(other), separators=(",", ":"), ensure_ascii=False).encode()
    elif how == "ascii":
        other = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    elif how == "newline":
        other = data + b"\n"
    elif how == "bom":
        other = b"\xef\xbb\xbf" + data
    else:  # the same string, written with a needless escape
        other = data.replace(b'"format":"p', b'"format":"\\u0070', 1)
    assume(other != data)
    with pytest.raises(ManifestError):
        Manifest.from_bytes(other)


near_value = st.one_of(
    hex64,
    ints,
    st.integers(min_value=-2, max_value=300),
    plain_text,
    st.sampled_from([None, True, [], {}, "F32", "I64", "blob", "tensors", "torch"]),
    st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=3),
)


@_settings(300)
@given(valid_manifests(), st.data())
def test_valid_manifest_with_one_field_changed(m: Manifest, data: st.DataObject) -> None:
    doc = json.loads(m.to_bytes())
    where = data.draw(st.sampled_from(_positions(doc)[1:]))
    old = _get(doc, where)
    if isinstance(old, int) and not isinstance(old, bool):
        new = data.draw(st.one_of(st.sampled_from([old - 1, old + 1, old * 2]), near_value))
    else:
        new = data.draw(near_value)
    _get(doc, where[:-1])[where[-1]] = new
    raw = dumps(doc)
    parsed = _parse(raw)
    if parsed is not None:
        assert parsed.to_bytes() == raw


byte_edit = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "space"]),
    st.floats(min_value=0, max_value=1, exclude_max=True),
    st.integers(min_value=0, max_value=255),
)


@_settings(300)
@given(valid_manifests(), st.lists(byte_edit, min_size=1, max_size=2))
def test_valid_manifest_with_bytes_changed(
    m: Manifest, edits: list[tuple[str, float, int]]
) -> None:
    raw = bytearray(m.to_bytes())
    for op, where, byte in edits:
        pos = int(where * len(raw))
        if op == "flip":
            raw[pos] ^= 1 << (byte % 8)
        elif op == "insert":
            raw.insert(pos, byte)
        elif op == "delete":
            del raw[pos]
        else:
            raw.insert(pos, 0x20)
    parsed = _parse(bytes(raw))
    if parsed is not None:
        # What parses is what gets signed: it must be exactly the bytes that were read.
        assert parsed.to_bytes() == bytes(raw)


# ---------------------------------------------------------------- valid safetensors headers


@st.composite
def valid_safetensors(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    """A header dict (data offsets packed in a random order) and its data region's length."""
    specs = draw(
        st.dictionaries(
            plain_text.filter(lambda s: s != "__metadata__"),
            st.tuples(
                st.sampled_from(sorted(DTYPES)),
                st.lists(st.integers(min_value=0, max_value=5), max_size=3),
            ),
            max_size=5,
        )
    )
    names = draw(st.permutations(sorted(specs)))
    header: dict[str, Any] = {}
    pos = 0
    for name in names:
        dtype, shape = specs[name]
        n = expected_nbytes(dtype, tuple(shape))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    metadata = draw(st.one_of(st.none(), st.dictionaries(plain_text, plain_text, max_size=3)))
    if metadata is not None:
        header["__metadata__"] = metadata
    return header, pos


def _file(header: dict[str, Any], data_len: int, pad: int = 0, extra: int = 0) -> bytes:
    body = dumps(header) + b" " * pad
    return struct.pack("<Q", len(body)) + body + b"\x00" * max(data_len + extra, 0)


def _read(data: bytes) -> ParsedHeader | None:
    try:
        parsed = read_header(io.BytesIO(data), len(data), where="t.safetensors")
    except SafetensorsHeaderError:
        event("header refused")
        return None
    event("header parses")
    return parsed


def _check(parsed: ParsedHeader, file_size: int) -> None:
    data_len = file_size - parsed.data_start
    spans = sorted((t.begin, t.end) for t in parsed.tensors)
    for t in parsed.tensors:
        assert 0 <= t.begin <= t.end <= data_len
        assert t.end - t.begin == math.prod(t.shape) * DTYPES[t.dtype].itemsize
    for (_, e0), (b1, _) in itertools.pairwise(spans):
        assert b1 >= e0, "tensors overlap"


@_settings(200)
@given(valid_safetensors(), st.integers(min_value=0, max_value=8))
def test_generated_safetensors_headers_parse(gen: tuple[dict[str, Any], int], pad: int) -> None:
    header, data_len = gen
    data = _file(header, data_len, pad)
    parsed = _read(data)
    assert parsed is not None
    _check(parsed, len(data))
    assert parsed.tiles_data_region()
    got = {t.name: (t.dtype, list(t.shape), [t.begin, t.end]) for t in parsed.tensors}
    want = {
        n: (e["dtype"], e["shape"], e["data_offsets"])
        for n, e in header.items()
        if n != "__metadata__"
    }
    assert got == want
    assert parsed.metadata == header.get("__metadata__", {})


header_change = st.sampled_from(
    ["none", "offset", "dtype", "shape", "drop_end", "extra_data", "short_data", "key"]
)


@_settings(500)
@given(valid_safetensors(), header_change, st.integers(min_value=-9, max_value=9), st.data())
def test_valid_safetensors_header_with_one_change(
    gen: tuple[dict[str, Any], int], change: str, delta: int, data: st.DataObject
) -> None:
    header, data_len = gen
    names = sorted(n for n in header if n != "__metadata__")
    extra = 0
    if names and change in ("offset", "dtype", "shape", "drop_end", "key"):
        entry = header[data.draw(st.sampled_from(names))]
        if change == "offset":
            entry["data_offsets"][data.draw(st.integers(min_value=0, max_value=1))] += delta
        elif change == "dtype":
            entry["dtype"] = data.draw(st.sampled_from([*sorted(DTYPES), "F4", "f32"]))
        elif change == "shape":
            entry["shape"] = [*entry["shape"], abs(delta)]
        elif change == "drop_end":
            entry["data_offsets"] = entry["data_offsets"][:1]
        else:
            entry["extra"] = delta
    elif change == "extra_data":
        extra = abs(delta)
    elif change == "short_data":
        extra = -abs(delta)
    raw = _file(header, data_len, extra=extra)
    parsed = _read(raw)
    if parsed is not None:
        _check(parsed, len(raw))
