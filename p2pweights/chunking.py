"""How tensors are grouped into chunks: deterministic, stable, loader-friendly.

A tensor's group is its layer when its name has a numeric component
(``model.layers.12.mlp.up_proj.weight`` -> ``model.layers.12``), otherwise its module
path (``model.embed_tokens.weight`` -> ``model.embed_tokens``). A group's chunk depends only
on the group's own tensors, so changing, adding or removing a tensor disturbs its group
alone, and identical groups in two releases become identical chunk files (dedup).

A group larger than the cap is split in name order, greedily; a tensor at or above the cap
gets a chunk of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "DEFAULT_MAX_CHUNK_BYTES",
    "chunk_order",
    "group_key",
    "layer_order",
    "natural_key",
    "plan_chunks",
]

DEFAULT_MAX_CHUNK_BYTES = 256 * 1024 * 1024

_DIGITS = re.compile(r"(\d+)")


_ASCII_NUMBER_PART = re.compile(r"(?:^|\.)[0-9]+(?=\.|$)")


def group_key(name: str) -> str:
    """The group a tensor belongs to (see the module docstring)."""
    if name.isascii():
        # The same answer as the loop below (an ASCII part is isdigit() exactly when it is
        # [0-9]+), found in C: pack asks this of every one of 100,000 tensors.
        m = _ASCII_NUMBER_PART.search(name)
        if m:
            return name[: m.end()]
        return name[: name.rindex(".")] if "." in name else name
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) if len(parts) > 1 else name


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts ``layers.2`` before ``layers.10``."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _DIGITS.split(text) if p)


def plan_chunks(tensors: Sequence[tuple[str, int]], max_chunk_bytes: int) -> list[list[str]]:
    """Split tensors into chunk groups.

    Args:
        tensors: (name, nbytes) of every tensor; names are unique.
        max_chunk_bytes: the cap on a chunk's tensor bytes (a bigger tensor gets its own).

    Returns:
        Lists of tensor names, one per chunk, in natural layer order.

    """
    if max_chunk_bytes <= 0:
        raise ValueError("max_chunk_bytes must be positive")
    groups: dict[str, list[tuple[str, int]]] = {}
    for name, nbytes in tensors:
        groups.setdefault(group_key(name), []).append((name, nbytes))
    plan: list[list[str]] = []
    for key in sorted(groups, key=natural_key):
        current: list[str] = []
        size = 0
        for name, nbytes in sorted(groups[key]):
            if nbytes >= max_chunk_bytes:
                plan.append([name])
                continue
            if current and size + nbytes > max_chunk_bytes:
                plan.append(current)
                current, size = [], 0
            current.append(name)
            size += nbytes
        if current:
            plan.append(current)
    return plan


_EMBEDDING_PARTS = frozenset({"wte", "wpe", "tok_embeddings", "word_embeddings", "shared"})


def _layer_rank(name: str) -> tuple[int, int, tuple[tuple[int, int | str], ...]]:
    parts = name.split(".")
    for part in parts:
        if part.isdigit():
            return (1, int(part), natural_key(name))
    if any("embed" in part or part in _EMBEDDING_PARTS for part in parts):
        return (0, 0, natural_key(name))
    return (2, 0, natural_key(name))


def layer_order(names: Iterable[str]) -> list[str]:
    """Tensor names in the order a forward pass needs them.

    Embeddings first, then each numbered layer in numeric order (``layers.2`` before
    ``layers.10``), then everything else (final norm, heads), each part in natural order.
    """
    return sorted(names, key=_layer_rank)


def chunk_order(tensor_order: Sequence[str], chunk_of: Mapping[str, str]) -> list[str]:
    """Chunk paths in the order their first tensor appears in ``tensor_order``.

    Args:
        tensor_order: tensor names, most wanted first.
        chunk_of: tensor name -> chunk path, for every tensor (names not in
            ``tensor_order`` put their chunks last, in layer order).
    """
    named = set(tensor_order)
    ranked = [*tensor_order, *layer_order(n for n in chunk_of if n not in named)]
    return list(dict.fromkeys(chunk_of[n] for n in ranked if n in chunk_of))
