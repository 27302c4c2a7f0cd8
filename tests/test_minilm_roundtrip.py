"""The real all-MiniLM-L6-v2 checkpoint, packed, verified, loaded and exported."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import p2pweights
from p2pweights import PrivateKey, TrustStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_release(
    tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path
) -> tuple[Path, TrustStore]:
    tmp = tmp_path_factory.mktemp("minilm")
    key: PrivateKey = p2pweights.generate_key(tmp / "key.pem")
    out = tmp / "release"
    p2pweights.pack(
        minilm_dir, out, name="sentence-transformers/all-MiniLM-L6-v2", version=1, key=key
    )
    return out, TrustStore.of_keys([key.public])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("verify", ["fast", "full"])
def test_every_tensor_is_bit_identical(
    minilm_release: tuple[Path, TrustStore], minilm_dir: Path, verify: str
) -> None:
    release, trust = minilm_release
    original = load_file(str(minilm_dir / "model.safetensors"))
    loaded = p2pweights.load(release, trust=trust, verify=verify)  # type: ignore[arg-type]
    assert list(loaded) == sorted(original)
    for name, tensor in original.items():
        got = loaded[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        # Compare raw bytes, so NaN payloads and -0.0 count too.
        assert torch.equal(
            got.view(torch.uint8) if got.dim() else got,
            tensor.view(torch.uint8) if tensor.dim() else tensor,
        ), name


def test_chunks_are_valid_safetensors_holding_whole_tensors(
    minilm_release: tuple[Path, TrustStore],
) -> None:
    release, trust = minilm_release
    manifest = p2pweights.open_release(release, trust).manifest
    seen: set[str] = set()
    for chunk in manifest.chunks:
        if chunk.kind != "tensors":
            continue
        inside = load_file(str(release / chunk.path))
        expected = {t.name for t in manifest.tensors.values() if t.chunk == chunk.path}
        assert set(inside) == expected
        assert not seen & expected
        seen |= expected
        assert chunk.path == f"chunks/{_sha(release / chunk.path)}.safetensors"
    assert seen == set(manifest.tensors)
    # Grouped by layer: every encoder layer's tensors share one chunk.
    for i in range(6):
        layer = {
            t.chunk for t in manifest.tensors.values() if t.name.startswith(f"encoder.layer.{i}.")
        }
        assert len(layer) == 1


def test_exact_export_reproduces_every_original_file(
    minilm_release: tuple[Path, TrustStore], minilm_dir: Path, tmp_path: Path
) -> None:
    release, trust = minilm_release
    result = p2pweights.export(release, tmp_path / "exact", exact=True, trust=trust)
    originals = sorted(
        p.relative_to(minilm_dir).as_posix() for p in minilm_dir.rglob("*") if p.is_file()
    )
    assert sorted(result.files) == originals
    for rel in originals:
        assert _sha(tmp_path / "exact" / rel) == _sha(minilm_dir / rel), rel


def test_linked_export_copies_no_tensor_data(
    minilm_release: tuple[Path, TrustStore], tmp_path: Path
) -> None:
    release, trust = minilm_release
    out = tmp_path / "linked"
    result = p2pweights.export(release, out, trust=trust)
    manifest = p2pweights.open_release(release, trust).manifest
    shards = [f for f in result.files if f.endswith(".safetensors")]
    assert shards
    for name in shards:
        path = out / name
        if path.is_symlink():  # no reflinks on this filesystem: the read-only chunk itself
            assert path.resolve().parent == (release / "chunks").resolve()
        else:  # a copy-on-write clone of the chunk
            assert f"chunks/{_sha(path)}.safetensors" in {c.path for c in manifest.chunks}
    assert (out / "model.safetensors.index.json").is_file()
    # The export is itself a source for load().
    loaded = p2pweights.load(out, trust=trust)
    assert len(loaded) == 104


def _embed(model_dir: Path) -> torch.Tensor:
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = BertModel.from_pretrained(str(model_dir)).eval()
    batch = tok(
        ["peer to peer weights", "a second sentence, longer than the first one"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    return out


def test_forward_pass_on_exported_dir_equals_original(
    minilm_release: tuple[Path, TrustStore], minilm_dir: Path, tmp_path: Path
) -> None:
    release, trust = minilm_release
    out = tmp_path / "hf"
    p2pweights.export(release, out, trust=trust)
    expected = _embed(minilm_dir)
    got = _embed(out)
    assert got.shape == expected.shape == (2, got.shape[1], 384)
    assert torch.equal(got, expected)


def test_save_pretrained_into_a_linked_export_leaves_every_chunk_unchanged(
    minilm_release: tuple[Path, TrustStore], minilm_dir: Path, tmp_path: Path
) -> None:
    """Finding 6: transformers rewrites config and tokenizer files in place."""
    from transformers import AutoConfig, AutoTokenizer

    release, trust = minilm_release
    out = tmp_path / "hf"
    p2pweights.export(release, out, trust=trust)
    chunks = sorted((release / "chunks").iterdir())
    before = {p.name: _sha(p) for p in chunks}
    config = AutoConfig.from_pretrained(str(out))
    config.p2pw_probe = "saved into the export"
    config.save_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(str(out))
    assert {p.name: _sha(p) for p in chunks} == before
    p2pweights.verify_release(release, trust, mode="full")
    # The export took the writes, and still loads.
    assert AutoConfig.from_pretrained(str(out)).p2pw_probe == "saved into the export"
    assert AutoTokenizer.from_pretrained(str(out)).model_max_length == 128
    assert torch.equal(_embed(out), _embed(minilm_dir))


def test_load_into_bert_gives_identical_outputs(
    minilm_release: tuple[Path, TrustStore], minilm_dir: Path
) -> None:
    from transformers import BertConfig, BertModel

    release, trust = minilm_release
    config = BertConfig.from_pretrained(str(minilm_dir))
    torch.manual_seed(0)
    fresh = BertModel(config).eval()
    result = p2pweights.load_into(fresh, release, trust=trust, strict=False)
    # The checkpoint has no pooler and one non-persistent buffer; nothing else may be missing.
    assert all(k.startswith("pooler.") for k in result.missing_keys)
    reference = BertModel.from_pretrained(str(minilm_dir)).eval()
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        assert torch.equal(fresh(ids).last_hidden_state, reference(ids).last_hidden_state)
