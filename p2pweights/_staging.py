"""Copying a chunk's tensors to a device through one reused CPU staging buffer.

The chunk's bytes are read (not mapped) into a buffer that is allocated once, grown only
when a larger span comes, and pinned when the device is CUDA; each tensor is then copied
out of it to the device. So loading onto an accelerator holds at most one chunk on the
CPU, never the whole model, and the page cache is the only other copy. With
``verify="full"`` the chunk is hashed from the staged bytes themselves, so what is copied
is exactly what was checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from ._torch_dtypes import TORCH_DTYPES
from .errors import CorruptChunkError, MissingChunkError
from .manifest import ChunkEntry, TensorEntry
from .verify import check_digest

__all__ = ["StagingCopier"]

_ALIGN = 64
"""Spans start on this boundary, so every tensor in them keeps its dtype's alignment."""


class StagingCopier:
    """Copies tensors of one chunk at a time to ``device`` through a reused buffer."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned = device.type == "cuda" and torch.cuda.is_available()
        self._buffer: torch.Tensor | None = None
        self.allocations = 0
        """How many times the buffer was (re)allocated: once, unless a larger span came."""
        self.peak_bytes = 0
        """The buffer's largest size so far."""

    def _stage(self, size: int) -> torch.Tensor:
        if self._buffer is None or self._buffer.numel() < size:
            self._buffer = None  # free the old one before taking the larger
            self._buffer = torch.empty(size, dtype=torch.uint8, pin_memory=self._pinned)
            self.allocations += 1
            self.peak_bytes = max(self.peak_bytes, size)
        return self._buffer[:size]

    def copy(
        self, path: Path, chunk: ChunkEntry, entries: Sequence[TensorEntry], *, hash_check: bool
    ) -> dict[str, torch.Tensor]:
        """Read ``entries`` of the chunk at ``path`` and return them on the device.

        Args:
            path: the chunk file.
            chunk: its manifest entry.
            entries: tensors of this chunk to copy.
            hash_check: read the whole chunk and check its sha256 before copying.

        Raises:
            MissingChunkError: the file is gone.
            CorruptChunkError: wrong size or (with ``hash_check``) wrong sha256.
        """
        if not entries:
            return {}
        if hash_check:
            start, stop = 0, chunk.size
        else:
            start = min(e.begin for e in entries)
            start -= start % _ALIGN
            stop = max(e.end for e in entries)
        staged = self._stage(stop - start)
        _read_into(path, chunk, start, staged)
        if hash_check:
            check_digest(chunk, hashlib.sha256(staged.numpy().data).hexdigest())
        out: dict[str, torch.Tensor] = {}
        for e in entries:
            dtype = TORCH_DTYPES[e.dtype]
            src = staged[e.begin - start : e.end - start].view(dtype).reshape(e.shape)
            dst = torch.empty(e.shape, dtype=dtype, device=self.device)
            dst.copy_(src, non_blocking=self._pinned)
            out[e.name] = dst
        if self._pinned:
            # The buffer is reused for the next chunk: the copies must be done with it.
            torch.cuda.current_stream(self.device).synchronize()
        return out


def _read_into(path: Path, chunk: ChunkEntry, offset: int, out: torch.Tensor) -> None:
    view = out.numpy().data
    try:
        with path.open("rb", buffering=0) as f:
            size = f.seek(0, 2)
            if size != chunk.size:
                raise CorruptChunkError(
                    f"chunk {chunk.path} has {size} bytes, the manifest says {chunk.size}"
                )
            f.seek(offset)
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise CorruptChunkError(f"chunk {chunk.path} ended early")
                done += n
    except FileNotFoundError as exc:
        raise MissingChunkError(f"chunk {chunk.path} is missing") from exc
