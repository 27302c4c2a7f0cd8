"""Reading and writing safetensors headers without trusting them.

A safetensors file is an 8-byte little-endian header length, a JSON header, then the
tensor bytes. Every header read here may come from a hostile file, so each field is
checked against the file's real size before anything is mapped or copied.
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass
from itertools import chain
from operator import gt, itemgetter, lt, mul, sub
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from ._canonical import Pairs, dumps, loads_strict
from .errors import ManifestError, SafetensorsHeaderError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPES",
    "MAX_HEADER_BYTES",
    "MAX_RANK",
    "ChunkLayout",
    "DType",
    "HeaderTensor",
    "ParsedHeader",
    "build_header",
    "expected_nbytes",
    "read_header",
]

# safetensors' own limit on header size.
MAX_HEADER_BYTES = 100_000_000
MAX_RANK = 64


@dataclass(frozen=True, slots=True)
class DType:
    """A safetensors dtype and its size; torch's twin is looked up only by tensor code."""

    name: str
    itemsize: int

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype (imports torch: for code that makes or reads tensors)."""
        from ._torch_dtypes import TORCH_DTYPES  # noqa: PLC0415 - the format core has no torch

        return TORCH_DTYPES[self.name]


# Whole-byte dtypes that both safetensors and torch know. Sub-byte formats (F4, F6_*) are
# refused with a clear error: torch packs them in ways that differ from safetensors.
_DTYPE_LIST = [
    DType("BOOL", 1),
    DType("U8", 1),
    DType("I8", 1),
    DType("F8_E5M2", 1),
    DType("F8_E4M3", 1),
    DType("F8_E5M2FNUZ", 1),
    DType("F8_E4M3FNUZ", 1),
    DType("F8_E8M0", 1),
    DType("I16", 2),
    DType("U16", 2),
    DType("F16", 2),
    DType("BF16", 2),
    DType("I32", 4),
    DType("U32", 4),
    DType("F32", 4),
    DType("C64", 8),
    DType("F64", 8),
    DType("I64", 8),
    DType("U64", 8),
]
DTYPES: dict[str, DType] = {d.name: d for d in _DTYPE_LIST}


def expected_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes a tensor of this dtype and shape occupies."""
    return math.prod(shape) * DTYPES[dtype].itemsize


