"""The content-addressed store: one writer per name, read-only files, checked stamps."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import p2pweights
from p2pweights import PrivateKey, TrustStore
from p2pweights._atomic import TMP_SUFFIX
from p2pweights.errors import FormatError, ReleaseMismatchError
from p2pweights.release import Release
from p2pweightsd import store as store_module
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
    with pytest.raises(ReleaseMismatchError) as info:
        store.place("c" * 64, chunk, None)
    assert str(info.value) == (
        f"chunk {chunk.path}: the downloaded bytes do not hash to its name; "
        "the release's signed v2 root and its sha256 disagree"
    )
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


def test_open_makes_the_layout_and_can_be_repeated(tmp_path: Path) -> None:
    store = Store(tmp_path / "data" / "store")
    store.open()
    assert sorted(p.name for p in store.root.iterdir()) == ["chunks", "partial", "releases"]
    assert (store.chunks, store.partial, store.releases, store.staging) == tuple(
        store.root / n for n in ("chunks", "partial", "releases", "staging")
    )
    (store.chunks / "kept").write_bytes(b"x")
    store.open()  # every daemon start opens the store again
    assert (store.chunks / "kept").read_bytes() == b"x"


def test_open_sweeps_leftover_packs_and_temp_files(tmp_path: Path, store: Store) -> None:
    pack = store.root / "staging" / "123-456"
    (pack / "chunks").mkdir(parents=True)
    (pack / "chunks" / "a").write_bytes(b"a")
    (store.root / "staging" / "stray").write_bytes(b"s")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "own").write_bytes(b"o")
    (store.root / "staging" / "link").symlink_to(outside)  # swept, never followed
    rid = "f" * 64
    temps = [store.chunks / f".x.{TMP_SUFFIX}", store.release_dir(rid) / f"m{TMP_SUFFIX}"]
    for t in temps:
        t.write_bytes(b"t")
    (store.chunks / "real").write_bytes(b"r")
    store.open()
    assert list((store.root / "staging").iterdir()) == []
    assert (outside / "own").read_bytes() == b"o"
    assert not any(t.exists() for t in temps)
    assert (store.chunks / "real").read_bytes() == b"r"


def test_open_goes_on_when_a_leftover_pack_cannot_be_removed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack left undeletable (a read-only mount, say) must not keep the daemon from starting."""
    pack = store.root / "staging" / "1-2"
    pack.mkdir(parents=True)
    temp = store.chunks / f".y.{TMP_SUFFIX}"
    temp.write_bytes(b"t")

    def refuse(path: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "refused", str(path))

    monkeypatch.setattr(os, "rmdir", refuse)
    store.open()
    monkeypatch.undo()
    assert pack.is_dir()  # left, and the rest of open still ran:
    assert not temp.exists()


