"""The p2pw:// name grammar, the salt, the record format and the BEP 44 signature."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pweights.errors import (
    NameFormatError,
    NameRecordError,
    SignatureError,
    TrustStoreError,
)
from p2pweights.keys import PrivateKey
from p2pweights.names import (
    MAX_VALUE_BYTES,
    NameRecord,
    NameRef,
    SignedItem,
    bencode_string,
    key_text,
    name_uri,
    parse_name,
    salt_for,
)
from p2pweights.trust import TrustEntry, TrustStore


@pytest.fixture
def key() -> PrivateKey:
    return PrivateKey(Ed25519PrivateKey.generate())


def _record(**kw: object) -> NameRecord:
    fields: dict[str, object] = {
        "name": "org/model",
        "version": 3,
        "info_hash": "a" * 64,
        "manifest_sha256": "b" * 64,
        "issued_at": 1_700_000_000,
        "expires_at": 1_700_604_800,
    }
    fields.update(kw)
    return NameRecord(**fields)  # type: ignore[arg-type]


def test_a_name_round_trips_with_key_or_trust_name(key: PrivateKey) -> None:
    ref = parse_name(name_uri(key.public, "org/model", 3))
    assert ref == NameRef(key_text(key.public), "org/model", 3)
    assert ref.publisher_key(None) == key.public
    assert parse_name(f"p2pw://ed25519:{key_text(key.public)}/org/model").version is None
    trusted = TrustStore([TrustEntry("meta", key.public)])
    assert parse_name("p2pw://meta/llama-3-8b").publisher_key(trusted) == key.public
    with pytest.raises(TrustStoreError):
        parse_name("p2pw://meta/llama-3-8b").publisher_key(TrustStore())


def test_a_trust_name_wins_over_a_key_of_the_same_text(key: PrivateKey) -> None:
    other = PrivateKey(Ed25519PrivateKey.generate())
    # A trust name that happens to read as some key resolves locally first.
    trusted = TrustStore([TrustEntry(key_text(other.public), key.public)])
    assert parse_name(name_uri(other.public, "o/m")).publisher_key(trusted) == key.public


@pytest.mark.parametrize(
    "text",
    [
        "p2pw://pub/../etc/passwd",
        "p2pw://pub/org/../model",
        "p2pw://pub/./model",
        "p2pw://pub//model",
        "p2pw://pub/org/model/extra",
        "p2pw://pub/org%2F..%2Fmodel",
        "p2pw://pub/org/model?x=1",
        "p2pw://pub/org\\model",
        "p2pw://pub/org/mo\x00del",
        "p2pw://pub/org/modél",
        "p2pw://pub",
        "p2pw:///org/model",
        "p2pw://ed25519:short/org/model",
        "p2pw://ed25519:" + "!" * 43 + "/org/model",
        "p2pw://pub/org/model@-1",
        "p2pw://pub/org/model@01",
        "p2pw://pub/org/model@1234567890",
        "p2pw://pub/org/" + "m" * 101,
        "p2pw://" + "p" * 101 + "/org/model",
        "p2pw://pub/org/" + "m" * 400,
        "magnet:?xt=urn:btmh:1220" + "a" * 64,
    ],
)
def test_hostile_names_get_a_typed_error(text: str) -> None:
    with pytest.raises(NameFormatError):
        parse_name(text)


def test_the_salt_is_fixed_size_and_separates_pinned_versions() -> None:
    long_name = "o" * 100 + "/" + "m" * 100
    assert len(salt_for(long_name)) == 32  # BEP 44 caps a salt at 64 bytes
    assert salt_for("org/model") != salt_for("org/model", 3)
    assert salt_for("org/model", 3) == hashlib.sha256(b"p2pw-name/1\x00org/model@3").digest()


def test_a_record_round_trips_and_fits() -> None:
    record = _record(web_seeds=("https://mirror.example/models/",))
    data = record.encode()
    assert NameRecord.decode(data) == record
    assert len(bencode_string(data)) <= MAX_VALUE_BYTES


def test_a_record_over_1000_bytes_is_refused() -> None:
    seeds = tuple(f"https://mirror{i}.example/{'x' * 60}/" for i in range(12))
    with pytest.raises(NameRecordError, match="1000"):
        _record(web_seeds=seeds).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b'{"f":2}',
        b'{"exp":1,"f":1,"iat":1,"ih":"zz","ms":"' + b"b" * 64 + b'","n":"o/m","v":1}',
        b'{"exp":1,"f":1,"iat":1,"ih":"'
        + b"a" * 64
        + b'","ms":"'
        + b"b" * 64
        + b'","n":"../m","v":1}',
        b'{"exp":1.5,"f":1,"iat":1,"ih":"'
        + b"a" * 64
        + b'","ms":"'
        + b"b" * 64
        + b'","n":"o/m","v":1}',
        b'{"exp":1,"f":1,"iat":1,"ih":"'
        + b"a" * 64
        + b'","ms":"'
        + b"b" * 64
        + b'","n":"o/m","v":1,"x":0}',
        b'{"exp":1,"f":1,"iat":1,"ih":"'
        + b"a" * 64
        + b'","ms":"'
        + b"b" * 64
        + b'","n":"o/m","v":1,"ws":["file:///etc"]}',
        b"x" * 2000,
    ],
)
def test_malformed_records_are_refused(data: bytes) -> None:
    with pytest.raises(NameRecordError):
        NameRecord.decode(data)


def test_signed_items_verify_and_forgeries_do_not(key: PrivateKey) -> None:
    value = _record().encode()
    item = SignedItem.sign(key, salt_for("org/model"), 7, value)
    item.verify()
    assert SignedItem.from_json(item.to_json()) == item
    other = PrivateKey(Ed25519PrivateKey.generate())
    forged = [
        SignedItem(item.key, item.salt, 7, item.signature, _record(version=4).encode()),
        SignedItem(item.key, item.salt, 8, item.signature, value),
        SignedItem(item.key, salt_for("org/other"), 7, item.signature, value),
        SignedItem(other.public.raw, item.salt, 7, item.signature, value),
        SignedItem(item.key, item.salt, 7, bytes(64), value),
        SignedItem(item.key, item.salt, 7, item.signature[:63], value),
    ]
    for bad in forged:
        with pytest.raises(SignatureError):
            bad.verify()


def test_the_signature_is_bep44s(key: PrivateKey) -> None:
    """The signed bytes are BEP 44's, so libtorrent and any other node accept the item."""
    item = SignedItem.sign(key, b"salt", 1, b"hi")
    assert item.signed_bytes() == b"4:salt4:salt3:seqi1e1:v2:hi"
