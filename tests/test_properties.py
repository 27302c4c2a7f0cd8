"""Property tests: the parsers of hostile input fail only with their own errors.

Hypothesis drives the manifest parser, the safetensors header reader, the strict JSON
parser and the path checks with arbitrary and structured input. Each must either succeed
or raise a ``P2PWeightsError`` (never another exception, never a hang), and whatever
they accept must keep the promises the rest of the code relies on.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from p2pweights import (
    ManifestError,
    P2PWeightsError,
    SafetensorsHeaderError,
    UnsafePathError,
)
from p2pweights._canonical import MAX_DEPTH, dumps, loads_strict
from p2pweights._paths import check_relative, join_inside
from p2pweights._safetensors import DTYPES, MAX_HEADER_BYTES, read_header
from p2pweights.keys import PublicKey
from p2pweights.manifest import ChunkEntry, FileEntry, HeaderSpec, Manifest, TensorTable


def _settings(n: int) -> settings:
    return settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=n,
        # conftest's autouse fixture only sets environment variables; sharing it is fine.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# ---------------------------------------------------------------- shared strategies

HOSTILE_PATHS = [
    "../x",
    "/etc/passwd",
    "chunks/../../x",
    "chunks/../x",
    "chunks/./x",
    "chunks//x",
    "chunks/",
    "chunks",
    "chunks/x/y",
    "chunks\\..\\x",
    "C:/x",
    "c:x",
    "chunks/x\x00y",
    "chunks/\n",
    "..",
    ".",
    "",
    "~/x",
    "chunks/" + "a" * 2000,
    "chunks/\u202e\u0000",
    "chunks/\ud800",
    "chunks/%2e%2e/x",
]

HOSTILE_INTS = [
    -1,
    0,
    1,
    7,
    8,
    2**31,
    2**53 - 1,
    2**53,
    2**63,
    2**64 + 1,
    -(2**63),
    10**400,
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HOSTILE_INTS),
    st.text(max_size=40),
    st.sampled_from(HOSTILE_PATHS),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=12), children, max_size=5),
    ),
    max_leaves=25,
)


def _canon(doc: Any) -> bytes:
    """Canonical-looking bytes of ``doc`` (lone surrogates escaped, so they stay encodable)."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- a real, valid manifest

_PUBLISHER = PublicKey(bytes(range(32)))


def _valid_manifest() -> Manifest:
    tensor_chunk = "chunks/" + "1" * 64 + ".safetensors"
    blob_bytes = b'{"a": 1}\n'
    blob_sha = hashlib.sha256(blob_bytes).hexdigest()
    blob_chunk = "chunks/" + blob_sha
    chunks = (
        ChunkEntry(tensor_chunk, 150, "1" * 64, "2" * 64, "tensors", 64),
        ChunkEntry(blob_chunk, len(blob_bytes), blob_sha, "3" * 64, "blob"),
    )
    chunks = tuple(sorted(chunks, key=lambda c: c.path))
    placed = {
        tensor_chunk: [
            ("model.a.weight", "F32", (4, 4)),
            ("model.b.bias", "I64", (2,)),
            ("model.c.scale", "BF16", (3,)),
        ]
    }
    tensors = TensorTable.build([(c.path, c.data, placed.get(c.path, [])) for c in chunks])
    header = '{"model.a.weight":{},"model.b.bias":{}}'
    body = 64 + 16
    files = (
        FileEntry("config.json", len(blob_bytes), blob_sha, "blob", blob_chunk),
        FileEntry("empty.txt", 0, hashlib.sha256(b"").hexdigest(), "blob"),
        FileEntry(
            "model.safetensors",
            8 + len(header) + body,
            "4" * 64,
            "safetensors",
            header=HeaderSpec(text=header),
            order=("model.a.weight", "model.b.bias"),
        ),
        FileEntry(
            "model2.safetensors",
            8 + 200 + 6,
            "7" * 64,
            "safetensors",
            header=HeaderSpec(metadata=(("format", "pt"),), order=(0,)),
            order=("model.c.scale",),
        ),
        FileEntry("sub/pytorch_model.bin", 1000, "5" * 64, "torch", order=("model.c.scale",)),
    )
    return Manifest(
        name="org/model",
        version=3,
        label="a label",
        publisher=_PUBLISHER,
        created=1_700_000_000,
        expires=1_800_000_000,
        previous="6" * 64,
        chunks=chunks,
        tensors=tensors,
        files=files,
    )


