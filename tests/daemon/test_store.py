"""The content-addressed store never keeps a chunk file it has not verified."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import p2pweights
from p2pweights import PrivateKey, TrustStore
from p2pweightsd.store import Store


def test_import_replaces_a_stale_or_partial_chunk_already_in_the_store(
        tmp_path: Path, key: PrivateKey, make_model: Callable[..., Path],
        make_release: Callable[..., Path]) -> None:
    release = p2pweights.open_release(make_release(make_model()),
                                      TrustStore.of_keys([key.public]))
    store = Store(tmp_path / "store")
    store.open()
    chunk = next(c for c in release.manifest.chunks if c.kind == "tensors")
    # What an interrupted fetch leaves: the right name and size, the wrong bytes.
    (store.root / chunk.path).write_bytes(bytes(chunk.size))
    intact = next(c for c in release.manifest.chunks if c.path != chunk.path)
    (store.root / intact.path).write_bytes(release.chunk_path(intact.path).read_bytes())
    target = store.import_release(release, "a" * 64)
    for c in release.manifest.chunks:
        assert (store.root / c.path).read_bytes() == release.chunk_path(c.path).read_bytes()
    # The store's release dir loads, verified in full.
    loaded = p2pweights.load(target, trust=TrustStore.of_keys([key.public]), verify="full")
    assert len(loaded) == len(release.manifest.tensors)
