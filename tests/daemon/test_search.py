"""Search on a loopback DHT of at least 8 nodes: publishers' signed indexes, read by a client.

Every wait is on an answer: a search returns once each index is resolved and fetched.
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
    LoadError,
    NameFormatError,
    NameResolutionError,
    SearchIndexError,
    SearchQueryError,
    SignatureError,
    TrustStoreError,
)
from p2pweights.names import SignedItem, key_text, name_uri, salt_for
from p2pweights.search_index import INDEX_FILE, INDEX_NAME
from p2pweightsd.admission import authenticate
from p2pweightsd.catalog import Catalog
from p2pweightsd.engine import make_torrent
from p2pweightsd.search import MAX_INDEX_TORRENT, check_index_torrent

from ..conftest import layer_state
from ._dht_nodes import DhtNodes
from .conftest import Daemon, p2pw
from .test_names import _home, _on_dht

DaemonFactory = Callable[..., Daemon]


def _publisher(daemons: DaemonFactory, tmp_path: Path, nodes: DhtNodes, name: str) -> tuple[
    Daemon, PrivateKey
]:
    key = generate_key(_home(tmp_path, name) / "keys" / "publisher.pem")
    return daemons(*_on_dht(nodes), name=name), key


def _pack(tmp_path: Path, key: PrivateKey, name: str, version: int, label: str) -> Path:
    from safetensors.torch import save_file

    tag = f"{key.public.fingerprint[:4]}-{name.replace('/', '-')}-{version}"
    src = tmp_path / f"src-{tag}"
    src.mkdir()
    save_file(layer_state(layers=1, hidden=16, seed=version), str(src / "model.safetensors"))
    out = tmp_path / f"rel-{tag}"
    p2pweights.pack(src, out, name=name, version=version, key=key, label=label)
    return out


def _names(found: dict[str, Any]) -> list[tuple[str, int, bool]]:
    return [(r["name"], r["version"], r["trusted"]) for r in found["results"]]


def _index_version(d: Daemon) -> int:
    """The version of the index this daemon last named (its own item for ``p2pw.index``)."""
    held = d.client.request_sync("GET", "/names")["names"]
    return max([n["version"] for n in held if n["name"] == INDEX_NAME and n["own"]], default=0)


def _index_put_after_start(d: Daemon, older: int) -> None:
    """Wait until the daemon's start has named an index newer than ``older`` (events)."""

    async def watch() -> None:
        async for event in d.client.events():  # subscribed first, then looked: no race
            if event["kind"] in ("subscribed", "name_put") and _index_version(d) > older:
                return
        raise AssertionError("the event stream ended")

    asyncio.run(asyncio.wait_for(watch(), 60))


def _held_index(home: Path) -> SignedItem:
    with sqlite3.connect(home / "catalog.sqlite3") as db:
        row = db.execute("SELECT item_json FROM names WHERE name=?", (INDEX_NAME,)).fetchone()
    return SignedItem.from_json(json.loads(row[0]))


