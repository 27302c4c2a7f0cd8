"""torch only where tensors are made or read: the format core, the client and the CLI's
daemon verbs import without it (measured in fresh interpreters with ``-X importtime``)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import p2pweights
from p2pweights import DaemonUnavailableError, PrivateKey
from p2pweights._safetensors import DTYPES
from p2pweights._sources import needs_torch
from p2pweights._torch_dtypes import TORCH_DTYPES
from p2pweights.client import DaemonClient, ensure_daemon_sync

from ._imports import CLI_HEAVY, cli_imports, heavy_in, imported_by


def test_client_errors_and_manifest_import_no_torch() -> None:
    proc, modules = imported_by("import p2pweights.client, p2pweights.errors, p2pweights.manifest")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "p2pweights.manifest" in modules  # the probe sees what was imported
    assert heavy_in(modules) == set()


def test_the_format_core_imports_no_torch() -> None:
    core = (
        "p2pweights, p2pweights.manifest, p2pweights._canonical, p2pweights.keys, "
        "p2pweights.trust, p2pweights.hashing, p2pweights.chunking, p2pweights._safetensors, "
        "p2pweights.release, p2pweights.verify, p2pweights.client, p2pweights.pack, "
        "p2pweights.export, p2pweights.remote"
    )
    proc, modules = imported_by(f"import {core}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert heavy_in(modules) == set()
    # The public API is whole: its tensor names import torch when first used.
    proc, modules = imported_by("import p2pweights; p2pweights.load")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch" in modules


def test_packing_safetensors_needs_no_torch(
    make_model: Callable[..., Path], key: PrivateKey, tmp_path: Path
) -> None:
    src, out = make_model(), tmp_path / "out"
    code = (
        "import sys; from pathlib import Path; import p2pweights; "
        "key = p2pweights.load_private_key(Path(sys.argv[1])); "
        "p2pweights.pack(Path(sys.argv[2]), Path(sys.argv[3]), name='t/m', version=1, key=key)"
    )
    proc, modules = imported_by(code, str(tmp_path / "keys" / "publisher.pem"), str(src), str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert heavy_in(modules) == set()
    assert len(p2pweights.load(out, trust=p2pweights.TrustStore.of_keys([key.public]))) > 0


def test_pickle_sources_are_told_apart(tmp_path: Path, make_model: Callable[..., Path]) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    assert needs_torch(tmp_path / "pytorch_model.bin")
    assert needs_torch(tmp_path)
    # Shadowed by safetensors, the pickle is left out, so torch is not needed.
    pickled = (tmp_path / "pytorch_model.bin").read_bytes()
    model = make_model(extra_files={"pytorch_model.bin": pickled})
    assert not needs_torch(model)
    assert not needs_torch(tmp_path / "missing")


def test_the_torch_dtype_table_covers_every_dtype() -> None:
    assert set(TORCH_DTYPES) == set(DTYPES)
    for name, dt in DTYPES.items():
        assert dt.torch_dtype is TORCH_DTYPES[name]
        assert torch.empty((), dtype=TORCH_DTYPES[name]).element_size() == dt.itemsize


def test_public_functions_win_over_same_named_submodules() -> None:
    proc, _ = imported_by(
        "import p2pweights.pack, p2pweights.export, p2pweights.stream, p2pweights; "
        "assert all(callable(getattr(p2pweights, n)) for n in ('pack', 'export', 'stream'))"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert callable(p2pweights.pack) and callable(p2pweights.stream)


def test_cli_help_and_version_are_light(tmp_path: Path) -> None:
    for args in (["--help"], ["--version"], ["daemon", "--help"], ["ls", "--help"]):
        proc, modules = cli_imports(tmp_path, *args)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert heavy_in(modules, CLI_HEAVY) == set(), args


def test_loader_does_not_import_stream() -> None:
    # stream builds on loader's reader; load_into sits above both, so there is no cycle.
    proc, modules = imported_by("import p2pweights.loader")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "p2pweights.stream" not in modules and "torch" in modules


def test_sync_client_says_when_no_daemon_answers(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnavailableError, match="no daemon answers"):
        DaemonClient(tmp_path).request_sync("GET", "/status")
    with pytest.raises(DaemonUnavailableError):
        ensure_daemon_sync(tmp_path, autostart=False)
    # A socket file nobody listens on (a daemon killed with -9) reads the same.
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(tmp_path / "daemon.sock"))
    with pytest.raises(DaemonUnavailableError):
        DaemonClient(tmp_path).request_sync("GET", "/releases")
