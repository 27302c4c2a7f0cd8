"""Pack a checkpoint into a signed release: chunks, manifest.json, manifest.sig.

Each chunk is streamed from the source into a temp file through one bounded buffer while
its sha256 and BitTorrent v2 root are computed on the same bytes, then made read-only
(0444) and renamed to its content address. Chunks are written by a small thread pool
(file I/O and hashlib release the GIL), so hashing runs on both cores. If anything fails,
the output dir is removed: a half-written release never looks like a release.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ._atomic import TMP_SUFFIX, atomic_write_bytes
from ._gc import paused_gc
from ._header_spec import HeaderSpec, describe_header
from ._safetensors import build_header
from ._sources import Source, SourceFile, open_source
from .chunking import DEFAULT_MAX_CHUNK_BYTES, plan_chunks
from .errors import SourceError
from .hashing import StreamHasher, sha256_file
from .keys import PrivateKey
from .manifest import ChunkEntry, FileEntry, Manifest, TensorTable, chunk_address
from .release import CHUNKS_DIR, MANIFEST_NAME, SIGNATURE_NAME
from .verify import ChunkRecords

__all__ = ["PackResult", "pack"]

_BUF = 1024 * 1024
"""Copy buffer: small enough to stay in a core's cache while it is written and hashed twice."""
_local = threading.local()
_CHUNK_MODE = 0o444
"""Chunks are immutable once written: an export that links one must not make it writable."""

Progress = Callable[[int], None]
"""Called with the number of bytes just written."""
Placed = list[tuple[str, str, tuple[int, ...]]]
"""A chunk's tensors in file order: (name, dtype, shape)."""


@dataclass(frozen=True, slots=True)
class PackResult:
    """What pack made."""

    root: Path
    manifest: Manifest
    manifest_sha256: str
    skipped: tuple[str, ...]
    seconds: float

    @property
    def total_bytes(self) -> int:
        """Bytes in all chunks."""
        return sum(c.size for c in self.manifest.chunks)


def pack(
    src: Path,
    out: Path,
    *,
    name: str,
    version: int,
    key: PrivateKey,
    label: str = "",
    expires: int | None = None,
    previous: str | None = None,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    workers: int | None = None,
    progress: Progress | None = None,
    now: int | None = None,
) -> PackResult:
    """Pack ``src`` into a new release directory ``out``.

    Args:
        src: an HF-layout dir, a ``.safetensors`` file, or a torch ``.bin``/``.pt`` file.
        out: the release dir to create; it must not exist or be empty.
        name: ``ORG/MODEL``.
        version: the release's integer version.
        key: the publisher's signing key.
        label: free text, e.g. a git tag.
        expires: unix time after which loaders refuse the release.
        previous: sha256 of the previous release's manifest, to chain versions.
        max_chunk_bytes: cap on a chunk's tensor bytes.
        workers: writer threads; defaults to the CPU count.
        progress: called with bytes written as packing goes.
        now: creation time override (tests).

    Returns:
        The result, with the signed manifest.

    Raises:
        SourceError, UnsafePickleError, SafetensorsHeaderError: bad input.
        ManifestError: a name, label or limit the manifest cannot hold.

    """
    started = time.monotonic()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SourceError(f"output {out} exists and is not an empty directory")
    created_out = not out.exists()
    source = open_source(src)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / CHUNKS_DIR).mkdir()
        manifest = _write_release(
            source,
            out,
            name=name,
            version=version,
            label=label,
            key=key,
            expires=expires,
            previous=previous,
            max_chunk_bytes=max_chunk_bytes,
            workers=workers,
            progress=progress,
            created=int(time.time()) if now is None else now,
        )
    except BaseException as exc:
        if created_out:
            shutil.rmtree(out, ignore_errors=True)
        elif out.is_dir():
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        if isinstance(exc, OSError):  # disk full, permissions, a bad --out: one clear line
            raise SourceError(f"cannot write the release in {out}: {exc.strerror or exc}") from exc
        raise
    data = (out / MANIFEST_NAME).read_bytes()
    return PackResult(
        out,
        manifest,
        hashlib.sha256(data).hexdigest(),
        tuple(source.skipped),
        time.monotonic() - started,
    )


