"""The p2pweights.manifest/2 format: small per tensor, exact rebuilds, the old format refused.

The 100,000-tensor case is the scale the format is built for (big mixture-of-experts
checkpoints carry 30,000-100,000 tensors): it packs, verifies, loads and rebuilds byte for
byte, with a manifest of at most 150 bytes per tensor.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file, save_file

import p2pweights
from p2pweights import ManifestError, PrivateKey, TrustStore, export, verify_release
from p2pweights._canonical import dumps
from p2pweights.manifest import FORMAT, Manifest
from p2pweights.release import MANIFEST_NAME

MakeRelease = Callable[..., Path]


def _synthetic_moe() -> ModuleType:
    """scripts/_synthetic_moe.py, the builder the benchmark uses too."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "_synthetic_moe.py"
    spec = importlib.util.spec_from_file_location("_synthetic_moe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_synthetic_moe", module)
    spec.loader.exec_module(module)
    return module


def _header(path: Path) -> bytes:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data[8 : 8 + n]


def _files_doc(release: Path) -> dict[str, dict[str, object]]:
    doc = json.loads((release / MANIFEST_NAME).read_bytes())
    return {f["name"]: f for f in doc["files"]}


def _exact_copy(release: Path, src: Path, out: Path, trust: TrustStore) -> None:
    export(release, out, trust=trust, exact=True)
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = f.relative_to(src)
        assert (out / rel).read_bytes() == f.read_bytes(), rel


def _write_raw(path: Path, header: bytes, data: bytes) -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


# --------------------------------------------------------------- original headers


def test_safetensors_own_header_is_kept_as_metadata_alone(
    tmp_path: Path, make_release: MakeRelease, trust: TrustStore
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    save_file({"b.weight": torch.ones(3), "a.bias": torch.zeros(2, dtype=torch.float64)},
              str(src / "model.safetensors"), metadata={"format": "pt", "x": "y\n\"z\""})
    release = make_release(src)
    header = _files_doc(release)["model.safetensors"]["header"]
    assert isinstance(header, dict) and header["order"] is None
    # In the order the file has them (safetensors writes them in hash-map order).
    assert sorted(header["metadata"]) == [["format", "pt"], ["x", 'y\n"z"']]
    _exact_copy(release, src, tmp_path / "out", trust)


@pytest.mark.parametrize(
    "case", ["spaced", "no metadata", "header order differs", "empty metadata", "escaped name"]
)
def test_any_header_rebuilds_byte_for_byte(
    tmp_path: Path, make_release: MakeRelease, trust: TrustStore, case: str
) -> None:
    a = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    b = {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}
    compact = {"separators": (",", ":"), "ensure_ascii": False}
    if case == "spaced":  # another writer's whitespace: kept verbatim
        header = json.dumps({"__metadata__": {"format": "pt"}, "a": a, "b": b}).encode()
    elif case == "no metadata":
        header = json.dumps({"a": a, "b": b}, **compact).encode()  # type: ignore[arg-type]
    elif case == "header order differs":
        header = json.dumps({"b": b, "a": a}, **compact).encode()  # type: ignore[arg-type]
    elif case == "empty metadata":
        header = json.dumps({"__metadata__": {}, "a": a, "b": b}, **compact).encode()  # type: ignore[arg-type]
    else:
        header = json.dumps({"q\"\\\u00e9\x01": a, "b": b}, **compact).encode()  # type: ignore[arg-type]
    header += b" " * (-len(header) % 8)
    src = tmp_path / "src"
    src.mkdir()
    _write_raw(src / "model.safetensors", header, bytes(range(12)))
    release = make_release(src)
    kept = _files_doc(release)["model.safetensors"]["header"]
    if case == "spaced":
        assert kept == header.decode()
    else:
        assert isinstance(kept, dict)
        if case == "header order differs":
            assert kept["order"] == [1, 0]
        assert kept["metadata"] == ([] if case == "empty metadata" else None)
    _exact_copy(release, src, tmp_path / "out", trust)


# --------------------------------------------------------------- the old format


def test_a_format_1_manifest_is_refused_with_a_clear_reason(
    make_model: Callable[..., Path], make_release: MakeRelease
) -> None:
    release = make_release(make_model())
    doc = json.loads((release / MANIFEST_NAME).read_bytes())
    assert doc["format"] == FORMAT == "p2pweights.manifest/2"
    old = {k: v for k, v in doc.items() if k != "types"}
    old["format"] = "p2pweights.manifest/1"
    old["tensors"] = {}
    with pytest.raises(ManifestError, match=r"no longer read.*pack the release again"):
        Manifest.from_bytes(dumps(old))


# --------------------------------------------------------------- 100,000 tensors


@pytest.mark.slow
def test_a_100k_tensor_moe_release_packs_verifies_loads_and_rebuilds(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    moe = _synthetic_moe()
    shape = moe.moe_shape_for(100_000, hidden=8, intermediate=4)
    assert shape.tensors >= 100_000
    src = moe.make_moe(tmp_path / "src", shape, shards=4)
    release = tmp_path / "release"
    result = p2pweights.pack(src, release, name="test/moe", version=1, key=key)
    assert len(result.manifest.tensors) == shape.tensors
    size = (release / MANIFEST_NAME).stat().st_size
    assert size / shape.tensors <= 150, f"{size / shape.tensors:.1f} bytes per tensor"

    verify_release(release, trust, mode="full")
    state = p2pweights.load(release, trust=trust)
    assert len(state) == shape.tensors
    for shard in sorted(src.glob("*.safetensors")):
        for name, want in load_file(shard).items():
            got = state[name]
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name

    _exact_copy(release, src, tmp_path / "exact", trust)
    for shard in sorted(src.glob("*.safetensors")):
        assert _header(tmp_path / "exact" / shard.name) == _header(shard)
