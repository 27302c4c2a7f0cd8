"""Linked exports: what they hold, that writes into them never reach the release, and when
an existing dir counts as the same export (``fetch(local_dir=...)`` run again)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import p2pweights
from p2pweights import ExportError, PrivateKey, TrustStore
from p2pweights._canonical import dumps
from p2pweights._reflink import clone_file, copy_file
from p2pweights.release import EXPORT_POINTER, open_release
from p2pweights.remote import export_to_local_dir
from p2pweights.trust import trust_for

from .conftest import layer_state
from .test_hostile_inputs import snapshot

MakeModel = Callable[..., Path]
MakeRelease = Callable[..., Path]

# Small enough that the layer-shaped test model splits into several shards.
_SHARD_BYTES = 64 * 1024
_EXTRA = {
    "tokenizer.json": b'{"version": "1.0"}',
    "1_Pooling/config.json": b'{"pooling": "mean"}',
    "empty.txt": b"",
}


def _files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, links followed (what a reader sees)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def release(make_model: MakeModel, make_release: MakeRelease) -> Path:
    return make_release(make_model(extra_files=_EXTRA), max_chunk_bytes=_SHARD_BYTES)


@pytest.fixture
def home(_isolated_home: Path, key: PrivateKey) -> Path:
    """The data dir, trusting the test publisher (as after `p2pw trust add`)."""
    TrustStore.load(_isolated_home / "trust.json").add(key.public, "publisher")
    return _isolated_home


def test_pack_writes_every_chunk_read_only(release: Path, trust: TrustStore) -> None:
    manifest = open_release(release, trust).manifest
    assert len(manifest.chunks) > 3
    for chunk in manifest.chunks:
        assert stat.S_IMODE((release / chunk.path).stat().st_mode) == 0o444, chunk.path


def test_a_linked_export_copies_blobs_and_shares_shards_read_only(
    release: Path, trust: TrustStore, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    result = p2pweights.export(release, out, trust=trust)
    rel = open_release(release, trust)
    chunk_bytes = {c.sha256: c.path for c in rel.manifest.chunks}
    shards = [f for f in result.files if f.startswith("model-")]
    assert len(shards) > 1 and "model.safetensors.index.json" in result.files
    for name in result.files:
        path = out / name
        if name in shards:
            # A clone where the filesystem has reflinks, else a link to the 0444 chunk.
            if path.is_symlink():
                target = path.resolve()
                assert target.parent == (release / "chunks").resolve()
                assert stat.S_IMODE(target.stat().st_mode) == 0o444
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                assert chunk_bytes[digest].startswith("chunks/")
        else:  # config, tokenizer, the index: the export's own files
            assert not path.is_symlink() and path.is_file(), name
            assert stat.S_IMODE(path.stat().st_mode) & 0o200, name
    for name, data in {**_EXTRA, "config.json": b'{"model_type": "test"}'}.items():
        assert (out / name).read_bytes() == data
    assert set(p2pweights.load(out, trust=trust)) == set(layer_state())


def test_writes_into_a_linked_export_never_reach_the_release(
    release: Path, trust: TrustStore, tmp_path: Path
) -> None:
    """Finding 6, without transformers: what `save_pretrained` does to config and tokenizer."""
    out = tmp_path / "export"
    p2pweights.export(release, out, trust=trust)
    before = _files(release)
    for name in ("config.json", "tokenizer.json", "1_Pooling/config.json", "empty.txt"):
        with open(out / name, "w") as fh:  # follows a link, as transformers' writes do
            fh.write('{"rewritten": true}')
    assert _files(release) == before
    p2pweights.verify_release(release, trust, mode="full")


def test_clone_file_makes_an_independent_copy_or_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"chunk bytes" * 1000)
    dest = tmp_path / "dest"
    if clone_file(src, dest):  # a reflink filesystem (btrfs, XFS)
        assert dest.read_bytes() == src.read_bytes()
        dest.write_bytes(b"changed")
        assert src.read_bytes() == b"chunk bytes" * 1000
    else:  # ext4, tmpfs: nothing written, no temp file left
        assert list(tmp_path.iterdir()) == [src]
    copy_file(src, tmp_path / "copy", mode=0o600)
    assert (tmp_path / "copy").read_bytes() == src.read_bytes()
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if ".p2pw-tmp" in p.name) == []


# ------------------------------------------------------------------ reuse (finding 4)


def test_exporting_into_the_same_local_dir_again_is_a_no_op(
    release: Path, home: Path, tmp_path: Path
) -> None:
    local = tmp_path / "local"
    assert export_to_local_dir(release, local, home=home) == local
    before = snapshot(local)
    assert export_to_local_dir(release, local, home=home) == local
    assert snapshot(local) == before


def _forged_pointer(release: Path, home: Path) -> bytes:
    """What an attacker can write: both fields are public (data dir, info-hash/manifest)."""
    rel = open_release(release, trust_for(None, home))
    return dumps({"release": str(release.resolve()), "manifest_sha256": rel.manifest_sha256})


def test_a_shipped_dir_with_a_forged_pointer_and_other_weights_is_refused(
    release: Path,
    home: Path,
    make_model: MakeModel,
    make_release: MakeRelease,
    other_key: PrivateKey,
    tmp_path: Path,
) -> None:
    """Finding 4: a dir with a matching pointer but other weights is not returned as-is."""
    # The attacker exports their own weights under the same names, ships the files (a
    # tarball dereferences the links) and adds a pointer naming the victim's release.
    evil = make_release(
        make_model(layer_state(seed=1), extra_files=_EXTRA),
        signer=other_key,
        max_chunk_bytes=_SHARD_BYTES,
    )
    staged = tmp_path / "staged"
    p2pweights.export(evil, staged, trust=TrustStore.of_keys([other_key.public]))
    shipped = tmp_path / "shipped"
    shutil.copytree(staged, shipped, symlinks=False)
    (shipped / EXPORT_POINTER).write_bytes(_forged_pointer(release, home))
    assert sorted(_files(shipped)) == sorted(_files(_genuine(release, home, tmp_path)))
    before = snapshot(shipped)
    with pytest.raises(ExportError, match="is not the export of test/model v1"):
        export_to_local_dir(release, shipped, home=home)
    assert snapshot(shipped) == before


def _genuine(release: Path, home: Path, tmp_path: Path) -> Path:
    out = tmp_path / "genuine"
    if not out.exists():
        export_to_local_dir(release, out, home=home)
    return out


def _shard(local: Path) -> Path:
    return next(p for p in sorted(local.iterdir()) if p.name.startswith("model-"))


def _tamper(local: Path, how: str, tmp_path: Path) -> None:
    if how == "edited-config":  # e.g. `config.save_pretrained(local_dir)` after the export
        (local / "config.json").write_text('{"model_type": "other"}')
    elif how == "edited-index":
        (local / "model.safetensors.index.json").write_text("{}")
    elif how == "stray-file":
        (local / "pytorch_model.bin").write_bytes(b"not ours")
    elif how == "missing-file":
        (local / "tokenizer.json").unlink()
    elif how == "same-size-shard":  # a regular file (as a clone is) with one byte changed
        shard = _shard(local)
        data = bytearray(shard.read_bytes())
        data[-1] ^= 1
        shard.unlink()
        shard.write_bytes(bytes(data))
    elif how == "link-elsewhere":  # a shard that links to another of the release's chunks
        shard, other = sorted(p for p in local.iterdir() if p.name.startswith("model-"))[:2]
        target = other.resolve()
        shard.unlink()
        shard.symlink_to(target)
    elif how == "linked-dir":
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "config.json").write_text('{"pooling": "max"}')
        shutil.rmtree(local / "1_Pooling")
        (local / "1_Pooling").symlink_to(outside)
    else:  # "pointer-link": the pointer file itself is a link to a genuine pointer
        genuine = (local / EXPORT_POINTER).read_bytes()
        (tmp_path / "pointer").write_bytes(genuine)
        (local / EXPORT_POINTER).unlink()
        (local / EXPORT_POINTER).symlink_to(tmp_path / "pointer")


@pytest.mark.parametrize(
    "how",
    [
        "edited-config",
        "edited-index",
        "stray-file",
        "missing-file",
        "same-size-shard",
        "link-elsewhere",
        "linked-dir",
        "pointer-link",
    ],
)
def test_an_export_that_changed_is_not_reused(
    release: Path, home: Path, tmp_path: Path, how: str
) -> None:
    local = tmp_path / "local"
    export_to_local_dir(release, local, home=home)
    _tamper(local, how, tmp_path)
    before, store = snapshot(local), _files(release)
    with pytest.raises(ExportError) as info:
        export_to_local_dir(release, local, home=home)
    assert "\n" not in str(info.value)
    assert snapshot(local) == before and _files(release) == store


def test_a_clone_of_a_shard_is_accepted_by_its_hash(
    release: Path, home: Path, tmp_path: Path
) -> None:
    """What an export writes on a reflink filesystem: shards as regular files."""
    local = tmp_path / "local"
    export_to_local_dir(release, local, home=home)
    for shard in [p for p in local.iterdir() if p.name.startswith("model-")]:
        if shard.is_symlink():
            target = shard.resolve()
            shard.unlink()
            shutil.copyfile(target, shard)
    before = snapshot(local)
    export_to_local_dir(release, local, home=home)
    assert snapshot(local) == before


def test_an_older_export_with_linked_blobs_is_reused_with_copies_instead(
    release: Path, home: Path, tmp_path: Path
) -> None:
    """Exports written before blobs were copied linked them into the store: fix, not refuse."""
    local = tmp_path / "local"
    export_to_local_dir(release, local, home=home)
    rel = open_release(release, trust_for(None, home))
    config = next(f for f in rel.manifest.files if f.name == "config.json")
    assert config.chunk is not None
    (local / "config.json").unlink()
    os.symlink((release / config.chunk).resolve(), local / "config.json")
    store = _files(release)
    export_to_local_dir(release, local, home=home)
    assert not (local / "config.json").is_symlink()
    assert (local / "config.json").read_bytes() == b'{"model_type": "test"}'
    (local / "config.json").write_text("{}")
    assert _files(release) == store