@paused_gc()  # a big checkpoint's plan, chunk lists and manifest: see _gc
def _write_release(
    source: Source,
    out: Path,
    *,
    name: str,
    version: int,
    label: str,
    key: PrivateKey,
    expires: int | None,
    previous: str | None,
    max_chunk_bytes: int,
    workers: int | None,
    progress: Progress | None,
    created: int,
) -> Manifest:
    plan = plan_chunks([(t.name, t.nbytes) for t in source.tensors.values()], max_chunk_bytes)
    blobs = [f for f in source.files if f.kind == "blob" and f.size > 0]
    lock = threading.Lock()

    def report(n: int) -> None:
        if progress is not None:
            with lock:
                progress(n)

    def write_group(names: list[str]) -> tuple[ChunkEntry, Placed]:
        return _write_tensor_chunk(source, names, out, report)

    def write_blob(index: int) -> ChunkEntry:
        return _copy_blob(blobs[index].path, out, report)

    n = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="p2pw-pack") as pool:
        # Whole-file digests of the weight files, for `export --exact`, hashed alongside;
        # submitted first so the longest jobs start early.
        file_jobs = {
            f.name: pool.submit(sha256_file, f.path) for f in source.files if f.kind != "blob"
        }
        # Then the chunks, largest first, so the pool does not end on one big chunk while
        # the other workers sit idle; the results are still taken in plan order.
        nbytes = {n: t.nbytes for n, t in source.tensors.items()}
        by_size = sorted(range(len(plan)), key=lambda i: -sum(map(nbytes.__getitem__, plan[i])))
        tensor_jobs = {i: pool.submit(write_group, plan[i]) for i in by_size}
        blob_jobs = [pool.submit(write_blob, i) for i in range(len(blobs))]
        chunk_results = [tensor_jobs[i].result() for i in range(len(plan))]
        blob_chunks = [j.result() for j in blob_jobs]
        file_sha = {name: j.result() for name, j in file_jobs.items()}

    chunks: dict[str, tuple[ChunkEntry, Placed]] = {c.path: (c, p) for c, p in chunk_results}
    blob_by_name = {}
    for f, chunk in zip(blobs, blob_chunks, strict=True):
        chunks.setdefault(chunk.path, (chunk, []))  # two equal files share one chunk
        blob_by_name[f.name] = chunk
    ordered = [chunks[p] for p in sorted(chunks)]

    files: list[FileEntry] = []
    for f in source.files:
        if f.kind == "blob":
            if f.size == 0:
                files.append(FileEntry(f.name, 0, hashlib.sha256(b"").hexdigest(), "blob"))
            else:
                c = blob_by_name[f.name]
                files.append(FileEntry(f.name, c.size, c.sha256, "blob", c.path))
        else:
            header = _header_spec(source, f)
            files.append(FileEntry(f.name, f.size, file_sha[f.name], f.kind, None, header, f.order))
    manifest = Manifest(
        name=name,
        version=version,
        label=label,
        publisher=key.public,
        created=created,
        expires=expires,
        previous=previous,
        chunks=tuple(c for c, _ in ordered),
        tensors=TensorTable.build([(c.path, c.data, placed) for c, placed in ordered]),
        files=tuple(sorted(files, key=lambda f: f.name)),
    )
    data = manifest.to_bytes()
    records = ChunkRecords(out)
    for c in manifest.chunks:
        records.record(out / c.path, c.sha256)
    records.save()
    atomic_write_bytes(out / SIGNATURE_NAME, key.sign(data))
    # The manifest goes last: its presence is what makes the directory a release.
    atomic_write_bytes(out / MANIFEST_NAME, data)
    return manifest


def _header_spec(source: Source, f: SourceFile) -> HeaderSpec | None:
    """How ``export --exact`` rebuilds a safetensors file's header (None for a pickle)."""
    if f.header is None:
        return None
    data_order = [
        (n, source.tensors[n].dtype, source.tensors[n].shape, source.tensors[n].nbytes)
        for n in f.order
    ]
    header_order = [t.name for t in f.header.tensors]
    return describe_header(f.header.header_bytes, f.header.metadata, header_order, data_order)


