"""p2pw:// names on a loopback DHT of at least 8 nodes: daemons plus plain sessions.

Every wait is on an event: a daemon's answer, its event stream, or a process's line.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import p2pweights
from p2pweights import PrivateKey, TrustStore, generate_key
from p2pweights.errors import (
    NameFormatError,
    NameRecordError,
    NameResolutionError,
    PointerMismatchError,
    RevokedKeyError,
    RollbackError,
    StaleNameError,
    UntrustedKeyError,
)
from p2pweights.names import NameRecord, SignedItem, name_uri
from p2pweightsd.engine import make_torrent

from ..conftest import layer_state
from ._dht_nodes import DhtNodes
from .conftest import Daemon, p2pw

pytestmark = pytest.mark.slow

DaemonFactory = Callable[..., Daemon]
def _home(tmp_path: Path, name: str) -> Path:
    home = tmp_path / name
    home.mkdir(mode=0o700)
    return home


def _on_dht(nodes: DhtNodes, *extra: str) -> list[str]:
    return ["--dht", "--dht-bootstrap", nodes.boot, *extra]


def _publisher(
    daemons: DaemonFactory, tmp_path: Path, nodes: DhtNodes, *extra: str
) -> tuple[Daemon, PrivateKey]:
    home = _home(tmp_path, "pub")
    key = generate_key(home / "keys" / "publisher.pem")  # the daemon signs names with it
    return daemons(*_on_dht(nodes, *extra), name="pub"), key


def _client(
    daemons: DaemonFactory, tmp_path: Path, nodes: DhtNodes, name: str, trusted: PrivateKey | None
) -> Daemon:
    home = _home(tmp_path, name)
    if trusted is not None:
        TrustStore.load(home / "trust.json").add(trusted.public, "acme")
    return daemons(*_on_dht(nodes), name=name)


def _release(tmp_path: Path, key: PrivateKey, version: int, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    src = tmp_path / f"src{version}"
    src.mkdir()
    save_file(layer_state(layers=2, hidden=32, seed=seed), str(src / "model.safetensors"))
    out = tmp_path / f"rel{version}"
    p2pweights.pack(src, out, name="org/model", version=version, key=key)
    return out


def _held_item(home: Path, name: str = "org/model") -> SignedItem:
    """The latest signed item a daemon holds for a name, read from its catalog."""
    with sqlite3.connect(home / "catalog.sqlite3") as db:
        row = db.execute("SELECT item_json FROM names WHERE name=?", (name,)).fetchone()
    return SignedItem.from_json(json.loads(row[0]))


def _events_until(d: Daemon, done: Callable[[dict[str, Any]], bool], timeout: float) -> None:
    async def watch() -> None:
        async for event in d.client.events():
            if done(event):
                return

    asyncio.run(asyncio.wait_for(watch(), timeout))


def test_publish_then_resolve_and_fetch_from_another_daemon(
    daemons: DaemonFactory, dht: Callable[..., DhtNodes], tmp_path: Path
) -> None:
    nodes = dht(6)
    pub, key = _publisher(daemons, tmp_path, nodes)
    home = _home(tmp_path, "client")
    TrustStore.load(home / "trust.json").add(key.public, "acme")
    # Any daemon is a bootstrap node (a private cluster needs no other): 6 + 2 = 8 nodes.
    client = daemons("--dht", "--dht-bootstrap", pub.peer, name="client")
    info = pub.call("publish", _release(tmp_path, key, 1))
    name = name_uri(key.public, "org/model")
    assert info["pointer"]["name"] == name
    assert all(n >= 1 for n in info["pointer"]["nodes"].values()), info["pointer"]
    got = client.call("resolve", name)
    assert (got["version"], got["info_hash"], got["trusted"]) == (1, info["id"], True)
    assert got["manifest_sha256"] == info["manifest_sha256"]
    assert client.call("resolve", "p2pw://acme/org/model@1")["info_hash"] == info["id"]
    done = p2pw(client.home, "fetch", "p2pw://acme/org/model", "--peer", pub.peer, "--json")
    assert done.returncode == 0, done.stderr
    fetched = json.loads(done.stdout)
    assert (fetched["id"], fetched["state"], fetched["version"]) == (info["id"], "seeding", 1)
    shown = p2pw(client.home, "resolve", name, "--json")
    assert json.loads(shown.stdout)["expires"] > json.loads(shown.stdout)["issued"]
    assert p2pw(client.home, "show", "p2pw://acme/org/model", "--json").returncode == 0
    # The Python API takes names too, pinned by revision like any source.
    path = p2pweights.fetch("p2pw://acme/org/model@1", home=client.home, revision="1")
    state = p2pweights.load("p2pw://acme/org/model", home=client.home)
    assert path == Path(fetched["path"]) and "lm_head.weight" in state
    streamed = dict(p2pweights.stream("p2pw://acme/org/model", home=client.home))
    assert streamed.keys() == state.keys()


def test_rollback_is_refused_also_after_a_restart(
    daemons: DaemonFactory, dht: Callable[..., DhtNodes], tmp_path: Path
) -> None:
    nodes = dht(6)
    pub, key = _publisher(daemons, tmp_path, nodes)
    client = _client(daemons, tmp_path, nodes, "client", key)
    pub.call("publish", _release(tmp_path, key, 1))
    assert client.call("resolve", "p2pw://acme/org/model")["version"] == 1
    genuine_v1 = _held_item(client.home)
    pub.call("publish", _release(tmp_path, key, 2, seed=1))
    assert client.call("resolve", "p2pw://acme/org/model")["version"] == 2
    client.stop()
    # A hostile DHT that serves only the genuine, signed, superseded v1 item.
    hostile = dht(8)
    assert hostile.put(genuine_v1) >= 1
    client.args = _on_dht(hostile)
    client.start()
    with pytest.raises(RollbackError):
        client.call("resolve", "p2pw://acme/org/model")
    refused = p2pw(client.home, "fetch", "p2pw://acme/org/model")
    assert refused.returncode == RollbackError.exit_code == 20, refused.stderr


def test_a_revocation_on_the_dht_stops_the_name_and_the_key(
    daemons: DaemonFactory, dht: Callable[..., DhtNodes], tmp_path: Path
) -> None:
    """The publisher revokes its key: its daemon puts the certificate under the key, and
    a client that trusts the key learns it at its next resolve, for good."""
    nodes = dht(6)
    pub, key = _publisher(daemons, tmp_path, nodes)
    client = _client(daemons, tmp_path, nodes, "client", key)
    pub.call("publish", _release(tmp_path, key, 1))
    assert client.call("resolve", "p2pw://acme/org/model")["version"] == 1
    revoked = p2pw(pub.home, "key", "revoke", "--reason", "stolen laptop", "--json")
    assert revoked.returncode == 0, revoked.stderr
    put = pub.client.request_sync("POST", "/names/republish")
    assert put["put"] >= 3, put  # the name (latest and @1), and the certificate under the key
    with pytest.raises(RevokedKeyError):
        client.call("resolve", name_uri(key.public, "org/model"))
    trust = json.loads((client.home / "trust.json").read_text())
    assert "acme" not in trust["keys"] and len(trust["revoked"]) == 1, trust
    # Learnt for good: the key stays refused with the DHT gone, after a restart too.
    client.stop()
    client.args = ["--dht", "--dht-bootstrap", dht(8).boot]
    client.start()
    refused = p2pw(client.home, "resolve", name_uri(key.public, "org/model"))
    assert refused.returncode == RevokedKeyError.exit_code == 22, refused.stderr


def test_freeze_a_seeder_keeps_the_name_past_its_expiry(
    daemons: DaemonFactory, dht: Callable[..., DhtNodes], tmp_path: Path
) -> None:
    nodes = dht(6)
    pub, key = _publisher(daemons, tmp_path, nodes, "--name-ttl", "3")
    seeder = _client(daemons, tmp_path, nodes, "seeder", key)
    info = pub.call("publish", _release(tmp_path, key, 1))
    started = seeder.call("fetch", "p2pw://acme/org/model", peers=[pub.peer])
    assert seeder.call("wait", started["id"], 60)["state"] == "seeding"
    item = _held_item(seeder.home)
    expires = NameRecord.decode(item.value).expires_at
    pub.stop()  # the publisher goes offline for good
    nodes.restart_empty()  # and the DHT forgets its items (as after ~2 h)
    assert nodes.holders(item) == []
    seeder.stop()
    seeder.args = _on_dht(nodes, "--name-republish-interval", "0.5")
    seeder.start()
    # The seeder puts the publisher's item back, verbatim, until past its expiry.
    _events_until(
        seeder,
        lambda e: e["kind"] == "name_put" and e["verbatim"] and e["time"] > expires + 0.5,
        60,
    )
    held = nodes.holders(item)
    assert item in held, held  # same seq, same signature: the publisher's own bytes
    late = _client(daemons, tmp_path, nodes, "late", key)
    with pytest.raises(StaleNameError):
        late.call("resolve", "p2pw://acme/org/model")
    stale = late.call("resolve", "p2pw://acme/org/model", allow_stale=True)
    assert stale["stale"] and stale["info_hash"] == info["id"]
    assert "STALE NAME" in late.log()
    cli = p2pw(late.home, "resolve", "p2pw://acme/org/model", "--allow-stale")
    assert cli.returncode == 0 and "WARNING" in cli.stderr and "STALE" in cli.stdout


def test_forged_and_mismatched_records_are_refused(
    daemons: DaemonFactory, dht: Callable[..., DhtNodes], tmp_path: Path
) -> None:
    nodes = dht(6)
    pub, key = _publisher(daemons, tmp_path, nodes)
    client = _client(daemons, tmp_path, nodes, "client", key)
    v1 = pub.call("publish", _release(tmp_path, key, 1))
    genuine = _held_item(pub.home)
    record = NameRecord.decode(genuine.value)
    # Forgery: another value under the publisher's key, with a stolen signature.
    evil = NameRecord(
        record.name, 1, "e" * 64, record.manifest_sha256, record.issued_at, record.expires_at
    )
    forged = SignedItem(
        genuine.key, genuine.salt, genuine.seq + 5, genuine.signature, evil.encode()
    )
    assert nodes.put(forged) == 0  # no honest node stores it
    assert client.call("resolve", "p2pw://acme/org/model")["info_hash"] == v1["id"]
    # Mix-and-match: a record (genuinely signed) naming v2 but pointing at v1's torrent.
    v2 = _release(tmp_path, key, 2, seed=1)
    v2_sha = p2pweights.open_release(v2, TrustStore.of_keys([key.public])).manifest_sha256
    mixed = NameRecord(record.name, 2, v1["id"], v2_sha, record.issued_at, record.expires_at)
    assert nodes.put(SignedItem.sign(key, genuine.salt, genuine.seq + 10, mixed.encode())) >= 1
    started = client.call("fetch", "p2pw://acme/org/model", peers=[pub.peer])
    failed = client.call("wait", started["id"], 60)
    assert failed["state"] == "error" and failed["error"].startswith("PointerMismatchError")
    with pytest.raises(PointerMismatchError):
        p2pweights.fetch("p2pw://acme/org/model", home=client.home, peers=[pub.peer], timeout=60)


def test_an_untrusted_key_resolves_for_display_and_its_fetch_is_refused(
    daemons: DaemonFactory, dht: Callable[..., DhtNodes], tmp_path: Path
) -> None:
    nodes = dht(6)
    pub, key = _publisher(daemons, tmp_path, nodes)
    stranger = _client(daemons, tmp_path, nodes, "stranger", None)
    pub.call("publish", _release(tmp_path, key, 1))
    name = name_uri(key.public, "org/model")
    shown = stranger.call("resolve", name)
    assert shown["version"] == 1 and not shown["trusted"] and shown["publisher_name"] is None
    with pytest.raises(UntrustedKeyError):
        stranger.call("fetch", name, peers=[pub.peer])
    assert stranger.call("releases") == []  # refused before anything was fetched
    refused = p2pw(stranger.home, "load", name)
    assert refused.returncode == UntrustedKeyError.exit_code, refused.stderr


def test_limits_and_hostile_names(
    daemons: DaemonFactory, dht: Callable[..., DhtNodes], tmp_path: Path
) -> None:
    nodes = dht(6)
    pub, key = _publisher(daemons, tmp_path, nodes)
    seeds = [f"https://mirror{i}.example/{'x' * 60}/" for i in range(12)]
    release = _release(tmp_path, key, 1)
    with pytest.raises(NameRecordError, match="1000"):
        asyncio.run(pub.client.publish(release, web_seeds=seeds))
    assert pub.call("releases") == []  # refused before anything was seeded
    for hostile in (
        "p2pw://acme/../../etc/passwd",
        "p2pw://" + "k" * 500 + "/o/m",
        "p2pw://ed25519:not-a-key/org/model",
    ):
        with pytest.raises(NameFormatError):
            pub.call("resolve", hostile)
        cli = p2pw(pub.home, "fetch", hostile)
        assert cli.returncode == NameFormatError.exit_code == 2, cli.stderr
    no_dht = daemons(name="nodht")
    with pytest.raises(NameResolutionError, match="magnet link, or enable the DHT"):
        no_dht.call("resolve", name_uri(key.public, "org/model"))


def test_follow_fetches_each_new_version_moving_only_changed_chunks(
    daemons: DaemonFactory, dht: Callable[..., DhtNodes], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    nodes = dht(6)
    pub, key = _publisher(daemons, tmp_path, nodes)
    home = _home(tmp_path, "lab")
    TrustStore.load(home / "trust.json").add(key.public, "acme")
    lab = daemons(*_on_dht(nodes, "--follow-interval", "0.5"), name="lab")
    state = layer_state(layers=4, hidden=64)
    releases = []
    for version in (1, 2):
        if version == 2:  # a fine-tune of one layer: one chunk changes
            state["model.layers.2.mlp.up_proj.weight"] += 1
        src = tmp_path / f"ft{version}"
        src.mkdir()
        save_file(state, str(src / "model.safetensors"))
        p2pweights.pack(
            src, tmp_path / f"ftrel{version}", name="org/model", version=version, key=key
        )
        releases.append(tmp_path / f"ftrel{version}")
    v1 = pub.call("publish", releases[0])
    seen: list[tuple[str, int]] = []

    def fetched(version: int) -> Callable[[dict[str, Any]], bool]:
        def done(e: dict[str, Any]) -> bool:
            if e["kind"] in ("name_update", "name_fetched"):
                seen.append((e["kind"], e["version"]))
            return e["kind"] == "name_fetched" and e["version"] == version

        return done

    followed = p2pw(lab.home, "follow", "p2pw://acme/org/model", "--keep", "1", "--json")
    assert followed.returncode == 0, followed.stderr
    _events_until(lab, fetched(1), 60)
    assert "following p2pw://acme/org/model" in p2pw(lab.home, "ls").stdout
    v2 = pub.call("publish", releases[1])
    _events_until(lab, fetched(2), 60)
    assert seen[-2:] == [("name_update", 2), ("name_fetched", 2)]
    trust = TrustStore.of_keys([key.public])
    old, new = (p2pweights.open_release(r, trust).manifest for r in releases)
    changed = {c.path: c.size for c in new.chunks}.items() - {
        c.path: c.size for c in old.chunks
    }.items()
    changed_bytes = sum(size for _, size in changed)
    assert len(changed) == 1
    info = lab.call("show", v2["id"])
    moved = pub.call("show", v2["id"])["transfer"]["uploaded"]  # the only peer: the lab
    manifest_bytes = (releases[1] / "manifest.json").stat().st_size + 64
    assert changed_bytes <= moved <= changed_bytes + manifest_bytes, (moved, changed_bytes)
    assert moved < info["total_bytes"] / 2
    # --keep 1: v1 is gone, v2 stays; unfollow stops the watch.
    assert [r["id"] for r in lab.call("releases")] == [v2["id"]] != [v1["id"]]
    assert p2pw(lab.home, "unfollow", "p2pw://acme/org/model").returncode == 0
    assert lab.call("follows") == []


def test_a_fetch_that_asked_the_dht_before_its_seeder_announced_is_found(
    daemons: DaemonFactory, dht: Callable[..., DhtNodes], tmp_path: Path
) -> None:
    """A fetch started before anyone seeds it (a magnet handed out early, a seeder restarted).

    libtorrent asks the DHT for a torrent's peers at add and then every 15 minutes; the
    fetch is found anyway, because its ask announced it too, and the seeder's announce
    looks the torrent up and dials it.
    """
    nodes = dht(6)
    pub, key = _publisher(daemons, tmp_path, nodes)
    client = _client(daemons, tmp_path, nodes, "client", key)
    pub.call("publish", _release(tmp_path, key, 1))
    # A resolve walks the DHT: the client has joined it, and asks it at once from now on.
    assert client.call("resolve", "p2pw://acme/org/model")["version"] == 1
    release = _release(tmp_path, key, 2, seed=2)
    tf = make_torrent(release)
    started = client.call("fetch", tf.magnet)  # no peer named: the DHT only
    assert started["id"] == tf.id
    assert client.call("show", tf.id)["transfer"]["peers"] == 0  # nobody seeds it yet
    assert pub.call("publish", release)["id"] == tf.id  # announced on the DHT now
    info = client.call("wait", tf.id, 45)
    assert info["state"] == "seeding", (info, client.log()[-2000:])
