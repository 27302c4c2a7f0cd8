"""stream() and load_into(stream=True) on local releases; the staging path to a device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import p2pweights
from p2pweights import CorruptChunkError, LoadError, MissingChunkError, PrivateKey, TrustStore
from p2pweights.chunking import chunk_order, layer_order
from p2pweights.release import open_release

from .conftest import copy_release, layer_state


def _layer_index(name: str) -> float:
    """Where a tensor belongs in a forward pass: -1 embeddings, i for layer i, inf after."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return -1 if "embed" in name else float("inf")


def test_layer_order_is_forward_order_with_natural_numbers() -> None:
    names = [
        "lm_head.weight",
        "model.layers.10.mlp.up_proj.weight",
        "model.norm.weight",
        "model.layers.2.self_attn.q_proj.weight",
        "model.embed_tokens.weight",
        "model.layers.2.input_layernorm.weight",
    ]
    assert layer_order(names) == [
        "model.embed_tokens.weight",
        "model.layers.2.input_layernorm.weight",
        "model.layers.2.self_attn.q_proj.weight",
        "model.layers.10.mlp.up_proj.weight",
        "lm_head.weight",
        "model.norm.weight",
    ]
    chunk_of = {n: f"chunks/{_layer_index(n)}" for n in names}
    assert chunk_order(["model.norm.weight"], chunk_of) == [
        "chunks/inf",
        "chunks/-1",
        "chunks/2",
        "chunks/10",
    ]


