"""Screenshots of the daemon's web page: docs/ui-overview.png and docs/ui-release.png.

Three daemons on loopback: two rate-limited seeders of a 32-layer model, and the daemon
whose page is shown, which seeds a small release of its own and streams the big one in
layer order. The overview is taken while the fetch runs, the release's view once about
half its chunks are verified, so the map shows the first layers filled.

Run it in a network namespace of its own (other daemons may share loopback):

    unshare -rn -- sh -c 'ip link set lo up && .venv/bin/python scripts/ui_screenshots.py'

Needs Debian's chromium and chromium-driver (scripts/setup.sh installs them).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import p2pweights  # noqa: E402
from p2pweights import TrustStore, generate_key  # noqa: E402
from p2pweights.client import DaemonClient, start_daemon  # noqa: E402
from tests.daemon._browser import chromium, why_no_browser  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from bench_transfer import stop_daemon  # noqa: E402

# Resolves once the expression is true: checked now, then on every DOM change.
_WAIT_DOM = """
const check = new Function(arguments[0]);
const done = arguments[arguments.length - 1];
if (check()) { done(true); return; }
const seen = new MutationObserver(() => { if (check()) { seen.disconnect(); done(true); } });
seen.observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
"""


def wait_dom(drv: Any, condition: str, timeout: float = 120) -> None:
    drv.set_script_timeout(timeout)
    try:
        drv.execute_async_script(_WAIT_DOM, f"return Boolean({condition});")
    except Exception:
        drv.save_screenshot("/tmp/ui_screenshots-failed.png")
        print(f"ui_screenshots: waited in vain for {condition}; the page says:", file=sys.stderr)
        print(drv.find_element("tag name", "body").text, file=sys.stderr)
        raise


def model(root: Path, layers: int, hidden: int, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    state = {
        "model.embed_tokens.weight": torch.randn(512, hidden, generator=g),
        "model.norm.weight": torch.randn(hidden, generator=g),
        "lm_head.weight": torch.randn(512, hidden, generator=g),
    }
    for i in range(layers):
        p = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"{p}.self_attn.{proj}.weight"] = torch.randn(hidden, hidden, generator=g)
        state[f"{p}.mlp.up_proj.weight"] = torch.randn(2 * hidden, hidden, generator=g)
        state[f"{p}.mlp.down_proj.weight"] = torch.randn(hidden, 2 * hidden, generator=g)
        state[f"{p}.input_layernorm.weight"] = torch.randn(hidden, generator=g)
    root.mkdir(parents=True)
    save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})
    (root / "config.json").write_text('{"model_type": "llama"}')
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(home: Path, name: str, *args: Any, **kw: Any) -> Any:
    return asyncio.run(getattr(DaemonClient(home), name)(*args, **kw))


def daemon(home: Path, addr: str, *extra: str) -> int:
    args = ["--profile", "local", "--listen", f"{addr}:0", "--outgoing-interface", addr]
    return start_daemon(home, extra_args=[*args, *extra])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--rate", type=int, default=1_500_000, help="each seeder's bytes/s")
    args = ap.parse_args()
    reason = why_no_browser()
    if reason:
        print(f"ui_screenshots: {reason}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="p2pw-ui-"))
    pids: list[int] = []
    try:
        key = generate_key(work / "keys" / "acme.pem")
        big = work / "big-release"
        p2pweights.pack(
            model(work / "big", layers=32, hidden=192, seed=1), big,
            name="acme/llama-mini", version=3, key=key, label="hf:acme/llama-mini@4f2e1c9",
            now=1_700_000_000,
        )  # fmt: skip
        small = work / "small-release"
        p2pweights.pack(
            model(work / "small", layers=4, hidden=96, seed=2), small,
            name="acme/embedder", version=1, key=key, label="first public release",
            now=1_700_000_000,
        )  # fmt: skip
        seeders = [work / "seed-a", work / "seed-b"]
        for i, home in enumerate(seeders):
            pids.append(daemon(home, f"127.0.0.{2 + i}", "--upload-rate", str(args.rate),
                               "--rate-limit-local"))  # fmt: skip
            call(home, "publish", big)
        ui_home, port = work / "ui", free_port()
        pids.append(daemon(ui_home, "127.0.0.9", "--tcp-port", str(port)))
        TrustStore.load(ui_home / "trust.json").add(key.public, "acme")
        call(ui_home, "publish", small)
        magnet = call(seeders[0], "show", call(seeders[0], "releases")[0]["id"])["magnet"]
        peers = [
            f"127.0.0.{2 + i}:{call(h, 'status')['listen_port']}" for i, h in enumerate(seeders)
        ]

        with chromium(1440, 900) as drv:
            drv.get(call(ui_home, "request", "POST", "/ui/login")["url"])
            wait_dom(drv, "document.getElementById('daemon').textContent === 'live'")
            # The fetch is started from the page, as a user would.
            drv.find_element("id", "fetch-uri").send_keys(magnet)
            drv.find_element("id", "fetch-peers").send_keys(", ".join(peers))
            drv.find_element("id", "fetch-ordered").click()
            drv.find_element("id", "fetch-button").click()
            wait_dom(
                drv,
                "[...document.querySelectorAll('#release-rows progress')]"
                ".some(p => p.value >= 20 && p.value < 60)",
            )
            drv.execute_script("document.activeElement.blur()")
            drv.save_screenshot(str(args.out / "ui-overview.png"))
            rid = call(seeders[0], "releases")[0]["id"]
            drv.set_window_size(1440, 1500)
            drv.get(f"http://127.0.0.1:{port}/ui/#/release/{rid}")
            summary = "document.getElementById('chunk-summary').dataset"
            wait_dom(
                drv,
                f"{summary}.total > 0 && {summary}.verified >= {summary}.total * 0.45 "
                "&& document.querySelectorAll('#peer-rows tr').length === 2",
            )
            drv.execute_script("document.activeElement.blur()")
            drv.save_screenshot(str(args.out / "ui-release.png"))
        print(f"wrote {args.out / 'ui-overview.png'} and {args.out / 'ui-release.png'}")
        return 0
    finally:
        for pid in pids:
            stop_daemon(pid)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
