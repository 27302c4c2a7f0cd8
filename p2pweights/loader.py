"""Loading verified tensors: ``load`` and the lazy ``open`` (``load_into`` is in ``_load_into``).

CPU tensors are views into a private (copy-on-write) memory map of each chunk file, made
with ``torch.UntypedStorage.from_file``: no tensor byte is copied, and writing to a tensor
never touches the store. Other devices get each chunk read into one reused staging buffer
(pinned for CUDA) and copied from there (``_staging``), so at most one chunk is ever held
on the CPU.

Nothing is returned before the manifest is authenticated and the chunk it comes from has
passed verification in the mode asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from types import TracebackType
from typing import cast

import torch

from ._gc import paused_gc
from ._safetensors import DTYPES
from ._staging import StagingCopier
from ._torch_dtypes import TORCH_DTYPES
from .errors import LoadError
from .manifest import TensorEntry
from .release import Release, open_release, resolve_source
from .remote import DEFAULT_TIMEOUT, is_remote
from .remote import fetch as remote_fetch
from .trust import TrustStore, trust_for
from .verify import VerifyMode, check_mode, verify_chunks

__all__ = ["ReleaseReader", "load", "open"]

Source = str | Path


def _patterns(include: Iterable[str] | str | None) -> list[str] | None:
    """``include`` as a list of glob patterns (read once: it may be a generator)."""
    if include is None:
        return None
    return [include] if isinstance(include, str) else list(include)


def _select(names: Iterable[str], patterns: list[str] | None) -> list[str]:
    all_names = list(names)
    if patterns is None:
        return all_names
    chosen: dict[str, None] = {}
    for pat in patterns:
        hits = [n for n in all_names if fnmatchcase(n, pat)]
        if not hits:
            raise LoadError(f"include pattern {pat!r} matches no tensor of this release")
        chosen.update(dict.fromkeys(hits))
    return [n for n in all_names if n in chosen]


def _tensor_from_storage(storage: torch.UntypedStorage, entry: TensorEntry) -> torch.Tensor:
    base = torch.empty(0, dtype=torch.uint8)
    base.set_(storage, entry.begin, (entry.end - entry.begin,))  # type: ignore[call-overload]
    return base.view(TORCH_DTYPES[entry.dtype]).reshape(entry.shape)


def _typed_view(storage: torch.UntypedStorage, dtype: str) -> torch.Tensor:
    """The whole of ``storage`` as a flat tensor of ``dtype`` (less any partial element)."""
    base = torch.empty(0, dtype=TORCH_DTYPES[dtype])
    base.set_(storage, 0, (storage.nbytes() // DTYPES[dtype].itemsize,))  # type: ignore[call-overload]
    return base


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = [1] * len(shape)
    for k in range(len(shape) - 2, -1, -1):
        strides[k] = strides[k + 1] * max(shape[k + 1], 1)
    return tuple(strides)


class ReleaseReader:
    """A lazily loaded, authenticated release, shaped like ``safetensors.safe_open``.

    Chunks are verified and mapped the first time one of their tensors is asked for.
    """

    def __init__(self, release: Release, *, verify: VerifyMode = "fast", device: str = "cpu"):
        check_mode(verify)
        self.release = release
        self._verify: VerifyMode = verify
        self._device = torch.device(device)
        self._storages: dict[str, torch.UntypedStorage] = {}
        self._copier = StagingCopier(self._device) if self._device.type != "cpu" else None
        self._copied: dict[str, torch.Tensor] = {}
        """Device tensors read by :meth:`prepare`, until ``get_tensor`` hands them out."""

    @property
    def device(self) -> torch.device:
        """Where ``get_tensor`` puts tensors."""
        return self._device

    @property
    def staging(self) -> StagingCopier | None:
        """The staging buffer used for a non-CPU device (None on the CPU)."""
        return self._copier

    def keys(self) -> list[str]:
        """Tensor names, sorted."""
        return list(self.release.manifest.tensors)

    def metadata(self) -> dict[str, str]:
        """The release's identity as strings, like safetensors metadata."""
        m = self.release.manifest
        return {
            "name": m.name,
            "version": str(m.version),
            "label": m.label,
            "publisher": m.publisher.text,
            "publisher_name": self.release.publisher_name,
            "created": str(m.created),
            "manifest_sha256": self.release.manifest_sha256,
        }

    def prepare(self, names: Iterable[str]) -> None:
        """Verify and map, in one parallel pass, every chunk holding ``names``.

        On a non-CPU device the tensors are copied there instead, one chunk at a time.
        """
        tensors = self.release.manifest.tensors
        wanted = [n for n in names if n not in self._copied]
        if self._copier is not None:
            by_chunk: dict[str, list[TensorEntry]] = {}
            for n in wanted:
                by_chunk.setdefault(tensors[n].chunk, []).append(tensors[n])
            chunks = [c for c in self.release.manifest.chunks if c.path in by_chunk]
            if self._verify == "fast":
                verify_chunks(self.release.root, chunks, "fast")
            for c in chunks:
                self._copied.update(
                    self._copier.copy(
                        self.release.chunk_path(c.path),
                        c,
                        by_chunk[c.path],
                        hash_check=self._verify == "full",
                    )
                )
            return
        paths = {tensors.chunk_of(n) for n in wanted} - set(self._storages)
        chunks = [c for c in self.release.manifest.chunks if c.path in paths]
        verify_chunks(self.release.root, chunks, self._verify)
        for c in chunks:
            # shared=False: a private copy-on-write map, so tensors may be written safely.
            storage = torch.UntypedStorage.from_file(
                str(self.release.chunk_path(c.path)), False, c.size
            )
            self._storages[c.path] = cast(torch.UntypedStorage, storage)

    def tensors(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Verified tensors for ``names``, in that order: :meth:`prepare`, then one view each.

        On the CPU each tensor is one ``as_strided`` view of a typed view of its chunk's
        map, made straight from the manifest's columns (no per-tensor entry object), which
        keeps a 100,000-tensor load close to safetensors' own per-tensor cost.
        """
        self.prepare(names)
        if self._copier is not None:
            return {n: self.get_tensor(n) for n in names}
        with paused_gc():  # one tensor object each: see _gc
            return self._views(names)

    def _views(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        table = self.release.manifest.tensors
        bases: dict[tuple[str, str], torch.Tensor] = {}
        strides: dict[tuple[int, ...], tuple[int, ...]] = {}
        out: dict[str, torch.Tensor] = {}
        for n in names:
            i = table.position(n)
            _, dtype, shape, begin, _ = table.layout(i)
            chunk = table.chunk_at(i)
            base = bases.get((chunk, dtype))
            if base is None:
                base = bases[(chunk, dtype)] = _typed_view(self._storages[chunk], dtype)
            stride = strides.get(shape)
            if stride is None:
                stride = strides[shape] = _contiguous_strides(shape)
            out[n] = base.as_strided(shape, stride, begin // DTYPES[dtype].itemsize)
        return out

    def get_tensor(self, name: str) -> torch.Tensor:
        """One tensor, verified, on the reader's device.

        Raises:
            LoadError: unknown name.
            MissingChunkError, CorruptChunkError: its chunk failed verification.

        """
        entry = self.release.manifest.tensors.get(name)
        if entry is None:
            raise LoadError(f"no tensor named {name!r} in {self.release.manifest.name}")
        if self._copier is not None:
            if name not in self._copied:
                self.prepare([name])
            return self._copied.pop(name)
        if entry.chunk not in self._storages:
            self.prepare([name])
        return _tensor_from_storage(self._storages[entry.chunk], entry)

    def close(self) -> None:
        """Drop the maps held by this reader (tensors handed out keep theirs alive)."""
        self._storages.clear()
        self._copied.clear()

    def __enter__(self) -> ReleaseReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open(
    source: Source,
    *,
    verify: VerifyMode = "fast",
    device: str = "cpu",
    trust: TrustStore | None = None,
    home: Path | str | None = None,
    peers: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> ReleaseReader:
    """Open a release lazily; the manifest is authenticated now, chunks on first use.

    Args:
        source: a release dir, an exported dir, or a magnet link / v2 info-hash /
            ``.torrent`` (fetched through the daemon, which is started on demand).
        verify: ``fast`` or ``full`` chunk verification.
        device: where ``get_tensor`` puts tensors.
        trust: the keys to believe; defaults to the data dir's trust store.
        home: the data dir, when ``trust`` is not given.
        peers: ``IP:PORT`` peers to fetch a remote source from.
        timeout: seconds to wait for a remote source (then ``FetchTimeoutError``).

    Raises:
        LoadError, ManifestError, UntrustedKeyError, SignatureError: see :func:`load`.

    """
    root = _local_root(source, home=home, include=None, peers=peers, timeout=timeout)
    release = open_release(root, trust_for(trust, home))
    return ReleaseReader(release, verify=verify, device=device)


def _local_root(
    source: Source,
    *,
    home: Path | str | None,
    include: list[str] | None,
    peers: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """A local release dir for ``source``, fetched through the daemon when it is remote."""
    if is_remote(source):
        return remote_fetch(
            str(source), home=home, include=include or (), peers=peers, timeout=timeout
        )
    return resolve_source(source)


def load(
    source: Source,
    *,
    device: str = "cpu",
    verify: VerifyMode = "fast",
    include: Iterable[str] | str | None = None,
    trust: TrustStore | None = None,
    home: Path | str | None = None,
    peers: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, torch.Tensor]:
    """Load a verified state dict.

    Args:
        source: a release dir, an exported dir, or a magnet link / v2 info-hash /
            ``.torrent`` (fetched through the daemon, started on demand; only the chunks
            that ``include`` needs are downloaded).
        device: a torch device; ``cpu`` gives zero-copy memory-mapped tensors.
        verify: ``fast`` (signature + recorded chunk checks) or ``full`` (re-hash all).
        include: glob patterns; only matching tensors are verified and loaded.
        trust: the keys to believe; defaults to the data dir's trust store.
        home: the data dir, when ``trust`` is not given.
        peers: ``IP:PORT`` peers to fetch a remote source from.
        timeout: seconds to wait for a remote source to arrive.

    Returns:
        Tensor name to tensor, in name order.

    Raises:
        LoadError: bad source, pattern or mode.
        ManifestError, UnsafePathError: malformed manifest.
        UntrustedKeyError, SignatureError, ReleaseExpiredError: not authentic.
        MissingChunkError, CorruptChunkError: chunks that fail verification.
        FetchTimeoutError: a remote source was not complete within ``timeout``.

    """
    patterns = _patterns(include)
    root = _local_root(source, home=home, include=patterns, peers=peers, timeout=timeout)
    with open(root, verify=verify, device=device, trust=trust, home=home) as reader:
        return reader.tensors(_select(reader.keys(), patterns))

