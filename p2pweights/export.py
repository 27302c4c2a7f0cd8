"""Export a release as a Hugging Face model directory.

The default export copies no tensor data: every tensor chunk is already a valid
safetensors file, so each one becomes an HF shard that is a copy-on-write clone of the
chunk (a reflink) where the filesystem can make one, else a symlink to the read-only
(0444) chunk. The blob files (config, tokenizer, ...) are written as real copies and the
``model.safetensors.index.json`` is generated, so ``save_pretrained`` into the export
writes the export's own files, never the store's. ``exact=True`` instead rebuilds every
original file byte for byte from the chunks and the manifest's recorded headers, and
checks each against its signed sha256.

:func:`reuse_export` decides whether a directory already holds a release's linked export
(``fetch(local_dir=...)`` run again): every file must be what :func:`export` writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._atomic import atomic_write_bytes, atomic_writer
from ._canonical import dumps
from ._header_spec import HeaderSpec, render_header
from ._paths import join_inside
from ._reflink import clone_file, copy_file
from .chunking import natural_key
from .errors import ExportError, UnsafePathError
from .hashing import hash_files
from .manifest import ChunkEntry, FileEntry, Manifest
from .release import EXPORT_POINTER, Release, open_release, resolve_source
from .trust import TrustStore, trust_for
from .verify import VerifyMode, verify_chunks

__all__ = ["ExportResult", "export", "reuse_export"]

# Weight index files of the original layout; a linked export writes its own.
_ORIGINAL_INDEXES = {"model.safetensors.index.json", "pytorch_model.bin.index.json"}
_BUF = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote."""

    root: Path
    files: tuple[str, ...]
    exact: bool


def export(
    source: str | Path,
    out: Path,
    *,
    exact: bool = False,
    verify: VerifyMode = "fast",
    trust: TrustStore | None = None,
    home: Path | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write an HF-layout directory for a release.

    Args:
        source: the release dir.
        out: the directory to create; it must not exist or be empty.
        exact: rebuild the original files byte for byte instead of linking chunks.
        verify: chunk verification before anything is written.
        trust: the keys to believe; defaults to the data dir's trust store.
        home: the data dir, when ``trust`` is not given.
        progress: called with bytes checked or written.

    Returns:
        The list of files written.

    Raises:
        ExportError: the output exists, a pickle source asked for ``exact``, or a rebuilt
            file does not match its signed sha256.
        Everything loading raises, for an inauthentic or damaged release.

    """
    store = trust_for(trust, home)
    release = open_release(resolve_source(source), store)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"output {out} exists and is not an empty directory")
    manifest = release.manifest
    if exact:
        pickles = [f.name for f in manifest.files if f.kind == "torch"]
        if pickles:
            raise ExportError(
                f"{pickles[0]} was converted from a pickle and cannot be rebuilt byte for byte; "
                "export without --exact"
            )
    verify_chunks(release.root, manifest.chunks, verify, progress=None if exact else progress)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out}: {exc.strerror or exc}") from exc
    try:
        try:
            written = _write_exact(release, out, progress) if exact else _write_linked(release, out)
        except OSError as exc:
            raise ExportError(f"cannot write the export in {out}: {exc.strerror or exc}") from exc
        # Replace, never follow: a blob of the same name must not redirect this write.
        atomic_write_bytes(out / EXPORT_POINTER, _pointer_bytes(release))
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return ExportResult(out, tuple(written), exact)


def _pointer_bytes(release: Release) -> bytes:
    """The export's ``.p2pweights-export.json``: where its release is, and which one."""
    doc = {"release": str(release.root.resolve()), "manifest_sha256": release.manifest_sha256}
    return dumps(doc)


def _shard_order(manifest: Manifest) -> list[str]:
    first: dict[str, tuple[tuple[int, int | str], ...]] = {}
    for t in manifest.tensors.values():
        key = natural_key(t.name)
        if t.chunk not in first or key < first[t.chunk]:
            first[t.chunk] = key
    return sorted(first, key=lambda c: first[c])


@dataclass(frozen=True, slots=True)
class _Planned:
    """One file of a linked export: a chunk's whole bytes, or bytes made here."""

    chunk: ChunkEntry | None
    shard: bool = False
    """A tensor chunk: cloned, or linked read-only. Otherwise a blob: copied."""
    data: bytes = b""


def _plan_linked(release: Release) -> dict[str, _Planned]:
    """Every file a linked export holds (but its pointer), by name."""
    manifest = release.manifest
    chunks = {c.path: c for c in manifest.chunks}
    shards = _shard_order(manifest)
    if len(shards) == 1:
        names = {shards[0]: "model.safetensors"}
    else:
        n = len(shards)
        names = {c: f"model-{i:05d}-of-{n:05d}.safetensors" for i, c in enumerate(shards, 1)}
    plan = {fname: _Planned(chunks[chunk], shard=True) for chunk, fname in names.items()}
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.end - t.begin for t in manifest.tensors.values())},
            "weight_map": {t.name: names[t.chunk] for t in manifest.tensors.values()},
        }
        data = json.dumps(index, indent=2, sort_keys=True).encode("utf-8")
        plan["model.safetensors.index.json"] = _Planned(None, data=data)
    for f in manifest.files:
        if (
            f.kind != "blob"
            or f.name in _ORIGINAL_INDEXES
            or f.name in plan
            or f.name == EXPORT_POINTER
        ):
            continue
        plan[f.name] = _Planned(None if f.chunk is None else chunks[f.chunk])
    for name in plan:
        # A name under another file's name would be written through that file (a link
        # into the store, or a clone) or fail depending on the filesystem: refuse it here.
        parts = name.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in plan:
                raise UnsafePathError(f"file name {name[:80]!r} lies under another file")
    return plan


