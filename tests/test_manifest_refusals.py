"""Each refusal of the manifest parser, one edit of a valid manifest at a time.

The property tests (``test_properties*.py``) show that damaged manifests are refused;
these pin down which check refuses each one, and its exact message (the one line a user
sees), on a manifest that is otherwise valid and re-encoded canonically. Each check is
also shown to let through the edge of what it allows.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p2pweights import ManifestError, UnsafePathError
from p2pweights._canonical import dumps
from p2pweights._safetensors import MAX_HEADER_BYTES
from p2pweights.keys import generate_key
from p2pweights.manifest import (
    FORMAT,
    LIMITS,
    ChunkEntry,
    Limits,
    Manifest,
    chunk_address,
    chunk_of_address,
    publisher_in,
)
from p2pweights.pack import pack

Doc = dict[str, Any]
MAX = 2**53


@functools.cache
def _base() -> bytes:
    """A small packed release's manifest: chunk 0 holds tensor ``c`` (I64 [4]), chunk 1 is
    the blob ``config.json``, chunk 2 holds ``a.w`` (F32 [2, 3]) and ``a.b`` (F16 [3]);
    the files are ``config.json``, an empty ``empty.txt`` and ``model.safetensors``."""
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        state = {"a.w": torch.ones(2, 3), "a.b": torch.zeros(3, dtype=torch.float16),
                 "c": torch.arange(4)}
        save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
        (src / "config.json").write_text("{}")
        (src / "empty.txt").write_bytes(b"")
        key = generate_key(root / "key.pem")
        pack(src, root / "rel", name="org/model", version=1, key=key, now=1_700_000_000)
        return (root / "rel" / "manifest.json").read_bytes()


def _doc() -> Doc:
    doc: Doc = json.loads(_base())
    # The layout the cases below rely on.
    assert [c.get("names") for c in doc["chunks"]] == [["c"], None, ["a.w", "a.b"]]
    assert [f["name"] for f in doc["files"]] == ["config.json", "empty.txt", "model.safetensors"]
    assert doc["types"] == [["I64", [4]], ["F32", [2, 3]], ["F16", [3]]]
    return doc


def _parse(doc: object, limits: Limits = LIMITS) -> Manifest:
    return Manifest.from_bytes(dumps(doc), limits=limits)


def _set(path: str, value: object) -> Callable[[Doc], object]:
    """An edit that sets the field at ``path`` (dot-separated keys and list indices)."""

    def edit(doc: Doc) -> object:
        *parents, last = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return doc

    return edit


def _with(fn: Callable[[Doc], None]) -> Callable[[Doc], object]:
    def edit(doc: Doc) -> object:
        fn(doc)
        return doc

    return edit


CHUNK_BYTES = LIMITS.chunk_bytes
CASES: list[tuple[str, Callable[[Doc], object], str]] = [
    ("not an object", lambda d: [d], "manifest must be an object"),
    ("old format", _set("format", "p2pweights.manifest/1"),
     "manifest format p2pweights.manifest/1 is no longer read; this version reads "
     f"{FORMAT}: the publisher must pack the release again"),
    ("unknown format", _set("format", "f" * 100),
     f"unknown manifest format {'f' * 60!r}; want {FORMAT}"),
    ("keys", _with(lambda d: (d.pop("label"), d.update(extra=1))),
     "manifest: missing ['label'], unexpected ['extra']"),
    ("many keys", lambda d: {"format": FORMAT, **{f"k{i}": 0 for i in range(7)}},
     "manifest: missing ['chunks', 'created', 'expires', 'files', 'label'], "
     "unexpected ['k0', 'k1', 'k2', 'k3', 'k4']"),
    ("name", _set("name", "org//model"),
     "manifest name must look like ORG/MODEL (letters, digits, ._-)"),
    ("created", _set("created", -1), f"created must be an integer in [0, {MAX}]"),
    ("created bool", _set("created", True), f"created must be an integer in [0, {MAX}]"),
    ("expires", _set("expires", 1_700_000_000),
     f"expires must be an integer in [1700000001, {MAX}]"),
    ("previous", _set("previous", "AB" * 32), "previous must be 64 lowercase hex digits"),
    ("version", _set("version", "1"), f"version must be an integer in [0, {MAX}]"),
    ("label", _set("label", "x" * 257), "label must be a string of at most 256 characters"),
    ("label type", _set("label", 1), "label must be a string of at most 256 characters"),
    ("types list", _set("types", {}), "types must be a list"),
    ("type pair", _set("types.0", ["I64"]), "types[0] must be [dtype, shape]"),
    ("type triple", _set("types.0", ["I64", [4], 1]),
     "types[0] has 3 entries, over the limit of 2"),
    ("dtype", _set("types.0", ["X64", [4]]), "types[0]: unsupported dtype 'X64'"),
    ("long dtype", _set("types.0", ["X" * 30, [4]]), f"types[0]: unsupported dtype {'X' * 20!r}"),
    ("shape list", _set("types.0", ["I64", 4]), "types[0] shape must be a list"),
    ("rank", _set("types.0", ["I64", [1] * 65]),
     "types[0] shape has 65 entries, over the limit of 64"),
    ("dim", _set("types.0", ["I64", [-4]]), f"types[0] shape must be an integer in [0, {MAX}]"),
    ("huge type", _set("types.0", ["F32", [CHUNK_BYTES // 2]]),
     f"types[0]: F32[{CHUNK_BYTES // 2}] is larger than any chunk"),
    ("huge type of rank 9", _set("types.0", ["F32", [1] * 8 + [CHUNK_BYTES]]),
     "types[0]: F32[1, 1, 1, 1, 1, 1, 1, 1] is larger than any chunk"),
    ("repeated type", _with(lambda d: d["types"].append(["I64", [4]])),
     "types[3] repeats an earlier type"),
    ("chunks list", _set("chunks", None), "chunks must be a list"),
    ("chunk kind", _set("chunks.0.kind", "x"),
     "chunks[0] must be an object of kind 'tensors' or 'blob'"),
    ("chunk keys", _set("chunks.1.data", 8), "chunks[1]: missing [], unexpected ['data']"),
    ("chunk size", _set("chunks.1.size", 0),
     f"chunks[1].size must be an integer in [1, {CHUNK_BYTES}]"),
    ("chunk sha", _set("chunks.0.sha256", "0" * 63),
     "chunks[0].sha256 must be 64 lowercase hex digits"),
    ("chunk order", _with(lambda d: d["chunks"].reverse()),
     "chunks must be sorted by path, without duplicates"),
    ("chunk twice", _with(lambda d: d["chunks"].insert(0, d["chunks"][0])),
     "chunks must be sorted by path, without duplicates"),
    ("data below the header", _set("chunks.0.data", 7),
     "chunks[0].data must be an integer in [8, 128]"),
    ("data past the end", _set("chunks.0.data", 129),
     "chunks[0].data must be an integer in [8, 128]"),
    ("names list", _set("chunks.0.names", "c"), "chunks[0].names must be a list"),
    ("no names", _set("chunks.0.names", []),
     "chunks[0].names: a tensors chunk holds at least one tensor"),
    ("name type", _set("chunks.0.names", [1]), "chunks[0].names must list strings"),
    ("empty name", _set("chunks.0.names", [""]),
     "chunks[0].names: a tensor name has 1..1024 characters, no NUL"),
    ("long name", _set("chunks.0.names", ["n" * 1025]),
     "chunks[0].names: a tensor name has 1..1024 characters, no NUL"),
    ("NUL name", _set("chunks.0.names", ["c\x00"]),
     "chunks[0].names: a tensor name has 1..1024 characters, no NUL"),
    ("fewer types", _set("chunks.2.types", [1]), "chunks[2]: names and types differ in length"),
    ("more types", _set("chunks.2.types", [1, 2, 2]),
     "chunks[2].types has 3 entries, over the limit of 2"),
    ("type index", _set("chunks.0.types", [3]), "chunks[0].types must list integers in [0, 3)"),
    ("type index bool", _set("chunks.0.types", [False]),
     "chunks[0].types must list integers in [0, 3)"),
    ("tensor end", _set("chunks.2.data", 152),
     "chunks[2]: its tensors end at byte 182, but the chunk has 190"),
    ("alignment", _with(lambda d: d["chunks"][2].update(data=162, size=192)),
     "chunks[2]: a tensor is not aligned for its dtype"),
    ("v2 root", _set("chunks.2.v2_root", None),
     "chunks[2].v2_root must be 64 lowercase hex digits"),
    ("tensor twice", _set("chunks.2.names", ["c", "a.b"]), "tensor 'c' appears twice"),
    ("long tensor twice", _set("chunks.2.names", ["x" * 100, "x" * 100]),
     f"tensor {'x' * 80!r} appears twice"),
    ("later tensor twice", _set("chunks.2.names", ["a.w", "a.w"]), "tensor 'a.w' appears twice"),
    ("files list", _set("files", "x"), "files must be a list"),
    ("file kind", _set("files.0.kind", "pickle"),
     "files[0] must be an object of kind ['blob', 'safetensors', 'torch']"),
    ("file keys", _set("files.0.tensors", []), "files[0]: missing [], unexpected ['tensors']"),
    ("file size", _set("files.1.size", -1),
     f"files[1].size must be an integer in [0, {LIMITS.total_bytes}]"),
    ("file sha", _set("files.1.sha256", 1), "files[1].sha256 must be 64 lowercase hex digits"),
    ("file order", _with(lambda d: d["files"].reverse()),
     "files must be sorted by name, without duplicates"),
    ("file twice", _with(lambda d: d["files"].insert(0, d["files"][0])),
     "files must be sorted by name, without duplicates"),
    ("blob size", _set("files.0.size", 3),
     "files[0]: no blob chunk with the file's sha256 and size"),
    ("blob sha", _set("files.0.sha256", "0" * 64),
     "files[0]: no blob chunk with the file's sha256 and size"),
    ("file tensors", _set("files.2.tensors", [0, 1, 3]),
     "files[2].tensors must list integers in [0, 3)"),
    ("file tensor twice", _set("files.2.tensors", [0, 1, 1]),
     "files[2].tensors must list each tensor once"),
    ("header bytes", _set("files.2.size", 8 + 62 + 1),
     "files[2]: its tensors and size leave 1 header bytes"),
    ("header text", _set("files.2.header", "{}"),
     "files[2].header is not the 208 bytes its file leaves for it"),
    ("header keys", _set("files.2.header", {"order": None}),
     "files[2].header: missing ['metadata'], unexpected []"),
    ("metadata list", _set("files.2.header.metadata", {}),
     "files[2].header.metadata must be a list"),
    ("metadata pair list", _set("files.2.header.metadata", ["format"]),
     "files[2].header.metadata must be a list"),
    ("metadata triple", _set("files.2.header.metadata", [["a", "b", "c"]]),
     "files[2].header.metadata has 3 entries, over the limit of 2"),
    ("metadata single", _set("files.2.header.metadata", [["a"]]),
     "files[2].header.metadata must list [key, value] strings"),
    ("metadata type", _set("files.2.header.metadata", [["a", 1]]),
     "files[2].header.metadata must list [key, value] strings"),
    ("metadata key twice", _set("files.2.header.metadata", [["a", "1"], ["a", "2"]]),
     "files[2].header.metadata repeats a key"),
    ("order short", _set("files.2.header.order", [0, 1]),
     "files[2].header.order must list each of the file's tensors once"),
    ("order twice", _set("files.2.header.order", [0, 1, 1]),
     "files[2].header.order must list each of the file's tensors once"),
    ("order index", _set("files.2.header.order", [0, 1, 3]),
     "files[2].header.order must list integers in [0, 3)"),
]


@pytest.mark.parametrize(("edit", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_check_refuses_with_its_message(
    edit: Callable[[Doc], object], message: str
) -> None:
    with pytest.raises(ManifestError) as info:
        _parse(edit(_doc()))
    assert str(info.value) == message


def test_the_base_manifest_parses_with_its_values() -> None:
    m = _parse(_doc())
    assert (m.name, m.version, m.label, m.created, m.expires, m.previous) == (
        "org/model", 1, "", 1_700_000_000, None, None
    )
    # A blob chunk has no header, so its data starts at byte 0.
    assert [(c.kind, c.size, c.data) for c in m.chunks] == [
        ("tensors", 128, 96), ("blob", 2, 0), ("tensors", 190, 160)
    ]
    assert [(f.name, f.size, f.kind, f.chunk) for f in m.files] == [
        ("config.json", 2, "blob", m.chunks[1].path),
        ("empty.txt", 0, "blob", None),
        ("model.safetensors", 278, "safetensors", None),
    ]
    assert m.files[2].order == ("c", "a.w", "a.b")
    # Paths are the content addresses, a tensor chunk's with the .safetensors suffix.
    shas = [c["sha256"] for c in _doc()["chunks"]]
    assert [c.path for c in m.chunks] == [
        f"chunks/{shas[0]}.safetensors", f"chunks/{shas[1]}", f"chunks/{shas[2]}.safetensors"
    ]
    assert [chunk_address(c.sha256, c.kind) for c in m.chunks] == [c.path for c in m.chunks]


def test_a_converted_pickle_file_has_no_header() -> None:
    doc = _doc()
    del doc["files"][2]["header"]
    doc["files"][2]["kind"] = "torch"
    f = _parse(doc).files[2]
    assert (f.kind, f.header, f.order) == ("torch", None, ("c", "a.w", "a.b"))


def test_the_edges_that_are_allowed() -> None:
    """The largest label, an expiry one second after creation, a previous release, a
    chunk's first tensor at byte 8, a header given as its exact text."""
    doc = _doc()
    doc["label"] = "é" * 256
    doc["expires"] = doc["created"] + 1
    doc["previous"] = "ab" * 32
    m = _parse(doc)
    assert (len(m.label), m.expires, m.previous) == (256, 1_700_000_001, "ab" * 32)
    # The header's length runs from 2 bytes ("{}") to MAX_HEADER_BYTES.
    for length in (2, MAX_HEADER_BYTES):
        doc = _doc()
        doc["files"][2]["size"] = 8 + 62 + length
        assert _parse(doc).files[2].size == 8 + 62 + length
    doc = _doc()
    doc["files"][2]["size"] = 8 + 62 + MAX_HEADER_BYTES + 1
    with pytest.raises(ManifestError) as info:
        _parse(doc)
    assert str(info.value) == (
        f"files[2]: its tensors and size leave {MAX_HEADER_BYTES + 1} header bytes"
    )
    doc = _doc()
    doc["files"][2]["header"] = " " * 208
    assert _parse(doc).files[2].header is not None
    assert _parse(doc).files[2].header.text == " " * 208  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("field", "limits", "message"),
    [
        ("types", Limits(tensors=2), "types has 3 entries, over the limit of 2"),
        ("chunks", Limits(chunks=2), "chunks has 3 entries, over the limit of 2"),
        ("files", Limits(files=2), "files has 3 entries, over the limit of 2"),
        ("chunk", Limits(chunk_bytes=189), "chunks[2].size must be an integer in [1, 189]"),
        # A type of exactly the chunk limit is allowed; the chunk holding it is not.
        ("type", Limits(chunk_bytes=32), "chunks[0].size must be an integer in [1, 32]"),
        ("type", Limits(chunk_bytes=31), "types[0]: I64[4] is larger than any chunk"),
        ("total", Limits(total_bytes=319), "chunks add up to 320 bytes, over the limit"),
        ("name", Limits(tensor_name_chars=2),
         "chunks[2].names: a tensor name has 1..2 characters, no NUL"),
        ("label", Limits(label_chars=0), None),
        ("names", Limits(tensors=3), "chunks[2].names has 3 entries, over the limit of 2"),
    ],
)
def test_the_limits_given_are_the_ones_applied(
    field: str, limits: Limits, message: str | None
) -> None:
    doc = _doc()
    if field == "names":  # a fourth tensor, of a type already listed: 3 types, 4 names
        doc["chunks"][2].update(names=["a.w", "a.b", "a.c"], types=[1, 2, 2], size=196)
    if message is None:  # the empty label is within any limit: one more character is not
        assert _parse(doc, limits).label == ""
        doc["label"] = "x"
        message = "label must be a string of at most 0 characters"
    with pytest.raises(ManifestError) as info:
        _parse(doc, limits)
    assert str(info.value) == message
    # Exactly at each limit, the same manifest parses.
    at = {"types": Limits(tensors=3), "chunks": Limits(chunks=3), "files": Limits(files=3),
          "chunk": Limits(chunk_bytes=190), "type": Limits(chunk_bytes=190),
          "total": Limits(total_bytes=320),
          "name": Limits(tensor_name_chars=3), "label": Limits(label_chars=1),
          "names": Limits(tensors=4)}[field]
    assert _parse(doc, at).name == "org/model"


