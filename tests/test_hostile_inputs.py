"""Hostile inputs: every forged, damaged or malformed input fails with its own error class.

Each case asserts the exact exception class (and that it is a ``P2PWeightsError``), and the
pack and export cases also prove that nothing was written outside the output directory.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import pickle
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch

import p2pweights
from p2pweights import (
    CorruptChunkError,
    ExportError,
    FormatError,
    ManifestError,
    MissingChunkError,
    P2PWeightsError,
    PrivateKey,
    ReleaseExpiredError,
    SafetensorsHeaderError,
    SignatureError,
    SourceError,
    TrustStore,
    TrustStoreError,
    UnsafePathError,
    UnsafePickleError,
    UntrustedKeyError,
    errors,
    export,
    open_release,
    verify_release,
)
from p2pweights._canonical import dumps
from p2pweights._safetensors import MAX_HEADER_BYTES
from p2pweights.manifest import Limits, Manifest, chunk_address
from p2pweights.release import EXPORT_POINTER, MANIFEST_NAME, SIGNATURE_NAME
from p2pweights.verify import RECORDS_NAME

from .conftest import copy_release, layer_state

E = TypeVar("E", bound=P2PWeightsError)
Doc = dict[str, Any]
Tree = dict[str, str]
MakeModel = Callable[..., Path]
MakeRelease = Callable[..., Path]

CREATED = 1_700_000_000  # the creation time conftest's make_release packs with
HUGE_INT = "1" * 5000  # more digits than Python's int-from-str limit (4300)


# ------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def expect(exc_type: type[E]) -> Iterator[pytest.ExceptionInfo[E]]:
    """``pytest.raises`` that insists on the exact class and on the package's root class."""
    with pytest.raises(exc_type) as info:
        yield info
    assert type(info.value) is exc_type, f"wanted {exc_type.__name__}, got {info.value!r}"
    assert isinstance(info.value, P2PWeightsError)


def flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    """XOR one byte of ``path`` in place (same inode, same size)."""
    size = path.stat().st_size
    pos = offset % size
    path.chmod(0o644)  # chunks are written 0444; whoever owns the file can undo that
    with open(path, "r+b") as fh:
        fh.seek(pos)
        (old,) = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([old ^ mask]))


def snapshot(root: Path) -> Tree:
    """Every path under ``root`` with what it is: a dir, a link target, or a file digest."""
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                tree[rel] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                tree[rel] = "dir"
            else:
                tree[rel] = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


def assert_untouched(root: Path, before: Tree, out: Path) -> None:
    """The failed pack/export left no output dir and changed nothing else under ``root``."""
    assert not out.exists(), f"{out} was left behind"
    assert snapshot(root) == before


def read_doc(release: Path) -> Doc:
    doc: Doc = json.loads((release / MANIFEST_NAME).read_bytes())
    return doc


def write_signed(release: Path, manifest: Doc | bytes, key: PrivateKey) -> bytes:
    """Replace a release's manifest with ``manifest`` (a doc is made canonical) and sign it."""
    data = manifest if isinstance(manifest, bytes) else dumps(manifest)
    (release / MANIFEST_NAME).write_bytes(data)
    (release / SIGNATURE_NAME).write_bytes(key.sign(data))
    return data


def rename_file(doc: Doc, old: str, new: str) -> None:
    for f in doc["files"]:
        if f["name"] == old:
            f["name"] = new
    doc["files"].sort(key=lambda f: f["name"])


def tensor_chunk(release: Path, tensor: str) -> Path:
    manifest = Manifest.from_bytes((release / MANIFEST_NAME).read_bytes())
    return release / manifest.tensors.chunk_of(tensor)


def blob_chunk(release: Path, file_name: str) -> Path:
    entry = next(f for f in read_doc(release)["files"] if f["name"] == file_name)
    return release / chunk_address(entry["sha256"], "blob")


def tensor_chunks(doc: Doc) -> list[Doc]:
    return [c for c in doc["chunks"] if c["kind"] == "tensors"]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (NaN-safe, unlike ``torch.equal`` on floats)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    )