def _buffer() -> bytearray:
    """The calling thread's copy buffer, made once (a fresh one per chunk costs page faults)."""
    buf: bytearray | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(_BUF)
    return buf


def _copy_tensors(
    source: Source, names: list[str], sink: Callable[[memoryview], None], buf: bytearray
) -> None:
    """Feed the tensors' bytes to ``sink`` in order, one read per run of adjacent tensors.

    A chunk's tensors usually lie back to back in their source file too (both orders are
    by itemsize, then name, within one layer), so a chunk of 1,500 expert tensors costs a
    few large reads instead of 1,500 small ones.
    """
    paths = {f.name: f.path for f in source.files}
    handles: dict[str, io.FileIO] = {}
    view = memoryview(buf)

    def flush(file: str, begin: int, end: int) -> None:
        fh = handles.get(file)
        if fh is None:
            fh = handles[file] = io.FileIO(paths[file], "rb")
        fh.seek(begin)
        left = end - begin
        while left:
            n = fh.readinto(view[: min(left, len(buf))])
            if not n:
                raise SourceError(f"{file} changed while packing: it ends at {end - left}")
            sink(view[:n])
            left -= n

    run: tuple[str, int, int] | None = None
    try:
        for name in names:
            t = source.tensors[name]
            if t.offset < 0:  # a pickle's tensor: from memory
                if run:
                    flush(*run)
                    run = None
                source.copy_tensor(name, sink, buf)
            elif run and run[0] == t.file and run[2] == t.offset:
                run = (t.file, run[1], t.offset + t.nbytes)
            else:
                if run:
                    flush(*run)
                run = (t.file, t.offset, t.offset + t.nbytes)
        if run:
            flush(*run)
    finally:
        for fh in handles.values():
            fh.close()


def _write_tensor_chunk(
    source: Source, names: list[str], out: Path, report: Progress
) -> tuple[ChunkEntry, Placed]:
    layout = build_header([(n, source.tensors[n].dtype, source.tensors[n].shape) for n in names])
    hasher = StreamHasher()
    buf = _buffer()
    tmp = out / CHUNKS_DIR / f".{os.getpid()}-{threading.get_ident()}-{id(names)}{TMP_SUFFIX}"
    try:
        with open(tmp, "wb") as fh:

            def sink(view: memoryview) -> None:
                fh.write(view)
                hasher.update(view)
                report(len(view))

            sink(memoryview(layout.header))
            _copy_tensors(source, [p.name for p in layout.placements], sink, buf)
        digest = hasher.digest()
        if digest.size != layout.total_size:
            raise SourceError(f"tensor bytes changed size while packing ({names[0]!r})")
        rel = chunk_address(digest.sha256, "tensors")
        os.chmod(tmp, _CHUNK_MODE)
        os.replace(tmp, out / rel)
    finally:
        tmp.unlink(missing_ok=True)
    placed = [(p.name, p.dtype, p.shape) for p in layout.placements]
    data = len(layout.header)
    chunk = ChunkEntry(rel, digest.size, digest.sha256, digest.v2_root, "tensors", data)
    return chunk, placed


def _copy_blob(path: Path, out: Path, report: Progress) -> ChunkEntry:
    hasher = StreamHasher()
    buf = _buffer()
    view = memoryview(buf)
    tmp = out / CHUNKS_DIR / f".{os.getpid()}-{threading.get_ident()}-blob{TMP_SUFFIX}"
    try:
        with open(path, "rb", buffering=0) as src, open(tmp, "wb") as dst:
            while n := src.readinto(buf):
                dst.write(view[:n])
                hasher.update(view[:n])
                report(n)
        digest = hasher.digest()
        rel = chunk_address(digest.sha256, "blob")
        os.chmod(tmp, _CHUNK_MODE)
        os.replace(tmp, out / rel)
    finally:
        tmp.unlink(missing_ok=True)
    return ChunkEntry(rel, digest.size, digest.sha256, digest.v2_root, "blob")