def _write_linked(release: Release, out: Path) -> list[str]:
    plan = _plan_linked(release)
    for name, item in plan.items():
        dest = join_inside(out, name, what="file name")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if item.chunk is None:
            with atomic_writer(dest, durable=False) as fh:
                fh.write(item.data)
            continue
        src = release.chunk_path(item.chunk.path)
        if not item.shard:
            # Small files that tools rewrite in place (config, tokenizer): a real copy, so
            # the write lands in the export, not in the store.
            copy_file(src, dest)
        elif not clone_file(src, dest):
            # No reflinks here: link the chunk itself, which is read-only (0444).
            os.symlink(src.resolve(), dest)
    return sorted(plan)


def reuse_export(release: Release, out: Path) -> None:
    """Accept ``out`` as the linked export of ``release`` that :func:`export` would write.

    Every file in ``out`` must be the export's pointer, a shard that links to the
    release's own chunk file, or bytes identical to what the export writes (a clone or
    copy is hashed against its signed sha256), and none may be missing. A blob that an
    older export linked into the store is replaced by a copy.

    Raises:
        ExportError: a file that is not the export's (other weights, an edited config,
            a stray or missing file).
        ChunkError: the release's own chunks are damaged.
    """
    verify_chunks(release.root, release.manifest.chunks, "fast")
    plan = _plan_linked(release)
    where = f"{out} is not the export of {release.manifest.name} v{release.manifest.version}"
    seen: set[str] = set()
    to_hash: list[tuple[str, Path, ChunkEntry]] = []
    to_copy: list[tuple[Path, Path]] = []
    for dirpath, dirnames, filenames in os.walk(out):
        here = Path(dirpath)
        # os.walk lists a link to a dir among the dirs and does not enter it: an entry too.
        links = [d for d in dirnames if (here / d).is_symlink()]
        for entry in sorted([*links, *filenames]):
            path = here / entry
            rel = path.relative_to(out).as_posix()
            seen.add(rel)
            item = plan.get(rel)
            if rel == EXPORT_POINTER:
                ok = _holds(path, _pointer_bytes(release))
            elif item is None:
                raise ExportError(f"{where}: {rel} is not one of its files")
            elif item.chunk is None:
                ok = _holds(path, item.data)
            elif path.is_symlink():
                chunk = release.chunk_path(item.chunk.path)
                ok = _resolves_to(path, chunk.resolve())
                if ok and not item.shard:
                    to_copy.append((chunk, path))
            else:
                ok = _is_file_of_size(path, item.chunk.size)
                to_hash.append((rel, path, item.chunk))
            if not ok:
                raise ExportError(f"{where}: {rel} differs from the release's")
    missing = sorted(set(plan) - seen)
    if missing:
        raise ExportError(f"{where}: {missing[0]} is missing")
    digests = hash_files([path for _, path, _ in to_hash])
    for (rel, _, expected), digest in zip(to_hash, digests, strict=True):
        if digest != expected.sha256:
            raise ExportError(f"{where}: {rel} differs from the release's")
    try:
        for src, dest in to_copy:
            copy_file(src, dest)
    except OSError as exc:
        raise ExportError(f"cannot update the export in {out}: {exc.strerror or exc}") from exc


