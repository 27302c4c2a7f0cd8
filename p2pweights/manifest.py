"""The release manifest: typed entries, canonical bytes, and a parser for hostile input.

Layout (canonical JSON, keys sorted)::

    format     "p2pweights.manifest/1"
    name       "org/model"            version  int >= 0        label  free text
    publisher  "ed25519:..."          created  unix seconds    expires  int | null
    previous   sha256 hex of the previous release's manifest bytes | null
    chunks     [{path, size, sha256, v2_root, kind: "tensors"|"blob"}]   sorted by path
    tensors    {name: {chunk, dtype, shape, offsets: [begin, end]}}      absolute file offsets
    files      [{name, size, sha256, kind, ...}]                          sorted by name
               kind "safetensors": header (the original JSON header text), order (tensor
                   names in the original data order): enough to rebuild the file byte for byte
               kind "blob": chunk (the chunk holding the bytes; null for an empty file)
               kind "torch": order; a converted pickle checkpoint, not rebuilt byte for byte

Every limit below bounds what a hostile manifest can make a reader do.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._canonical import dumps, encode_parsed, loads_strict
from ._paths import check_relative
from ._safetensors import DTYPES, MAX_RANK, expected_nbytes
from .errors import KeyFileError, ManifestError, UnsafePathError
from .keys import PublicKey

__all__ = [
    "FORMAT",
    "LIMITS",
    "ChunkEntry",
    "FileEntry",
    "Limits",
    "Manifest",
    "TensorEntry",
    "chunk_address",
    "chunk_of_address",
    "publisher_in",
]

FORMAT = "p2pweights.manifest/1"

ChunkKind = Literal["tensors", "blob"]
FileKind = Literal["safetensors", "blob", "torch"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99})?")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_INT = 2**53  # JSON integers beyond this lose precision in other languages


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard caps on what a manifest may describe."""

    manifest_bytes: int = 256 * 1024 * 1024
    chunks: int = 200_000
    tensors: int = 2_000_000
    files: int = 100_000
    chunk_bytes: int = 1 << 40
    total_bytes: int = 1 << 50
    tensor_name_chars: int = 1024
    label_chars: int = 256


LIMITS = Limits()


def chunk_address(sha256: str, kind: ChunkKind) -> str:
    """A chunk's path in a release and in the store: its content address.

    ``chunks/<sha256>.safetensors`` for a tensor chunk, ``chunks/<sha256>`` for a blob. The
    parser requires every chunk's path to be exactly this, so a name says which bytes it
    holds: two releases can share a store file only when they share the bytes, and no
    publisher can claim a name it cannot hash to.
    """
    return f"chunks/{sha256}.safetensors" if kind == "tensors" else f"chunks/{sha256}"


