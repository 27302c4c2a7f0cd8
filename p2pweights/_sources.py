"""What `pack` reads: HF-layout dirs, single safetensors files, and torch pickle checkpoints.

Pickles are read only through ``torch.load(weights_only=True)``, torch's restricted
unpickler that builds tensors and plain containers and refuses every other global, so a
`__reduce__` payload is rejected before it can run. Safetensors sources are read with
``pread``-style reads into one reused buffer, never mapped whole, so packing a model keeps
the resident set near one buffer rather than the model's size.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ._gc import paused_gc
from ._safetensors import ParsedHeader, read_header
from .errors import SourceError, UnsafePickleError
from .manifest import FileKind

if TYPE_CHECKING:
    import torch

__all__ = ["Source", "SourceFile", "SourceTensor", "needs_torch", "open_source"]

log = logging.getLogger(__name__)

_TORCH_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth")
_SKIP_DIRS = {".git", ".cache", ".huggingface"}
_COPY_BUF = 8 * 1024 * 1024


class SourceTensor(NamedTuple):
    """One tensor of the input checkpoint (a named tuple: a checkpoint may have 100,000)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    offset: int
    """Absolute offset in a safetensors source file; unused for torch files."""
    nbytes: int


@dataclass(slots=True)
class SourceFile:
    """One file of the input, and how it will be carried."""

    name: str
    path: Path
    kind: FileKind
    size: int
    header: ParsedHeader | None = None
    order: tuple[str, ...] = ()


@dataclass(slots=True)
class Source:
    """An opened pack source."""

    files: list[SourceFile]
    tensors: dict[str, SourceTensor]
    skipped: list[str] = field(default_factory=list)
    """Files left out, with the reason, e.g. pickles shadowed by safetensors."""
    _torch: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def copy_tensor(self, name: str, sink: Callable[[memoryview], None], buf: bytearray) -> None:
        """Feed the bytes of one tensor to ``sink``, in pieces no larger than ``buf``."""
        t = self.tensors[name]
        if t.file in self._torch:
            _feed_torch_tensor(self._torch[t.file][name], sink)
            return
        path = next(f.path for f in self.files if f.name == t.file)
        view = memoryview(buf)
        with open(path, "rb", buffering=0) as fh:
            fh.seek(t.offset)
            left = t.nbytes
            while left:
                n = fh.readinto(view[: min(left, len(buf))])
                if not n:
                    raise SourceError(f"{t.file} changed while packing: ends inside {name!r}")
                sink(view[:n])
                left -= n


def _feed_torch_tensor(tensor: torch.Tensor, sink: Callable[[memoryview], None]) -> None:
    t = tensor.detach().contiguous()
    n = t.numel() * t.element_size()
    if n:
        # A view of the tensor's own memory: no numpy, no copy.
        arr = (ctypes.c_ubyte * n).from_address(t.data_ptr())
        view = memoryview(arr).cast("B")
        for pos in range(0, n, _COPY_BUF):
            sink(view[pos : pos + _COPY_BUF])


def open_source(src: Path) -> Source:
    """Open a pack source and read (and check) every tensor header.

    Raises:
        SourceError: missing, unsupported, inconsistent, or duplicate tensor names.
        UnsafePickleError: a pickle that holds anything but tensors.
        SafetensorsHeaderError: a safetensors file whose header lies.

    """
    if not src.exists():
        raise SourceError(f"{src} does not exist")
    if src.is_file():
        kind = _weight_kind(src.name)
        if kind is None:
            raise SourceError(f"{src.name}: a single-file source must be .safetensors, .bin or .pt")
        files = [SourceFile(src.name, src, kind, src.stat().st_size)]
        skipped: list[str] = []
    else:
        files, skipped = _scan_dir(src)
    source = Source(files, {}, skipped)
    for f in files:
        if f.kind == "safetensors":
            with paused_gc():  # 100,000 header entries: see _gc
                _add_safetensors(source, f)
        elif f.kind == "torch":
            _add_torch(source, f)
    if not source.tensors and not any(f.kind == "blob" for f in files):
        raise SourceError(f"{src} holds nothing to pack")
    return source