VALID = _valid_manifest().to_bytes()
VALID_DOC = json.loads(VALID)


def _leaf_paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in ``doc`` (containers and leaves), as key/index paths."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _leaf_paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _leaf_paths(v, (*prefix, i))
    return out


VALID_PATHS = _leaf_paths(VALID_DOC)[1:]  # not the root itself


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _parse(data: bytes) -> Manifest | None:
    """Parse; the only allowed failures are P2PWeightsError (which is returned as None)."""
    try:
        m = Manifest.from_bytes(data)
    except P2PWeightsError:
        event("manifest refused")
        return None
    event("manifest parses")
    return m


def _check_paths(m: Manifest, data: bytes) -> None:
    chunk_paths = {c.path for c in m.chunks}
    for c in m.chunks:
        assert check_relative(c.path, what="chunk") == c.path
        assert c.path.startswith("chunks/") and c.path.count("/") == 1
        assert ".." not in c.path.split("/")
        assert c.size >= 1
    spans: dict[str, list[tuple[int, int]]] = {}
    for t in m.tensors.values():
        assert t.chunk in chunk_paths
        assert 8 <= t.begin <= t.end
        spans.setdefault(t.chunk, []).append((t.begin, t.end))
    for c in m.chunks:
        # A chunk's tensors tile it from its data offset to its end: no overlap, no gap.
        pos = c.data
        for b, e in sorted(spans.get(c.path, [])):
            assert b == pos
            pos = e
        assert c.kind == "blob" or pos == c.size
    for f in m.files:
        assert check_relative(f.name, what="file") == f.name
        assert not f.name.startswith("/") and ".." not in f.name.split("/")
        assert f.chunk is None or f.chunk in chunk_paths
    # Whatever parses must re-encode to the same bytes (it is what gets signed).
    assert m.to_bytes() == data


def test_the_valid_manifest_parses() -> None:
    m = Manifest.from_bytes(VALID)
    assert m.to_bytes() == VALID
    _check_paths(m, VALID)


# ---------------------------------------------------------------- 1. manifest parser


@_settings(600)
@given(st.binary(max_size=600))
def test_manifest_arbitrary_bytes(data: bytes) -> None:
    _parse(data)


