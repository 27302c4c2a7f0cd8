"""The p2pw CLI: verbs, --json, and one documented exit code per failure class."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from p2pweights.cli import main
from p2pweights.manifest import Manifest
from p2pweights.release import EXPORT_POINTER


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    data: dict[str, object] = json.loads(out)
    return data


@pytest.fixture
def published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_model: Callable[..., Path]
) -> tuple[Path, str]:
    """A key made by the CLI, a release packed by the CLI; returns (release, public key)."""
    keyinfo = run_json(capsys, "key", "generate")
    release = tmp_path / "rel"
    info = run_json(
        capsys,
        "pack",
        str(make_model()),
        "--name",
        "org/model",
        "--version",
        "3",
        "--label",
        "v3",
        "--out",
        str(release),
    )
    assert info["chunks"] and info["version"] == 3
    return release, str(keyinfo["public_key"])


def test_trust_flow_and_verify(
    capsys: pytest.CaptureFixture[str], published: tuple[Path, str], tmp_path: Path
) -> None:
    release, pub = published
    # The publisher checks their own work: a key in the data dir is their own.
    own = run_json(capsys, "verify", str(release))
    assert own["publisher_name"].startswith("your own key ") and own["ok"] is True
    assert run_json(capsys, "load", str(release))["tensors"] > 0
    other = run_json(capsys, "key", "generate", "--out", str(tmp_path / "other.pem"))
    code, _, err = run(capsys, "verify", str(release), "--key", str(other["public_key"]))
    assert code == 4 and "not in the trust store" in err and len(err.strip().splitlines()) == 1
    assert run_json(capsys, "verify", str(release), "--key", pub)["ok"] is True
    run_json(capsys, "trust", "add", pub, "--name", "org")
    fingerprint = run_json(capsys, "key", "show")["fingerprint"]
    assert run_json(capsys, "trust", "list")["keys"] == [
        {"name": "org", "public_key": pub, "fingerprint": fingerprint, "scopes": ["*"]}
    ]
    ok = run_json(capsys, "verify", str(release), "--full")
    assert ok["publisher_name"] == "org" and ok["mode"] == "full"
    assert run_json(capsys, "trust", "remove", "org")["removed"] is True
    assert run(capsys, "trust", "remove", "org")[0] == 10


def test_scoped_trust_from_the_cli(
    capsys: pytest.CaptureFixture[str], published: tuple[Path, str]
) -> None:
    """`trust add --scope` limits a key to release names; `verify` outside it exits 18."""
    release, pub = published  # named org/model
    added = run_json(
        capsys, "trust", "add", pub, "--name", "org", "--scope", "other/*", "--scope", "org/m?"
    )
    assert added["scopes"] == ["other/*", "org/m?"]
    code, _, err = run(capsys, "verify", str(release))
    assert code == 18 and "not for release 'org/model'" in err, err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "trust", "list")
    assert code == 0 and out.strip().endswith("\tother/*,org/m?"), out
    run_json(capsys, "trust", "add", pub, "--name", "org", "--scope", "org/*")
    assert run_json(capsys, "trust", "list")["keys"][0]["scopes"] == ["org/*"]
    assert run_json(capsys, "verify", str(release))["publisher_name"] == "org"
    code, _, err = run(capsys, "trust", "add", pub, "--name", "org", "--scope", "org/{a,b}")
    assert code == 10 and "not a release-name pattern" in err, err


def test_exit_codes_per_failure_class(
    capsys: pytest.CaptureFixture[str], published: tuple[Path, str]
) -> None:
    release, pub = published
    run_json(capsys, "trust", "add", pub, "--name", "org")
    manifest = release / "manifest.json"
    original = manifest.read_bytes()
    manifest.write_bytes(original.replace(b"org/model", b"org/modem"))
    assert run(capsys, "verify", str(release))[0] == 3  # bad signature
    manifest.write_bytes(original[:-1])
    assert run(capsys, "verify", str(release))[0] == 5  # malformed manifest
    manifest.write_bytes(original)
    chunk = sorted((release / "chunks").glob("*.safetensors"))[0]
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    code, out, _ = run(capsys, "verify", str(release), "--full", "--json")
    assert code == 7 and json.loads(out)["type"] == "CorruptChunkError"
    chunk.unlink()
    assert run(capsys, "verify", str(release))[0] == 6  # missing chunk
    assert run(capsys, "verify", str(release.parent / "nothing"))[0] == 12
    assert run(capsys, "pack")[0] == 2  # click's usage errors keep click's code


def test_debug_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], published: tuple[Path, str], tmp_path: Path
) -> None:
    release, _ = published
    from p2pweights import UntrustedKeyError

    other = run_json(capsys, "key", "generate", "--out", str(tmp_path / "other.pem"))
    with pytest.raises(UntrustedKeyError):
        main(["--debug", "verify", str(release), "--key", str(other["public_key"])])


def test_export_both_ways(
    capsys: pytest.CaptureFixture[str], published: tuple[Path, str], tmp_path: Path
) -> None:
    release, pub = published
    linked = run_json(capsys, "export", str(release), str(tmp_path / "a"), "--key", pub)
    assert (
        "model.safetensors" in linked["files"] or "model.safetensors.index.json" in linked["files"]
    )
    exact = run_json(capsys, "export", str(release), str(tmp_path / "b"), "--exact", "--key", pub)
    assert "model.safetensors" in exact["files"] and "config.json" in exact["files"]
    # An existing OUT is a usage error (exit 2), as for pack.
    assert run(capsys, "export", str(release), str(tmp_path / "b"), "--key", pub)[0] == 2
    # The contents, not only the names: the exact export is every original file byte for
    # byte (its signed sha256), and the linked one holds the same tensors and blobs.
    manifest = Manifest.from_bytes((release / "manifest.json").read_bytes())
    signed = {f.name: f.sha256 for f in manifest.files}
    exported = {
        p.relative_to(tmp_path / "b").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (tmp_path / "b").rglob("*")
        if p.is_file() and p.name != EXPORT_POINTER  # the pointer back to the release
    }
    assert exported == signed
    original = load_file(str(tmp_path / "b" / "model.safetensors"))
    shards = sorted((tmp_path / "a").glob("*.safetensors"))
    assert shards
    linked_tensors = {k: v for shard in shards for k, v in load_file(str(shard)).items()}
    assert set(linked_tensors) == set(original)
    for name, tensor in original.items():
        assert tensor.dtype == linked_tensors[name].dtype, name
        assert torch.equal(tensor.view(torch.uint8), linked_tensors[name].view(torch.uint8)), name
    for blob in ("config.json",):
        assert (tmp_path / "a" / blob).read_bytes() == (tmp_path / "b" / blob).read_bytes()


def test_key_passphrase_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("s3cret\n")
    keyfile = tmp_path / "enc.pem"
    info = run_json(
        capsys, "key", "generate", "--out", str(keyfile), "--passphrase-file", str(secret)
    )
    assert info["encrypted"] is True
    code, _, err = run(capsys, "key", "show", "--key", str(keyfile))
    assert code == 9 and "passphrase" in err
    shown = run_json(capsys, "key", "show", "--key", str(keyfile), "--passphrase-file", str(secret))
    assert shown["public_key"] == info["public_key"]


def test_console_script_runs(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("p2pw")
    proc = subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and "p2pw" in proc.stdout
    proc = subprocess.run(
        [str(exe), "verify", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 12 and proc.stderr.startswith("p2pw: error:")


def test_the_progress_line_says_how_peers_were_found() -> None:
    from p2pweights.cli._progress import FetchProgress

    bar = FetchProgress("magnet:?xt=urn:btmh:1220" + "ab" * 32, out=io.StringIO())
    bar.named("org/model")
    bar.on_event({"kind": "downloading"})
    bar.on_event(
        {
            "kind": "progress",
            "peers": 3,
            "peer_sources": {"explicit": 1, "dht": 2},
            "download_rate": 2_000_000,
            "wanted": 100_000_000,
            "wanted_done": 50_000_000,
        }
    )
    line = bar.line(200)
    assert "3 peers (dht 2, explicit 1)" in line and "50%" in line and "ETA" in line, line