def safetensors_bytes(
    header: Doc | bytes, data: bytes = b"", *, length: int | None = None
) -> bytes:
    """A hand-made safetensors file: 8-byte LE header length, JSON header, data."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(body) if length is None else length) + body + data


def pack_to(src: Path, out: Path, key: PrivateKey, **kw: Any) -> p2pweights.PackResult:
    return p2pweights.pack(src, out, name="test/model", version=1, key=key, now=CREATED, **kw)


def small_state(seed: int = 0) -> dict[str, torch.Tensor]:
    return layer_state(layers=2, hidden=16, seed=seed)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def release(make_model: MakeModel, make_release: MakeRelease) -> Path:
    """A small signed release with several tensor chunks and one blob (config.json)."""
    return make_release(make_model(small_state()))


@pytest.fixture
def damaged(release: Path, tmp_path: Path) -> Path:
    """A copy of ``release`` that a test may damage."""
    return copy_release(release, tmp_path / "damaged")


# ------------------------------------------------------------- 1. tampered manifest bytes


def test_flipped_byte_in_a_manifest_value_is_a_signature_error(
    damaged: Path, trust: TrustStore
) -> None:
    data = (damaged / MANIFEST_NAME).read_bytes()
    pos = data.index(b'"name":"test/model"') + len(b'"name":"test/mode')
    flip_byte(damaged / MANIFEST_NAME, pos)
    tampered = (damaged / MANIFEST_NAME).read_bytes()
    # Still a well-formed manifest: only the signature can tell.
    assert Manifest.from_bytes(tampered).name == "test/modem"
    with expect(SignatureError):
        p2pweights.load(damaged, trust=trust)
    with expect(SignatureError):
        verify_release(damaged, trust)


def test_flipped_byte_that_breaks_json_is_a_manifest_error(
    damaged: Path, trust: TrustStore
) -> None:
    data = (damaged / MANIFEST_NAME).read_bytes()
    flip_byte(damaged / MANIFEST_NAME, data.index(b'"name":') + len(b'"name"'))  # ':' -> ';'
    with expect(ManifestError):
        p2pweights.load(damaged, trust=trust)
    with expect(ManifestError):
        verify_release(damaged, trust)


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend", "missing", "empty"])
def test_damaged_signature_is_a_signature_error(
    damaged: Path, trust: TrustStore, damage: str
) -> None:
    sig = damaged / SIGNATURE_NAME
    if damage == "flip":
        flip_byte(sig, 10)
    elif damage == "truncate":
        sig.write_bytes(sig.read_bytes()[:63])
    elif damage == "extend":
        sig.write_bytes(sig.read_bytes() + b"\x00")
    elif damage == "missing":
        sig.unlink()
    else:
        sig.write_bytes(b"")
    with expect(SignatureError):
        p2pweights.load(damaged, trust=trust)
    with expect(SignatureError):
        verify_release(damaged, trust)


# ------------------------------------------------------------------ 2-5. damaged chunks


def test_flipped_chunk_byte_is_caught_by_full_verification(
    damaged: Path, trust: TrustStore
) -> None:
    flip_byte(tensor_chunk(damaged, "lm_head.weight"), -1)
    with expect(CorruptChunkError):
        verify_release(damaged, trust, mode="full")
    with expect(CorruptChunkError):
        p2pweights.load(damaged, trust=trust, verify="full")


def test_fast_mode_rehashes_a_chunk_modified_in_place(release: Path, trust: TrustStore) -> None:
    # The pack wrote verification records, so an untouched release passes on stat alone...
    assert (release / RECORDS_NAME).is_file()
    p2pweights.load(release, trust=trust, verify="fast")
    # ...and an in-place edit (same inode, same size, new mtime/ctime) is re-hashed.
    flip_byte(tensor_chunk(release, "model.layers.1.mlp.up_proj.weight"), -3)
    with expect(CorruptChunkError):
        p2pweights.load(release, trust=trust, verify="fast")
    with expect(CorruptChunkError):
        verify_release(release, trust, mode="fast")


def test_chunk_swapped_in_from_another_release_is_corrupt(
    release: Path, make_model: MakeModel, make_release: MakeRelease, trust: TrustStore
) -> None:
    other = make_release(make_model(small_state(seed=1)))
    tensor = "model.layers.0.self_attn.q_proj.weight"
    mine, theirs = tensor_chunk(release, tensor), tensor_chunk(other, tensor)
    assert mine.name != theirs.name
    assert mine.stat().st_size == theirs.stat().st_size  # same layout, other weights
    swap = mine.with_name("swap.tmp")
    swap.write_bytes(theirs.read_bytes())
    os.replace(swap, mine)  # same path name, another release's bytes
    for mode in ("fast", "full"):
        with expect(CorruptChunkError):
            p2pweights.load(release, trust=trust, verify=mode)
        with expect(CorruptChunkError):
            verify_release(release, trust, mode=mode)


def test_truncated_chunk_is_corrupt_in_fast_mode(damaged: Path, trust: TrustStore) -> None:
    chunk = tensor_chunk(damaged, "model.embed_tokens.weight")
    chunk.chmod(0o644)  # chunks are written 0444
    chunk.write_bytes(chunk.read_bytes()[:-1])
    with expect(CorruptChunkError):
        p2pweights.load(damaged, trust=trust, verify="fast")
    with expect(CorruptChunkError):
        verify_release(damaged, trust, mode="fast")


@pytest.mark.parametrize("which", ["tensors", "blob"])
def test_missing_chunk_is_a_missing_chunk_error(
    damaged: Path, trust: TrustStore, which: str
) -> None:
    chunk = (
        tensor_chunk(damaged, "model.norm.weight")
        if which == "tensors"
        else blob_chunk(damaged, "config.json")
    )
    chunk.unlink()
    with expect(MissingChunkError) as info:
        verify_release(damaged, trust)
    assert isinstance(info.value, FileNotFoundError)
    if which == "tensors":
        with expect(MissingChunkError) as info:
            p2pweights.load(damaged, trust=trust)
        assert isinstance(info.value, FileNotFoundError)


# --------------------------------------------------------- 6. unsafe paths in a signed manifest

UNSAFE_CHUNK_PATHS = [
    "../x",
    "/etc/passwd",
    "chunks/../../x",
    "a//b",
    "chunks//x",
    "chunks/./x",
    "./chunks/x",
    "chunks/",
    "chunks\\..\\..\\x",
    "chunks/..\\x",
    "chunks/sub/x",
    "x",
    "C:/chunks/x",
    "chunks/x\x00y",
    "chunks/x\ny",
]
UNSAFE_FILE_NAMES = [
    "../x",
    "/etc/passwd",
    "chunks/../../x",
    "a//b",
    "a/../../x",
    "./x",
    "x/",
    "x/..",
    "..\\x",
    "sub\\..\\..\\x",
    "C:\\x",
    "C:x",
    "",
    "x\x00",
]


@pytest.mark.parametrize("where", ["path", "sha256"])
@pytest.mark.parametrize("path", UNSAFE_CHUNK_PATHS)
def test_a_chunk_path_cannot_be_smuggled_in(
    damaged: Path, key: PrivateKey, trust: TrustStore, tmp_path: Path, path: str, where: str
) -> None:
    # A chunk's path is derived from its sha256 (64 hex digits), so no manifest can name
    # one: a stated path is an unexpected key, and a path in the sha256 is not hex.
    doc = read_doc(damaged)
    doc["chunks"][0][where] = path
    write_signed(damaged, doc, key)
    with expect(ManifestError):
        open_release(damaged, trust)
    with expect(ManifestError):
        p2pweights.load(damaged, trust=trust)
    with expect(ManifestError):
        verify_release(damaged, trust)
    out = tmp_path / "export"
    before = snapshot(tmp_path)
    for exact in (False, True):
        with expect(ManifestError):
            export(damaged, out, trust=trust, exact=exact)
        assert_untouched(tmp_path, before, out)


@pytest.mark.parametrize("name", UNSAFE_FILE_NAMES)
def test_unsafe_file_name_is_refused(
    damaged: Path, key: PrivateKey, trust: TrustStore, tmp_path: Path, name: str
) -> None:
    doc = read_doc(damaged)
    rename_file(doc, "config.json", name)
    write_signed(damaged, doc, key)
    with expect(UnsafePathError):
        open_release(damaged, trust)
    with expect(UnsafePathError):
        p2pweights.load(damaged, trust=trust)
    out = tmp_path / "export"
    before = snapshot(tmp_path)
    for exact in (False, True):
        with expect(UnsafePathError):
            export(damaged, out, trust=trust, exact=exact)
        assert_untouched(tmp_path, before, out)


def test_linked_export_refuses_a_file_name_that_resolves_through_a_shard_link(
    make_model: MakeModel,
    make_release: MakeRelease,
    key: PrivateKey,
    trust: TrustStore,
    tmp_path: Path,
) -> None:
    # One tensor -> one shard, exported as the link model.safetensors -> chunk file. A blob
    # named model.safetensors/config.json passes the manifest's path check but would be
    # written through that link into the release's chunks dir.
    rel = make_release(make_model({"w": torch.ones(4)}))
    doc = read_doc(rel)
    rename_file(doc, "config.json", "model.safetensors/config.json")
    write_signed(rel, doc, key)
    open_release(rel, trust)  # schema-valid and signed
    out = tmp_path / "export"
    before = snapshot(tmp_path)
    with expect(UnsafePathError):
        export(rel, out, trust=trust)
    assert_untouched(tmp_path, before, out)


def test_exact_export_of_a_file_under_another_file_is_an_export_error(
    make_model: MakeModel,
    make_release: MakeRelease,
    key: PrivateKey,
    trust: TrustStore,
    tmp_path: Path,
) -> None:
    rel = make_release(make_model(small_state()))
    doc = read_doc(rel)
    rename_file(doc, "config.json", "model.safetensors/config.json")
    write_signed(rel, doc, key)
    out = tmp_path / "export"
    before = snapshot(tmp_path)
    with expect(ExportError):
        export(rel, out, trust=trust, exact=True)
    assert_untouched(tmp_path, before, out)


def test_export_pointer_never_writes_through_a_link_into_the_release(
    make_model: MakeModel, make_release: MakeRelease, trust: TrustStore, tmp_path: Path
) -> None:
    rel = make_release(make_model(small_state(), extra_files={EXPORT_POINTER: b'{"x":1}'}))
    before = snapshot(rel)
    with contextlib.suppress(ExportError):  # refusing is fine; writing into the store is not
        export(rel, tmp_path / "export", trust=trust)
    assert snapshot(rel) == before


# ---------------------------------------------------------------- 7. absurd sizes and counts


def _set_chunk_size(doc: Doc, size: object) -> None:
    doc["chunks"][0]["size"] = size


def _set_shape(doc: Doc, shape: object) -> None:
    doc["types"][0][1] = shape


def _set_data(doc: Doc, data: object) -> None:
    tensor_chunks(doc)[0]["data"] = data


def _shift(doc: Doc, by: int) -> None:
    # Tensors and chunk end move together: in bounds and filling the chunk, but an F32
    # tensor now starts at an odd offset.
    chunk = tensor_chunks(doc)[0]
    chunk["data"] += by
    chunk["size"] += by


def _extra_type(doc: Doc) -> None:
    tensor_chunks(doc)[0]["types"].append(0)


def _unknown_type(doc: Doc) -> None:
    tensor_chunks(doc)[0]["types"][0] = len(doc["types"])


def _alias(doc: Doc) -> None:
    # A second tensor of the same name: one name, two places.
    a, b = tensor_chunks(doc)[:2]
    b["names"][0] = a["names"][0]


def _repeat_type(doc: Doc) -> None:
    doc["types"].append(doc["types"][0])


def _too_many_chunks(doc: Doc) -> None:
    doc["chunks"] = [0] * 200_001


def _too_many_files(doc: Doc) -> None:
    doc["files"] = [0] * 100_001


def _expires_before_created(doc: Doc) -> None:
    doc["expires"] = doc["created"]


ABSURD: list[tuple[str, Callable[[Doc], None]]] = [
    ("chunk size 2**60", lambda d: _set_chunk_size(d, 2**60)),
    ("chunk size 2**53+1", lambda d: _set_chunk_size(d, 2**53 + 1)),
    ("chunk size 0", lambda d: _set_chunk_size(d, 0)),
    ("chunk size -1", lambda d: _set_chunk_size(d, -1)),
    ("chunk size true", lambda d: _set_chunk_size(d, True)),
    ("chunk size string", lambda d: _set_chunk_size(d, "12")),
    ("huge dims", lambda d: _set_shape(d, [2**40, 2**40, 2**40])),
    ("dim over 2**53", lambda d: _set_shape(d, [2**53 + 1])),
    ("negative dim", lambda d: _set_shape(d, [-256, -16])),
    ("rank 65", lambda d: _set_shape(d, [1] * 65)),
    ("tensors past chunk end", lambda d: _set_data(d, tensor_chunks(d)[0]["data"] + 8)),
    ("tensors short of chunk end", lambda d: _set_data(d, tensor_chunks(d)[0]["data"] - 8)),
    ("data past chunk", lambda d: _set_data(d, 2**50)),
    ("data inside length prefix", lambda d: _set_data(d, 0)),
    ("data negative", lambda d: _set_data(d, -8)),
    ("misaligned tensor", lambda d: _shift(d, 1)),
    ("more types than names", _extra_type),
    ("unknown type", _unknown_type),
    ("type listed twice", _repeat_type),
    ("aliased tensor name", _alias),
    ("200001 chunks", _too_many_chunks),
    ("100001 files", _too_many_files),
    ("expires == created", _expires_before_created),
    ("version 2**60", lambda d: d.__setitem__("version", 2**60)),
    ("created negative", lambda d: d.__setitem__("created", -1)),
    ("label 257 chars", lambda d: d.__setitem__("label", "x" * 257)),
]


@pytest.mark.parametrize(("case", "mutate"), ABSURD, ids=[c for c, _ in ABSURD])
def test_absurd_manifest_values_are_manifest_errors(
    release: Path, case: str, mutate: Callable[[Doc], None]
) -> None:
    doc = read_doc(release)
    mutate(doc)
    with expect(ManifestError):
        Manifest.from_bytes(dumps(doc))


@pytest.mark.parametrize("case", ["chunk size 2**60", "huge dims", "tensors past chunk end"])
def test_absurd_values_in_a_signed_manifest_fail_before_any_chunk_is_read(
    damaged: Path, key: PrivateKey, trust: TrustStore, case: str
) -> None:
    doc = read_doc(damaged)
    dict(ABSURD)[case](doc)
    write_signed(damaged, doc, key)
    with expect(ManifestError):
        p2pweights.load(damaged, trust=trust)
    with expect(ManifestError):
        verify_release(damaged, trust)


LIMITS: list[tuple[str, Limits]] = [
    ("manifest_bytes", Limits(manifest_bytes=100)),
    ("chunks", Limits(chunks=1)),
    ("tensors", Limits(tensors=2)),
    ("files", Limits(files=1)),
    ("chunk_bytes", Limits(chunk_bytes=100)),
    ("total_bytes", Limits(total_bytes=1000)),
    ("tensor_name_chars", Limits(tensor_name_chars=5)),
    ("label_chars", Limits(label_chars=3)),
]


@pytest.mark.parametrize(("field", "limits"), LIMITS, ids=[f for f, _ in LIMITS])
def test_manifest_over_a_limit_is_a_manifest_error(
    release: Path, field: str, limits: Limits
) -> None:
    doc = read_doc(release)
    doc["label"] = "release label"
    data = dumps(doc)
    Manifest.from_bytes(data)  # fine under the default limits
    with expect(ManifestError):
        Manifest.from_bytes(data, limits=limits)


def test_oversized_manifest_file_is_refused_before_parsing(
    damaged: Path, trust: TrustStore
) -> None:
    # Over the 256 MiB default limit without writing 256 MiB: a sparse file.
    with open(damaged / MANIFEST_NAME, "r+b") as fh:
        fh.truncate(Limits().manifest_bytes + 1)
    with expect(ManifestError):
        open_release(damaged, trust)


@pytest.mark.parametrize(
    "kw",
    [{"name": "../evil"}, {"expires": CREATED}, {"label": "x" * 1000}],
    ids=["bad name", "expires == created", "label too long"],
)
def test_pack_refuses_unrepresentable_metadata_and_cleans_up(
    make_model: MakeModel, key: PrivateKey, tmp_path: Path, kw: dict[str, Any]
) -> None:
    src = make_model(small_state())
    args: dict[str, Any] = {"name": "test/model", "version": 1, "key": key, "now": CREATED} | kw
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    with expect(ManifestError):
        p2pweights.pack(src, out, **args)
    assert_untouched(tmp_path, before, out)


# ------------------------------------------------------------- 8. lying safetensors headers

F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
GOOD_BODY = json.dumps({"w": F32x2}).encode()


def one_tensor(
    dtype: object = "F32", shape: object = (2,), offsets: object = (0, 8), data: int = 8
) -> bytes:
    """A one-tensor safetensors file with the given (possibly lying) entry."""
    entry = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
    return safetensors_bytes({"w": entry}, bytes(data))


DUPLICATE_NAME = b'{"w":%s,"w":%s}' % ((json.dumps(F32x2).encode(),) * 2)

BAD_SAFETENSORS: list[tuple[str, bytes]] = [
    ("shorter than 8 bytes", b"\x01\x02\x03"),
    ("header length 2**63", safetensors_bytes(b"{}", length=2**63)),
    (
        "header length over limit",
        safetensors_bytes(GOOD_BODY, bytes(8), length=MAX_HEADER_BYTES + 1),
    ),
    ("header length past EOF", safetensors_bytes(GOOD_BODY, length=len(GOOD_BODY) + 64)),
    (
        "header length one past EOF",
        safetensors_bytes(GOOD_BODY, bytes(8), length=len(GOOD_BODY) + 9),
    ),
    (
        "overlapping offsets",
        safetensors_bytes({"a": F32x2, "b": {**F32x2, "data_offsets": [4, 12]}}, bytes(12)),
    ),
    ("aliased offsets", safetensors_bytes({"a": F32x2, "b": F32x2}, bytes(8))),
    ("wrong dtype size", one_tensor(shape=[3])),
    ("dtype too wide for its bytes", one_tensor(dtype="F64", shape=[2])),
    ("huge dims", one_tensor(shape=[2**40, 2**40])),
    ("unknown dtype", one_tensor(dtype="F128")),
    ("sub-byte dtype", one_tensor(dtype="F4", shape=[16])),
    ("dtype not a string", one_tensor(dtype=["F32"])),
    ("offsets past data", one_tensor(data=4)),
    ("reversed offsets", one_tensor(shape=[0], offsets=[8, 0])),
    ("negative offset", one_tensor(offsets=[-8, 0])),
    ("three offsets", one_tensor(offsets=[0, 8, 8])),
    ("offsets not a list", one_tensor(offsets={"0": 8})),
    ("negative dim", one_tensor(shape=[-2])),
    ("float dim", one_tensor(shape=[2.0])),
    ("bool dim", one_tensor(shape=[True, 2])),
    ("rank 65", one_tensor(shape=[1] * 63 + [2, 1])),
    ("missing data_offsets", safetensors_bytes({"w": {"dtype": "F32", "shape": [2]}}, bytes(8))),
    ("extra entry key", safetensors_bytes({"w": {**F32x2, "x": 1}}, bytes(8))),
    ("duplicate tensor name", safetensors_bytes(DUPLICATE_NAME, bytes(8))),
    ("header is a list", safetensors_bytes(b"[]", bytes(8))),
    ("metadata not strings", safetensors_bytes({"__metadata__": {"a": 1}, "w": F32x2}, bytes(8))),
    ("NaN in header", safetensors_bytes(b'{"__metadata__":{"a":NaN}}', bytes(8))),
    ("header not UTF-8", safetensors_bytes(b'{"\xff":1}', bytes(8))),
    ("header not JSON", safetensors_bytes(b"{w", bytes(8))),
    ("deep nesting", safetensors_bytes(b"[" * 10_000 + b"]" * 10_000, bytes(8))),
]


@pytest.mark.parametrize(("case", "data"), BAD_SAFETENSORS, ids=[c for c, _ in BAD_SAFETENSORS])
def test_lying_safetensors_header_is_refused_by_pack(
    key: PrivateKey, tmp_path: Path, case: str, data: bytes
) -> None:
    src = tmp_path / "src" / "model.safetensors"
    src.parent.mkdir()
    src.write_bytes(data)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    for source in (src, src.parent):  # as a single file and inside a model dir
        with expect(SafetensorsHeaderError):
            pack_to(source, out, key)
        assert_untouched(tmp_path, before, out)


@pytest.mark.parametrize("case", ["gap", "slack"])
def test_safetensors_with_unaccounted_bytes_is_a_source_error(
    key: PrivateKey, tmp_path: Path, case: str
) -> None:
    header = (
        {"a": F32x2, "b": {**F32x2, "data_offsets": [12, 20]}} if case == "gap" else {"w": F32x2}
    )
    src = tmp_path / "model.safetensors"
    src.write_bytes(safetensors_bytes(header, bytes(20 if case == "gap" else 12)))
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    with expect(SourceError):
        pack_to(src, out, key)
    assert_untouched(tmp_path, before, out)


def test_safetensors_header_with_a_huge_integer_is_a_header_error(
    key: PrivateKey, tmp_path: Path
) -> None:
    src = tmp_path / "model.safetensors"
    body = f'{{"w":{{"dtype":"F32","shape":[{HUGE_INT}],"data_offsets":[0,8]}}}}'.encode()
    src.write_bytes(safetensors_bytes(body, bytes(8)))
    with expect(SafetensorsHeaderError):
        pack_to(src, tmp_path / "out", key)


def test_safetensors_tensor_name_with_a_lone_surrogate_is_a_header_error(
    key: PrivateKey, tmp_path: Path
) -> None:
    src = tmp_path / "model.safetensors"
    src.write_bytes(
        safetensors_bytes(
            b'{"w\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', bytes(8)
        )
    )
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    with expect(SafetensorsHeaderError):
        pack_to(src, out, key)
    assert_untouched(tmp_path, before, out)


# ----------------------------------------------------------------------- 9. untrusted keys


def test_release_by_an_untrusted_key_is_refused(
    make_model: MakeModel, make_release: MakeRelease, other_key: PrivateKey, trust: TrustStore
) -> None:
    rel = make_release(make_model(small_state()), signer=other_key)
    with expect(UntrustedKeyError):
        p2pweights.load(rel, trust=trust)
    with expect(UntrustedKeyError):
        verify_release(rel, trust)
    with expect(UntrustedKeyError):
        p2pweights.load(rel)  # the default, per-test data dir trusts nobody


def test_manifest_republished_under_another_key_is_untrusted(
    damaged: Path, other_key: PrivateKey, trust: TrustStore
) -> None:
    doc = read_doc(damaged)
    doc["publisher"] = other_key.public.text
    write_signed(damaged, doc, other_key)
    with expect(UntrustedKeyError):
        p2pweights.load(damaged, trust=trust)
    with expect(UntrustedKeyError):
        verify_release(damaged, trust)


def test_manifest_resigned_by_another_key_keeping_the_publisher_is_a_signature_error(
    damaged: Path, other_key: PrivateKey, trust: TrustStore
) -> None:
    write_signed(damaged, (damaged / MANIFEST_NAME).read_bytes(), other_key)
    with expect(SignatureError):
        p2pweights.load(damaged, trust=trust)
    with expect(SignatureError):
        verify_release(damaged, trust)


# --------------------------------------------------------------- 10. manifest parser strictness


def _with(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1
    return data.replace(old, new)


STRICTNESS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("duplicate key", lambda d: b'{"name":"evil/model",' + d[1:]),
    (
        "duplicate nested key",
        lambda d: _with(d, b'{"kind":"blob","sha', b'{"kind":"blob","kind":"blob","sha'),
    ),
    ("float", lambda d: _with(d, b'"version":1}', b'"version":1.0}')),
    ("exponent", lambda d: _with(d, b'"version":1}', b'"version":1e0}')),
    ("NaN", lambda d: _with(d, b'"version":1}', b'"version":NaN}')),
    ("Infinity", lambda d: _with(d, b'"version":1}', b'"version":Infinity}')),
    ("-Infinity", lambda d: _with(d, b'"version":1}', b'"version":-Infinity}')),
    ("negative zero", lambda d: _with(d, b'"version":1}', b'"version":-0}')),
    ("deep nesting 10000 lists", lambda d: b"[" * 10_000 + b"]" * 10_000),
    ("deep nesting 100000 unclosed", lambda d: b"[" * 100_000),
    ("deep nesting objects", lambda d: b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
    (
        "deep nesting inside a value",
        lambda d: _with(d, b'"previous":null', b'"previous":' + b"[" * 5_000 + b"]" * 5_000),
    ),
    ("non-UTF-8 byte", lambda d: _with(d, b'"label":""', b'"label":"\xff"')),
    ("encoded surrogate", lambda d: _with(d, b'"label":""', b'"label":"\xed\xa0\x80"')),
    ("UTF-16", lambda d: d.decode("utf-8").encode("utf-16")),
    ("UTF-8 BOM", lambda d: b"\xef\xbb\xbf" + d),
    ("indented", lambda d: json.dumps(json.loads(d), indent=1, sort_keys=True).encode()),
    ("space after colon", lambda d: _with(d, b'"version":1}', b'"version": 1}')),
    ("trailing newline", lambda d: d + b"\n"),
    ("leading space", lambda d: b" " + d),
    (
        "unsorted keys",
        lambda d: json.dumps(
            dict(reversed(json.loads(d).items())), separators=(",", ":"), ensure_ascii=False
        ).encode(),
    ),
    ("ASCII escapes", lambda d: _with(d, b'"name":"test/model"', b'"name":"test/\\u006dodel"')),
    ("escaped slash", lambda d: _with(d, b'"name":"test/model"', b'"name":"test\\/model"')),
    ("not an object", lambda d: b"[" + d + b"]"),
    ("empty", lambda d: b""),
    ("truncated", lambda d: d[:-1]),
    ("trailing garbage", lambda d: d + b"x"),
    ("unknown format", lambda d: _with(d, b"p2pweights.manifest/2", b"p2pweights.manifest/3")),
    ("format 1", lambda d: _with(d, b"p2pweights.manifest/2", b"p2pweights.manifest/1")),
    ("extra top-level key", lambda d: _with(d, b'"version":1}', b'"version":1,"zz":1}')),
    ("missing key", lambda d: _with(d, b'"label":"",', b"")),
]


@pytest.mark.parametrize(("case", "mutate"), STRICTNESS, ids=[c for c, _ in STRICTNESS])
def test_manifest_parser_is_strict(
    release: Path, case: str, mutate: Callable[[bytes], bytes]
) -> None:
    data = (release / MANIFEST_NAME).read_bytes()
    Manifest.from_bytes(data)
    with expect(ManifestError):
        Manifest.from_bytes(mutate(data))


@pytest.mark.parametrize("case", ["duplicate key", "float", "indented", "ASCII escapes"])
def test_signed_but_non_canonical_manifest_is_refused(
    damaged: Path, key: PrivateKey, trust: TrustStore, case: str
) -> None:
    # A valid signature does not make non-canonical bytes acceptable.
    write_signed(damaged, dict(STRICTNESS)[case]((damaged / MANIFEST_NAME).read_bytes()), key)
    with expect(ManifestError):
        p2pweights.load(damaged, trust=trust)
    with expect(ManifestError):
        verify_release(damaged, trust)


def _dtype_list(doc: Doc) -> None:
    doc["types"][0][0] = ["F32"]


def _order_list(doc: Doc) -> None:
    entry = next(f for f in doc["files"] if f["kind"] == "safetensors")
    entry["tensors"] = [[n] for n in entry["tensors"]]


def _names_list(doc: Doc) -> None:
    chunk = tensor_chunks(doc)[0]
    chunk["names"] = [[n] for n in chunk["names"]]


def _wrong_types(doc: Doc) -> None:
    doc["types"] = [doc["types"]]


def _kind_list(doc: Doc) -> None:
    doc["chunks"][0]["kind"] = ["blob"]
    doc["files"][0]["kind"] = ["blob"]


@pytest.mark.parametrize(
    "mutate", [_dtype_list, _order_list, _names_list, _wrong_types, _kind_list]
)
def test_unhashable_values_where_strings_belong_are_manifest_errors(
    release: Path, mutate: Callable[[Doc], None]
) -> None:
    doc = read_doc(release)
    mutate(doc)
    with expect(ManifestError):
        Manifest.from_bytes(dumps(doc))


@pytest.mark.parametrize("where", ["from_bytes", "open_release"])
def test_manifest_with_a_huge_integer_is_a_manifest_error(
    damaged: Path, trust: TrustStore, where: str
) -> None:
    data = _with(
        (damaged / MANIFEST_NAME).read_bytes(),
        b'"version":1}',
        b'"version":' + HUGE_INT.encode() + b"}",
    )
    (damaged / MANIFEST_NAME).write_bytes(data)  # unsigned: the parser must refuse it first
    with expect(ManifestError):
        if where == "from_bytes":
            Manifest.from_bytes(data)
        else:
            open_release(damaged, trust)


def test_manifest_with_a_lone_surrogate_is_a_manifest_error(release: Path) -> None:
    data = _with((release / MANIFEST_NAME).read_bytes(), b'"label":""', b'"label":"\\ud800"')
    with expect(ManifestError):
        Manifest.from_bytes(data)


def test_damaged_verification_records_only_cost_a_rehash(release: Path, trust: TrustStore) -> None:
    (release / RECORDS_NAME).write_bytes(b'{"x":[' + HUGE_INT.encode() + b"]}")
    p2pweights.load(release, trust=trust)
    # The re-hash wrote fresh records: one per tensor chunk, each ending in its signed digest.
    records = json.loads((release / RECORDS_NAME).read_bytes())
    chunks = open_release(release, trust).manifest.chunks
    tensor_chunks = {c.path: c.sha256 for c in chunks if c.kind == "tensors"}
    assert {k: v[-1] for k, v in records.items()} == tensor_chunks


def test_damaged_verification_records_never_make_a_changed_chunk_trusted(
    release: Path, trust: TrustStore
) -> None:
    # Damaged records must mean "nothing was checked", so fast mode hashes every chunk and
    # finds the one changed in place (same size, so only its sha256 can tell).
    p2pweights.load(release, trust=trust)  # writes good records first
    chunks = open_release(release, trust).manifest.chunks
    chunk = max((c for c in chunks if c.kind == "tensors"), key=lambda c: c.size)
    (release / RECORDS_NAME).write_bytes(b'{"x":[' + HUGE_INT.encode() + b"]}")
    flip_byte(release / chunk.path, chunk.size // 2)
    with expect(CorruptChunkError):
        p2pweights.load(release, trust=trust)


def test_trust_store_with_a_huge_integer_is_a_trust_store_error(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_bytes(b'{"keys":' + HUGE_INT.encode() + b"}")
    with expect(TrustStoreError):
        TrustStore.load(path)


# ------------------------------------------------------------------- 11. pickle checkpoints


def pickle_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    base = torch.randn(6, 4, generator=g)
    return {
        "model.embed.weight": torch.randn(32, 8, generator=g),
        "model.layers.0.q.weight": torch.randn(8, 8, generator=g).t(),  # not contiguous
        "model.layers.0.q.bias": base[2:].reshape(-1),  # a view with a storage offset
        "model.layers.0.norm.weight": torch.randn(8, generator=g).to(torch.bfloat16),
        "model.layers.1.q.weight": torch.randn(8, 8, generator=g).to(torch.float16),
        "model.layers.1.ids": torch.arange(10, dtype=torch.int64),
        "model.layers.1.mask": torch.tensor([True, False, True]),
        "model.nan": torch.tensor([float("nan"), -0.0, float("inf")]),
        "model.scalar": torch.tensor(3.5),
        "model.empty": torch.zeros(0, 3),
    }


def assert_same_state(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert same_bits(loaded[name], tensor), name


@pytest.mark.parametrize("layout", ["file", "dir", "legacy-file"])
def test_bin_state_dict_packs_and_loads_bit_identically(
    key: PrivateKey, trust: TrustStore, tmp_path: Path, layout: str
) -> None:
    state = pickle_state()
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    if layout == "dir":
        torch.save(state, src_dir / "pytorch_model.bin")
        (src_dir / "config.json").write_text('{"model_type": "test"}')
        src = src_dir
    else:
        src = src_dir / "model.bin"
        torch.save(state, src, _use_new_zipfile_serialization=layout == "file")
    out = tmp_path / "out"
    result = pack_to(src, out, key)
    assert {f.kind for f in result.manifest.files} >= {"torch"}
    assert_same_state(p2pweights.load(out, trust=trust, verify="full"), state)


def test_sharded_bin_checkpoint_packs_and_loads(
    key: PrivateKey, trust: TrustStore, tmp_path: Path
) -> None:
    state = pickle_state()
    names = sorted(state)
    shards = {
        "pytorch_model-00001-of-00002.bin": {n: state[n] for n in names[:5]},
        "pytorch_model-00002-of-00002.bin": {n: state[n] for n in names[5:]},
    }
    src = tmp_path / "src"
    src.mkdir()
    for fname, part in shards.items():
        torch.save(part, src / fname)
    index = {
        "metadata": {"total_size": 0},
        "weight_map": {n: f for f, part in shards.items() for n in part},
    }
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    result = pack_to(src, out, key)
    kinds = {f.name: f.kind for f in result.manifest.files}
    assert kinds == {**dict.fromkeys(shards, "torch"), "pytorch_model.bin.index.json": "blob"}
    assert_same_state(p2pweights.load(out, trust=trust, verify="full"), state)


class Payload:
    """Pickles as a call of ``func(*args)``: what a malicious checkpoint looks like."""

    def __init__(self, func: Callable[..., object], *args: object) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.func, self.args


def _os_system(marker: Path) -> Payload:
    return Payload(os.system, f"touch '{marker}'")


def _open(marker: Path) -> Payload:
    return Payload(builtins.open, str(marker), "w")


def _raw_pickle_v2(path: Path, payload: Payload) -> None:
    path.write_bytes(pickle.dumps(payload, protocol=2))


def _raw_pickle_v5(path: Path, payload: Payload) -> None:
    path.write_bytes(pickle.dumps(payload, protocol=5))


def _torch_save(path: Path, payload: Payload) -> None:
    torch.save(payload, path)


def _torch_save_in_dict(path: Path, payload: Payload) -> None:
    torch.save({"w": torch.ones(2), "z": payload}, path)


def _torch_save_legacy(path: Path, payload: Payload) -> None:
    torch.save({"w": torch.ones(2), "z": payload}, path, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize("make_payload", [_os_system, _open])
@pytest.mark.parametrize(
    "write",
    [
        _raw_pickle_v2,
        # torch warns about any protocol but 2 before refusing.
        pytest.param(
            _raw_pickle_v5,
            marks=pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning"),
        ),
        _torch_save,
        _torch_save_in_dict,
        _torch_save_legacy,
    ],
)
@pytest.mark.parametrize("layout", ["model.bin", "dir/pytorch_model.bin"])
def test_malicious_pickle_is_refused_without_running(
    key: PrivateKey,
    tmp_path: Path,
    make_payload: Callable[[Path], Payload],
    write: Callable[[Path, Payload], None],
    layout: str,
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / layout
    path.parent.mkdir(exist_ok=True)
    write(path, make_payload(marker))
    if layout.startswith("dir/"):
        (path.parent / "config.json").write_text("{}")
    src = path if layout == "model.bin" else path.parent
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    with expect(UnsafePickleError):
        pack_to(src, out, key)
    assert not marker.exists(), "the pickle payload ran"
    assert_untouched(tmp_path, before, out)


def test_protocol_4_checkpoint_is_refused_with_the_reason_under_warnings_as_errors(
    key: PrivateKey, tmp_path: Path
) -> None:
    # torch's weights_only unpickler cannot read protocol 4 (opcode 149, FRAME); we never
    # fall back to a full unpickler, so the file is refused, with torch's reason, and
    # torch's protocol warning does not turn into a crash.
    src = tmp_path / "model.bin"
    torch.save(pickle_state(), src, pickle_protocol=4)
    with pytest.raises(UnsafePickleError, match="Unsupported operand 149"):
        pack_to(src, tmp_path / "out", key)


@pytest.mark.parametrize("content", ["list", "int value", "nested dict"])
def test_pickle_that_is_not_a_flat_state_dict_is_a_source_error(
    key: PrivateKey, tmp_path: Path, content: str
) -> None:
    obj: object = {
        "list": [torch.ones(2)],
        "int value": {"w": torch.ones(2), "step": 3},
        "nested dict": {"model": {"w": torch.ones(2)}},
    }[content]
    src = tmp_path / "model.bin"
    torch.save(obj, src)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    with expect(SourceError):
        pack_to(src, out, key)
    assert_untouched(tmp_path, before, out)


def test_exact_export_of_a_pickle_sourced_release_is_an_export_error(
    key: PrivateKey, trust: TrustStore, tmp_path: Path
) -> None:
    src = tmp_path / "model.bin"
    torch.save(pickle_state(), src)
    rel = tmp_path / "rel"
    pack_to(src, rel, key)
    out = tmp_path / "export"
    before = snapshot(tmp_path)
    with expect(ExportError):
        export(rel, out, trust=trust, exact=True)
    assert_untouched(tmp_path, before, out)


# ---------------------------------------------------------------------- 12. expired releases


def test_expired_release_is_refused(
    make_model: MakeModel, make_release: MakeRelease, trust: TrustStore, tmp_path: Path
) -> None:
    rel = make_release(make_model(small_state()), expires=CREATED + 60)
    assert open_release(rel, trust, now=CREATED + 60).manifest.expires == CREATED + 60
    with expect(ReleaseExpiredError):
        open_release(rel, trust, now=CREATED + 61)
    with expect(ReleaseExpiredError):
        p2pweights.load(rel, trust=trust)  # the real clock is long past 2023
    with expect(ReleaseExpiredError):
        verify_release(rel, trust)
    out = tmp_path / "export"
    before = snapshot(tmp_path)
    with expect(ReleaseExpiredError):
        export(rel, out, trust=trust)
    assert_untouched(tmp_path, before, out)


def test_expiry_cannot_be_stripped_without_breaking_the_signature(
    make_model: MakeModel, make_release: MakeRelease, trust: TrustStore
) -> None:
    rel = make_release(make_model(small_state()), expires=CREATED + 60)
    data = (rel / MANIFEST_NAME).read_bytes()
    (rel / MANIFEST_NAME).write_bytes(
        _with(data, f'"expires":{CREATED + 60}'.encode(), b'"expires":null')
    )
    with expect(SignatureError):
        p2pweights.load(rel, trust=trust)


# ----------------------------------------------------------------------- 13. the error tree


def test_every_public_error_is_a_p2pweights_error() -> None:
    classes = [getattr(errors, n) for n in errors.__all__]
    assert all(issubclass(c, P2PWeightsError) for c in classes)
    assert issubclass(MissingChunkError, FileNotFoundError)
    assert issubclass(ManifestError, FormatError)
    assert issubclass(UnsafePickleError, SourceError)


def test_a_damaged_copy_does_not_affect_the_original(
    release: Path, damaged: Path, trust: TrustStore
) -> None:
    # Sanity for the fixtures above: damage stays in the copy.
    flip_byte(tensor_chunk(damaged, "lm_head.weight"), -1)
    state = p2pweights.load(release, trust=trust, verify="full")
    assert_same_state(state, small_state())
    assert read_doc(release) == read_doc(damaged)
