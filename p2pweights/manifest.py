"""The release manifest: typed entries, canonical bytes, and a parser for hostile input.

Layout (canonical JSON, keys sorted)::

    format     "p2pweights.manifest/2"
    name       "org/model"            version  int >= 0        label  free text
    publisher  "ed25519:..."          created  unix seconds    expires  int | null
    previous   sha256 hex of the previous release's manifest bytes | null
    types      [[dtype, shape], ...]   the distinct tensor types, each once
    chunks     [{kind, sha256, size, v2_root, ...}]   sorted by path; the path is not
               stored: it is the content address chunk_address(sha256, kind)
               kind "tensors": data (offset of its first tensor byte), names (its tensors
                   in file order), types (each one's index into the top-level types);
                   the tensors lie back to back from data to the chunk's end
               kind "blob": the bytes of one original file
    files      [{name, size, sha256, kind, ...}]   sorted by name
               kind "blob": nothing more; a non-empty one is the blob chunk of its sha256
               kind "safetensors": tensors (positions, in the file's data order), header
                   (a HeaderSpec as {metadata, order}, or the verbatim header text): enough
                   to rebuild the file byte for byte
               kind "torch": tensors; a converted pickle checkpoint, not rebuilt byte for byte

A tensor's position is its number in the manifest: chunk by chunk, in file order. Every
name is stored once; offsets, paths and the header text are derived. Every limit below
bounds what a hostile manifest can make a reader do, and the checks run over whole
columns (``map``, ``accumulate``), so parsing stays linear and cheap per tensor.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

from ._canonical import dumps, encode_parsed, loads_strict
from ._gc import paused_gc
from ._header_spec import HeaderSpec
from ._paths import check_relative
from ._safetensors import DTYPES, MAX_HEADER_BYTES, MAX_RANK
from ._tensor_table import TensorEntry, TensorTable, TensorType
from .errors import KeyFileError, ManifestError
from .keys import PublicKey

__all__ = [
    "FORMAT",
    "LIMITS",
    "ChunkEntry",
    "FileEntry",
    "HeaderSpec",
    "Limits",
    "Manifest",
    "TensorEntry",
    "TensorTable",
    "TensorType",
    "chunk_address",
    "chunk_of_address",
    "publisher_in",
]

FORMAT = "p2pweights.manifest/2"
_OLD_FORMATS = {"p2pweights.manifest/1"}

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
    manifest stores no paths: each is derived from the signed sha256 and kind, so a name
    says which bytes it holds, two releases can share a store file only when they share
    the bytes, and no publisher can name a path outside ``chunks/``.
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
    data: int = 0
    """A tensor chunk's first tensor byte (its safetensors header ends there); 0 for a blob."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of the original checkpoint."""

    name: str
    size: int
    sha256: str
    kind: FileKind
    chunk: str | None = None
    header: HeaderSpec | None = None
    order: tuple[str, ...] = ()
    """Tensor names in the file's data order (safetensors), or a pickle's own order."""


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
    tensors: TensorTable
    """Its chunk paths must be ``chunks``' paths, in the same order."""
    files: tuple[FileEntry, ...]

    def to_bytes(self) -> bytes:
        """The canonical bytes that get signed.

        Raises:
            ManifestError: the fields break the schema or a limit.
        """
        table = self.tensors
        if table.chunk_paths != [c.path for c in self.chunks]:
            raise ManifestError("the tensor table's chunks are not the manifest's chunks")
        doc = {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "label": self.label,
            "publisher": self.publisher.text,
            "created": self.created,
            "expires": self.expires,
            "previous": self.previous,
            "types": [[t.dtype, list(t.shape)] for t in table.types],
            "chunks": [_chunk_doc(c, i, table) for i, c in enumerate(self.chunks)],
            "files": [_file_doc(f, table) for f in self.files],
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
            UnsafePathError: a file name that could escape its directory.

        """
        return cls.from_parsed(
            loads_strict(data, max_bytes=limits.manifest_bytes), data, limits=limits
        )

    @classmethod
    def from_parsed(cls, doc: object, data: bytes, *, limits: Limits = LIMITS) -> Manifest:
        """Validate ``doc``, which :func:`loads_strict` parsed from exactly ``data``.

        Raises:
            ManifestError: schema, limits, or non-canonical encoding.
            UnsafePathError: a file name that could escape its directory.
        """
        with paused_gc():  # one entry per chunk and file, columns per tensor: see _gc
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


def _chunk_doc(c: ChunkEntry, i: int, table: TensorTable) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": c.kind, "sha256": c.sha256, "size": c.size, "v2_root": c.v2_root}
    if c.kind == "tensors":
        doc["data"] = c.data
        doc["names"], doc["types"] = table.columns(i)
    return doc


def _file_doc(f: FileEntry, table: TensorTable) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": f.name, "size": f.size, "sha256": f.sha256, "kind": f.kind}
    if f.kind != "blob":
        doc["tensors"] = [table.position(n) for n in f.order]
    if f.kind == "safetensors":
        h = f.header or HeaderSpec(text="")
        doc["header"] = h.text if h.text is not None else {
            "metadata": None if h.metadata is None else [list(p) for p in h.metadata],
            "order": None if h.order is None else list(h.order),
        }
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


def _indices(value: object, where: str, *, below: int, max_items: int) -> list[int]:
    """A list of integers in ``[0, below)``, checked column-wise (no per-item Python)."""
    items = _list(value, where, max_items=max_items)
    # type() is exact: bool, a subclass of int, is refused.
    if items and (set(map(type, items)) != {int} or min(items) < 0 or max(items) >= below):
        raise ManifestError(f"{where} must list integers in [0, {below})")
    return items


def _names(value: object, where: str, *, max_items: int, max_chars: int) -> list[str]:
    items = _list(value, where, max_items=max_items)
    if not items:
        raise ManifestError(f"{where}: a tensors chunk holds at least one tensor")
    if set(map(type, items)) != {str}:
        raise ManifestError(f"{where} must list strings")
    if min(map(len, items)) < 1 or max(map(len, items)) > max_chars or "\x00" in "".join(items):
        raise ManifestError(f"{where}: a tensor name has 1..{max_chars} characters, no NUL")
    return items


_TOP = {"format", "name", "version", "label", "publisher", "created", "expires", "previous"}
_TOP |= {"types", "chunks", "files"}
_CHUNK_KEYS = {
    "blob": {"kind", "sha256", "size", "v2_root"},
    "tensors": {"kind", "sha256", "size", "v2_root", "data", "names", "types"},
}
_FILE_KEYS = {
    "blob": {"name", "size", "sha256", "kind"},
    "safetensors": {"name", "size", "sha256", "kind", "tensors", "header"},
    "torch": {"name", "size", "sha256", "kind", "tensors"},
}


def _parse(doc: object, limits: Limits) -> Manifest:
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if isinstance(fmt, str) and fmt in _OLD_FORMATS:
        raise ManifestError(
            f"manifest format {fmt} is no longer read; this version reads {FORMAT}: "
            "the publisher must pack the release again"
        )
    top = _obj(doc, _TOP, "manifest")
    if fmt != FORMAT:
        raise ManifestError(f"unknown manifest format {str(fmt)[:60]!r}; want {FORMAT}")
    name = top["name"]
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ManifestError("manifest name must look like ORG/MODEL (letters, digits, ._-)")
    publisher = publisher_in(top)
    created = _int(top["created"], "created")
    expires = None if top["expires"] is None else _int(top["expires"], "expires", lo=created + 1)
    previous = None if top["previous"] is None else _hex64(top["previous"], "previous")
    types = _parse_types(top["types"], limits)
    chunks, tensors = _parse_chunks(top["chunks"], types, limits)
    files = _parse_files(top["files"], {c.path: c for c in chunks}, tensors, limits)
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


def _parse_types(raw: object, limits: Limits) -> list[TensorType]:
    out: list[TensorType] = []
    seen: set[tuple[str, tuple[int, ...]]] = set()
    for i, item in enumerate(_list(raw, "types", max_items=limits.tensors)):
        where = f"types[{i}]"
        pair = _list(item, where, max_items=2)
        if len(pair) != 2:
            raise ManifestError(f"{where} must be [dtype, shape]")
        dtype, shape_raw = pair
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ManifestError(f"{where}: unsupported dtype {str(dtype)[:20]!r}")
        dims = _list(shape_raw, f"{where} shape", max_items=MAX_RANK)
        shape = tuple(_int(d, f"{where} shape") for d in dims)
        t = TensorType(dtype, shape)
        if t.nbytes > limits.chunk_bytes:
            raise ManifestError(f"{where}: {dtype}{list(shape)[:8]} is larger than any chunk")
        if (dtype, shape) in seen:
            raise ManifestError(f"{where} repeats an earlier type")
        seen.add((dtype, shape))
        out.append(t)
    return out


def _parse_chunks(
    raw: object, types: list[TensorType], limits: Limits
) -> tuple[tuple[ChunkEntry, ...], TensorTable]:
    size_of = [t.nbytes for t in types]
    item_of = [t.itemsize for t in types]
    out: list[ChunkEntry] = []
    names: list[str] = []
    type_of: list[int] = []
    begin: list[int] = []
    nbytes: list[int] = []
    bounds = [0]
    total = 0
    for i, item in enumerate(_list(raw, "chunks", max_items=limits.chunks)):
        where = f"chunks[{i}]"
        kind = item.get("kind") if isinstance(item, dict) else None
        if not isinstance(kind, str) or kind not in _CHUNK_KEYS:
            raise ManifestError(f"{where} must be an object of kind 'tensors' or 'blob'")
        c = _obj(item, _CHUNK_KEYS[kind], where)
        size = _int(c["size"], f"{where}.size", lo=1, hi=limits.chunk_bytes)
        total += size
        sha = _hex64(c["sha256"], f"{where}.sha256")
        path = chunk_address(sha, kind)  # type: ignore[arg-type]
        if out and path <= out[-1].path:
            raise ManifestError("chunks must be sorted by path, without duplicates")
        data = 0
        if kind == "tensors":
            data = _int(c["data"], f"{where}.data", lo=8, hi=size)
            cn = _names(c["names"], f"{where}.names", max_items=limits.tensors - len(names),
                        max_chars=limits.tensor_name_chars)
            ct = _indices(c["types"], f"{where}.types", below=len(types), max_items=len(cn))
            if len(ct) != len(cn):
                raise ManifestError(f"{where}: names and types differ in length")
            sizes = list(map(size_of.__getitem__, ct))
            ends = list(accumulate(sizes, initial=data))
            if ends[-1] != size:
                raise ManifestError(
                    f"{where}: its tensors end at byte {ends[-1]}, but the chunk has {size}"
                )
            # zip-like map stops at the shorter input: ends[:-1] are the tensors' begins.
            if any(map(operator.mod, ends, map(item_of.__getitem__, ct))):
                raise ManifestError(f"{where}: a tensor is not aligned for its dtype")
            names += cn
            type_of += ct
            begin += ends[:-1]
            nbytes += sizes
        bounds.append(len(names))
        root = _hex64(c["v2_root"], f"{where}.v2_root")
        out.append(ChunkEntry(path, size, sha, root, kind, data))  # type: ignore[arg-type]
    if total > limits.total_bytes:
        raise ManifestError(f"chunks add up to {total} bytes, over the limit")
    index = dict(zip(names, range(len(names)), strict=True))
    if len(index) != len(names):
        seen: set[str] = set()
        dup = next(n for n in names if n in seen or seen.add(n))  # type: ignore[func-returns-value]
        raise ManifestError(f"tensor {dup[:80]!r} appears twice")
    return tuple(out), TensorTable(chunks=[c.path for c in out], bounds=bounds, names=names,
                                   index=index, types=types, type_of=type_of, begin=begin,
                                   nbytes=nbytes)


def _parse_files(
    raw: object, chunks: Mapping[str, ChunkEntry], tensors: TensorTable, limits: Limits
) -> tuple[FileEntry, ...]:
    out: list[FileEntry] = []
    for i, item in enumerate(_list(raw, "files", max_items=limits.files)):
        where = f"files[{i}]"
        kind = item.get("kind") if isinstance(item, dict) else None
        if not isinstance(kind, str) or kind not in _FILE_KEYS:
            raise ManifestError(f"{where} must be an object of kind {sorted(_FILE_KEYS)}")
        f = _obj(item, _FILE_KEYS[kind], where)
        name = check_relative(f["name"], what=f"{where}.name")
        size = _int(f["size"], f"{where}.size", hi=limits.total_bytes)
        sha = _hex64(f["sha256"], f"{where}.sha256")
        if out and name <= out[-1].name:
            raise ManifestError("files must be sorted by name, without duplicates")
        if kind == "blob":
            out.append(_parse_blob(where, name, size, sha, chunks))
            continue
        idx = _indices(f["tensors"], f"{where}.tensors", below=len(tensors), max_items=len(tensors))
        if len(set(idx)) != len(idx):
            raise ManifestError(f"{where}.tensors must list each tensor once")
        header = None
        if kind == "safetensors":
            length = size - 8 - tensors.nbytes_at(idx)
            if not 2 <= length <= MAX_HEADER_BYTES:
                raise ManifestError(f"{where}: its tensors and size leave {length} header bytes")
            header = _parse_header(f["header"], f"{where}.header", length, len(idx), limits)
        out.append(FileEntry(name, size, sha, kind, None, header, tensors.names_at(idx)))  # type: ignore[arg-type]
    return tuple(out)


def _parse_blob(
    where: str, name: str, size: int, sha: str, chunks: Mapping[str, ChunkEntry]
) -> FileEntry:
    if size == 0:
        return FileEntry(name, 0, sha, "blob")
    chunk = chunks.get(chunk_address(sha, "blob"))
    if chunk is None or chunk.size != size:
        raise ManifestError(f"{where}: no blob chunk with the file's sha256 and size")
    return FileEntry(name, size, sha, "blob", chunk.path)


def _parse_header(raw: object, where: str, length: int, count: int, limits: Limits) -> HeaderSpec:
    if isinstance(raw, str):
        if len(raw.encode("utf-8")) != length:
            raise ManifestError(f"{where} is not the {length} bytes its file leaves for it")
        return HeaderSpec(text=raw)
    h = _obj(raw, {"metadata", "order"}, where)
    metadata = None
    if h["metadata"] is not None:
        raw_pairs = _list(h["metadata"], f"{where}.metadata", max_items=limits.tensors)
        pairs = tuple(tuple(_list(p, f"{where}.metadata", max_items=2)) for p in raw_pairs)
        if any(len(p) != 2 or set(map(type, p)) != {str} for p in pairs):
            raise ManifestError(f"{where}.metadata must list [key, value] strings")
        if len({k for k, _ in pairs}) != len(pairs):
            raise ManifestError(f"{where}.metadata repeats a key")
        metadata = pairs
    order = None
    if h["order"] is not None:
        o = _indices(h["order"], f"{where}.order", below=count, max_items=count)
        if len(o) != count or len(set(o)) != count:
            raise ManifestError(f"{where}.order must list each of the file's tensors once")
        order = tuple(o)
    return HeaderSpec(None, metadata, order)