def _is_file_of_size(path: Path, size: int) -> bool:
    st = path.lstat()
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def _holds(path: Path, data: bytes) -> bool:
    if not _is_file_of_size(path, len(data)):
        return False
    return path.read_bytes() == data


def _resolves_to(path: Path, target: Path) -> bool:
    try:
        return path.resolve(strict=True) == target
    except (OSError, RuntimeError):
        return False


def _write_exact(release: Release, out: Path, progress: Callable[[int], None] | None) -> list[str]:
    written: list[str] = []
    for f in release.manifest.files:
        try:
            dest = join_inside(out, f.name, what="file name")
        except UnsafePathError as exc:
            raise ExportError(str(exc)) from exc
        try:
            _rebuild_file(release, f, dest, progress)
        except OSError as exc:
            raise ExportError(f"cannot write {f.name}: {exc.strerror or exc}") from exc
        written.append(f.name)
    return written


def _rebuild_file(
    release: Release, f: FileEntry, dest: Path, progress: Callable[[int], None] | None
) -> None:
    sha = hashlib.sha256()
    with atomic_writer(dest, durable=False) as fh:

        def sink(data: memoryview) -> None:
            fh.write(data)
            sha.update(data)
            if progress:
                progress(len(data))

        _rebuild(release, f, sink)
        if sha.hexdigest() != f.sha256:
            raise ExportError(f"rebuilt {f.name} does not match its signed sha256")


def _copy_range(
    path: Path,
    begin: int,
    end: int,
    sink: Callable[[memoryview], None],
    buf: bytearray | None = None,
) -> None:
    buf = bytearray(min(_BUF, max(end - begin, 1))) if buf is None else buf
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        fh.seek(begin)
        left = end - begin
        while left:
            n = fh.readinto(view[: min(left, len(buf))])
            if not n:
                raise ExportError(f"{path.name} ended early")
            sink(view[:n])
            left -= n


def _rebuild(release: Release, f: FileEntry, sink: Callable[[memoryview], None]) -> None:
    if f.kind == "blob":
        if f.chunk is not None:
            _copy_range(release.chunk_path(f.chunk), 0, f.size, sink)
        return
    table = release.manifest.tensors
    positions = [table.position(n) for n in f.order]
    layouts = [table.layout(i) for i in positions]
    length = f.size - 8 - sum(t[4] for t in layouts)
    spec = f.header or HeaderSpec(text="")
    header = render_header(spec, [(n, d, s, nb) for n, d, s, _, nb in layouts], length)
    sink(memoryview(len(header).to_bytes(8, "little") + header))
    # Adjacent tensors of one chunk are copied as one range: a chunk's tensors usually
    # follow each other in the original file as well.
    runs: list[tuple[str, int, int]] = []
    for i, (_, _, _, begin, nbytes) in zip(positions, layouts, strict=True):
        chunk = table.chunk_at(i)
        if runs and runs[-1][0] == chunk and runs[-1][2] == begin:
            runs[-1] = (chunk, runs[-1][1], begin + nbytes)
        else:
            runs.append((chunk, begin, begin + nbytes))
    buf = bytearray(_BUF)
    for chunk, begin, end in runs:
        _copy_range(release.chunk_path(chunk), begin, end, sink, buf)
