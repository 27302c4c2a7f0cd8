"""Export a release as a Hugging Face model directory.

The default export copies no tensor data: every tensor chunk is already a valid
safetensors file, so the export is symlinks to the chunks (named like HF shards), a
generated ``model.safetensors.index.json``, and links to the blob files (config,
tokenizer, ...). ``exact=True`` instead rebuilds every original file byte for byte from
the chunks and the manifest's recorded headers, and checks each against its signed sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._atomic import atomic_write_bytes, atomic_writer
from ._canonical import dumps
from ._header_spec import HeaderSpec, render_header
from ._paths import join_inside
from .chunking import natural_key
from .errors import ExportError, UnsafePathError
from .manifest import FileEntry, Manifest
from .release import EXPORT_POINTER, Release, open_release, resolve_source
from .trust import TrustStore, trust_for
from .verify import VerifyMode, verify_chunks

__all__ = ["ExportResult", "export"]

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
        pointer = {
            "release": str(release.root.resolve()),
            "manifest_sha256": release.manifest_sha256,
        }
        # Replace, never follow: a blob of the same name must not redirect this write.
        atomic_write_bytes(out / EXPORT_POINTER, dumps(pointer))
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return ExportResult(out, tuple(written), exact)


def _shard_order(manifest: Manifest) -> list[str]:
    first: dict[str, tuple[tuple[int, int | str], ...]] = {}
    for t in manifest.tensors.values():
        key = natural_key(t.name)
        if t.chunk not in first or key < first[t.chunk]:
            first[t.chunk] = key
    return sorted(first, key=lambda c: first[c])


def _link(out: Path, rel: str, target: Path) -> None:
    dest = join_inside(out, rel, what="file name")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target.resolve(), dest)


def _write_linked(release: Release, out: Path) -> list[str]:
    manifest = release.manifest
    shards = _shard_order(manifest)
    written: list[str] = []
    if len(shards) == 1:
        names = {shards[0]: "model.safetensors"}
    else:
        n = len(shards)
        names = {c: f"model-{i:05d}-of-{n:05d}.safetensors" for i, c in enumerate(shards, 1)}
    for chunk, fname in names.items():
        _link(out, fname, release.chunk_path(chunk))
        written.append(fname)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.end - t.begin for t in manifest.tensors.values())},
            "weight_map": {t.name: names[t.chunk] for t in manifest.tensors.values()},
        }
        (out / "model.safetensors.index.json").write_text(
            json.dumps(index, indent=2, sort_keys=True)
        )
        written.append("model.safetensors.index.json")
    for f in manifest.files:
        if (
            f.kind != "blob"
            or f.name in _ORIGINAL_INDEXES
            or f.name in names.values()
            or f.name == EXPORT_POINTER
        ):
            continue
        if f.chunk is None:
            dest = join_inside(out, f.name, what="file name")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.touch()
        else:
            _link(out, f.name, release.chunk_path(f.chunk))
        written.append(f.name)
    return sorted(written)


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
