"""Name resolution's defences, with a fake engine standing in for the DHT.

Each test here is the one SECURITY.md names for its attack: without the check in
``daemon/names.py`` it fails.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pweights.errors import (
    NameResolutionError,
    OutOfScopeError,
    PointerMismatchError,
    RollbackError,
    SignatureError,
    StaleNameError,
    UntrustedKeyError,
)
from p2pweights.keys import PrivateKey
from p2pweights.names import NameRecord, SignedItem, name_uri, salt_for
from p2pweights.paths import trust_path
from p2pweights.trust import TrustStore
from p2pweightsd.catalog import Catalog
from p2pweightsd.config import load_config
from p2pweightsd.names import Names

NAME = "org/model"


@dataclass
class FakeGet:
    best: SignedItem | None
    authoritative: bool = True


@dataclass
class FakeEngine:
    """The DHT as one dict: what a get returns is what the test put there."""

    items: dict[bytes, SignedItem] = field(default_factory=dict)
    dht_enabled: bool = True
    puts: list[SignedItem] = field(default_factory=list)

    async def dht_get(self, key: bytes, salt: bytes, timeout: float) -> FakeGet:
        return FakeGet(self.items.get(salt))

    async def dht_put(self, item: SignedItem) -> int:
        self.puts.append(item)
        self.items[item.salt] = item
        return 1


def _record(version: int, *, ttl: int = 600, issued: int | None = None, **kw: Any) -> NameRecord:
    now = int(time.time()) if issued is None else issued
    fields: dict[str, Any] = {
        "name": NAME,
        "version": version,
        "info_hash": f"{version:064x}",
        "manifest_sha256": f"{version + 100:064x}",
        "issued_at": now,
        "expires_at": now + ttl,
    }
    fields.update(kw)
    return NameRecord(**fields)


def _put(engine: FakeEngine, key: PrivateKey, seq: int, record: NameRecord) -> SignedItem:
    item = SignedItem.sign(key, salt_for(NAME), seq, record.encode())
    engine.items[item.salt] = item
    return item


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


def _names(home: Path, engine: FakeEngine) -> Names:
    config = load_config(home, environ={"P2PW_CONFIG": str(home / "none.toml")})
    catalog = Catalog(home / "catalog.sqlite3")
    return Names(config, engine, catalog, lambda *a, **k: None, lambda rid: True)  # type: ignore[arg-type]


@pytest.fixture
def key(home: Path) -> PrivateKey:
    k = PrivateKey(Ed25519PrivateKey.generate())
    TrustStore.load(trust_path(home)).add(k.public, "acme")
    return k


def test_a_name_resolves_by_key_and_by_trust_name(home: Path, key: PrivateKey) -> None:
    engine = FakeEngine()
    _put(engine, key, 10, _record(1))
    names = _names(home, engine)
    for text in (name_uri(key.public, NAME), f"p2pw://acme/{NAME}"):
        got = asyncio.run(names.resolve(text))
        assert (got.record.version, got.trust_name, got.stale) == (1, "acme", False)
        assert got.view()["info_hash"] == f"{1:064x}"


def test_rollback_is_refused_also_after_a_restart(home: Path, key: PrivateKey) -> None:
    engine = FakeEngine()
    old = _put(engine, key, 10, _record(1))
    _put(engine, key, 11, _record(2))
    assert asyncio.run(_names(home, engine).resolve(f"p2pw://acme/{NAME}")).record.version == 2
    engine.items[old.salt] = old  # a hostile node serves the genuine older item
    with pytest.raises(RollbackError):
        asyncio.run(_names(home, engine).resolve(f"p2pw://acme/{NAME}"))  # a new Names: restart
    # A higher sequence number with a lower version is a rollback too.
    _put(engine, key, 12, _record(1))
    with pytest.raises(RollbackError):
        asyncio.run(_names(home, engine).resolve(f"p2pw://acme/{NAME}"))


def test_freeze_is_refused_unless_allow_stale(home: Path, key: PrivateKey) -> None:
    engine = FakeEngine()
    _put(engine, key, 10, _record(1, issued=int(time.time()) - 100, ttl=50))
    names = _names(home, engine)
    with pytest.raises(StaleNameError, match="allow-stale"):
        asyncio.run(names.resolve(f"p2pw://acme/{NAME}"))
    got = asyncio.run(names.resolve(f"p2pw://acme/{NAME}", allow_stale=True))
    assert got.stale and got.view()["stale"]


def test_a_forged_value_is_refused_whatever_the_dht_returns(home: Path, key: PrivateKey) -> None:
    engine = FakeEngine()
    genuine = _put(engine, key, 10, _record(1))
    evil = _record(1, info_hash="e" * 64)
    engine.items[genuine.salt] = SignedItem(
        genuine.key, genuine.salt, 11, genuine.signature, evil.encode()
    )
    with pytest.raises(SignatureError):
        asyncio.run(_names(home, engine).resolve(f"p2pw://acme/{NAME}"))
    # A record signed by another key is not found under the publisher's key at all; if a
    # node returned it anyway, its key does not match the one asked for.
    other = PrivateKey(Ed25519PrivateKey.generate())
    engine.items[genuine.salt] = SignedItem.sign(other, genuine.salt, 12, evil.encode())
    with pytest.raises(SignatureError):
        asyncio.run(_names(home, engine).resolve(f"p2pw://acme/{NAME}"))


def test_a_record_of_another_name_is_refused(home: Path, key: PrivateKey) -> None:
    engine = FakeEngine()
    _put(engine, key, 10, _record(1, name="org/other"))
    with pytest.raises(PointerMismatchError):
        asyncio.run(_names(home, engine).resolve(f"p2pw://acme/{NAME}"))


def test_an_untrusted_key_resolves_for_display_but_is_not_fetched(
    home: Path, key: PrivateKey
) -> None:
    stranger = PrivateKey(Ed25519PrivateKey.generate())
    engine = FakeEngine()
    _put(engine, stranger, 10, _record(1))
    names = _names(home, engine)
    text = name_uri(stranger.public, NAME)
    shown = asyncio.run(names.resolve(text))
    assert shown.trust_name is None and not shown.view()["trusted"]
    with pytest.raises(UntrustedKeyError):
        asyncio.run(names.for_fetch(text, tofu=False, allow_stale=False))
    magnet, _ = asyncio.run(names.for_fetch(text, tofu=True, allow_stale=False))
    assert magnet.startswith(f"magnet:?xt=urn:btmh:1220{1:064x}")


def test_a_key_trusted_for_other_names_is_out_of_scope(home: Path) -> None:
    scoped = PrivateKey(Ed25519PrivateKey.generate())
    TrustStore.load(trust_path(home)).add(scoped.public, "scoped", scopes=["org/other"])
    engine = FakeEngine()
    _put(engine, scoped, 10, _record(1))
    with pytest.raises(OutOfScopeError):
        asyncio.run(_names(home, engine).for_fetch(f"p2pw://scoped/{NAME}", tofu=False,
                                                   allow_stale=False))


def test_no_record_and_no_dht_are_one_clear_line(home: Path, key: PrivateKey) -> None:
    with pytest.raises(NameResolutionError, match="no DHT node holds"):
        asyncio.run(_names(home, FakeEngine()).resolve(f"p2pw://acme/{NAME}"))
    with pytest.raises(NameResolutionError, match="magnet link, or enable the DHT"):
        asyncio.run(_names(home, FakeEngine(dht_enabled=False)).resolve(f"p2pw://acme/{NAME}"))


def test_own_sequence_numbers_only_rise(home: Path, key: PrivateKey) -> None:
    """Re-signing after the DHT forgot an item never reuses a lower sequence number."""
    engine = FakeEngine()
    (home / "keys").mkdir()
    names = _names(home, engine)
    record = _record(3)
    seqs = []
    for _ in range(3):
        asyncio.run(names._sign_and_put(key, NAME, record))
        engine.items.clear()  # the DHT forgot it
        seqs.append(engine.puts[-1].seq)
    assert seqs == sorted(set(seqs)) and seqs[0] >= int(time.time()) - 5