def test_stream_yields_every_tensor_once_in_layer_order_equal_to_load(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    release = make_release(make_model(layer_state(layers=12)))
    expected = p2pweights.load(release, trust=trust)
    got = list(p2pweights.stream(release, trust=trust))
    names = [n for n, _ in got]
    assert sorted(names) == sorted(expected)
    assert len(names) == len(set(names))
    ranks = [_layer_index(n) for n in names]
    assert ranks == sorted(ranks), names
    for name, tensor in got:
        assert torch.equal(tensor, expected[name]), name


def test_stream_follows_a_given_order_and_only_those_names(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    release = make_release(make_model(layer_state(layers=6)))
    order = ["lm_head.weight", "model.layers.5.mlp.up_proj.weight", "model.embed_tokens.weight"]
    got = p2pweights.stream(release, order, trust=trust)
    assert [n for n, _ in got] == order
    with pytest.raises(LoadError, match="not a tensor"):
        next(iter(p2pweights.stream(release, ["no.such.tensor"], trust=trust)))


def test_stream_include_limits_what_is_yielded(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    release = make_release(make_model(layer_state(layers=6)))
    names = [n for n, _ in p2pweights.stream(release, include="model.layers.3.*", trust=trust)]
    assert names and all(n.startswith("model.layers.3.") for n in names)
    with pytest.raises(LoadError, match="matches no tensor"):
        next(iter(p2pweights.stream(release, include="nothing.*", trust=trust)))


def test_stream_stops_at_a_corrupt_chunk_after_yielding_the_good_ones(
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    trust: TrustStore,
    tmp_path: Path,
) -> None:
    release = copy_release(make_release(make_model(layer_state(layers=6))), tmp_path / "bad")
    rel = open_release(release, trust)
    order = layer_order(rel.manifest.tensors)
    victim = rel.manifest.tensors["model.layers.3.mlp.up_proj.weight"].chunk
    path = release / victim
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # same size: only a full check sees it
    path.chmod(0o644)  # chunks are written 0444
    path.write_bytes(bytes(data))
    seen: list[str] = []

    def drain() -> None:
        for name, _ in p2pweights.stream(release, trust=trust, verify="full"):
            seen.append(name)

    with pytest.raises(CorruptChunkError):
        drain()
    first_bad = next(i for i, n in enumerate(order) if rel.manifest.tensors[n].chunk == victim)
    assert seen == order[:first_bad]
    path.unlink()
    with pytest.raises(MissingChunkError):
        list(p2pweights.stream(release, trust=trust))


def test_meta_device_goes_through_one_reused_staging_buffer(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    state = layer_state(layers=8)
    release = make_release(make_model(state))
    chunks = open_release(release, trust).manifest.chunks
    with p2pweights.stream(release, trust=trust, device="meta") as ts:
        got = dict(ts)
        staging = ts.reader.staging
    assert staging is not None
    assert set(got) == set(state)
    for name, tensor in got.items():
        assert tensor.device.type == "meta"
        assert (tensor.shape, tensor.dtype) == (state[name].shape, state[name].dtype)
    # At most one chunk on the CPU at a time, in a buffer grown only for a larger chunk.
    assert staging.peak_bytes <= max(c.size for c in chunks)
    sizes = [c.size for c in chunks]
    assert staging.allocations <= len(set(sizes))
    reader = p2pweights.open(release, trust=trust, device="meta")
    loaded = p2pweights.load(release, trust=trust, device="meta")
    assert {n: (t.shape, t.dtype) for n, t in loaded.items()} == {
        n: (t.shape, t.dtype) for n, t in state.items()
    }
    assert reader.get_tensor("lm_head.weight").device.type == "meta"


def test_full_verify_on_a_device_hashes_the_staged_bytes(
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    trust: TrustStore,
    tmp_path: Path,
) -> None:
    release = copy_release(make_release(make_model(layer_state(layers=2))), tmp_path / "bad")
    rel = open_release(release, trust)
    path = release / rel.manifest.tensors["lm_head.weight"].chunk
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.chmod(0o644)  # chunks are written 0444
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptChunkError, match="sha256"):
        p2pweights.load(release, trust=trust, device="meta", verify="full")


def test_load_into_streaming_fills_the_module_and_checks_names_first(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    state = layer_state(layers=3)
    release = make_release(make_model(state))

    class Holder(torch.nn.Module):
        def __init__(self, shapes: dict[str, torch.Size]) -> None:
            super().__init__()
            for name, shape in shapes.items():
                self.register_parameter(
                    name.replace(".", "__"), torch.nn.Parameter(torch.zeros(shape))
                )

        def state_dict(self, *a: object, **kw: object) -> dict[str, torch.Tensor]:  # type: ignore[override]
            return {n.replace("__", "."): p for n, p in self.named_parameters()}

    module = Holder({n: t.shape for n, t in state.items()})
    result = p2pweights.load_into(module, release, trust=trust, stream=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for name, param in module.state_dict().items():
        assert torch.equal(param.detach(), state[name]), name

    small = Holder({n: t.shape for n, t in state.items() if "layers.2" not in n})
    before = {n: p.detach().clone() for n, p in small.state_dict().items()}
    with pytest.raises(LoadError, match="unexpected keys"):
        p2pweights.load_into(small, release, trust=trust, stream=True)
    assert all(torch.equal(p.detach(), before[n]) for n, p in small.state_dict().items())
    loose = p2pweights.load_into(small, release, trust=trust, stream=True, strict=False)
    assert sorted(loose.unexpected_keys) == sorted(n for n in state if "layers.2" in n)
    wrong = Holder({**{n: t.shape for n, t in state.items()}, "lm_head.weight": torch.Size([1])})
    with pytest.raises(LoadError, match="shape"):
        p2pweights.load_into(wrong, release, trust=trust, stream=True, strict=False)


_RSS_CHILD = """
import json, pathlib, sys
import torch, p2pweights
from p2pweights import TrustStore

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

trust = TrustStore.load(pathlib.Path(sys.argv[2]))
pathlib.Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
base = status("VmRSS")
n = 0
for name, t in p2pweights.stream(sys.argv[1], trust=trust, device="meta", verify="full"):
    n += 1
print(json.dumps({"tensors": n, "grew": status("VmHWM") - base}))
"""


def test_streaming_to_a_device_keeps_cpu_memory_near_one_chunk(
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    key: PrivateKey,
    tmp_path: Path,
) -> None:
    # ~150 MB in 12 chunks of ~12 MB; the CPU side must hold about one chunk, not all.
    state = layer_state(layers=12, hidden=640)
    total = sum(t.numel() * t.element_size() for t in state.values())
    release = make_release(make_model(state))
    trust = TrustStore.load(tmp_path / "trust.json")
    trust.add(key.public, "test")
    largest = max(c.size for c in open_release(release, trust).manifest.chunks)
    trust_file = tmp_path / "trust.json"
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(release), str(trust_file)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tensors"] == len(state)
    grew = result["grew"]
    assert total > 8 * largest
    assert grew < 2 * largest + 32 * 2**20, (grew, largest, total)
