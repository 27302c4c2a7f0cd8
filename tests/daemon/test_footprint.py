"""The daemon never imports torch, and the CLI's daemon verbs stay light (real daemons)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from p2pweights import PrivateKey, SourceError, TrustStore

from .._imports import CLI_HEAVY, cli_imports, heavy_in
from .conftest import Daemon

pytestmark = pytest.mark.slow


def _cli(d: Daemon, *args: str) -> dict[str, object]:
    proc, modules = cli_imports(d.home, *args, "--json")
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr[-2000:])
    assert heavy_in(modules, CLI_HEAVY) == set(), (args, heavy_in(modules, CLI_HEAVY))
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_daemons_publish_and_fetch_without_torch(
    daemons: Callable[..., Daemon],
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    tmp_path: Path,
) -> None:
    a, b = daemons(name="a"), daemons(name="b")
    published = a.call("publish", make_release(make_model()))
    TrustStore.load(b.home / "trust.json").add(key.public, "publisher")
    # The CLI's daemon verbs, each in a fresh interpreter: none loads torch, aiohttp,
    # cryptography or libtorrent.
    started = _cli(b, "fetch", "--no-wait", "--peer", a.peer, str(published["magnet"]))
    info = b.call("wait", started["id"], 120)
    assert info["state"] == "seeding" and not info["timed_out"], b.log()[-3000:]
    assert [r["id"] for r in _cli(b, "ls")["releases"]] == [published["id"]]  # type: ignore[index]
    assert _cli(b, "show", str(published["id"])[:8])["state"] == "seeding"
    assert _cli(b, "daemon", "status")["releases"] == 1
    # Packing pickles would need torch: the daemon refuses, and says what to do instead.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"w": torch.zeros(4)}, pickled / "pytorch_model.bin")
    with pytest.raises(SourceError, match="p2pw pack"):
        a.client.request_sync(
            "POST",
            "/publish",
            body={
                "source": str(pickled),
                "name": "test/pickled",
                "version": 1,
                "key_file": str(tmp_path / "keys" / "publisher.pem"),
            },
        )
    # Seen from inside each daemon, at request time, after publishing, fetching, seeding.
    for d in (a, b):
        assert d.call("status")["modules_loaded"] == {"torch": False, "numpy": False}
    assert _cli(b, "rm", str(published["id"]))["id"] == published["id"]
    assert b.call("status")["releases"] == 0