class HeaderTensor(NamedTuple):
    """One tensor entry of a safetensors header, offsets relative to the data region.

    A named tuple, not a frozen dataclass: a 100,000-tensor header makes 100,000 of them,
    and a frozen dataclass costs several times more to build.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class ParsedHeader:
    """A checked safetensors header."""

    header_bytes: bytes
    """The JSON header exactly as stored, padding included."""
    metadata: dict[str, str]
    tensors: tuple[HeaderTensor, ...]
    """In the order the JSON header lists them."""
    file_size: int

    @property
    def data_start(self) -> int:
        """Offset of the data region in the file."""
        return 8 + len(self.header_bytes)

    def tiles_data_region(self) -> bool:
        """True when the tensors cover the data region exactly, with no gaps or slack."""
        ordered = sorted(self.tensors, key=itemgetter(3, 4))  # (begin, end)
        starts = list(map(itemgetter(3), ordered))
        stops = [0, *map(itemgetter(4), ordered)]
        # Each tensor starts where the one before it ended; the last ends at the file's end.
        return starts == stops[:-1] and stops[-1] == self.file_size - self.data_start


def _fail(where: str, msg: str) -> SafetensorsHeaderError:
    return SafetensorsHeaderError(f"{where}: {msg}")


def _check_shape(where: str, name: str, raw: object) -> tuple[int, ...]:
    if type(raw) is not list or len(raw) > MAX_RANK:
        raise _fail(where, f"tensor {name!r} has a bad shape")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**53 for d in raw):
        raise _fail(where, f"tensor {name!r} has a bad shape {raw!r:.80}")
    return tuple(raw)


def _unique(where: str, pairs: object, what: str = "header") -> dict[str, object]:
    """A JSON object read as :class:`Pairs`, as a dict; a repeated key is refused."""
    if type(pairs) is not Pairs:
        raise _fail(where, f"{what} must be a JSON object")
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _fail(where, f"duplicate JSON key {dup[:80]!r} in the {what}")
    return out


_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}
_ENTRY_KEYS_FROZEN = frozenset(_ENTRY_KEYS)


def _fast_entries(header: dict[str, object], data_len: int) -> list[HeaderTensor] | None:
    """Every check of :func:`_parse_entries`, made over whole columns in C.

    Returns None when any check fails: the slow path then finds the entry, and says why.
    """
    names = [n for n in header if n != "__metadata__"]
    raws: list[Any] = list(map(header.__getitem__, names))
    if not names or set(map(type, raws)) != {Pairs} or set(map(len, raws)) != {3}:
        return None
    entries: list[dict[str, Any]] = list(map(dict, raws))
    if set(map(frozenset, entries)) != {_ENTRY_KEYS_FROZEN}:
        return None
    dtypes = list(map(itemgetter("dtype"), entries))
    shapes = list(map(itemgetter("shape"), entries))
    offsets = list(map(itemgetter("data_offsets"), entries))
    if set(map(type, dtypes)) != {str} or not set(dtypes) <= DTYPES.keys():
        return None
    if set(map(type, shapes)) != {list} or max(map(len, shapes)) > MAX_RANK:
        return None
    if set(map(type, offsets)) != {list} or set(map(len, offsets)) != {2}:
        return None
    dims = list(chain.from_iterable(shapes))
    if dims and (set(map(type, dims)) != {int} or min(dims) < 0 or max(dims) >= 2**53):
        return None
    flat = list(chain.from_iterable(offsets))
    if set(map(type, flat)) != {int} or min(flat) < 0 or max(flat) > data_len:
        return None
    begins, ends = flat[0::2], flat[1::2]
    itemsizes = [DTYPES[d].itemsize for d in set(dtypes)]
    size_of = dict(zip(set(dtypes), itemsizes, strict=True))
    nbytes = list(map(mul, map(math.prod, shapes), map(size_of.__getitem__, dtypes)))
    if any(map(gt, begins, ends)) or list(map(sub, ends, begins)) != nbytes:
        return None
    order = sorted(range(len(names)), key=begins.__getitem__)
    sb, se = list(map(begins.__getitem__, order)), list(map(ends.__getitem__, order))
    if any(map(lt, sb[1:], se[:-1])):
        return None
    return list(map(HeaderTensor._make, zip(names, dtypes, map(tuple, shapes), begins, ends,
                                            strict=True)))


def _parse_entries(where: str, header: dict[str, object], data_len: int) -> list[HeaderTensor]:
    fast = _fast_entries(header, data_len)
    if fast is not None:
        return fast
    tensors: list[HeaderTensor] = []
    for name, raw in header.items():
        if name == "__metadata__":
            continue
        entry = dict(raw) if type(raw) is Pairs and len(raw) == 3 else {}
        if entry.keys() != _ENTRY_KEYS:
            raise _fail(where, f"tensor {name!r:.80} entry must have dtype, shape, data_offsets")
        dtype = entry["dtype"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise _fail(where, f"tensor {name!r:.80} has unsupported dtype {dtype!r:.40}")
        shape = _check_shape(where, name, entry["shape"])
        offsets = entry["data_offsets"]
        if (
            type(offsets) is not list
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise _fail(where, f"tensor {name!r:.80} has bad data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise _fail(where, f"tensor {name!r:.80} offsets [{begin}, {end}] leave the file")
        if end - begin != expected_nbytes(dtype, shape):
            raise _fail(
                where,
                f"tensor {name!r:.80} spans {end - begin} bytes, but {dtype}{list(shape)} "
                f"needs {expected_nbytes(dtype, shape)}",
            )
        tensors.append(HeaderTensor(name, dtype, shape, begin, end))
    ordered = sorted(tensors, key=lambda t: (t.begin, t.end))
    for prev, cur in itertools.pairwise(ordered):
        if cur.begin < prev.end:
            raise _fail(where, f"tensors {prev.name!r:.80} and {cur.name!r:.80} overlap")
    return tensors


def read_header(fh: BinaryIO, file_size: int, *, where: str) -> ParsedHeader:
    """Read and check the header of a safetensors file.

    Args:
        fh: the file, positioned anywhere; it is read from offset 0.
        file_size: the file's size in bytes.
        where: a name for error messages.

    Returns:
        The checked header.

    Raises:
        SafetensorsHeaderError: any lie or malformation in the header.

    """
    if file_size < 8:
        raise _fail(where, f"only {file_size} bytes; a safetensors file has at least 8")
    fh.seek(0)
    (header_len,) = struct.unpack("<Q", fh.read(8))
    if header_len > MAX_HEADER_BYTES:
        raise _fail(where, f"header length {header_len} is over the limit of {MAX_HEADER_BYTES}")
    if header_len > file_size - 8:
        raise _fail(where, f"header length {header_len} is beyond the end of the file")
    raw = fh.read(header_len)
    if len(raw) != header_len:
        raise _fail(where, "file ended inside the header")
    try:
        # As pairs: no Python call per tensor entry while parsing; duplicates and nesting
        # are refused below, entry by entry (the schema allows only flat lists of ints).
        pairs = loads_strict(raw, max_bytes=MAX_HEADER_BYTES, what="safetensors header",
                             pairs=True)
    except ManifestError as exc:
        raise _fail(where, str(exc)) from exc
    if type(pairs) is not Pairs:
        raise _fail(where, "header is not a JSON object")
    header = _unique(where, pairs)
    metadata = _unique(where, header.get("__metadata__", Pairs()), "__metadata__")
    if set(map(type, metadata.values())) - {str}:
        raise _fail(where, "__metadata__ must map strings to strings")
    data_len = file_size - 8 - header_len
    tensors = _parse_entries(where, header, data_len)
    return ParsedHeader(raw, metadata, tuple(tensors), file_size)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ChunkLayout:
    """Where each tensor of a chunk sits, in absolute file offsets."""

    header: bytes
    """Length prefix plus JSON header plus padding: the first bytes of the chunk file."""
    placements: tuple[HeaderTensor, ...]
    """Tensors in file order, with absolute begin/end offsets."""
    total_size: int


def build_header(tensors: list[tuple[str, str, tuple[int, ...]]]) -> ChunkLayout:
    """Lay out a chunk: a deterministic safetensors header for the given tensors.

    Tensors are ordered by alignment (largest itemsize first), then by name, the order
    safetensors itself uses, so every tensor starts at an offset that is a multiple of its
    itemsize and can be mapped without a copy.

    Args:
        tensors: (name, dtype, shape) for each tensor.

    Returns:
        The header bytes and where each tensor goes.

    """
    ordered = sorted(tensors, key=lambda t: (-DTYPES[t[1]].itemsize, t[0]))
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    rel: list[tuple[str, str, tuple[int, ...], int, int]] = []
    pos = 0
    for name, dtype, shape in ordered:
        n = expected_nbytes(dtype, shape)
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        rel.append((name, dtype, shape, pos, pos + n))
        pos += n
    body = dumps(entries)
    body += b" " * (-(8 + len(body)) % 8)
    prefix = struct.pack("<Q", len(body)) + body
    start = len(prefix)
    placements = tuple(HeaderTensor(n, d, s, start + b, start + e) for n, d, s, b, e in rel)
    return ChunkLayout(prefix, placements, start + pos)
