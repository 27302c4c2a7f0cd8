"""A chunk's path is its content address, derived from its signed sha256 and kind."""

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


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("kind", ["tensors", "blob"])
def test_a_chunk_path_is_derived_never_stated(
    make_model: Callable[..., Path], make_release: Callable[..., Path], kind: str
) -> None:
    """The squatting attack's first step was a manifest that names a chunk after bytes it
    does not hold. A p2pweights.manifest/2 manifest stores no chunk paths: each is the
    content address of the signed sha256, and a stated path is refused."""
    release = make_release(make_model())
    data = (release / MANIFEST_NAME).read_bytes()
    manifest = Manifest.from_bytes(data)  # the honest manifest parses
    assert all(c.path == chunk_address(c.sha256, c.kind) for c in manifest.chunks)
    doc = json.loads(data)
    entry = next(c for c in doc["chunks"] if c["kind"] == kind)
    entry["path"] = chunk_address("0" * 64, kind)
    with pytest.raises(ManifestError, match="unexpected \\['path'\\]"):
        Manifest.from_bytes(_canonical(doc))
    # The same sha256 under the other kind is another address, and the wrong schema.
    del entry["path"]
    entry["kind"] = "blob" if kind == "tensors" else "tensors"
    with pytest.raises(ManifestError):
        Manifest.from_bytes(_canonical(doc))
