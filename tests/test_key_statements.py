"""Key rotation statements and revocation certificates: their format, read as hostile input."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from p2pweights._canonical import dumps
from p2pweights.errors import KeyStatementError, SignatureError
from p2pweights.key_statements import (
    DHT_SALT,
    MAX_STATEMENT_BYTES,
    MAX_STATEMENTS,
    REVOCATION_TYPE,
    ROTATION_TYPE,
    Revocation,
    Rotation,
    dht_items,
    dht_value,
    parse_statement,
    parse_statement_bytes,
    read_statements,
    revoke,
    rotate,
    statements_bytes,
    statements_for,
)
from p2pweights.keys import PrivateKey, generate_key

NOW = 1_800_000_000


@pytest.fixture
def third_key(tmp_path: Path) -> PrivateKey:
    return generate_key(tmp_path / "third.pem")


def _doc(statement: Rotation | Revocation) -> dict[str, Any]:
    return json.loads(dumps(statement.to_doc()))  # type: ignore[no-any-return]


def test_rotation_round_trips_and_both_keys_sign_the_same_bytes(
    key: PrivateKey, other_key: PrivateKey
) -> None:
    r = rotate(key, other_key, now=NOW)
    doc = _doc(r)
    assert doc["type"] == ROTATION_TYPE and doc["time"] == NOW
    assert (doc["old_key"], doc["new_key"]) == (key.public.text, other_key.public.text)
    assert parse_statement(doc) == r
    assert parse_statement_bytes(dumps(doc)) == r
    body = dumps({k: v for k, v in doc.items() if not k.endswith("signature")})
    assert r.signed_bytes() == body
    key.public.verify(r.old_signature, body)
    other_key.public.verify(r.new_signature, body)


def test_revocation_round_trips(key: PrivateKey) -> None:
    c = revoke(key, reason="laptop stolen", now=NOW)
    doc = _doc(c)
    assert doc["type"] == REVOCATION_TYPE and doc["reason"] == "laptop stolen"
    assert parse_statement(doc) == c


def test_a_rotation_without_the_countersignature_is_refused(
    key: PrivateKey, other_key: PrivateKey, third_key: PrivateKey
) -> None:
    """The old key alone cannot hand its trust to a key whose holder did not sign."""
    r = rotate(key, other_key, now=NOW)
    doc = _doc(r)
    del doc["new_signature"]
    with pytest.raises(KeyStatementError, match="exactly the fields"):
        parse_statement(doc)
    # The old key signs twice, once in the new key's place: the countersignature fails.
    doc["new_signature"] = doc["old_signature"]
    with pytest.raises(SignatureError, match="not countersigned by its new key"):
        parse_statement(doc)
    # A third key's signature is no countersignature either.
    doc["new_signature"] = base64.urlsafe_b64encode(third_key.sign(r.signed_bytes())).decode()
    doc["new_signature"] = doc["new_signature"].rstrip("=")
    with pytest.raises(SignatureError, match="countersigned"):
        parse_statement(doc)


def test_a_rotation_signed_only_by_the_new_key_is_refused(
    key: PrivateKey, other_key: PrivateKey
) -> None:
    """Someone holding only the new key cannot claim the old key's trust."""
    doc = _doc(rotate(key, other_key, now=NOW))
    doc["old_signature"] = doc["new_signature"]
    with pytest.raises(SignatureError, match="not signed by its old key"):
        parse_statement(doc)


def test_swapped_keys_are_refused(key: PrivateKey, other_key: PrivateKey) -> None:
    """A rotation A -> B never reads as B -> A, with or without its signatures swapped."""
    doc = _doc(rotate(key, other_key, now=NOW))
    doc["old_key"], doc["new_key"] = doc["new_key"], doc["old_key"]
    with pytest.raises(SignatureError):
        parse_statement(doc)
    doc["old_signature"], doc["new_signature"] = doc["new_signature"], doc["old_signature"]
    with pytest.raises(SignatureError):
        parse_statement(doc)


def test_a_changed_time_breaks_the_signatures(key: PrivateKey, other_key: PrivateKey) -> None:
    doc = _doc(rotate(key, other_key, now=NOW))
    doc["time"] = NOW - 86400
    with pytest.raises(SignatureError):
        parse_statement(doc)


def test_the_type_tag_is_signed_and_checked(key: PrivateKey, other_key: PrivateKey) -> None:
    rotation = _doc(rotate(key, other_key, now=NOW))
    for tag in ("p2pweights.key-rotation/2", "rotation", None, 7):
        with pytest.raises(KeyStatementError, match="unknown key statement type"):
            parse_statement({**rotation, "type": tag})
    # A revocation's signature cannot stand for a rotation's, nor the other way round.
    cert = _doc(revoke(key, now=NOW))
    forged = {**cert, "type": ROTATION_TYPE}
    with pytest.raises(KeyStatementError, match="exactly the fields"):
        parse_statement(forged)
    # A manifest signature over other bytes never verifies as a revocation.
    cert["signature"] = base64.urlsafe_b64encode(key.sign(b"{}")).decode().rstrip("=")
    with pytest.raises(SignatureError, match="not signed by the key it revokes"):
        parse_statement(cert)


@pytest.mark.parametrize(
    "bad",
    [
        "!" * 86,  # not base64url
        "A" * 85,  # too short
        "A" * 88,  # padded length
        "A" * 85 + "=",  # padding
        "A" * 85 + "B",  # decodes, but is not the canonical spelling of 64 bytes
        12345,
        None,
    ],
)
def test_bad_base64_signatures_are_format_errors(
    key: PrivateKey, other_key: PrivateKey, bad: object
) -> None:
    doc = _doc(rotate(key, other_key, now=NOW))
    doc["old_signature"] = bad
    with pytest.raises(KeyStatementError):
        parse_statement(doc)


