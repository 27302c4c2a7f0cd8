"""A deterministic synthetic mixture-of-experts checkpoint with very many small tensors.

Big MoE checkpoints carry 30,000-100,000 tensors (every expert has its own gate, up and
down projection in every layer), so per-tensor costs, not bytes, decide how fast a
release of one is packed, authenticated and loaded. This builds one with Qwen-MoE names,
saved as Hugging Face saves a sharded checkpoint (``model-0000k-of-0000n.safetensors``
through safetensors' own ``save_file``, ``model.safetensors.index.json``,
``config.json``), with only as many bytes as the tensor shapes ask for.

Used by ``bench_manifest.py`` and by the 100,000-tensor test; it imports only torch and
safetensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = ["MoeShape", "make_moe", "moe_shape_for", "moe_specs"]

_PER_LAYER = 8
"""Tensors of a layer besides its experts: q, k, v, o, two norms, the router, a shared gate."""
_GLOBAL = 3
"""embed_tokens, norm, lm_head."""


@dataclass(frozen=True, slots=True)
class MoeShape:
    """The numbers that fix every tensor of the synthetic MoE."""

    layers: int
    experts: int
    hidden: int = 32
    intermediate: int = 16
    vocab: int = 512

    @property
    def tensors(self) -> int:
        """How many tensors the checkpoint holds."""
        return self.layers * (3 * self.experts + _PER_LAYER) + _GLOBAL

    @property
    def nbytes(self) -> int:
        """Bytes of all the weights in bf16."""
        return sum(math.prod(dims) for _, dims in moe_specs(self)) * 2


def moe_shape_for(tensors: int, *, layers: int = 64, hidden: int = 32, intermediate: int = 16
                  ) -> MoeShape:
    """The shape with ``layers`` layers and the fewest experts giving at least ``tensors``."""
    experts = max(1, math.ceil((tensors - _GLOBAL - layers * _PER_LAYER) / (3 * layers)))
    return MoeShape(layers, experts, hidden, intermediate)


def moe_specs(shape: MoeShape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, layer by layer."""
    h, i = shape.hidden, shape.intermediate
    yield "model.embed_tokens.weight", (shape.vocab, h)
    for n in range(shape.layers):
        p = f"model.layers.{n}"
        for proj in ("q", "k", "v", "o"):
            yield f"{p}.self_attn.{proj}_proj.weight", (h, h)
        yield f"{p}.input_layernorm.weight", (h,)
        yield f"{p}.post_attention_layernorm.weight", (h,)
        yield f"{p}.mlp.gate.weight", (shape.experts, h)
        yield f"{p}.mlp.shared_expert_gate.weight", (1, h)
        for e in range(shape.experts):
            q = f"{p}.mlp.experts.{e}"
            yield f"{q}.gate_proj.weight", (i, h)
            yield f"{q}.up_proj.weight", (i, h)
            yield f"{q}.down_proj.weight", (h, i)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (shape.vocab, h)


def make_moe(root: Path, shape: MoeShape, *, shards: int = 4, seed: int = 0) -> Path:
    """Write the checkpoint into ``root`` (created; must not exist).

    Tensors are slices of one seeded random pool, cloned, so writing 100,000 of them costs
    one generator call rather than 100,000.

    Returns:
        ``root``.
    """
    root.mkdir(parents=True)
    specs = list(moe_specs(shape))
    gen = torch.Generator().manual_seed(seed)
    pool = (torch.randn(1 << 20, generator=gen) * 0.02).to(torch.bfloat16)
    per_shard = math.ceil(len(specs) / shards)
    weight_map: dict[str, str] = {}
    pos = 0
    for k in range(shards):
        part = specs[k * per_shard : (k + 1) * per_shard]
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        state = {}
        for name, dims in part:
            n = math.prod(dims)
            if pos + n > pool.numel():
                pos = (pos * 7 + 1) % 4096  # wrap with a shift: neighbours differ
            state[name] = pool[pos : pos + n].clone().reshape(dims)
            pos += n
        save_file(state, str(root / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys((n for n, _ in part), fname))
    index = {"metadata": {"total_size": shape.nbytes}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = {
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "hidden_size": shape.hidden,
        "moe_intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_experts": shape.experts,
        "vocab_size": shape.vocab,
    }
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return root