def chunk_of_address(path: str, size: int, v2_root: str) -> ChunkEntry:
    """The chunk a content address names, with the size and v2 root given for it.

    The inverse of :func:`chunk_address`: the path gives the sha256 and the kind. The
    caller must have checked ``path`` (e.g. against ``chunks/<64 hex>[.safetensors]``).
    """
    name = path.removeprefix("chunks/")
    kind: ChunkKind = "tensors" if name.endswith(".safetensors") else "blob"
    return ChunkEntry(path, size, name.removesuffix(".safetensors"), v2_root, kind)


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    """One file of the release's ``chunks/`` directory."""

    path: str
    size: int
    sha256: str
    v2_root: str
    kind: ChunkKind


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """Where one tensor lives: a chunk and absolute byte offsets in it."""

    name: str
    chunk: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of the original checkpoint."""

    name: str
    size: int
    sha256: str
    kind: FileKind
    chunk: str | None = None
    header: str | None = None
    order: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Manifest:
    """A release manifest. Build it with fields, or parse it with :meth:`from_bytes`."""

    name: str
    version: int
    label: str
    publisher: PublicKey
    created: int
    expires: int | None
    previous: str | None
    chunks: tuple[ChunkEntry, ...]
    tensors: Mapping[str, TensorEntry]
    files: tuple[FileEntry, ...]

    def to_bytes(self) -> bytes:
        """The canonical bytes that get signed."""
        doc = {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "label": self.label,
            "publisher": self.publisher.text,
            "created": self.created,
            "expires": self.expires,
            "previous": self.previous,
            "chunks": [
                {
                    "path": c.path,
                    "size": c.size,
                    "sha256": c.sha256,
                    "v2_root": c.v2_root,
                    "kind": c.kind,
                }
                for c in self.chunks
            ],
            "tensors": {
                t.name: {
                    "chunk": t.chunk,
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "offsets": [t.begin, t.end],
                }
                for t in self.tensors.values()
            },
            "files": [_file_doc(f) for f in self.files],
        }
        data = dumps(doc)
        # Validate what we are about to sign exactly as a reader will.
        Manifest.from_bytes(data)
        return data

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: Limits = LIMITS) -> Manifest:
        """Parse and fully validate manifest bytes.

        Raises:
            ManifestError: schema, limits, or non-canonical encoding.
            UnsafePathError: a chunk or file path that could escape its directory.

        """
        return cls.from_parsed(
            loads_strict(data, max_bytes=limits.manifest_bytes), data, limits=limits
        )

    @classmethod
    def from_parsed(cls, doc: object, data: bytes, *, limits: Limits = LIMITS) -> Manifest:
        """Validate ``doc``, which :func:`loads_strict` parsed from exactly ``data``.

        Raises:
            ManifestError: schema, limits, or non-canonical encoding.
            UnsafePathError: a chunk or file path that could escape its directory.
        """
        manifest = _parse(doc, limits)
        if encode_parsed(doc) != data:
            raise ManifestError("manifest is not in canonical form (sorted keys, no whitespace)")
        return manifest


def publisher_in(doc: object) -> PublicKey:
    """The publisher key of a parsed (not yet validated) manifest document.

    Raises:
        ManifestError: not an object, or no well-formed publisher key.
    """
    if not isinstance(doc, dict):
        raise ManifestError("manifest must be a JSON object")
    try:
        return PublicKey.parse(doc.get("publisher"))
    except KeyFileError as exc:
        raise ManifestError(f"manifest publisher: {exc}") from exc


def _file_doc(f: FileEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": f.name, "size": f.size, "sha256": f.sha256, "kind": f.kind}
    if f.kind == "blob":
        doc["chunk"] = f.chunk
    else:
        doc["order"] = list(f.order)
    if f.kind == "safetensors":
        doc["header"] = f.header
    return doc


# ---------------------------------------------------------------- parsing hostile input


def _obj(value: object, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{where} must be an object")
    if set(value) != keys:
        missing = sorted(keys - set(value))
        extra = sorted(set(value) - keys)
        raise ManifestError(f"{where}: missing {missing[:5]}, unexpected {extra[:5]}")
    return value


def _int(value: object, where: str, *, lo: int = 0, hi: int = _MAX_INT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ManifestError(f"{where} must be an integer in [{lo}, {hi}]")
    return value


def _str(value: object, where: str, *, max_chars: int) -> str:
    if not isinstance(value, str) or len(value) > max_chars:
        raise ManifestError(f"{where} must be a string of at most {max_chars} characters")
    return value


def _hex64(value: object, where: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ManifestError(f"{where} must be 64 lowercase hex digits")
    return value


def _list(value: object, where: str, *, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestError(f"{where} must be a list")
    if len(value) > max_items:
        raise ManifestError(f"{where} has {len(value)} entries, over the limit of {max_items}")
    return value


_TOP = {
    "format",
    "name",
    "version",
    "label",
    "publisher",
    "created",
    "expires",
    "previous",
    "chunks",
    "tensors",
    "files",
}


def _parse(doc: object, limits: Limits) -> Manifest:
    top = _obj(doc, _TOP, "manifest")
    if top["format"] != FORMAT:
        raise ManifestError(f"unknown manifest format {str(top['format'])[:60]!r}; want {FORMAT}")
    name = top["name"]
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ManifestError("manifest name must look like ORG/MODEL (letters, digits, ._-)")
    try:
        publisher = PublicKey.parse(top["publisher"])
    except KeyFileError as exc:
        raise ManifestError(f"manifest publisher: {exc}") from exc
    created = _int(top["created"], "created")
    expires = None if top["expires"] is None else _int(top["expires"], "expires", lo=created + 1)
    previous = None if top["previous"] is None else _hex64(top["previous"], "previous")
    chunks = _parse_chunks(top["chunks"], limits)
    by_path = {c.path: c for c in chunks}
    tensors = _parse_tensors(top["tensors"], by_path, limits)
    files = _parse_files(top["files"], by_path, tensors, limits)
    return Manifest(
        name=name,
        version=_int(top["version"], "version"),
        label=_str(top["label"], "label", max_chars=limits.label_chars),
        publisher=publisher,
        created=created,
        expires=expires,
        previous=previous,
        chunks=chunks,
        tensors=tensors,
        files=files,
    )


def _parse_chunks(raw: object, limits: Limits) -> tuple[ChunkEntry, ...]:
    items = _list(raw, "chunks", max_items=limits.chunks)
    out: list[ChunkEntry] = []
    total = 0
    for i, item in enumerate(items):
        where = f"chunks[{i}]"
        c = _obj(item, {"path", "size", "sha256", "v2_root", "kind"}, where)
        path = check_relative(c["path"], what=f"{where}.path")
        if not path.startswith("chunks/") or path.count("/") != 1:
            raise UnsafePathError(f"{where}.path {path[:80]!r} must be chunks/<name>")
        kind = c["kind"]
        if kind not in ("tensors", "blob"):
            raise ManifestError(f"{where}.kind must be 'tensors' or 'blob'")
        size = _int(c["size"], f"{where}.size", lo=1, hi=limits.chunk_bytes)
        total += size
        if out and path <= out[-1].path:
            raise ManifestError("chunks must be sorted by path, without duplicates")
        sha = _hex64(c["sha256"], f"{where}.sha256")
        if path != chunk_address(sha, kind):
            raise ManifestError(
                f"{where}.path {path[:80]!r} is not its content address "
                f"{chunk_address(sha, kind)!r}"
            )
        out.append(ChunkEntry(path, size, sha, _hex64(c["v2_root"], f"{where}.v2_root"), kind))
    if total > limits.total_bytes:
        raise ManifestError(f"chunks add up to {total} bytes, over the limit")
    return tuple(out)


def _parse_tensors(
    raw: object, chunks: Mapping[str, ChunkEntry], limits: Limits
) -> dict[str, TensorEntry]:
    if not isinstance(raw, dict):
        raise ManifestError("tensors must be an object")
    if len(raw) > limits.tensors:
        raise ManifestError(f"{len(raw)} tensors, over the limit of {limits.tensors}")
    out: dict[str, TensorEntry] = {}
    spans: dict[str, list[tuple[int, int, str]]] = {}
    for name, item in raw.items():
        where = f"tensor {name[:80]!r}"
        if not name or len(name) > limits.tensor_name_chars or "\x00" in name:
            raise ManifestError(f"{where}: name must be 1..{limits.tensor_name_chars} characters")
        t = _obj(item, {"chunk", "dtype", "shape", "offsets"}, where)
        chunk = chunks.get(t["chunk"]) if isinstance(t["chunk"], str) else None
        if chunk is None or chunk.kind != "tensors":
            raise ManifestError(f"{where}: chunk is not a tensors chunk of this manifest")
        dtype = t["dtype"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ManifestError(f"{where}: unsupported dtype {str(dtype)[:20]!r}")
        shape_raw = _list(t["shape"], f"{where}.shape", max_items=MAX_RANK)
        shape = tuple(_int(d, f"{where}.shape") for d in shape_raw)
        offsets = _list(t["offsets"], f"{where}.offsets", max_items=2)
        if len(offsets) != 2:
            raise ManifestError(f"{where}.offsets must be [begin, end]")
        begin = _int(offsets[0], f"{where}.offsets", lo=8, hi=chunk.size)
        end = _int(offsets[1], f"{where}.offsets", lo=begin, hi=chunk.size)
        need = expected_nbytes(dtype, shape)
        if end - begin != need:
            raise ManifestError(
                f"{where}: {end - begin} bytes for {dtype}{list(shape)}, needs {need}"
            )
        if begin % DTYPES[dtype].itemsize:
            raise ManifestError(f"{where}: offset {begin} is not aligned for {dtype}")
        spans.setdefault(chunk.path, []).append((begin, end, name))
        out[name] = TensorEntry(name, chunk.path, dtype, shape, begin, end)
    for path, items in spans.items():
        items.sort()
        for (_, e0, n0), (b1, _, n1) in itertools.pairwise(items):
            if b1 < e0:
                raise ManifestError(f"tensors {n0[:60]!r} and {n1[:60]!r} overlap in {path}")
    return out


def _parse_files(
    raw: object,
    chunks: Mapping[str, ChunkEntry],
    tensors: Mapping[str, TensorEntry],
    limits: Limits,
) -> tuple[FileEntry, ...]:
    items = _list(raw, "files", max_items=limits.files)
    out: list[FileEntry] = []
    for i, item in enumerate(items):
        where = f"files[{i}]"
        if not isinstance(item, dict):
            raise ManifestError(f"{where} must be an object")
        kind = item.get("kind")
        keys = {"name", "size", "sha256", "kind"} | {
            "blob": {"chunk"},
            "safetensors": {"header", "order"},
            "torch": {"order"},
        }.get(str(kind), set())
        f = _obj(item, keys, where)
        name = check_relative(f["name"], what=f"{where}.name")
        size = _int(f["size"], f"{where}.size", hi=limits.total_bytes)
        sha = _hex64(f["sha256"], f"{where}.sha256")
        if out and name <= out[-1].name:
            raise ManifestError("files must be sorted by name, without duplicates")
        if kind == "blob":
            out.append(_parse_blob(f, where, name, size, sha, chunks))
        elif kind in ("safetensors", "torch"):
            order = tuple(_list(f["order"], f"{where}.order", max_items=limits.tensors))
            if not all(isinstance(n, str) and n in tensors for n in order) or (
                len(set(order)) != len(order)
            ):
                raise ManifestError(f"{where}.order must list known tensors, each once")
            header = None
            if kind == "safetensors":
                header = _str(f["header"], f"{where}.header", max_chars=100_000_000)
                body = sum(tensors[n].end - tensors[n].begin for n in order)
                if 8 + len(header.encode("utf-8")) + body != size:
                    raise ManifestError(f"{where}: header and tensors do not add up to its size")
            out.append(FileEntry(name, size, sha, kind, None, header, order))
        else:
            raise ManifestError(f"{where}.kind must be 'safetensors', 'blob' or 'torch'")
    return tuple(out)


def _parse_blob(
    f: dict[str, Any], where: str, name: str, size: int, sha: str, chunks: Mapping[str, ChunkEntry]
) -> FileEntry:
    ref = f["chunk"]
    if ref is None:
        if size != 0:
            raise ManifestError(f"{where}: only an empty file may have no chunk")
        return FileEntry(name, 0, sha, "blob")
    chunk = chunks.get(ref) if isinstance(ref, str) else None
    if chunk is None or chunk.kind != "blob" or chunk.size != size or chunk.sha256 != sha:
        raise ManifestError(f"{where}: chunk must be a blob chunk with the file's size and sha256")
    return FileEntry(name, size, sha, "blob", chunk.path)
