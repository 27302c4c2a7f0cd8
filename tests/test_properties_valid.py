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

import functools
import io
import itertools
import json
import math
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from p2pweights import ManifestError, P2PWeightsError, SafetensorsHeaderError
from p2pweights._canonical import dumps
from p2pweights._safetensors import DTYPES, ParsedHeader, expected_nbytes, read_header
from p2pweights.keys import generate_key
from p2pweights.manifest import Manifest
from p2pweights.pack import pack


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


@functools.cache
def _packed_pool() -> tuple[Manifest, ...]:
    """Manifests of small models packed for real, so valid by construction in the current
    format: several dtypes, 1-3 layers, blobs, an empty file, extra header metadata."""
    import torch
    from safetensors.torch import save_file

    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8,
              torch.bool, torch.float64, torch.int8]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key = generate_key(root / "key.pem")
        for i, dtype in enumerate(dtypes):
            src = root / f"m{i}"
            src.mkdir()
            state = {
                f"model.layers.{j}.w": torch.arange((j + 1) * 3 * (i + 1)).reshape(j + 1, -1)
                .to(dtype)
                for j in range(1 + i % 3)
            }
            state["model.embed.weight"] = torch.ones(2 + i, dtype=dtype)
            meta = {"format": "pt", **({"note": f"é {i}"} if i % 3 == 0 else {})}
            save_file(state, str(src / "model.safetensors"), metadata=meta)
            (src / "config.json").write_text(json.dumps({"i": i}))
            if i % 2:
                (src / "empty.txt").write_bytes(b"")
                (src / "tokenizer.json").write_text("{}" * (i + 1))
            out.append(
                pack(src, root / f"r{i}", name=f"org{i}/model", version=i, key=key,
                     label=f"label {i} é").manifest
            )
    return tuple(out)


def valid_manifests() -> st.SearchStrategy[Manifest]:
    """A manifest that is valid by construction: every example must parse."""
    return st.sampled_from(_packed_pool())


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
    assert back.to_bytes() == data
    assert (back.name, back.version, sorted(back.tensors)) == (m.name, m.version, sorted(m.tensors))


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
