"""Integration: streaming and selective fetch from a real, rate-limited seeder daemon."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import p2pweights
from p2pweights import LoadError, PrivateKey, TrustStore
from p2pweights.chunking import layer_order
from p2pweights.release import open_release

from ..conftest import layer_state
from .conftest import Daemon, p2pw

pytestmark = pytest.mark.slow

DaemonFactory = Callable[..., Daemon]


def _trust(d: Daemon, key: PrivateKey) -> TrustStore:
    store = TrustStore.load(d.home / "trust.json")
    store.add(key.public, "publisher")
    return store


def test_stream_yields_layer_zero_long_before_the_fetch_completes(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    # 24 layers, ~29 MB, from a seeder capped at 4 MB/s: about 7 s in all.
    state = layer_state(layers=24, hidden=192)
    release = make_release(make_model(state))
    seeder = daemons("--upload-rate", "4000000", "--rate-limit-local", name="seeder")
    published = seeder.call("publish", release)
    leech = daemons(name="leech")
    trust = _trust(leech, key)
    manifest = open_release(release, trust).manifest
    yielded: list[str] = []
    progress_at_first: dict[str, Any] = {}
    with p2pweights.stream(
        published["magnet"], home=leech.home, peers=[seeder.peer], trust=trust, verify="full"
    ) as ts:
        for name, tensor in ts:
            if not yielded:
                # Measured at the moment the first tensor is usable, from the daemon itself.
                progress_at_first = leech.call("show", published["id"])
            yielded.append(name)
            assert torch.equal(tensor, state[name]), name
        first_at = ts.first_yield
    done_at = time.monotonic()
    info = leech.call("wait", published["id"], 120)
    assert info["state"] == "seeding", info
    # Every tensor, once, in layer order (embeddings, layers 0..23, then the rest).
    assert yielded == layer_order(state)
    assert yielded[0] == "model.embed_tokens.weight"
    assert yielded[1].startswith("model.layers.0.")
    # The first layer was usable while most of the model was still on its way.
    transfer = progress_at_first["transfer"]
    assert progress_at_first["state"] == "downloading", progress_at_first
    total = sum(c.size for c in manifest.chunks)
    assert transfer["downloaded"] < 0.3 * total, (transfer, total)
    assert first_at is not None and first_at < done_at
    # The daemon fetched in layer order: what was ready then is the start of that order,
    # give or take the window of chunks in flight together.
    ready = progress_at_first.get("ready_chunks", [])
    in_order = list(dict.fromkeys(manifest.tensors[n].chunk for n in yielded))
    assert manifest.tensors[yielded[0]].chunk in ready
    assert set(ready) <= set(in_order[: len(ready) + 4]), (ready, in_order)


async def _bytes_downloaded(d: Daemon, rid: str) -> dict[str, Any]:
    info: dict[str, Any] = await d.client.wait(rid, 120)
    return info


def test_selective_fetch_downloads_only_that_layer_and_the_manifest(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    state = layer_state(layers=8, hidden=192)
    release = make_release(make_model(state))
    seeder = daemons(name="seeder")
    published = seeder.call("publish", release)
    leech = daemons(name="leech")
    trust = _trust(leech, key)
    rel = open_release(release, trust)
    layer = {n for n in state if n.startswith("model.layers.3.")}
    chunks = {rel.manifest.tensors[n].chunk for n in layer}
    assert {t.chunk for t in rel.manifest.tensors.values() if t.name not in layer} & chunks == set()
    expected = sum(c.size for c in rel.manifest.chunks if c.path in chunks)
    meta = (release / "manifest.json").stat().st_size + (release / "manifest.sig").stat().st_size
    out = p2pw(
        leech.home,
        "fetch",
        published["magnet"],
        "--include",
        "model.layers.3.*",
        "--peer",
        seeder.peer,
        "--json",
    )
    assert out.returncode == 0, out.stderr
    info = asyncio.run(_bytes_downloaded(leech, published["id"]))
    downloaded = info["transfer"]["downloaded"]
    total = sum(c.size for c in rel.manifest.chunks)
    # Exactly the layer's chunks plus the manifest and signature: v2 pieces never span
    # two files, so not one byte of another chunk comes down.
    assert expected + meta <= downloaded <= expected + meta + 16 * 1024, (downloaded, expected)
    assert downloaded < total / 4
    loaded = p2pweights.load(
        published["magnet"], home=leech.home, include="model.layers.3.*", peers=[seeder.peer]
    )
    assert set(loaded) == layer
    assert all(torch.equal(loaded[n], state[n]) for n in layer)
    # Asking for a tensor that was not fetched, from the store dir itself, fails clearly.
    with pytest.raises(p2pweights.MissingChunkError):
        p2pweights.load(info["path"], home=leech.home, include="model.layers.4.*")
    with pytest.raises(LoadError, match="matches no tensor"):
        p2pweights.load(info["path"], home=leech.home, include="no.such.*")


def test_a_custom_order_is_followed_and_bad_orders_are_refused(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    state = layer_state(layers=6, hidden=192)
    release = make_release(make_model(state))
    seeder = daemons("--upload-rate", "2000000", "--rate-limit-local", name="seeder")
    published = seeder.call("publish", release)
    leech = daemons(name="leech")
    trust = _trust(leech, key)
    order = list(reversed(layer_order(state)))
    with p2pweights.stream(
        published["magnet"], order, home=leech.home, peers=[seeder.peer], trust=trust
    ) as ts:
        got = []
        for name, tensor in ts:
            if not got:  # the daemon took the order while the fetch was under way
                info = leech.call("show", published["id"])
                assert info["state"] == "seeding" or info["ordered"], info
            got.append(name)
            assert torch.equal(tensor, state[name])
    assert got == order
    # The daemon, not only the client, followed the order: the chunks the order names
    # first were written first (a chunk file's mtime is when its last block landed).
    root = Path(leech.call("show", published["id"])["path"])
    tensors = open_release(root, trust).manifest.tensors
    chunks = list(dict.fromkeys(tensors[n].chunk for n in order))
    landed = sorted(chunks, key=lambda c: (root / c).stat().st_mtime_ns)
    third = max(len(chunks) // 3, 1)
    early = sum(landed.index(c) for c in chunks[:third]) / third
    late = sum(landed.index(c) for c in chunks[-third:]) / third
    assert early < late, (chunks, landed)
    # Again, now that the release is complete: nothing to order, the same yields.
    again = p2pweights.stream(published["magnet"], order, home=leech.home, trust=trust)
    assert [n for n, _ in again] == order
    with pytest.raises(LoadError, match="chunk"):
        leech.call("order", published["id"], ["chunks/../../etc/passwd"])
    with pytest.raises(p2pweights.UnknownReleaseError):
        leech.call("order", "f" * 64, [])
