"""Hugging Face interop end to end: the real MiniLM, from one HF cache to another via the swarm."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import p2pweights
from p2pweights import ExportError, LoadError, PrivateKey, ReleaseMismatchError
from p2pweights._canonical import dumps
from p2pweights.release import EXPORT_POINTER

from ..conftest import layer_state
from ..test_hf_cache import make_hf_cache
from .conftest import Daemon, p2pw

pytestmark = pytest.mark.slow

DaemonFactory = Callable[..., Daemon]
REPO = "sentence-transformers/all-MiniLM-L6-v2"
ORIGINAL_COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"

# Runs in a fresh interpreter, so huggingface_hub and transformers read HF_HUB_CACHE and
# HF_HUB_OFFLINE from the environment we give them, as they would for a user.
_EMBED = r"""
import json, os, sys
import torch
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer

out, refs = sys.argv[1], sys.argv[2:]
sentences = ["Peer-to-peer weights load like any other model.", "A second, longer sentence here."]
result, where = {}, {}
for i, ref in enumerate(refs):
    tok = AutoTokenizer.from_pretrained(ref)
    model = AutoModel.from_pretrained(ref).eval()
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    result[f"{i}.hidden"] = hidden.contiguous()
    result[f"{i}.embedding"] = ((hidden * mask).sum(1) / mask.sum(1)).contiguous()
    if not os.path.isdir(ref):
        where[ref] = str(try_to_load_from_cache(ref, "model.safetensors"))
