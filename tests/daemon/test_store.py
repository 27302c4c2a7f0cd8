"""The content-addressed store: one writer per name, read-only files, checked stamps."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import p2pweights
from p2pweights import PrivateKey, TrustStore
from p2pweights.errors import ReleaseMismatchError
from p2pweights.release import Release
from p2pweightsd.store import FileStamp, Store


@pytest.fixture
def release(
    key: PrivateKey, make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> Release:
    return p2pweights.open_release(make_release(make_model()), TrustStore.of_keys([key.public]))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    s.open()
    return s


def test_import_copies_read_only_and_repairs_a_damaged_chunk(
    key: PrivateKey, release: Release, store: Store
) -> None:
    chunk = next(c for c in release.manifest.chunks if c.kind == "tensors")
    # A file under the right name with the wrong bytes: it is replaced, atomically.
    (store.root / chunk.path).write_bytes(bytes(chunk.size))
    intact = next(c for c in release.manifest.chunks if c.path != chunk.path)
    (store.root / intact.path).write_bytes(release.chunk_path(intact.path).read_bytes())
    kept = (store.root / intact.path).stat().st_ino
    target, created, stamps = store.import_release(release, "a" * 64, {})
    assert chunk.path in created and intact.path not in created
    assert (store.root / intact.path).stat().st_ino == kept  # the store's copy stays
    for c in release.manifest.chunks:
        path = store.root / c.path
        assert path.read_bytes() == release.chunk_path(c.path).read_bytes()
        assert stamps[c.path] == FileStamp.of(path)
    created_file = store.root / chunk.path
    assert stat.S_IMODE(created_file.stat().st_mode) == 0o444
    # Never the publisher's own file: later edits of the source cannot reach the store.
    assert created_file.stat().st_ino != release.chunk_path(chunk.path).stat().st_ino
    loaded = p2pweights.load(target, trust=TrustStore.of_keys([key.public]), verify="full")
    assert len(loaded) == len(release.manifest.tensors)


def test_undo_import_removes_what_it_added(release: Release, store: Store) -> None:
    _, created, _ = store.import_release(release, "b" * 64, {})
    store.undo_import("b" * 64, created, remove_dir=True)
    assert not any(store.chunks.iterdir())
    assert not (store.releases / ("b" * 64)).exists()


def test_place_refuses_bytes_that_are_not_the_chunks_name(
    release: Release, store: Store
) -> None:
    chunk = release.manifest.chunks[0]
    partial = store.root / store.partial_path("c" * 64, chunk.path)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(bytes(chunk.size))
    with pytest.raises(ReleaseMismatchError, match="do not hash to its name"):
        store.place("c" * 64, chunk, None)
    assert not (store.root / chunk.path).exists()


def test_place_keeps_an_intact_store_file_and_repairs_a_changed_one(
    release: Release, store: Store
) -> None:
    chunk = release.manifest.chunks[0]
    rid = "d" * 64
    partial = store.root / store.partial_path(rid, chunk.path)
    partial.parent.mkdir(parents=True)
    data = release.chunk_path(chunk.path).read_bytes()
    partial.write_bytes(data)
    assert store.place(rid, chunk, None) is True  # absent: the caller moves it in
    partial.rename(store.root / chunk.path)
    stamp = FileStamp.of(store.root / chunk.path)
    # Present and intact: the store's file stays, the partial name becomes a link to it.
    partial.write_bytes(data)
    assert store.place(rid, chunk, stamp) is False
    assert partial.stat().st_ino == (store.root / chunk.path).stat().st_ino == stamp.inode
    # Present and changed (a forced write): verified bytes replace it, as a new file.
    partial.unlink()
    dest = store.root / chunk.path
    dest.chmod(0o644)
    with open(dest, "r+b") as fh:
        fh.write(b"\xff")
    assert store.intact(chunk, stamp) is None
    partial.write_bytes(data)
    assert store.place(rid, chunk, stamp) is False
    assert dest.read_bytes() == data and dest.stat().st_ino != stamp.inode


def test_intact_rehashes_only_when_the_stamp_moved(release: Release, store: Store) -> None:
    chunk = release.manifest.chunks[0]
    dest = store.root / chunk.path
    dest.write_bytes(release.chunk_path(chunk.path).read_bytes())
    stamp = FileStamp.of(dest)
    assert store.intact(chunk, stamp) == stamp
    (dest.parent / "second-link").hardlink_to(dest)  # moves ctime, not the bytes
    assert store.intact(chunk, stamp) == FileStamp.of(dest) != stamp
    assert store.intact(chunk, None) == FileStamp.of(dest)


def test_adopt_takes_an_unrecorded_file_only_with_its_names_bytes_and_claimed_root(
    release: Release, store: Store
) -> None:
    """What a crash between a placement and its record leaves: the file is taken back only
    if it hashes to its name and has the size and v2 root the mapping torrent claims."""
    chunk = release.manifest.chunks[0]
    dest = store.root / chunk.path
    assert store.adopt(chunk.path, chunk.size, chunk.v2_root) is None  # absent
    dest.write_bytes(release.chunk_path(chunk.path).read_bytes())
    assert store.adopt(chunk.path, chunk.size, chunk.v2_root) == FileStamp.of(dest)
    assert store.adopt(chunk.path, chunk.size, "0" * 64) is None  # a torrent claiming other bytes
    dest.write_bytes(bytes(chunk.size))
    assert store.adopt(chunk.path, chunk.size, chunk.v2_root) is None  # not its name's bytes
