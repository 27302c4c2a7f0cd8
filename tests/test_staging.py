"""The staging copier (the path a load onto CUDA takes), run on the CPU with real values.

``load(device="cuda")`` reads each chunk into one reused CPU buffer and copies its tensors
out to the device. Without a GPU the same code runs here with ``device="cpu"`` given to
the copier directly (the loader maps CPU loads instead, and a ``meta`` load has no values
to compare), so the reading, the span arithmetic, the buffer reuse, the hash check on the
staged bytes and the copies out are all checked bit for bit. What needs a GPU stays
untested here: pinning the buffer, the non-blocking copies, and the stream synchronize
that keeps the buffer from being overwritten while a copy is still in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from p2pweights import CorruptChunkError, MissingChunkError, TrustStore, open_release
from p2pweights._staging import StagingCopier
from p2pweights.manifest import ChunkEntry, TensorEntry

from .conftest import layer_state
from .test_loader import _all_dtype_state, _same_bytes

CPU = torch.device("cpu")


def _by_chunk(release: Path, trust: TrustStore) -> list[tuple[ChunkEntry, list[TensorEntry]]]:
    manifest = open_release(release, trust).manifest
    out = []
    for c in manifest.chunks:
        entries = sorted(
            (t for t in manifest.tensors.values() if t.chunk == c.path), key=lambda t: t.begin
        )
        if entries:
            out.append((c, entries))
    return out


@pytest.mark.parametrize("hash_check", [False, True])
def test_every_dtype_comes_out_bit_identical(
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    trust: TrustStore,
    hash_check: bool,
) -> None:
    state = _all_dtype_state()
    release = make_release(make_model(state))
    copier = StagingCopier(CPU)
    got: dict[str, torch.Tensor] = {}
    for chunk, entries in _by_chunk(release, trust):
        got.update(copier.copy(release / chunk.path, chunk, entries, hash_check=hash_check))
    # Every tensor is its own copy: later chunks reused the buffer without changing them.
    assert set(got) == set(state)
    for name, tensor in state.items():
        assert got[name].shape == tensor.shape and got[name].dtype == tensor.dtype, name
        if tensor.dtype == torch.bool:
            # The state has BOOL bytes other than 0 and 1; copy_ on the CPU writes them
            # as 1, so only the values can match (a real BOOL tensor holds 0 and 1 only).
            assert torch.equal(got[name], tensor), name
        else:
            assert _same_bytes(got[name], tensor), name
        assert got[name].device == CPU


def test_one_buffer_reused_and_grown_only_for_a_larger_span(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    state = layer_state(layers=4, hidden=64)
    release = make_release(make_model(state))
    chunks = _by_chunk(release, trust)
    copier = StagingCopier(CPU)
    spans = []
    for chunk, entries in chunks:
        copier.copy(release / chunk.path, chunk, entries, hash_check=True)
        spans.append(chunk.size)
    # With the hash check the whole chunk is staged: the buffer grows at each new maximum.
    grows = sum(1 for i, s in enumerate(spans) if s > max(spans[:i], default=0))
    assert copier.allocations == grows
    assert copier.peak_bytes == max(spans)
    # Again, smallest last: no new allocation at all.
    for chunk, entries in sorted(chunks, key=lambda ce: -ce[0].size):
        copier.copy(release / chunk.path, chunk, entries, hash_check=True)
    assert copier.allocations == grows


def test_a_subset_stages_only_its_aligned_span(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    state = layer_state(layers=2, hidden=64)
    release = make_release(make_model(state))
    chunk, entries = max(_by_chunk(release, trust), key=lambda ce: len(ce[1]))
    assert len(entries) >= 2
    last = entries[-1]
    copier = StagingCopier(CPU)
    got = copier.copy(release / chunk.path, chunk, [last], hash_check=False)
    assert _same_bytes(got[last.name], state[last.name])
    start = last.begin - last.begin % 64
    assert copier.peak_bytes == last.end - start < chunk.size


def test_staged_bytes_are_hash_checked_and_damage_is_refused(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    release = make_release(make_model(layer_state(layers=2, hidden=64)))
    chunk, entries = _by_chunk(release, trust)[0]
    path = release / chunk.path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size: only the sha256 can tell
    path.write_bytes(bytes(data))
    copier = StagingCopier(CPU)
    with pytest.raises(CorruptChunkError, match="sha256"):
        copier.copy(path, chunk, entries, hash_check=True)
    path.write_bytes(bytes(data[:-1]))
    with pytest.raises(CorruptChunkError, match="bytes"):
        copier.copy(path, chunk, entries, hash_check=False)
    path.unlink()
    with pytest.raises(MissingChunkError):
        copier.copy(path, chunk, entries, hash_check=False)
    assert copier.copy(path, chunk, [], hash_check=True) == {}


def test_the_buffer_is_pinned_only_for_cuda() -> None:
    assert not StagingCopier(CPU)._pinned
    assert not StagingCopier(torch.device("meta"))._pinned
    assert StagingCopier(torch.device("cuda"))._pinned == torch.cuda.is_available()
