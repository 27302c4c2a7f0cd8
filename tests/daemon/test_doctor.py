"""`p2pw doctor`: a damaged or lost catalog is reported, and rebuilt from the store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import p2pweights
from p2pweights import PrivateKey, TrustStore

from .conftest import Daemon, p2pw

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("damage", ["garbage", "deleted"])
def test_doctor_reports_and_repairs_the_catalog(
        daemons: Callable[..., Daemon], key: PrivateKey, make_model: Callable[..., Path],
        make_release: Callable[..., Path], damage: str) -> None:
    d = daemons(name="d")
    published = d.call("publish", make_release(make_model()))
    d.stop()
    assert json.loads(p2pw(d.home, "doctor", "--json").stdout)["ok"] is True

    catalog = d.home / "catalog.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{catalog}{suffix}").unlink(missing_ok=True)
    if damage == "garbage":
        catalog.write_bytes(b"not a database at all" * 200)
        check = p2pw(d.home, "doctor")
        assert check.returncode == 13 and "damaged" in check.stdout, check
        with pytest.raises(p2pweights.DaemonUnavailableError, match="damaged"):
            d.start()  # the daemon refuses, with the reason, instead of running on it
    else:
        check = p2pw(d.home, "doctor", "--json")
        found = json.loads(check.stdout)["findings"]
        assert any("not in the catalog" in f["message"] for f in found), found

    fixed = p2pw(d.home, "doctor", "--repair", "--json")
    assert fixed.returncode == 0, fixed
    assert any("seeding" in f["message"] for f in json.loads(fixed.stdout)["findings"])
    d.start()
    info = d.call("show", published["id"])
    assert info["state"] == "seeding" and info["name"] == "test/model"
    loaded = p2pweights.load(info["path"], trust=TrustStore.of_keys([key.public]))
    assert loaded


def test_repair_refuses_while_the_daemon_runs(daemons: Callable[..., Daemon]) -> None:
    d = daemons(name="d")
    proc = p2pw(d.home, "doctor", "--repair")
    assert proc.returncode == 15 and "stop it" in proc.stderr
    assert d.call("status")["pid"] == d.pid
