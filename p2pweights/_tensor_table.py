"""The tensors of a manifest, held as columns so that 100,000 of them cost little.

A manifest may name 100,000 tensors or more (big mixture-of-experts checkpoints). Making
a Python object for each at parse time cost more than reading the manifest, so the table
keeps parallel lists (name, type, chunk, offset) and a name index, and makes a
:class:`TensorEntry` only when one is asked for. The bulk readers (the loader, the exact
export) read the columns directly through :meth:`TensorTable.layout`.

Within a tensor chunk the tensors lie back to back from the chunk's ``data`` offset to its
end, in the order the manifest lists them; offsets are therefore implied, never stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from ._safetensors import DTYPES, expected_nbytes

__all__ = ["TensorEntry", "TensorTable", "TensorType"]


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
class TensorType:
    """A dtype and shape that one or more tensors share."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of one tensor of this type."""
        return expected_nbytes(self.dtype, self.shape)

    @property
    def itemsize(self) -> int:
        """Bytes of one element."""
        return DTYPES[self.dtype].itemsize


class TensorTable(Mapping[str, TensorEntry]):
    """Tensor name to :class:`TensorEntry`, backed by columns.

    Iteration is in name order. Build one with :meth:`build` (pack, tests) or let the
    manifest parser make it from checked columns.
    """

    __slots__ = ("_begin", "_bounds", "_chunk_of", "_chunks", "_index", "_names", "_nbytes",
                 "_sorted", "_type_of", "types")

    def __init__(
        self,
        *,
        chunks: Sequence[str],
        bounds: list[int],
        names: list[str],
        index: dict[str, int],
        types: Sequence[TensorType],
        type_of: list[int],
        begin: list[int],
        nbytes: list[int],
    ) -> None:
        """Wrap checked columns (the parser's and :meth:`build`'s job to check them).

        Args:
            chunks: every chunk path of the manifest, in manifest order.
            bounds: tensors of chunk ``c`` are positions ``bounds[c]:bounds[c + 1]``.
            names: tensor names by position.
            index: name to position.
            types: the distinct tensor types.
            type_of: each tensor's index into ``types``.
            begin: each tensor's first byte in its chunk.
            nbytes: each tensor's size in bytes.
        """
        self._chunks = chunks
        self._bounds = bounds
        self._names = names
        self._index = index
        self.types = tuple(types)
        self._type_of = type_of
        self._begin = begin
        self._nbytes = nbytes
        self._chunk_of: list[int] | None = None
        self._sorted: list[str] | None = None

    @classmethod
    def build(
        cls,
        chunks: Sequence[tuple[str, int, Sequence[tuple[str, str, tuple[int, ...]]]]],
    ) -> TensorTable:
        """A table from each chunk's path, data offset and ``(name, dtype, shape)`` list.

        Args:
            chunks: every chunk of the manifest in manifest order (a blob chunk with an
                empty list), each with its tensors in file order.
        """
        type_index: dict[tuple[str, tuple[int, ...]], int] = {}
        sizes: list[int] = []
        names: list[str] = []
        type_of: list[int] = []
        begin: list[int] = []
        bounds = [0]
        for _, data, tensors in chunks:
            # Column-wise (100,000 tensors): only each chunk's distinct types loop in Python.
            keys = [(dtype, tuple(shape)) for _, dtype, shape in tensors]
            for k in dict.fromkeys(keys):
                if k not in type_index:
                    type_index[k] = len(type_index)
                    sizes.append(expected_nbytes(*k))
            kinds = list(map(type_index.__getitem__, keys))
            names += [t[0] for t in tensors]
            type_of += kinds
            begin += list(accumulate(map(sizes.__getitem__, kinds), initial=data))[:-1]
            bounds.append(len(names))
        types = [TensorType(d, s) for d, s in type_index]
        return cls(
            chunks=[c[0] for c in chunks],
            bounds=bounds,
            names=names,
            index=dict(zip(names, range(len(names)), strict=True)),  # unique: parse checks
            types=types,
            type_of=type_of,
            begin=begin,
            nbytes=[sizes[k] for k in type_of],
        )

    # ------------------------------------------------------------------ Mapping

    def __getitem__(self, name: str) -> TensorEntry:
        return self.entry(self._index[name])

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        if self._sorted is None:
            self._sorted = sorted(self._names)
        return iter(self._sorted)

    def __len__(self) -> int:
        return len(self._names)

    # ------------------------------------------------------------------ columns

    @property
    def chunk_paths(self) -> list[str]:
        """Every chunk path of the manifest (blobs too), in manifest order."""
        return list(self._chunks)

    def entry(self, i: int) -> TensorEntry:
        """The entry of the tensor at position ``i``."""
        t = self.types[self._type_of[i]]
        b = self._begin[i]
        return TensorEntry(self._names[i], self.chunk_at(i), t.dtype, t.shape, b,
                           b + self._nbytes[i])

    def position(self, name: str) -> int:
        """A tensor's position (its number in the manifest).

        Raises:
            KeyError: no such tensor.
        """
        return self._index[name]

    def name_at(self, i: int) -> str:
        """The name of the tensor at position ``i``."""
        return self._names[i]

    def names_at(self, positions: Iterable[int]) -> tuple[str, ...]:
        """The names of the tensors at ``positions``."""
        return tuple(map(self._names.__getitem__, positions))

    def _chunk_column(self) -> list[int]:
        """Each tensor's chunk index, made on first use from the chunk bounds."""
        if self._chunk_of is None:
            chunk_of: list[int] = []
            for c in range(len(self._chunks)):
                chunk_of.extend([c] * (self._bounds[c + 1] - self._bounds[c]))
            self._chunk_of = chunk_of
        return self._chunk_of

    def chunk_at(self, i: int) -> str:
        """The chunk path of the tensor at position ``i``."""
        return self._chunks[self._chunk_column()[i]]

    def chunk_by_name(self) -> dict[str, str]:
        """Every tensor's chunk path, by name (no entry objects made)."""
        column = map(self._chunks.__getitem__, self._chunk_column())
        return dict(zip(self._names, column, strict=True))

    def chunk_of(self, name: str) -> str:
        """The chunk path holding tensor ``name``.

        Raises:
            KeyError: no such tensor.
        """
        return self.chunk_at(self._index[name])

    def in_chunk(self, chunk: int) -> range:
        """Positions of the tensors of the ``chunk``-th chunk, in file order."""
        return range(self._bounds[chunk], self._bounds[chunk + 1])

    def layout(self, i: int) -> tuple[str, str, tuple[int, ...], int, int]:
        """``(name, dtype, shape, begin, nbytes)`` of the tensor at position ``i``."""
        t = self.types[self._type_of[i]]
        return self._names[i], t.dtype, t.shape, self._begin[i], self._nbytes[i]

    def nbytes_at(self, positions: Sequence[int]) -> int:
        """Total bytes of the tensors at ``positions``."""
        return sum(map(self._nbytes.__getitem__, positions))

    @property
    def total_bytes(self) -> int:
        """Bytes of all tensors."""
        return sum(self._nbytes)

    def columns(self, chunk: int) -> tuple[list[str], list[int]]:
        """Names and type indices of the ``chunk``-th chunk's tensors (for encoding)."""
        a, b = self._bounds[chunk], self._bounds[chunk + 1]
        return self._names[a:b], self._type_of[a:b]