@_settings(400)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_manifest_bytes_around_a_valid_one(head: bytes, tail: bytes) -> None:
    _parse(head + VALID[: len(VALID) // 2] + tail)


def _dup_key_doc(doc: dict[str, Any], key: str, value: Any) -> bytes:
    body = _canon(doc)[1:-1]
    dup = _canon({key: value})[1:-1]
    return b"{" + dup + (b"," + body if body else b"") + b"}"


@_settings(600)
@given(
    json_values,
    st.sampled_from(["canonical", "spaced", "ascii", "dup", "deep", "latin1", "surrogate"]),
)
def test_manifest_arbitrary_json(doc: Any, encoding: str) -> None:
    if encoding == "canonical":
        data = _canon(doc)
    elif encoding == "spaced":
        data = json.dumps(doc, indent=1).encode("utf-8", "surrogatepass")
    elif encoding == "ascii":
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    elif encoding == "dup":
        data = _dup_key_doc(doc if isinstance(doc, dict) else {}, "format", doc)
    elif encoding == "deep":
        data = b"[" * 5000 + _canon(doc) + b"]" * 5000
    elif encoding == "latin1":
        data = b'{"name":"\xe9\xff\xfe"' + _canon(doc)
    else:
        data = _canon({"format": "\ud800", "x": doc})
    _parse(data)


# A valid manifest with one field replaced: the parser gets past loads_strict and into
# every branch of the schema checks.
hostile_value = st.one_of(
    json_values,
    st.sampled_from(HOSTILE_PATHS),
    st.sampled_from(HOSTILE_INTS),
    st.sampled_from([None, True, False, [], {}, "", "F32", "blob", "tensors", "torch"]),
    st.lists(st.integers(min_value=-2, max_value=300), max_size=4),
)


@_settings(800)
@given(st.sampled_from(VALID_PATHS), hostile_value)
def test_manifest_with_one_hostile_field(path: tuple[Any, ...], value: Any) -> None:
    doc = json.loads(VALID)
    _set(doc, path, value)
    data = _canon(doc)
    m = _parse(data)
    if m is not None:
        _check_paths(m, data)


@_settings(500)
@given(st.sampled_from(VALID_PATHS), st.sampled_from(VALID_PATHS))
def test_manifest_with_two_fields_swapped(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    if a[: len(b)] == b or b[: len(a)] == a:
        return  # one position holds the other: there is nothing to swap
    doc = json.loads(VALID)
    va, vb = _get(doc, a), _get(doc, b)
    _set(doc, a, vb)
    _set(doc, b, va)
    data = _canon(doc)
    m = _parse(data)
    if m is not None:
        _check_paths(m, data)


@_settings(300)
@given(
    st.sampled_from(["chunks", "files"]),
    st.integers(min_value=0, max_value=4),
    st.sampled_from(HOSTILE_PATHS),
)
def test_manifest_path_traversal_in_entries(section: str, index: int, hostile: str) -> None:
    """Traversal strings in file names, and in the chunks' sha256 (the source of their path)."""
    doc = json.loads(VALID)
    entries = doc[section]
    entry = entries[index % len(entries)]
    field = "sha256" if section == "chunks" else "name"
    entry[field] = hostile
    entries.sort(key=lambda e: e[field])
    data = _canon(doc)
    m = _parse(data)
    if m is not None:
        _check_paths(m, data)
    if section == "chunks" or hostile in ("../x", "/etc/passwd", "chunks/../../x", ".."):
        assert m is None


mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "set"]),
    st.integers(min_value=0, max_value=len(VALID)),
    st.integers(min_value=0, max_value=255),
)


@_settings(800)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_manifest_byte_mutations(ops: list[tuple[str, int, int]]) -> None:
    data = bytearray(VALID)
    for op, where, byte in ops:
        pos = min(where, len(data) - 1) if data else 0
        if op == "flip" and data:
            data[pos] ^= 1 << (byte % 8)
        elif op == "insert":
            data.insert(pos, byte)
        elif op == "delete" and data:
            del data[pos]
        elif data:
            data[pos] = byte
    m = _parse(bytes(data))
    if m is not None:
        _check_paths(m, bytes(data))


@_settings(300)
@given(st.sampled_from(VALID_PATHS), st.integers(min_value=4301, max_value=6000))
def test_manifest_huge_integers(path: tuple[Any, ...], digits: int) -> None:
    doc = json.loads(VALID)
    _set(doc, path, "@@")
    data = _canon(doc).replace(b'"@@"', b"9" * digits)
    assert _parse(data) is None


# ---------------------------------------------------------------- 2. safetensors headers


def _read(data: bytes) -> Any:
    try:
        parsed = read_header(io.BytesIO(data), len(data), where="t.safetensors")
    except SafetensorsHeaderError:
        event("header refused")
        return None
    event("header parses")
    return parsed


