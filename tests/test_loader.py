"""load / load_into / open: zero-copy, selective, lazy, every dtype, nothing unverified."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import p2pweights
from p2pweights import CorruptChunkError, LoadError, TrustStore
from p2pweights._safetensors import DTYPES

from .conftest import layer_state


def _all_dtype_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    state: dict[str, torch.Tensor] = {}
    for name, dt in DTYPES.items():
        raw = torch.randint(0, 256, (3, 5 * dt.itemsize), dtype=torch.uint8, generator=g)
        state[f"dtypes.{name}.matrix"] = raw.view(dt.torch_dtype)
        state[f"dtypes.{name}.scalar"] = (
            raw[0, : dt.itemsize].clone().view(dt.torch_dtype).reshape(())
        )
        state[f"dtypes.{name}.empty"] = torch.empty((0, 4), dtype=dt.torch_dtype)
    return state


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bytes(a.contiguous().reshape(-1).view(torch.uint8).tolist()) == bytes(
        b.contiguous().reshape(-1).view(torch.uint8).tolist()
    )


def test_every_dtype_including_scalars_and_empty_round_trips(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    state = _all_dtype_state()
    release = make_release(make_model(state))
    loaded = p2pweights.load(release, trust=trust, verify="full")
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert _same_bytes(loaded[name], tensor), name


def test_cpu_tensors_are_memory_mapped_not_copied(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    release = make_release(make_model())
    loaded = p2pweights.load(release, trust=trust)
    maps = Path("/proc/self/maps").read_text()
    for chunk in (release / "chunks").glob("*.safetensors"):
        assert str(chunk.resolve()) in maps
    weight = loaded["model.layers.0.self_attn.q_proj.weight"]
    storage = weight.untyped_storage()
    # The tensor is a view into a storage the size of its whole chunk file.
    chunk_sizes = {p.stat().st_size for p in (release / "chunks").glob("*.safetensors")}
    assert storage.nbytes() in chunk_sizes
    # Private mapping: writing to a tensor never touches the store.
    before = {p: p.read_bytes() for p in (release / "chunks").iterdir()}
    weight.add_(1)
    assert {p: p.read_bytes() for p in (release / "chunks").iterdir()} == before


def test_include_loads_and_verifies_only_matching_chunks(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    release = make_release(make_model())
    manifest = p2pweights.open_release(release, trust).manifest
    # Damage layer 3's chunk: a load of layer 0 alone never reads it...
    layer3 = manifest.tensors["model.layers.3.mlp.up_proj.weight"].chunk
    (release / layer3).chmod(0o644)  # chunks are written 0444
    with (release / layer3).open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff\xff")
    part = p2pweights.load(release, trust=trust, include="model.layers.0.*", verify="full")
    assert part and all(n.startswith("model.layers.0.") for n in part)
    # ...and a load that needs it refuses, in both modes.
    for mode in ("fast", "full"):
        with pytest.raises(CorruptChunkError):
            p2pweights.load(release, trust=trust, include=["model.layers.3.*"], verify=mode)  # type: ignore[arg-type]
    with pytest.raises(LoadError, match="matches no tensor"):
        p2pweights.load(release, trust=trust, include=["nope.*"])


def test_open_is_lazy_and_shaped_like_safe_open(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    state = layer_state()
    release = make_release(make_model(state))
    manifest = p2pweights.open_release(release, trust).manifest
    (release / manifest.tensors["lm_head.weight"].chunk).unlink()
    with p2pweights.open(release, trust=trust) as reader:
        assert reader.keys() == sorted(state)
        meta = reader.metadata()
        assert meta["name"] == "test/model" and meta["version"] == "1"
        assert torch.equal(reader.get_tensor("model.norm.weight"), state["model.norm.weight"])
        with pytest.raises(p2pweights.MissingChunkError):
            reader.get_tensor("lm_head.weight")
        with pytest.raises(LoadError):
            reader.get_tensor("not.a.tensor")


def test_meta_device_and_bad_mode(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    release = make_release(make_model())
    loaded = p2pweights.load(release, trust=trust, device="meta")
    assert all(t.device.type == "meta" for t in loaded.values())
    with pytest.raises(LoadError):
        p2pweights.load(release, trust=trust, verify="sloppy")  # type: ignore[arg-type]


def test_load_into_module_strict_and_mismatch(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    state = {"weight": torch.randn(4, 3), "bias": torch.randn(4)}
    release = make_release(make_model(state))
    module = torch.nn.Linear(3, 4)
    p2pweights.load_into(module, release, trust=trust)
    assert torch.equal(module.weight.detach(), state["weight"])
    with pytest.raises(LoadError, match="size mismatch"):
        p2pweights.load_into(torch.nn.Linear(2, 4), release, trust=trust)


def test_trust_comes_from_the_data_dir_by_default(
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    key: p2pweights.PrivateKey,
    _isolated_home: Path,
) -> None:
    release = make_release(make_model())
    with pytest.raises(p2pweights.UntrustedKeyError):
        p2pweights.load(release)
    store = TrustStore.load(_isolated_home / "trust.json")
    store.add(key.public, "tester")
    assert len(p2pweights.load(release)) == len(layer_state())
