"""Key rotation and revocation through real daemons (issue 10, "Keys").

A client that trusts key A fetches v1. The publisher rotates to key B and publishes v2
signed by B, with the rotation statement in the torrent beside ``manifest.sig``. The
client's daemon fetches v2 and moves its trust entry to B by itself, keeping its name;
the library then loads v2. Once the client records B's revocation certificate, loads
of v2 are refused, and so is any fetch of a release B signs, first use or not.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import p2pweights
from p2pweights import RevokedKeyError, TrustStore
from p2pweights.key_statements import STATEMENTS_NAME
from p2pweights.keys import load_private_key

from ..conftest import layer_state
from .conftest import Daemon, p2pw

pytestmark = pytest.mark.slow

DaemonFactory = Callable[..., Daemon]


def _json(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, object] = json.loads(proc.stdout)
    return doc


def test_rotation_moves_the_clients_trust_and_revocation_ends_it(
    daemons: DaemonFactory, make_model: Callable[..., Path], tmp_path: Path
) -> None:
    seeder = daemons(name="seeder")
    leech = daemons(name="leech")
    pub = seeder.home  # the publisher's keys live in the seeder's data dir
    a = _json(p2pw(pub, "key", "generate", "--json"))
    b_pem = tmp_path / "b.pem"
    b = _json(p2pw(pub, "key", "generate", "--out", str(b_pem), "--json"))
    src1, src2 = make_model(layer_state(seed=1)), make_model(layer_state(seed=2))

    v1 = tmp_path / "v1"
    pack1 = ("pack", str(src1), "--name", "org/m", "--version", "1", "--out", str(v1))
    _json(p2pw(pub, *pack1, "--json"))
    m1 = seeder.call("publish", v1)["magnet"]
    _json(p2pw(leech.home, "trust", "add", str(a["public_key"]), "--name", "org", "--json"))
    got = leech.call("fetch", m1, peers=[seeder.peer])
    assert leech.call("wait", got["id"], 60)["state"] == "seeding"

    # Rotate A -> B; v2 is signed by B and carries the statement in its torrent.
    _json(p2pw(pub, "key", "rotate", "--new", str(b_pem), "--json"))
    v2 = tmp_path / "v2"
    packed = _json(
        p2pw(
            pub, "pack", str(src2), "--name", "org/m", "--version", "2",
            "--out", str(v2), "--key", str(b_pem), "--json",
        )
    )  # fmt: skip
    assert packed["key_statements"] == 1
    m2 = seeder.call("publish", v2)["magnet"]
    got2 = leech.call("fetch", m2, peers=[seeder.peer])
    info2 = leech.call("wait", got2["id"], 60)
    assert info2["state"] == "seeding", info2
    assert (Path(info2["path"]) / STATEMENTS_NAME).is_file()  # kept, so it seeds on
    doc = json.loads((leech.home / "trust.json").read_text())
    entry = doc["keys"]["org"]
    assert entry["key"] == b["public_key"] and entry["retired"][0]["key"] == a["public_key"]
    assert "moved from key" in leech.log()
    state = p2pweights.load(info2["path"], home=leech.home)
    assert state["model.norm.weight"].equal(layer_state(seed=2)["model.norm.weight"])
    # v1, signed by A before the rotation, still loads under the same entry.
    client_trust = TrustStore.load(leech.home / "trust.json")
    v1_path = leech.call("show", got["id"])["path"]
    assert p2pweights.verify_release(v1_path, client_trust).publisher_name == "org"

    # A release the daemon packs itself (publish SRC --key) carries the rotation too.
    body = {"source": str(src1), "name": "org/m", "version": 4, "key_file": str(b_pem)}
    own = seeder.client.request_sync("POST", "/publish", body=body)
    assert (Path(own["path"]) / STATEMENTS_NAME).read_bytes() == (v2 / STATEMENTS_NAME).read_bytes()

    # B is revoked: the client records the certificate, and loads of v2 are refused.
    cert = tmp_path / "b.revoked.json"
    _json(p2pw(pub, "key", "revoke", "--key", str(b_pem), "--out", str(cert), "--json"))
    _json(p2pw(leech.home, "trust", "revoke", "--certificate", str(cert), "--json"))
    with pytest.raises(RevokedKeyError):
        p2pweights.load(info2["path"], home=leech.home)
    proc = p2pw(leech.home, "verify", info2["path"])
    assert proc.returncode == 22 and proc.stderr.count("\n") == 1, proc.stderr
    # Whoever holds B now (the publisher packs nothing with it) cannot get a release in,
    # not even with trust on first use.
    v3 = tmp_path / "v3"
    p2pweights.pack(src1, v3, name="org/m", version=3, key=load_private_key(b_pem))
    m3 = seeder.call("publish", v3)["magnet"]
    got3 = leech.call("fetch", m3, peers=[seeder.peer], trust_on_first_use=True)
    info3 = leech.call("wait", got3["id"], 60)
    assert info3["state"] == "error" and info3["error"].startswith("RevokedKeyError"), info3
    after = TrustStore.load(leech.home / "trust.json")
    assert after.entries == [] and {k.text for k in after.revoked} == {b["public_key"]}
