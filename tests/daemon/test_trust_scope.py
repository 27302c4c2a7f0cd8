"""Scoped trust on real daemons (issue 16, finding 5).

- Trust on first use changes the user's trust store, so it is a socket-only act: over the
  TCP API (bearer token) it is refused with 403 and ``trust.json`` is left as it was.
- A key trusted on first use is trusted for the name of the release it came with only: it
  cannot sign another name, neither for a later local load nor for another fetch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import p2pweights
from p2pweights import OutOfScopeError, PrivateKey, TrustStore

from ..conftest import layer_state
from .conftest import Daemon, p2pw
from .test_api_boundary import _free_port, call

pytestmark = pytest.mark.slow

DaemonFactory = Callable[..., Daemon]


def _pack(src: Path, out: Path, name: str, key: PrivateKey) -> Path:
    p2pweights.pack(src, out, name=name, version=1, key=key, now=1_700_000_000)
    return out


def test_trust_on_first_use_over_tcp_is_refused_and_trust_json_is_unchanged(
    daemons: DaemonFactory,
    key: PrivateKey,
    other_key: PrivateKey,
    make_model: Callable[..., Path],
    tmp_path: Path,
) -> None:
    seeder = daemons(name="seeder")
    magnet = seeder.call("publish", _pack(make_model(), tmp_path / "r", "org/m1", key))["magnet"]
    home = tmp_path / "leech"
    home.mkdir(mode=0o700)
    TrustStore.load(home / "trust.json").add(other_key.public, "someone")
    before = (home / "trust.json").read_bytes()
    port = _free_port()
    leech = daemons("--tcp-port", str(port), name="leech")
    auth = {"Authorization": f"Bearer {(leech.home / 'api.token').read_text().strip()}"}
    body = {"uri": magnet, "peers": [seeder.peer], "trust_on_first_use": True}
    status, doc, _ = call(leech, "POST", "/v1/fetch", tcp_port=port, headers=auth, body=body)
    assert status == 403 and doc["type"] == "ApiError", doc
    assert "trust_on_first_use" in doc["error"] and "use the Unix socket" in doc["error"]
    assert leech.call("releases") == []  # refused before anything was added
    assert (home / "trust.json").read_bytes() == before
    # Without it a token holder may fetch, but the untrusted key stays refused.
    del body["trust_on_first_use"]
    status, doc, _ = call(leech, "POST", "/v1/fetch", tcp_port=port, headers=auth, body=body)
    assert status == 202, doc
    info = leech.call("wait", doc["id"], 60)
    assert info["state"] == "error" and info["error"].startswith("UntrustedKeyError"), info
    assert (home / "trust.json").read_bytes() == before
    # On the socket (the user) the same fetch may trust the key, for this name only.
    started = leech.call("fetch", magnet, peers=[seeder.peer], trust_on_first_use=True)
    assert leech.call("wait", started["id"], 60)["state"] == "seeding"
    entry = TrustStore.load(home / "trust.json").entry_of(key.public)
    assert entry is not None and entry.scopes == ("org/m1",)


def test_a_key_trusted_on_first_use_signs_only_its_release_name(
    daemons: DaemonFactory,
    other_key: PrivateKey,
    make_model: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """The attack of finding 5: a key accepted with TOFU for ``evil/m2`` then signs
    ``org/m1``. Neither a local load nor a fetch of ``org/m1`` accepts it."""
    evil = other_key
    seeder = daemons(name="seeder")
    leech = daemons(name="leech")
    m2 = _pack(make_model(), tmp_path / "m2", "evil/m2", evil)
    first = seeder.call("publish", m2)
    started = leech.call("fetch", first["magnet"], peers=[seeder.peer], trust_on_first_use=True)
    assert leech.call("wait", started["id"], 60)["state"] == "seeding"
    doc = json.loads((leech.home / "trust.json").read_text())
    assert list(doc["keys"].values()) == [{"key": evil.public.text, "scopes": ["evil/m2"]}]
    assert p2pweights.load(started["path"], home=leech.home)["model.norm.weight"].numel() == 64

    # A release dir of another name signed by that key: refused by the library and the CLI.
    m1 = _pack(make_model(layer_state(seed=1)), tmp_path / "m1", "org/m1", evil)
    with pytest.raises(OutOfScopeError, match="not for release 'org/m1'"):
        p2pweights.load(m1, home=leech.home)
    proc = p2pw(leech.home, "verify", str(m1))
    assert proc.returncode == 18 and proc.stderr.count("\n") == 1, proc.stderr

    # Nor does the daemon fetch it, even when asked to trust on first use again: the key
    # is not new, so it is not "first use".
    second = seeder.call("publish", m1)
    started = leech.call("fetch", second["magnet"], peers=[seeder.peer], trust_on_first_use=True)
    info = leech.call("wait", started["id"], 60)
    assert info["state"] == "error" and info["error"].startswith("OutOfScopeError"), info
    m1_only = {p.name for p in (m1 / "chunks").iterdir()} - {
        p.name for p in (m2 / "chunks").iterdir()
    }
    assert m1_only and not m1_only & {p.name for p in (leech.home / "store" / "chunks").iterdir()}
    doc_after = json.loads((leech.home / "trust.json").read_text())
    assert doc_after == doc  # the scope did not widen
