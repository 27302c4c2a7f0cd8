"""An original safetensors header, kept in a form that rebuilds it byte for byte.

``export --exact`` must give back each original ``.safetensors`` file exactly, header
included. Storing the header's text would repeat every tensor's name, dtype, shape and
offsets, which the manifest already holds: for a 100,000-tensor checkpoint that was two
thirds of the manifest. Almost every header is what safetensors itself writes, so it is
kept as the few facts that are not already in the manifest:

- ``metadata``: the ``__metadata__`` pairs in their original order (``None`` when the
  header has no ``__metadata__``);
- ``order``: the header's tensor order as positions in the data order (``None`` when the
  header lists the tensors in data order, as safetensors does).

The header is then ``{"__metadata__":{...},"name":{"dtype":..,"shape":[..],
"data_offsets":[b,e]},...}`` with no whitespace (serde_json's compact form, which
safetensors uses), padded with spaces to the length the file's size leaves for it. Pack
renders this form and compares it with the original bytes; a header written any other
way is kept verbatim (``text``), so every file still rebuilds exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

__all__ = ["HeaderSpec", "describe_header", "render_header"]



@dataclass(frozen=True, slots=True)
class HeaderSpec:
    """What rebuilds one original safetensors header (see the module docstring)."""

    text: str | None = None
    """The verbatim header (padding included), for a header not in safetensors' form."""
    metadata: tuple[tuple[str, str], ...] | None = None
    order: tuple[int, ...] | None = None


def render_header(
    spec: HeaderSpec, tensors: Sequence[tuple[str, str, tuple[int, ...], int]], length: int
) -> bytes:
    """The header bytes (without the 8-byte length prefix) that ``spec`` describes.

    Args:
        spec: the kept form.
        tensors: ``(name, dtype, shape, nbytes)`` of each tensor, in data order.
        length: the header's length in bytes (the file's size minus the prefix and data).

    Returns:
        The header, padded with spaces to ``length``; longer when the spec cannot fit,
        which the caller's sha256 check then refuses.
    """
    if spec.text is not None:
        return spec.text.encode("utf-8")
    doc: dict[str, object] = {}
    if spec.metadata is not None:
        doc["__metadata__"] = dict(spec.metadata)
    ends = list(accumulate(t[3] for t in tensors))
    order = range(len(tensors)) if spec.order is None else spec.order
    for i in order:
        name, dtype, shape, nbytes = tensors[i]
        doc[name] = {"dtype": dtype, "shape": list(shape),
                     "data_offsets": [ends[i] - nbytes, ends[i]]}
    # json's C encoder, compact and not ASCII-escaped, writes what serde_json writes.
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return body + b" " * (length - len(body))


def describe_header(
    header_bytes: bytes,
    metadata: dict[str, str],
    header_order: Sequence[str],
    data_order: Sequence[tuple[str, str, tuple[int, ...], int]],
) -> HeaderSpec:
    """The smallest spec that renders ``header_bytes`` again exactly.

    Args:
        header_bytes: the original header, as stored (padding included).
        metadata: its ``__metadata__``, in order (empty when it has none).
        header_order: tensor names in the order the header lists them.
        data_order: ``(name, dtype, shape, nbytes)`` in data order.
    """
    position = {t[0]: i for i, t in enumerate(data_order)}
    order = tuple(position[n] for n in header_order)
    kept = None if order == tuple(range(len(order))) else order
    # An empty __metadata__ and none at all read the same; the bytes tell them apart.
    for pairs in (tuple(metadata.items()), None) if not metadata else (tuple(metadata.items()),):
        spec = HeaderSpec(metadata=pairs, order=kept)
        if render_header(spec, data_order, len(header_bytes)) == header_bytes:
            return spec
    return HeaderSpec(text=header_bytes.decode("utf-8"))
