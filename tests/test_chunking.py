"""Chunk grouping is deterministic and stable, asserted on the chunk bytes themselves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from p2pweights.chunking import group_key, natural_key, plan_chunks

from .conftest import layer_state


def _chunk_bytes(release: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((release / "chunks").iterdir())}


def _chunk_of(release: Path, tensor: str) -> str:
    from p2pweights.manifest import Manifest

    manifest = Manifest.from_bytes((release / "manifest.json").read_bytes())
    return manifest.tensors.chunk_of(tensor).split("/")[1]


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("model.layers.12.mlp.up_proj.weight", "model.layers.12"),
        ("encoder.layer.0.attention.self.query.bias", "encoder.layer.0"),
        ("model.embed_tokens.weight", "model.embed_tokens"),
        ("lm_head.weight", "lm_head"),
        ("scale", "scale"),
    ],
)
def test_group_key(name: str, group: str) -> None:
    assert group_key(name) == group


def test_plan_is_layer_ordered_and_caps_size() -> None:
    tensors = [(f"model.layers.{i}.w{j}", 40) for i in (10, 2, 1) for j in range(3)]
    tensors.append(("model.layers.2.huge", 1000))
    plan = plan_chunks(tensors, max_chunk_bytes=100)
    assert plan == [
        ["model.layers.1.w0", "model.layers.1.w1"],
        ["model.layers.1.w2"],
        ["model.layers.2.huge"],
        ["model.layers.2.w0", "model.layers.2.w1"],
        ["model.layers.2.w2"],
        ["model.layers.10.w0", "model.layers.10.w1"],
        ["model.layers.10.w2"],
    ]
    assert natural_key("layers.2") < natural_key("layers.10")


def test_packing_twice_gives_identical_chunks_and_manifest(
    make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> None:
    src = make_model()
    a, b = make_release(src), make_release(src)
    assert _chunk_bytes(a) == _chunk_bytes(b)
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()


def test_changing_values_changes_only_their_chunks(
    make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> None:
    state = layer_state()
    before = make_release(make_model(state))
    changed = dict(state)
    changed["model.layers.2.mlp.up_proj.weight"] = state["model.layers.2.mlp.up_proj.weight"] + 1
    after = make_release(make_model(changed))
    old, new = _chunk_bytes(before), _chunk_bytes(after)
    moved = _chunk_of(before, "model.layers.2.mlp.up_proj.weight")
    assert set(old) - set(new) == {moved}
    assert len(set(new) - set(old)) == 1
    assert _chunk_of(after, "model.layers.2.mlp.up_proj.weight") in set(new) - set(old)


@pytest.mark.parametrize("edit", ["add", "remove"])
def test_adding_or_removing_a_tensor_disturbs_only_its_group(
    make_model: Callable[..., Path], make_release: Callable[..., Path], edit: str
) -> None:
    state = layer_state()
    before = make_release(make_model(state))
    edited = dict(state)
    if edit == "add":
        edited["model.layers.1.self_attn.rotary.inv_freq"] = torch.arange(8, dtype=torch.float32)
        touched = "model.layers.1.self_attn.q_proj.weight"
    else:
        del edited["model.layers.3.mlp.down_proj.weight"]
        touched = "model.layers.3.mlp.up_proj.weight"
    after = make_release(make_model(edited))
    old, new = _chunk_bytes(before), _chunk_bytes(after)
    assert set(old) - set(new) == {_chunk_of(before, touched)}
    assert set(new) - set(old) == {_chunk_of(after, touched)}


def test_big_group_splits_deterministically_and_huge_tensor_stands_alone(
    make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> None:
    state = layer_state(layers=1, hidden=64)
    state["model.layers.0.mlp.huge.weight"] = torch.zeros(300, 64)  # 76,800 bytes
    src = make_model(state)
    a = make_release(src, max_chunk_bytes=64 * 1024)
    b = make_release(src, max_chunk_bytes=64 * 1024)
    assert _chunk_bytes(a) == _chunk_bytes(b)
    from p2pweights.manifest import Manifest

    table = Manifest.from_bytes((a / "manifest.json").read_bytes()).tensors
    huge_chunk = table.chunk_of("model.layers.0.mlp.huge.weight")
    assert [n for n, t in table.items() if t.chunk == huge_chunk] == [
        "model.layers.0.mlp.huge.weight"
    ]
    for path in table.chunk_paths:
        tensors = [t for t in table.values() if t.chunk == path]
        if len(tensors) > 1:
            assert sum(t.end - t.begin for t in tensors) <= 64 * 1024


def _group_key_by_parts(name: str) -> str:
    """The rule as the module docstring states it, part by part (the reference)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) if len(parts) > 1 else name


@pytest.mark.parametrize(
    "name",
    [
        "model.layers.12.mlp.experts.7.up_proj.weight",
        "layers.0",
        "0.weight",
        "12",
        "a..1.b",
        "a.1b.2.c",
        "a.b1.c",
        "weight",
        "a.b.",
        ".a",
        "",
        "model.layers.\u0663.mlp",  # an Arabic-Indic digit: isdigit(), not [0-9]
        "h.\u00b2.x",  # a superscript two: isdigit() too
        "emb\u00e9d.0.w",
    ],
)
def test_group_key_matches_the_rule_part_by_part(name: str) -> None:
    assert group_key(name) == _group_key_by_parts(name)