def needs_torch(src: Path) -> bool:
    """True when packing ``src`` would read pickle weights, which only torch can read.

    Raises:
        SourceError: a dir entry that is not a regular file (as :func:`open_source`).
    """
    if src.is_file():
        return _weight_kind(src.name) == "torch"
    return src.is_dir() and any(f.kind == "torch" for f in _scan_dir(src)[0])


def _weight_kind(name: str) -> FileKind | None:
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith((".bin", ".pt", ".pth")):
        return "torch"
    return None


def _scan_dir(root: Path) -> tuple[list[SourceFile], list[str]]:
    found: list[SourceFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for fn in sorted(filenames):
            path = Path(dirpath) / fn
            rel = path.relative_to(root).as_posix()
            if not path.is_file():  # dangling links, sockets, fifos
                raise SourceError(f"{rel} is not a regular file")
            if fn.endswith(".safetensors"):
                kind: FileKind = "safetensors"
            elif any(fnmatch(fn, pat) for pat in _TORCH_PATTERNS):
                kind = "torch"
            else:
                kind = "blob"
            found.append(SourceFile(rel, path, kind, path.stat().st_size))
    skipped: list[str] = []
    if any(f.kind == "safetensors" for f in found):
        # HF repos often carry the same weights twice. The safetensors copy wins; shipping
        # the pickle would hand every downloader a code-execution risk for nothing.
        for f in found:
            if f.kind == "torch":
                skipped.append(f"{f.name} (pickle weights shadowed by safetensors)")
        found = [f for f in found if f.kind != "torch" and f.name != "pytorch_model.bin.index.json"]
    found.sort(key=lambda f: f.name)
    return found, skipped


def _add_tensor(source: Source, tensor: SourceTensor) -> None:
    if tensor.name in source.tensors:
        other = source.tensors[tensor.name].file
        raise SourceError(f"tensor {tensor.name!r} appears in both {other} and {tensor.file}")
    source.tensors[tensor.name] = tensor


def _add_safetensors(source: Source, f: SourceFile) -> None:
    with open(f.path, "rb") as fh:
        header = read_header(fh, f.size, where=f.name)
    if not header.tiles_data_region():
        raise SourceError(
            f"{f.name}: tensor bytes leave gaps or slack, so it cannot be rebuilt byte for byte"
        )
    f.header = header
    ordered = sorted(header.tensors, key=itemgetter(3))  # by begin
    f.order = tuple(t.name for t in ordered)
    start = header.data_start
    tensors = [
        SourceTensor(t.name, t.dtype, t.shape, f.name, start + t.begin, t.end - t.begin)
        for t in ordered
    ]
    if source.tensors.keys() & set(f.order):
        for t in tensors:  # finds the first duplicate, and names both files
            _add_tensor(source, t)
    source.tensors.update(zip(f.order, tensors, strict=True))


def _add_torch(source: Source, f: SourceFile) -> None:
    # torch is imported only here: packing safetensors sources does not need it.
    import torch  # noqa: PLC0415

    from ._torch_dtypes import dtype_name  # noqa: PLC0415

    state = _load_pickle(f)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise SourceError(f"{f.name}: expected a flat state dict of str -> Tensor")
    source._torch[f.name] = state
    f.order = tuple(state)
    for name, t in state.items():
        if t.layout != torch.strided or t.is_quantized:
            raise SourceError(f"{f.name}: tensor {name!r} is sparse or quantized")
        _add_tensor(
            source,
            SourceTensor(
                name, dtype_name(t.dtype), tuple(t.shape), f.name, -1, t.numel() * t.element_size()
            ),
        )


def _load_pickle(f: SourceFile) -> object:
    import torch  # noqa: PLC0415 - only pickles need torch

    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols other than 2; the restricted unpickler
            # still decides what is allowed, and the warning must not abort a pack.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            try:
                return torch.load(f.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                # Legacy (pre-zip) files cannot be mapped; read them whole, still weights_only.
                return torch.load(f.path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(
            f"{f.name}: torch's restricted unpickler refused it, so it was not run"
            f" ({_unpickler_reason(str(exc))})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise SourceError(f"{f.name}: not a readable torch checkpoint ({exc})") from exc


def _unpickler_reason(message: str) -> str:
    """The one line of torch's long refusal message that says why."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error:", 1)[-1].strip()
            reason = rest or (lines[i + 1] if i + 1 < len(lines) else "")
            return reason[:200]
    return lines[0][:200] if lines else "unknown reason"