def test_a_stamp_is_size_mtime_ctime_and_inode(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    st = os.stat(path)
    stamp = FileStamp.of(path)
    assert stamp == FileStamp(3, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert FileStamp.of(path).mtime_ns == st.st_mtime_ns + 1 != stamp.mtime_ns


def test_paths_of_a_release(store: Store) -> None:
    rid = "e" * 64
    path = store.release_dir(rid)
    assert path == store.root / "releases" / rid
    assert store.release_dir(rid) == path  # again: nothing to create
    assert (path / "chunks").readlink() == Path("../../chunks")
    assert store.manifest_path(rid) == f"releases/{rid}/manifest.json"
    assert store.signature_path(rid) == f"releases/{rid}/manifest.sig"
    sha = "0123456789abcdef" * 4
    tensors = f"chunks/{sha}.safetensors"
    assert store.partial_path(rid, tensors) == f"partial/{rid}/{sha}.safetensors"
    assert store.partial_path(rid, f"chunks/{sha}") == f"partial/{rid}/{sha}"
    saved = store.save_torrent(rid, b"d4:infod")
    assert saved == path / "release.torrent"
    assert saved.read_bytes() == b"d4:infod"


@pytest.mark.parametrize("rid", ["E" * 64, "e" * 63, "../" + "e" * 61, "x" * 100])
def test_a_release_id_must_be_an_info_hash(store: Store, rid: str) -> None:
    for call in (
        lambda: store.release_dir(rid),
        lambda: store.partial_path(rid, "chunks/" + "0" * 64),
        lambda: store.drop_partial(rid),
    ):
        with pytest.raises(FormatError) as info:
            call()
        assert str(info.value) == f"release id {rid[:80]!r} is not a 64-digit hex info-hash"
    assert list(store.releases.iterdir()) == []


def _hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every path the store hashes."""
    seen: list[Path] = []
    real = store_module.sha256_file

    def spy(path: Path) -> str:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(store_module, "sha256_file", spy)
    return seen


def test_a_recorded_stamp_spares_the_hash(
    release: Release, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose stamp is the one recorded is not read again: not to check it, not to
    import a release that holds it, not to place a fetched copy of it."""
    _, _, stamps = store.import_release(release, "a" * 64, {})
    chunk = release.manifest.chunks[0]
    hashed = _hashed(monkeypatch)
    assert store.intact(chunk, stamps[chunk.path]) == stamps[chunk.path]
    _, created, _ = store.import_release(release, "b" * 64, dict(stamps))
    assert (created, hashed) == ([], [])
    rid = "c" * 64
    partial = store.root / store.partial_path(rid, chunk.path)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(release.chunk_path(chunk.path).read_bytes())
    assert store.place(rid, chunk, stamps[chunk.path]) is False
    assert hashed == [partial]  # the fetched bytes only
    # Without a stamp on record, the store's file is hashed too.
    partial.unlink()
    partial.write_bytes(release.chunk_path(chunk.path).read_bytes())
    assert store.place(rid, chunk, None) is False
    assert hashed == [partial, partial, store.root / chunk.path]


def test_a_file_written_while_it_is_hashed_is_not_taken(
    release: Release, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = release.manifest.chunks[0]
    dest = store.root / chunk.path
    dest.write_bytes(release.chunk_path(chunk.path).read_bytes())

    def touch(path: Path) -> None:  # a write that lands while the hash runs
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    real_sha, real_hash = store_module.sha256_file, store_module.hash_file

    def sha_then_write(path: Path) -> str:
        digest = real_sha(path)
        touch(path)
        return digest

    def hash_then_write(path: Path) -> Any:
        digest = real_hash(path)
        touch(path)
        return digest

    monkeypatch.setattr(store_module, "sha256_file", sha_then_write)
    monkeypatch.setattr(store_module, "hash_file", hash_then_write)
    assert store.intact(chunk, None) is None
    assert store.adopt(chunk.path, chunk.size, chunk.v2_root) is None
    monkeypatch.undo()
    assert store.intact(chunk, None) == FileStamp.of(dest)
    assert store.adopt(chunk.path, chunk.size, chunk.v2_root) == FileStamp.of(dest)


def test_import_moves_the_daemons_own_pack_in(
    key: PrivateKey, make_model: Callable[..., Path], store: Store
) -> None:
    """A release packed under ``staging/`` is moved into the store, not copied."""
    pack = store.staging / "7-8"
    p2pweights.pack(make_model(), pack, name="test/model", version=1, key=key)
    own = p2pweights.open_release(pack, TrustStore.of_keys([key.public]))
    inodes = {c.path: own.chunk_path(c.path).stat().st_ino for c in own.manifest.chunks}
    target, created, stamps = store.import_release(own, "d" * 64, {})
    assert sorted(created) == sorted(inodes)
    for path, inode in inodes.items():
        dest = store.root / path
        assert dest.stat().st_ino == inode == stamps[path].inode
        assert stat.S_IMODE(dest.stat().st_mode) == 0o444
        assert not (pack / path).exists()
    assert (target / "manifest.json").read_bytes() == (pack / "manifest.json").read_bytes()


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_import_takes_back_what_it_added(
    release: Release, store: Store, existing: bool
) -> None:
    rid = "9" * 64
    first = release.manifest.chunks[0]
    if existing:  # the release dir and one chunk were there before: both stay
        store.release_dir(rid)
        (store.root / first.path).write_bytes(release.chunk_path(first.path).read_bytes())
    (release.root / "manifest.sig").unlink()  # fails after the chunks are in
    with pytest.raises(FileNotFoundError):
        store.import_release(release, rid, {})
    left = sorted(p.name for p in store.chunks.iterdir())
    assert left == ([first.path.removeprefix("chunks/")] if existing else [])
    assert (store.releases / rid).is_dir() is existing


def test_undo_import_can_be_repeated(release: Release, store: Store) -> None:
    rid = "8" * 64
    _, created, _ = store.import_release(release, rid, {})
    store.undo_import(rid, created, remove_dir=True)
    store.undo_import(rid, created, remove_dir=True)  # nothing left to take back
    assert list(store.chunks.iterdir()) == []
    assert list(store.releases.iterdir()) == []


def test_drop_partial_and_remove_release(release: Release, store: Store) -> None:
    rid, other = "6" * 64, "7" * 64
    _, created, _ = store.import_release(release, rid, {})
    store.import_release(release, other, {})
    a, b = (c.path for c in release.manifest.chunks[:2])
    for path in (a, b):
        partial = store.root / store.partial_path(rid, path)
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"p")
    (store.partial / other).mkdir()
    store.drop_partial(rid, a)
    store.drop_partial(rid, a)  # already gone
    assert [p.name for p in (store.partial / rid).iterdir()] == [b.removeprefix("chunks/")]
    store.drop_partial(rid)
    assert sorted(p.name for p in store.partial.iterdir()) == [other]
    store.remove_release(rid, [a])
    store.remove_release(rid, [a])  # again (a removal cut short, then redone): nothing left
    assert sorted(p.name for p in store.releases.iterdir()) == [other]
    assert not (store.root / a).exists()
    assert sorted(str(p.relative_to(store.root)) for p in store.chunks.iterdir()) == sorted(
        c for c in created if c != a
    )
    assert sorted(p.name for p in store.partial.iterdir()) == [other]
