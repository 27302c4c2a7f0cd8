"""Unit tests of chunk verification: which chunks each mode hashes, progress, messages."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pweights import (
    CorruptChunkError,
    LoadError,
    MissingChunkError,
    TrustStore,
    open_release,
    verify_release,
)
from p2pweights import verify as verify_mod
from p2pweights.verify import (
    RECORDS_NAME,
    ChunkRecords,
    check_digest,
    check_mode,
    verify_chunks,
)

from .conftest import layer_state


@pytest.fixture
def release(make_model: Callable[..., Path], make_release: Callable[..., Path]) -> Path:
    return make_release(make_model(layer_state(layers=3, hidden=32)))


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The chunk files verification hashes, in the order it asks for them."""
    seen: list[str] = []
    real = verify_mod.sha256_file

    def counting(path: Path) -> str:
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(verify_mod, "sha256_file", counting)
    return seen


@pytest.mark.parametrize("workers", [1, 4])
def test_each_mode_hashes_what_it_should(
    release: Path, trust: TrustStore, hashed: list[str], workers: int
) -> None:
    chunks = open_release(release, trust).manifest.chunks
    names = sorted(Path(c.path).name for c in chunks)
    (release / RECORDS_NAME).unlink(missing_ok=True)
    verify_chunks(release, chunks, "fast", workers=workers)
    assert sorted(hashed) == names  # no records: every chunk is hashed, then recorded
    hashed.clear()
    before = (release / RECORDS_NAME).stat()
    verify_chunks(release, chunks, "fast", workers=workers)
    assert hashed == []  # every record matches: nothing to hash
    verify_chunks(release, chunks, "full", workers=workers)
    assert sorted(hashed) == names  # full ignores the records
    # Unchanged records are not written again (no rewrite, no fsync).
    after = (release / RECORDS_NAME).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    hashed.clear()
    touched = release / chunks[0].path
    os.utime(touched, ns=(1, 1))  # a changed stat: that chunk alone is hashed again
    verify_chunks(release, chunks, "fast", workers=workers)
    assert hashed == [touched.name]


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_progress_counts_every_chunk_once(release: Path, trust: TrustStore, mode: str) -> None:
    chunks = open_release(release, trust).manifest.chunks
    for _ in range(2):  # without records, then with them
        got: list[int] = []
        verify_release(release, trust, mode=mode, progress=got.append)
        assert sorted(got) == sorted(c.size for c in chunks)


def test_messages(release: Path, trust: TrustStore) -> None:
    chunks = open_release(release, trust).manifest.chunks
    chunk = chunks[0]
    with pytest.raises(LoadError) as info:
        check_mode("quick")
    assert str(info.value) == "verify must be 'fast' or 'full', not 'quick'"
    with pytest.raises(CorruptChunkError) as corrupt:
        check_digest(chunk, "f" * 64)
    assert str(corrupt.value) == (
        f"chunk {chunk.path} is corrupt: sha256 {'f' * 16}… is not the signed {chunk.sha256[:16]}…"
    )
    path = release / chunk.path
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptChunkError) as size:
        verify_chunks(release, chunks, "fast")
    assert str(size.value) == (
        f"chunk {chunk.path} has {chunk.size - 1} bytes; the manifest says {chunk.size}"
    )
    path.unlink()
    with pytest.raises(MissingChunkError) as missing:
        verify_chunks(release, chunks, "full")
    assert str(missing.value) == f"chunk {chunk.path} is missing"


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each chunk is hashed on."""
    seen: list[str] = []
    real = verify_mod.sha256_file
    hold = threading.Event()  # never set: each hash holds its thread for a moment

    def on_thread(path: Path) -> str:
        seen.append(threading.current_thread().name)
        hold.wait(0.02)  # busy workers make a larger pool start more threads
        return real(path)

    monkeypatch.setattr(verify_mod, "sha256_file", on_thread)
    return seen


@pytest.mark.parametrize(
    ("workers", "cpus", "count", "pool"),
    [
        (1, 3, None, 0),  # one worker: the caller hashes, whatever the CPU count
        (4, 3, 1, 0),  # one chunk: the caller hashes it
        (2, 3, None, 2),  # at most the given workers
        (None, 3, None, 3),  # by default, the CPU count
        (None, None, None, 0),  # an unknown CPU count: the caller hashes
    ],
)
def test_hashing_runs_on_at_most_workers_named_threads(
    release: Path,
    trust: TrustStore,
    threads: list[str],
    monkeypatch: pytest.MonkeyPatch,
    workers: int | None,
    cpus: int | None,
    count: int | None,
    pool: int,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    chunks = open_release(release, trust).manifest.chunks[:count]
    assert len(chunks) == count if count else len(chunks) > 3  # more chunks than threads
    verify_chunks(release, chunks, "full", workers=workers)
    assert len(threads) == len(chunks)
    if pool == 0:
        assert set(threads) == {threading.current_thread().name}
    else:
        assert set(threads) <= {f"p2pw-verify_{i}" for i in range(pool)}


def test_a_chunk_that_vanishes_while_being_hashed_is_missing(
    release: Path, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = open_release(release, trust).manifest.chunks
    victim = release / chunks[-1].path
    real = verify_mod.sha256_file

    def racing(path: Path) -> str:
        if path == victim:
            victim.unlink()  # removed after its size was checked, before it is read
        return real(path)

    monkeypatch.setattr(verify_mod, "sha256_file", racing)
    with pytest.raises(MissingChunkError) as info:
        verify_chunks(release, chunks, "full", workers=2)
    assert str(info.value) == f"chunk {chunks[-1].path} vanished while being checked"


def test_records_are_written_once_per_change(release: Path, trust: TrustStore) -> None:
    chunk = open_release(release, trust).manifest.chunks[0]
    (release / RECORDS_NAME).unlink(missing_ok=True)
    records = ChunkRecords(release)
    records.record(release / chunk.path, chunk.sha256)
    records.save()
    assert (release / RECORDS_NAME).is_file()
    (release / RECORDS_NAME).unlink()
    records.save()  # nothing changed since the last save: nothing written
    records.record(release / chunk.path, chunk.sha256)  # the same record again
    records.save()
    assert not (release / RECORDS_NAME).exists()