def _check_header(parsed: Any, file_size: int) -> None:
    data_len = file_size - parsed.data_start
    assert data_len >= 0
    spans = []
    for t in parsed.tensors:
        assert 0 <= t.begin <= t.end <= data_len
        assert parsed.data_start + t.end <= file_size
        assert t.end - t.begin == math.prod(t.shape) * DTYPES[t.dtype].itemsize
        spans.append((t.begin, t.end))
    for i, (b0, e0) in enumerate(spans):
        for b1, e1 in spans[i + 1 :]:
            assert max(b0, b1) >= min(e0, e1), "tensors overlap"


@_settings(600)
@given(st.binary(max_size=400))
def test_safetensors_arbitrary_bytes(data: bytes) -> None:
    parsed = _read(data)
    if parsed is not None:
        _check_header(parsed, len(data))


@_settings(400)
@given(
    st.one_of(
        st.integers(min_value=0, max_value=2**64 - 1),
        st.sampled_from([0, 1, 2, 7, 8, MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1, 2**63, 2**64 - 1]),
    ),
    st.binary(max_size=200),
)
def test_safetensors_random_length_prefix(length: int, rest: bytes) -> None:
    data = struct.pack("<Q", length) + rest
    parsed = _read(data)
    if parsed is not None:
        _check_header(parsed, len(data))


dtype_names = st.one_of(
    st.sampled_from(sorted(DTYPES)),
    st.sampled_from(["F4", "f32", "", "F6_E2M3", "U128"]),
    json_scalars,
)
shapes = st.one_of(
    st.lists(st.integers(min_value=0, max_value=6), max_size=4),
    st.lists(st.sampled_from([-1, 0, 2**53, 2**64, True, "3", None]), max_size=3),
    st.lists(st.integers(min_value=0, max_value=2), min_size=65, max_size=70),
    json_scalars,
)
tensor_entry = st.fixed_dictionaries(
    {
        "dtype": dtype_names,
        "shape": shapes,
        # "auto" packs the tensor after the previous one; a jitter breaks that.
        "data_offsets": st.one_of(
            st.just("auto"),
            st.tuples(st.integers(min_value=-8, max_value=8)).map(lambda t: ("jitter", t[0])),
            st.lists(st.one_of(st.integers(min_value=-1, max_value=300), json_scalars), max_size=3),
        ),
    },
    optional={"extra": json_scalars},
)


def _layout(entries: dict[str, dict[str, Any]]) -> int:
    """Fill in "auto"/"jitter" offsets; returns the data region's natural length."""
    pos = 0
    for entry in entries.values():
        off = entry["data_offsets"]
        if not (isinstance(off, str | tuple)):
            continue
        dtype, shape = entry["dtype"], entry["shape"]
        ok_shape = isinstance(shape, list) and all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1000 for d in shape
        )
        size = (
            math.prod(shape) * DTYPES[dtype].itemsize
            if isinstance(dtype, str) and dtype in DTYPES and ok_shape
            else 4
        )
        size = min(size, 4096)
        jitter = off[1] if isinstance(off, tuple) else 0
        entry["data_offsets"] = [pos + jitter, pos + size]
        pos += size
    return pos


@_settings(700)
@given(
    st.dictionaries(st.text(max_size=10), tensor_entry, max_size=5),
    st.one_of(st.none(), st.dictionaries(st.text(max_size=5), json_scalars, max_size=3)),
    st.integers(min_value=-16, max_value=16),
    st.sampled_from(["exact", "huge", "short", "long"]),
    st.integers(min_value=0, max_value=7),
)
def test_safetensors_structured_headers(
    entries: dict[str, dict[str, Any]],
    metadata: dict[str, Any] | None,
    slack: int,
    length_mode: str,
    pad: int,
) -> None:
    natural = _layout(entries)
    header: dict[str, Any] = dict(entries)
    if metadata is not None:
        header["__metadata__"] = metadata
    body = _canon(header) + b" " * pad
    length = {
        "exact": len(body),
        "huge": 2**63 + len(body),
        "short": max(len(body) - 1 - pad, 0),
        "long": len(body) + 9,
    }[length_mode]
    data = struct.pack("<Q", length) + body + b"\x00" * max(natural + slack, 0)
    parsed = _read(data)
    if parsed is not None:
        _check_header(parsed, len(data))