@pytest.mark.slow
def test_search_finds_releases_of_trusted_publishers_only(
    daemons: DaemonFactory, dht: Callable[..., DhtNodes], tmp_path: Path
) -> None:
    nodes = dht(6)
    a, key_a = _publisher(daemons, tmp_path, nodes, "a")
    b, key_b = _publisher(daemons, tmp_path, nodes, "b")
    home = _home(tmp_path, "client")
    TrustStore.load(home / "trust.json").add(key_a.public, "acme")
    client = daemons(*_on_dht(nodes), name="client")  # 6 + 3 = 9 DHT nodes
    # A trusted publisher with no index yet is reported as such, not a crash.
    empty = client.call("search", "llama")
    assert empty["results"] == [] and empty["publishers"][0]["status"] == "no index"

    a.call("publish", _pack(tmp_path, key_a, "org/llama-chat", 1, "Llama chat"), tags=["chat"])
    vit = _pack(tmp_path, key_a, "org/vit", 1, "vision")
    bad = p2pw(a.home, "publish", str(vit), "--tag", "no spaces")
    assert bad.returncode == 2 and "--tag" in bad.stderr, bad.stderr
    done = p2pw(a.home, "publish", str(vit), "--tag", "ViT", "--json")  # the CLI's --tag
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["pointer"]["index"]["entries"] == 2, info["pointer"]
    b.call("publish", _pack(tmp_path, key_b, "org/llama-chat", 1, "llama impostor"))

    found = client.call("search", "llama")
    assert _names(found) == [("p2pw://acme/org/llama-chat", 1, True)]
    row = found["results"][0]
    assert (row["label"], row["tags"], row["publisher_name"]) == ("Llama chat", ["chat"], "acme")
    assert [p["status"] for p in found["publishers"]] == ["ok"]
    # Words: every one must match the name, the label or a tag, in any case.
    assert _names(client.call("search", "VIT")) == [("p2pw://acme/org/vit", 1, True)]
    assert _names(client.call("search", "llama vit")) == []
    assert len(client.call("search")["results"]) == 2
    # --publisher B: its index is read too, for display, and its rows say so.
    b_text = key_text(key_b.public)
    both = client.call("search", "llama", publishers=[b_text])
    assert _names(both) == [
        ("p2pw://acme/org/llama-chat", 1, True),
        (f"p2pw://{b_text}/org/llama-chat", 1, False),
    ]
    trust = json.loads((client.home / "trust.json").read_text())
    assert list(trust["keys"]) == ["acme"]  # reading B's index trusted nobody
    # A's next version: the index is made anew, and the client reads the new one.
    a.call("publish", _pack(tmp_path, key_a, "org/llama-chat", 2, "Llama chat"), tags=["chat"])
    assert _names(client.call("search", "chat")) == [("p2pw://acme/org/llama-chat", 2, True)]
    # Only the trusted key's latest index stays (seeded); B's was dropped once read.
    indexes = [r for r in client.call("releases") if r["name"] == INDEX_NAME]
    assert len(indexes) == 1 and indexes[0]["publisher"] == key_a.public.text
    own = a.call("search", "vit", publishers=[key_text(key_a.public)])  # A reads its own
    assert [r["release"] for r in own["results"]] == ["org/vit"]
    assert [r["name"] for r in a.call("releases")].count(INDEX_NAME) == 1
    # The CLI: a table by default, JSON for scripts, no match is exit 0 with a note.
    shown = p2pw(client.home, "search", "LLAMA")
    assert shown.returncode == 0, shown.stderr
    assert "p2pw://acme/org/llama-chat" in shown.stdout and "impostor" not in shown.stdout
    as_json = p2pw(client.home, "search", "llama", "--publisher", b_text, "--json")
    assert len(json.loads(as_json.stdout)["results"]) == 2
    none = p2pw(client.home, "search", "no-such-word")
    assert none.returncode == 0 and "no release matches" in none.stderr

    # Forgery: an index pointer under A's key that B signed is stored by no honest node.
    genuine = _held_index(client.home)
    forged = SignedItem.sign(key_b, salt_for(INDEX_NAME), genuine.seq + 9, genuine.value)
    forged = SignedItem(key_a.public.raw, forged.salt, forged.seq, forged.signature, forged.value)
    assert nodes.put(forged) == 0
    assert _names(client.call("search", "chat")) == [("p2pw://acme/org/llama-chat", 2, True)]