save_file(result, out)
print(json.dumps(where))
"""


def embed(
    tmp_path: Path, env: dict[str, str], *refs: str
) -> tuple[list[dict[str, torch.Tensor]], dict[str, str]]:
    """Hidden states and mean-pooled embeddings of each model ref, in a clean subprocess."""
    out = tmp_path / f"embed-{len(list(tmp_path.glob('embed-*')))}.safetensors"
    proc = subprocess.run(
        [sys.executable, "-c", _EMBED, str(out), *refs],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tensors = load_file(str(out))
    per_ref = [
        {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{i}.")}
        for i in range(len(refs))
    ]
    where: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return per_ref, where


def offline_env(tmp_path: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    return {
        **env,
        "HF_HOME": str(tmp_path / "hf-home"),  # never the user's token or cache
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def trust(d: Daemon, key: PrivateKey) -> None:
    p2pweights.TrustStore.load(d.home / "trust.json").add(key.public, "publisher")


def cli_json(home: Path, *args: str) -> dict[str, object]:
    proc = p2pw(home, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def test_minilm_from_one_hf_cache_to_another_through_the_swarm(
    daemons: DaemonFactory,
    key: PrivateKey,
    minilm_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 1. An HF cache as `huggingface-cli download` leaves it: blobs, snapshot links, refs.
    cache1 = tmp_path / "cache1"
    make_hf_cache(cache1, REPO, minilm_dir, commit=ORIGINAL_COMMIT)
    a, b = daemons(name="a"), daemons(name="b")

    # 2. Seed straight from that cache on daemon A.
    monkeypatch.setenv("HF_HUB_CACHE", str(cache1))
    published = cli_json(
        a.home,
        "publish",
        "--from-hf-cache",
        REPO,
        "--key",
        str(tmp_path / "keys" / "publisher.pem"),
    )
    assert published["state"] == "seeding"
    assert (published["name"], published["version"]) == (REPO, 1)
    assert published["label"] == f"hf:{REPO}@{ORIGINAL_COMMIT}"
    magnet = str(published["magnet"])

    # 3. Fetch on daemon B by magnet, A its only peer, pinned to the version.
    trust(b, key)
    fetched = cli_json(
        b.home, "fetch", magnet, "--peer", a.peer, "--revision", "1", "--timeout", "120"
    )
    assert fetched["state"] == "seeding" and fetched["id"] == published["id"]
    manifest_sha = str(fetched["manifest_sha256"])

    # 4. Export into a second, empty HF cache found through the environment.
    cache2 = tmp_path / "cache2"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache2))
    exported = cli_json(b.home, "export", "--hf-cache", REPO, str(fetched["path"]))
    commit = manifest_sha[:40]
    assert exported["commit"] == commit
    snap = cache2 / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / commit
    for f in minilm_dir.rglob("*"):
        if f.is_file():  # every original file, byte for byte, behind a link into blobs/
            rel = f.relative_to(minilm_dir)
            assert (snap / rel).is_symlink() and (snap / rel).read_bytes() == f.read_bytes(), rel

    # 5 and 6. transformers, offline, finds it by repo id; its outputs equal the original's.
    # The same run also loads a p2pweights.fetch(local_dir=...) export, which must pin.
    local = tmp_path / "local-model"
    got = p2pweights.fetch(magnet, local_dir=local, peers=[a.peer], home=b.home, revision=commit)
    assert got == local and (local / "config.json").is_file()
    assert p2pweights.fetch(magnet, local_dir=local, peers=[a.peer], home=b.home) == local
    (outputs, where) = embed(
        tmp_path, offline_env(tmp_path, cache2), REPO, str(local), str(minilm_dir)
    )
    assert Path(where[REPO]).parent == snap
    from_cache, from_local, original = outputs
    for name in ("hidden", "embedding"):
        assert torch.equal(from_cache[name], original[name]), name
        assert torch.equal(from_local[name], original[name]), name

    # 7. Finding 6: transformers' save_pretrained into the local dir writes its own files,
    # never the store's chunks, and the dir still loads.
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    store_release = Path(str(fetched["path"]))
    chunks = sorted(p for p in (store_release / "chunks").rglob("*") if p.is_file())
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in chunks}
    config = AutoConfig.from_pretrained(str(local))
    config.p2pw_probe = "saved into the local dir"
    config.save_pretrained(str(local))
    AutoTokenizer.from_pretrained(str(local)).save_pretrained(str(local))
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in chunks} == before
    p2pweights.verify_release(
        store_release, p2pweights.TrustStore.of_keys([key.public]), mode="full"
    )
    assert AutoConfig.from_pretrained(str(local)).p2pw_probe == "saved into the local dir"
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        got = AutoModel.from_pretrained(str(local)).eval()(ids).last_hidden_state
        want = AutoModel.from_pretrained(str(minilm_dir)).eval()(ids).last_hidden_state
    assert torch.equal(got, want)
    # The dir is no longer the export as written: fetching into it again is refused.
    with pytest.raises(ExportError, match=r"config\.json"):
        p2pweights.fetch(magnet, local_dir=local, peers=[a.peer], home=b.home)


def test_fetch_revision_pins_and_local_dir_rules(
    daemons: DaemonFactory, key: PrivateKey, make_model: Callable[..., Path], tmp_path: Path
) -> None:
    a, b = daemons(name="a"), daemons(name="b")
    release = tmp_path / "release"
    p2pweights.pack(make_model(), release, name="org/model", version=3, key=key)
    magnet = a.call("publish", release)["magnet"]
    trust(b, key)
    sha = p2pweights.open_release(
        release, p2pweights.TrustStore.of_keys([key.public])
    ).manifest_sha256
    wrong_sha = ("0" if sha[0] != "0" else "1") + sha[1:10]

    # Malformed pins and contradictory arguments fail before anything is fetched.
    with pytest.raises(LoadError, match="revision"):
        p2pweights.fetch(magnet, peers=[a.peer], home=b.home, revision="main")
    with pytest.raises(LoadError, match="include"):
        p2pweights.fetch(magnet, peers=[a.peer], home=b.home, local_dir=tmp_path / "x",
                         include=["model.layers.0.*"])  # fmt: skip
    assert b.call("releases") == []

    for revision in ("2", wrong_sha):
        with pytest.raises(ReleaseMismatchError):
            p2pweights.fetch(magnet, peers=[a.peer], home=b.home, revision=revision)
    proc = p2pw(b.home, "fetch", magnet, "--peer", a.peer, "--revision", "4")
    assert proc.returncode == ReleaseMismatchError.exit_code and proc.stderr.count("\n") == 1
    path = p2pweights.fetch(magnet, peers=[a.peer], home=b.home, revision="3")
    assert p2pweights.fetch(magnet, peers=[a.peer], home=b.home, revision=sha[:8]) == path
    assert (path / "manifest.json").is_file()

    # Finding 4: a shipped dir holding other weights and the pointer a real export of this
    # release would hold (both of its fields are public) is refused, not returned as-is.
    shipped = make_model(layer_state(seed=7), name="shipped")
    (shipped / EXPORT_POINTER).write_bytes(
        dumps({"release": str(path.resolve()), "manifest_sha256": sha})
    )
    before = {p.name: p.read_bytes() for p in shipped.iterdir()}
    with pytest.raises(ExportError, match=r"model\.safetensors"):
        p2pweights.fetch(magnet, peers=[a.peer], home=b.home, local_dir=shipped)
    assert {p.name: p.read_bytes() for p in shipped.iterdir()} == before

    # local_dir: a linked export (from_pretrained reads it); a dir holding something else
    # is refused rather than mixed with.
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ExportError):
        p2pweights.fetch(magnet, peers=[a.peer], home=b.home, local_dir=occupied)
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
    out = cli_json(b.home, "fetch", magnet, "--peer", a.peer, "--local-dir", str(tmp_path / "ld"))
    assert out["path"] == str(tmp_path / "ld")
    state = p2pweights.load(tmp_path / "ld", home=b.home)
    assert set(state) == set(
        p2pweights.load(release, trust=p2pweights.TrustStore.of_keys([key.public]))
    )