# ---------------------------------------------------------------- 3. strict JSON


def _loads(data: bytes) -> tuple[bool, Any]:
    try:
        return True, loads_strict(data, max_bytes=1 << 20, what="doc")
    except ManifestError:
        return False, None


@_settings(600)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.text(alphabet='[]{}",:0123456789-.eE \\u"tfnlrsaNIy', max_size=200).map(str.encode),
    )
)
def test_loads_strict_arbitrary_bytes(data: bytes) -> None:
    ok, value = _loads(data)
    if ok:
        # What it accepts re-encodes, and the re-encoding is a fixed point.
        once = dumps(value)
        assert dumps(loads_strict(once, max_bytes=1 << 20)) == once


strict_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=10**300, max_value=10**310),
        st.text(max_size=30),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=30,
)


@_settings(600)
@given(strict_values)
def test_canonical_round_trip_is_stable(value: Any) -> None:
    try:
        encoded = dumps(value)
    except ManifestError:
        return  # lone surrogates and the like have no canonical form
    ok, back = _loads(encoded)
    assert ok, encoded[:200]
    assert back == value
    assert dumps(back) == encoded
    # Canonical means: what json.loads reads is sorted and compact.
    assert encoded == json.dumps(
        json.loads(encoded), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


@_settings(200)
@given(st.integers(min_value=1, max_value=MAX_DEPTH + 40), st.sampled_from(["[]", "{}"]))
def test_loads_strict_depth_limit(depth: int, pair: str) -> None:
    if pair == "[]":
        data = ("[" * depth + "]" * depth).encode()
    else:
        data = ('{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)).encode()
    ok, value = _loads(data)
    assert ok == (depth <= MAX_DEPTH)
    if ok:
        assert dumps(value) == data


def test_loads_strict_size_limit() -> None:
    with pytest.raises(ManifestError):
        loads_strict(b"[" + b"0," * 100 + b"0]", max_bytes=50)


# ---------------------------------------------------------------- 4. paths

path_strings = st.one_of(
    st.text(max_size=60),
    st.lists(
        st.sampled_from(["a", "b", ".", "..", "/", "link", "\\", ":", "\x00", "\n", " "]),
        max_size=12,
    ).map("".join),
    st.lists(st.sampled_from(["a", ".", "..", "", "link", "b.c", "...", ".a"]), max_size=6).map(
        "/".join
    ),
    st.sampled_from(HOSTILE_PATHS),
)


@pytest.fixture(scope="module")
def jail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with one plain dir and one symlink that points out of it."""
    base = tmp_path_factory.mktemp("paths")
    root = base / "root"
    (root / "a").mkdir(parents=True)
    (base / "outside").mkdir()
    os.symlink(base / "outside", root / "link")
    return root


@_settings(800)
@given(path_strings)
def test_check_relative_and_join_inside(jail: Path, path: str) -> None:
    try:
        assert check_relative(path, what="p") == path
    except UnsafePathError:
        return
    parts = path.split("/")
    assert path and not path.startswith("/")
    assert ".." not in parts and "." not in parts and "" not in parts
    assert "\x00" not in path and "\\" not in path
    assert not Path(path).is_absolute()
    try:
        joined = join_inside(jail, path, what="p")
    except UnsafePathError:
        # Only a symlink can take a checked path out of the root.
        assert "link" in parts
        return
    assert joined.resolve().is_relative_to(jail.resolve())
    assert joined == jail / path


@_settings(300)
@given(st.one_of(json_scalars, json_values))
def test_check_relative_non_strings(value: Any) -> None:
    assume(not isinstance(value, str))
    with pytest.raises(UnsafePathError):
        check_relative(value, what="p")