@pytest.mark.slow
def test_an_old_index_is_refused_and_hostile_searches_get_typed_errors(
    daemons: DaemonFactory, dht: Callable[..., DhtNodes], tmp_path: Path
) -> None:
    nodes = dht(6)
    a, key_a = _publisher(daemons, tmp_path, nodes, "a")
    home = _home(tmp_path, "client")
    TrustStore.load(home / "trust.json").add(key_a.public, "acme")
    client = daemons(*_on_dht(nodes), name="client")
    a.call("publish", _pack(tmp_path, key_a, "org/llama-chat", 1, "v1"))
    assert _names(client.call("search", "llama")) == [("p2pw://acme/org/llama-chat", 1, True)]
    old_index = _held_index(client.home)
    a.call("publish", _pack(tmp_path, key_a, "org/llama-chat", 2, "v2"))
    assert _names(client.call("search", "llama")) == [("p2pw://acme/org/llama-chat", 2, True)]
    # An index gone from the publisher's store is made again at its next start.
    gone = next(r["id"] for r in a.call("releases") if r["name"] == INDEX_NAME)
    older = _index_version(a)
    a.call("remove", gone, delete_data=True)
    a.stop()
    a.start()
    _index_put_after_start(a, older)
    remade = next(r["id"] for r in a.call("releases") if r["name"] == INDEX_NAME)
    assert remade != gone
    assert client.call("resolve", name_uri(key_a.public, INDEX_NAME))["info_hash"] == remade
    # And a search reads it.
    assert _names(client.call("search", "llama")) == [("p2pw://acme/org/llama-chat", 2, True)]
    client.stop()
    hostile = dht(8)  # serves only A's genuine, superseded index pointer
    assert hostile.put(old_index) >= 1
    client.args = _on_dht(hostile)
    client.start()
    refused = client.call("search", "llama")
    assert refused["results"] == []
    assert refused["publishers"][0]["error"].startswith("RollbackError"), refused

    for bad, error in (
        ("x" * 600, SearchQueryError),
        (" ".join(f"w{i}" for i in range(17)), SearchQueryError),
    ):
        with pytest.raises(error):
            client.call("search", bad)
        assert p2pw(client.home, "search", bad).returncode == error.exit_code == 2
    with pytest.raises(NameFormatError):
        client.call("search", "llama", publishers=["ed25519:not-a-key"])
    cli = p2pw(client.home, "search", "--publisher", "../../etc", "llama")
    assert cli.returncode == NameFormatError.exit_code == 2, cli.stderr
    with pytest.raises(TrustStoreError):
        client.call("search", "llama", publishers=["nobody"])
    with pytest.raises(SearchQueryError):
        client.call("search", "llama", publishers=[key_text(key_a.public)] * 33)
    # The index name is reserved: no release of one's own may take it.
    with pytest.raises(LoadError, match="reserved"):
        a.call("publish", _pack(tmp_path, key_a, INDEX_NAME, 1, "squatter"))
    no_dht = daemons(name="nodht")
    with pytest.raises(NameResolutionError, match="magnet link, or enable the DHT"):
        no_dht.call("search", "llama")


def test_an_index_fetch_takes_only_its_own_keys_manifest(tmp_path: Path) -> None:
    """The fetch of A's index accepts a release A signed, and one B signed never."""
    key_a = generate_key(tmp_path / "a.pem")
    key_b = generate_key(tmp_path / "b.pem")
    src = tmp_path / "src"
    src.mkdir()
    (src / INDEX_FILE).write_bytes(b"{}")
    root = tmp_path / "index"
    p2pweights.pack(src, root, name=INDEX_NAME, version=1, key=key_b)
    tf = make_torrent(root)
    trust_file = tmp_path / "trust.json"
    TrustStore.load(trust_file).add(key_a.public, "acme")
    with pytest.raises(SignatureError, match="signed by"):
        authenticate(root, tf, trust_file, tofu=False, signer=key_a.public)
    release = authenticate(root, tf, trust_file, tofu=False, signer=key_b.public)
    assert release.manifest.publisher == key_b.public
    assert list(json.loads(trust_file.read_text())["keys"]) == ["acme"]  # B not trusted


def test_an_index_too_large_to_be_one_is_refused_at_its_metadata(
    tmp_path: Path, make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> None:
    """A key given with --publisher may name gigabytes as its "index": refused before any chunk."""
    tf = make_torrent(make_release(make_model(layer_state(layers=4, hidden=512))))
    assert sum(f.size for f in tf.files) > MAX_INDEX_TORRENT
    catalog = Catalog(tmp_path / "catalog.db")
    check_index_torrent(catalog, tf.id, tf)  # not an index fetch: any size
    with catalog.transaction():
        catalog.db.execute(
            "INSERT INTO name_fetches VALUES (?,?,?,?,?)",
            (tf.id, generate_key(tmp_path / "k.pem").public.text, INDEX_NAME, 1, "0" * 64),
        )
    with pytest.raises(SearchIndexError, match="an index is at most"):
        check_index_torrent(catalog, tf.id, tf)


def test_a_three_daemon_dht_finds_an_index_published_at_once(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    """A private cluster of three daemons, the publisher the others' bootstrap node.

    The publisher publishes as soon as the others are up: its one announce reaches the
    nodes that have joined by then. It announces again a few times (upkeep.DhtRetry);
    without that the index is found 15 minutes later, when libtorrent next announces.
    """
    key = generate_key(_home(tmp_path, "a") / "keys" / "publisher.pem")
    a = daemons("--dht", name="a")
    others = [daemons("--dht", "--dht-bootstrap", a.peer, name=n) for n in ("node", "client")]
    client = others[-1]
    TrustStore.load(client.home / "trust.json").add(key.public, "acme")
    a.call("publish", _pack(tmp_path, key, "org/llama-chat", 1, "v1"))
    found = client.call("search", "llama", timeout=30)
    assert _names(found) == [("p2pw://acme/org/llama-chat", 1, True)], found["publishers"]
