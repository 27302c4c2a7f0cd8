"""Keys on disk, the public key format, and the trust store."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import p2pweights
from p2pweights import (
    KeyFileError,
    OutOfScopeError,
    PrivateKey,
    PublicKey,
    SignatureError,
    TrustEntry,
    TrustStore,
    TrustStoreError,
    UntrustedKeyError,
    generate_key,
    load_private_key,
)


def test_key_file_is_0600_pem_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "k" / "pub.pem"
    key = generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_private_key(path)
    assert again.public == key.public
    sig = key.sign(b"data")
    again.public.verify(sig, b"data")
    with pytest.raises(SignatureError):
        again.public.verify(sig, b"date")


def test_never_overwrites_a_key_by_accident(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    first = generate_key(path)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key(path)
    assert load_private_key(path).public == first.public
    assert generate_key(path, overwrite=True).public != first.public
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]


def test_encrypted_key_needs_its_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "enc.pem"
    key = generate_key(path, passphrase=b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    with pytest.raises(KeyFileError, match="needs a passphrase"):
        load_private_key(path)
    with pytest.raises(KeyFileError):
        load_private_key(path, passphrase=b"wrong")
    assert load_private_key(path, passphrase=b"correct horse").public == key.public


def test_public_key_text_form(tmp_path: Path) -> None:
    key = generate_key(tmp_path / "k.pem").public
    assert key.text.startswith("ed25519:") and "=" not in key.text
    assert PublicKey.parse(key.text) == key
    assert len(key.fingerprint) == 19
    for bad in ["", "ed25519:", "rsa:AAAA", key.text + "A", key.text[:-2], "ed25519:!!!!"]:
        with pytest.raises(KeyFileError):
            PublicKey.parse(bad)


def test_trust_store_add_list_remove_persist(tmp_path: Path) -> None:
    a = generate_key(tmp_path / "a.pem").public
    b = generate_key(tmp_path / "b.pem").public
    path = tmp_path / "trust.json"
    store = TrustStore.load(path)
    store.add(a, "org-a")
    store.add(b, "org-b")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reloaded = TrustStore.load(path)
    assert [(e.name, e.key) for e in reloaded.entries] == [("org-a", a), ("org-b", b)]
    with pytest.raises(TrustStoreError, match="already trusts"):
        reloaded.add(b, "org-a")
    assert reloaded.remove("org-a").key == a
    assert reloaded.remove(b.text).name == "org-b"
    with pytest.raises(UntrustedKeyError):
        TrustStore.load(path).require(a)
    with pytest.raises(TrustStoreError):
        reloaded.remove("org-a")


def test_damaged_trust_store_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    for junk in [b"{", b'{"keys": {"x": "rsa:1"}}', b'{"keys": {"x": 1}}', b"\xff\xfe"]:
        path.write_bytes(junk)
        with pytest.raises(TrustStoreError, match="damaged"):
            TrustStore.load(path)


# ---- scoped trust -------------------------------------------------------------------------


def _pack(src: Path, out: Path, name: str, key: PrivateKey) -> Path:
    p2pweights.pack(src, out, name=name, version=1, key=key, now=1_700_000_000)
    return out


def test_trust_file_without_scopes_still_loads_and_stays_readable(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey, make_model: Callable[..., Path]
) -> None:
    """A trust.json written before scopes trusts its keys for every name, as it did."""
    path = tmp_path / "trust.json"
    path.write_text(json.dumps({"keys": {"org": key.public.text}}))
    old = TrustStore.load(path)
    assert [(e.name, e.scopes) for e in old.entries] == [("org", ())]
    release = _pack(make_model(), tmp_path / "rel", "anyone/anything", key)
    assert p2pweights.open_release(release, old).publisher_name == "org"
    # Adding a scoped entry keeps the unscoped one in the plain form older versions read.
    old.add(other_key.public, "other", scopes=["other/*"])
    doc = json.loads(path.read_text())
    assert doc == {
        "keys": {
            "org": key.public.text,
            "other": {"key": other_key.public.text, "scopes": ["other/*"]},
        }
    }
    again = TrustStore.load(path)
    assert again.entry_of(other_key.public) == TrustEntry(
        "other", other_key.public, ("other/*",)
    )


def test_a_scoped_key_loads_inside_its_scope_and_is_refused_outside(
    tmp_path: Path, key: PrivateKey, make_model: Callable[..., Path]
) -> None:
    store = TrustStore.load(tmp_path / "home" / "trust.json")
    store.add(key.public, "org", scopes=["org/*"])
    src = make_model()
    inside = _pack(src, tmp_path / "inside", "org/m1", key)
    outside = _pack(src, tmp_path / "outside", "evil/m2", key)
    assert p2pweights.load(inside, trust=store)["model.norm.weight"].numel() == 64
    with pytest.raises(OutOfScopeError, match="not for release 'evil/m2'"):
        p2pweights.load(outside, trust=store)
    with pytest.raises(OutOfScopeError):
        p2pweights.verify_release(outside, store)
    # The default trust store of the data dir applies the same scopes.
    store.add(key.public, "org", scopes=["org/x*"])
    with pytest.raises(OutOfScopeError):
        p2pweights.load(inside, home=tmp_path / "home")
    # Out of scope is its own class, not "untrusted": a daemon never trusts such a key
    # again on first use, so a key accepted for one name cannot widen itself.
    assert not issubclass(OutOfScopeError, UntrustedKeyError)
    assert OutOfScopeError.exit_code == 18


def test_damaged_or_malformed_scopes_are_refused(tmp_path: Path, key: PrivateKey) -> None:
    path = tmp_path / "trust.json"
    k = key.public.text
    for entry in [
        {"key": k, "scopes": []},
        {"key": k},
        {"key": k, "scopes": "org/*"},
        {"key": k, "scopes": ["org model"]},
        {"key": k, "scopes": ["org/*"], "extra": 1},
        {"key": 1, "scopes": ["org/*"]},
    ]:
        path.write_text(json.dumps({"keys": {"org": entry}}))
        with pytest.raises(TrustStoreError, match="damaged"):
            TrustStore.load(path)
    store = TrustStore(path=path)
    for bad in ["", "org/{a,b}", "x" * 202, "org\n/*"]:
        with pytest.raises(TrustStoreError, match="not a release-name pattern"):
            store.add(key.public, "org", scopes=[bad])
