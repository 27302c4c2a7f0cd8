"""Keys on disk, the public key format, and the trust store."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from p2pweights import (
    KeyFileError,
    PublicKey,
    SignatureError,
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
