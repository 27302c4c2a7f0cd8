"""A chunk's path is its content address: the parser refuses any other name."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pweights.errors import ManifestError
from p2pweights.manifest import Manifest, chunk_address
from p2pweights.release import MANIFEST_NAME


def test_chunk_address_names_the_bytes() -> None:
    sha = "ab" * 32
    assert chunk_address(sha, "tensors") == f"chunks/{sha}.safetensors"
    assert chunk_address(sha, "blob") == f"chunks/{sha}"


def _renamed(manifest: bytes, old: str, new: str) -> bytes:
    doc = json.loads(manifest)
    for c in doc["chunks"]:
        if c["path"] == old:
            c["path"] = new
    doc["chunks"].sort(key=lambda c: c["path"])
    for t in doc["tensors"].values():
        if t["chunk"] == old:
            t["chunk"] = new
    for f in doc["files"]:
        if f.get("chunk") == old:
            f["chunk"] = new
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize("kind", ["tensors", "blob"])
def test_a_chunk_named_after_other_bytes_is_refused(
    make_model: Callable[..., Path], make_release: Callable[..., Path], kind: str
) -> None:
    """The squatting attack's first step: a manifest that names a chunk after bytes it
    does not hold. Before content addressing this parsed, and a second publisher could
    claim another release's store file."""
    release = make_release(make_model())
    data = (release / MANIFEST_NAME).read_bytes()
    Manifest.from_bytes(data)  # the honest manifest parses
    chunk = next(c for c in Manifest.from_bytes(data).chunks if c.kind == kind)
    other = chunk_address("0" * 64, chunk.kind)
    with pytest.raises(ManifestError, match="content address"):
        Manifest.from_bytes(_renamed(data, chunk.path, other))
    # The right address under the wrong kind is refused too.
    wrong_kind = chunk_address(chunk.sha256, "blob" if kind == "tensors" else "tensors")
    with pytest.raises(ManifestError, match="content address"):
        Manifest.from_bytes(_renamed(data, chunk.path, wrong_kind))