def test_bad_keys_times_and_reasons_are_format_errors(
    key: PrivateKey, other_key: PrivateKey
) -> None:
    doc = _doc(rotate(key, other_key, now=NOW))
    for field, value in [
        ("old_key", "ed25519:short"),
        ("new_key", "rsa:AAAA"),
        ("time", -1),
        ("time", "1800000000"),
        ("time", True),
        ("time", 2**60),
    ]:
        with pytest.raises(KeyStatementError):
            parse_statement({**doc, field: value})
    cert = _doc(revoke(key, now=NOW))
    for reason in ["x" * 201, "new\nline", 5]:
        with pytest.raises(KeyStatementError, match="reason"):
            parse_statement({**cert, "reason": reason})
    with pytest.raises(KeyStatementError, match="the new key is the old key"):
        rotate(key, key, now=NOW)
    same = Rotation(key.public, key.public, NOW, b"", b"")
    sig = key.sign(same.signed_bytes())
    with pytest.raises(KeyStatementError, match="two different keys"):
        Rotation(key.public, key.public, NOW, sig, sig).check()


def test_oversize_and_malformed_bytes_are_format_errors(
    key: PrivateKey, other_key: PrivateKey
) -> None:
    data = dumps(_doc(rotate(key, other_key, now=NOW)))
    with pytest.raises(KeyStatementError, match="over the limit"):
        parse_statement_bytes(data[:-1] + b"," + b" " * MAX_STATEMENT_BYTES + b"}")
    for bad in [b"", b"[]", b"\xff", b'{"type": 1.5}', data + data, b'{"a":1,"a":2}']:
        with pytest.raises(KeyStatementError):
            parse_statement_bytes(bad)


def test_statements_file_limits(tmp_path: Path, key: PrivateKey, other_key: PrivateKey) -> None:
    path = tmp_path / "key-statements.json"
    assert read_statements(path) == []  # absent: none
    r = rotate(key, other_key, now=NOW)
    path.write_bytes(statements_bytes([r, r]))  # written once
    assert read_statements(path) == [r]
    doc = {"statements": [_doc(r)] * (MAX_STATEMENTS + 1)}
    path.write_bytes(dumps(doc))
    with pytest.raises(KeyStatementError, match="at most"):
        read_statements(path)
    for bad in [b"[]", b'{"statements": {}}', b'{"statements": [], "x": 1}', b"\x00" * 10]:
        path.write_bytes(bad)
        with pytest.raises(KeyStatementError):
            read_statements(path)
    path.write_bytes(b'{"statements":[' + b" " * 70_000 + b"]}")
    with pytest.raises(KeyStatementError, match="over the limit"):
        read_statements(path)
    forged = {**_doc(r), "new_key": key.public.text, "old_key": other_key.public.text}
    path.write_bytes(dumps({"statements": [forged]}))
    with pytest.raises(SignatureError):
        read_statements(path)


def test_statements_for_a_signer_carry_its_chain_and_revocations(
    key: PrivateKey, other_key: PrivateKey, third_key: PrivateKey, tmp_path: Path
) -> None:
    unrelated = generate_key(tmp_path / "unrelated.pem")
    ab = rotate(key, other_key, now=NOW)
    bc = rotate(other_key, third_key, now=NOW + 1)
    gone = revoke(key, now=NOW + 2)
    noise = [rotate(unrelated, key, now=NOW - 5), revoke(unrelated, now=NOW)]
    own = [noise[1], ab, gone, bc, noise[0]]
    # The whole chain that ends at the signer, oldest first, then the revocations of its
    # earlier keys; a rotation away from the signer (or past it) is not its business.
    assert statements_for(third_key.public, own) == [noise[0], ab, bc, noise[1], gone]
    assert statements_for(other_key.public, [ab, bc, gone]) == [ab, gone]
    assert statements_for(key.public, [ab, bc]) == []
    assert statements_for(unrelated.public, own) == []


def test_dht_value_is_under_the_old_key_and_fits_bep44(
    key: PrivateKey, other_key: PrivateKey
) -> None:
    r = rotate(key, other_key, now=NOW)
    signer, salt, value = dht_value(r)
    assert signer == key.public and salt == DHT_SALT
    assert len(value) + len(str(len(value))) + 1 <= 1000  # bencoded as a string
    assert parse_statement_bytes(value) == r
    c = revoke(other_key, reason="x" * 200, now=NOW)
    signer, _, value = dht_value(c)
    assert signer == other_key.public and parse_statement_bytes(value) == c


def test_dht_items_hold_each_keys_latest_word(
    key: PrivateKey, other_key: PrivateKey, third_key: PrivateKey
) -> None:
    old = rotate(key, other_key, now=NOW)
    newer = rotate(key, third_key, now=NOW + 1)
    gone = revoke(key, now=NOW - 5)
    ((signer, salt, seq, value),) = dht_items([old, newer])
    assert (signer, salt, parse_statement_bytes(value)) == (key.public, DHT_SALT, newer)
    ((signer, _, seq2, value),) = dht_items([gone, old, newer])
    assert parse_statement_bytes(value) == gone  # a revocation wins, whatever its date
    assert seq2 > seq  # and outranks what was put before it on the DHT
    (item,) = dht_items([old, revoke(key, now=NOW)])
    assert item[2] == 2 * NOW + 1 > dht_items([old])[0][2]