def test_a_file_name_that_escapes_is_unsafe() -> None:
    doc = _doc()
    doc["files"][1]["name"] = "../empty.txt"
    doc["files"].sort(key=lambda f: f["name"])
    with pytest.raises(UnsafePathError) as info:
        _parse(doc)
    assert str(info.value) == "files[0].name '../empty.txt' has an empty, '.' or '..' component"


def test_a_bad_publisher_key_is_named() -> None:
    doc = _doc()
    doc["publisher"] = "ed25519:short"
    with pytest.raises(ManifestError) as info:
        _parse(doc)
    assert str(info.value).startswith("manifest publisher: ")


def test_only_the_canonical_encoding_is_read() -> None:
    data = _base()
    spaced = json.dumps(json.loads(data), sort_keys=True).encode()
    assert spaced != data
    with pytest.raises(ManifestError) as info:
        Manifest.from_bytes(spaced)
    assert str(info.value) == "manifest is not in canonical form (sorted keys, no whitespace)"


def test_chunk_of_address_reads_the_kind_and_sha256_from_the_path() -> None:
    sha = "0123456789abcdef" * 4
    assert chunk_of_address(f"chunks/{sha}.safetensors", 5, "ab" * 32) == ChunkEntry(
        f"chunks/{sha}.safetensors", 5, sha, "ab" * 32, "tensors"
    )
    blob = ChunkEntry(f"chunks/{sha}", 0, sha, "", "blob")
    assert chunk_of_address(f"chunks/{sha}", 0, "") == blob



def test_a_document_that_is_no_object_has_no_publisher() -> None:
    with pytest.raises(ManifestError) as info:
        publisher_in([])
    assert str(info.value) == "manifest must be a JSON object"


def test_to_bytes_refuses_what_a_reader_would() -> None:
    m = _parse(_doc())
    with pytest.raises(ManifestError) as info:
        dataclasses.replace(m, chunks=m.chunks[:2]).to_bytes()
    assert str(info.value) == "the tensor table's chunks are not the manifest's chunks"
    # A safetensors file with no header spec is written with an empty header text, which
    # no file can have (a header is 2 bytes at the least), even where 4 bytes are left.
    short = dataclasses.replace(m.files[2], header=None, size=8 + 62 + 4)
    with pytest.raises(ManifestError) as info:
        dataclasses.replace(m, files=(*m.files[:2], short)).to_bytes()
    assert str(info.value) == "files[2].header is not the 4 bytes its file leaves for it"
    assert m.to_bytes() == _base()
