"""Key statements at their edges: exact refusals, limits, the signed bytes, DHT items.

Each test pins one behaviour that a mutation of ``p2pweights/key_statements.py`` changed
without any other test noticing (see docs/testing.md, "Mutation score").
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from p2pweights import PrivateKey
from p2pweights._canonical import dumps
from p2pweights.errors import KeyStatementError, RevokedKeyError
from p2pweights.key_statements import (
    DHT_SALT,
    MAX_FILE_BYTES,
    MAX_STATEMENTS,
    OWN_STATEMENTS,
    REVOCATION_TYPE,
    STATEMENTS_NAME,
    Revocation,
    Rotation,
    add_to_release,
    dht_items,
    dht_value,
    parse_statement,
    parse_statement_bytes,
    read_statements,
    refuse_own_revoked,
    revoke,
    rotate,
    statements_bytes,
)

T0 = 1_700_000_000
MAX_TIME = 2**40


def _refusal(doc: object) -> str:
    with pytest.raises(KeyStatementError) as info:
        parse_statement(doc)
    return str(info.value)


# ------------------------------------------------------------------ fields


@pytest.mark.parametrize("field", ["old_key", "new_key"])
def test_a_bad_rotation_key_is_named(key: PrivateKey, other_key: PrivateKey, field: str) -> None:
    doc = {**rotate(key, other_key, now=T0).to_doc(), field: "nokey"}
    assert _refusal(doc) == f"{field}: public key must look like ed25519:<base64url>"


def test_a_bad_revoked_key_is_named(key: PrivateKey) -> None:
    doc = {**revoke(key, now=T0).to_doc(), "key": "nokey"}
    assert _refusal(doc) == "key: public key must look like ed25519:<base64url>"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A" * 85, "{} must be 86 characters of unpadded base64url"),
        ("A" * 85 + "!", "{} is not valid base64url"),
        ("A" * 85 + "B", "{} is not canonical base64url of 64 bytes"),
    ],
)
@pytest.mark.parametrize("field", ["old_signature", "new_signature", "signature"])
def test_a_bad_signature_field_is_named(
    key: PrivateKey, other_key: PrivateKey, field: str, text: str, message: str
) -> None:
    base = revoke(key, now=T0) if field == "signature" else rotate(key, other_key, now=T0)
    assert _refusal({**base.to_doc(), field: text}) == message.format(field)


@pytest.mark.parametrize("when", [0, MAX_TIME - 1])
def test_the_time_range_is_zero_to_two_to_the_forty(key: PrivateKey, when: int) -> None:
    cert = revoke(key, now=when)
    assert parse_statement(cert.to_doc()) == cert


@pytest.mark.parametrize("when", [-1, MAX_TIME, 1.5, True, "1700000000"])
def test_a_time_out_of_range_or_not_an_integer_is_refused(key: PrivateKey, when: object) -> None:
    doc = {**revoke(key, now=T0).to_doc(), "time": when}
    assert _refusal(doc) == "a statement's time must be an integer of unix seconds"
    with pytest.raises(KeyStatementError):
        revoke(key, now=when)  # type: ignore[arg-type]


def test_shape_refusals_say_what_is_expected(key: PrivateKey) -> None:
    assert _refusal(["x"]) == "a key statement must be a JSON object"
    doc = {**revoke(key, now=T0).to_doc(), "extra": 1}
    assert _refusal(doc) == (
        "a revocation certificate has exactly the fields "
        "['key', 'reason', 'signature', 'time', 'type']"
    )
    kind = "k" * 70
    assert _refusal({"type": kind}) == (
        f"unknown key statement type {'k' * 60!r} "
        "(expected p2pweights.key-rotation/1 or p2pweights.key-revocation/1)"
    )


def test_statement_bytes_are_parsed_as_a_key_statement() -> None:
    with pytest.raises(KeyStatementError) as info:
        parse_statement_bytes(b"{")
    assert str(info.value).startswith("key statement is not valid JSON: ")


# ------------------------------------------------------------------ signing


def test_a_revocation_signs_its_documented_bytes(key: PrivateKey) -> None:
    cert = revoke(key, now=T0)
    assert cert.reason == ""  # the default reason
    body = (
        f'{{"key":"{key.public.text}","reason":"","time":{T0},"type":"{REVOCATION_TYPE}"}}'
    ).encode()
    assert cert.signed_bytes() == body
    key.public.verify(cert.signature, body)


def test_without_a_time_the_statements_are_made_now(key: PrivateKey, other_key: PrivateKey) -> None:
    before = int(time.time())
    cert, rot = revoke(key), rotate(key, other_key)
    after = int(time.time())
    assert before <= cert.time <= after
    assert before <= rot.time <= after
    assert parse_statement(cert.to_doc()) == cert
    assert parse_statement(rot.to_doc()) == rot


def test_rotation_to_the_same_key_messages(key: PrivateKey) -> None:
    with pytest.raises(KeyStatementError) as info:
        rotate(key, key, now=T0)
    assert str(info.value) == "the new key is the old key; generate another one"
    same = Rotation(key.public, key.public, T0, b"", b"")
    with pytest.raises(KeyStatementError) as info:
        same.check()
    assert str(info.value) == "a rotation must name two different keys"


# ------------------------------------------------------------------ files


def _revocations(key: PrivateKey, n: int) -> list[Revocation]:
    return [revoke(key, reason=f"r{i}", now=T0) for i in range(n)]


def test_a_file_holds_up_to_32_statements(tmp_path: Path, key: PrivateKey) -> None:
    path = tmp_path / "key-statements.json"
    path.write_bytes(statements_bytes(_revocations(key, MAX_STATEMENTS)))
    assert read_statements(path) == _revocations(key, MAX_STATEMENTS)
    with pytest.raises(KeyStatementError) as info:
        statements_bytes(_revocations(key, MAX_STATEMENTS + 1))
    assert str(info.value) == "a release carries at most 32 key statements"


def test_file_refusals_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "key-statements.json"
    path.mkdir()
    with pytest.raises(KeyStatementError) as info:
        read_statements(path)
    assert str(info.value) == f"cannot read {path}: Is a directory"
    path.rmdir()
    path.write_bytes(b"{")
    with pytest.raises(KeyStatementError) as info:
        read_statements(path)
    assert str(info.value).startswith(f"{path} is not valid JSON: ")
    path.write_bytes(b"[]")
    with pytest.raises(KeyStatementError) as info:
        read_statements(path)
    assert str(info.value) == f'{path} must be {{"statements": [STATEMENT, ...]}}'


def test_reading_stops_one_byte_past_the_limit(tmp_path: Path) -> None:
    """A source that never ends (a FIFO here) is refused without waiting for its end."""
    fifo = tmp_path / "key-statements.json"
    os.mkfifo(fifo)
    done = threading.Event()
    waited_out: list[bool] = []

    def writer() -> None:
        with open(fifo, "wb") as fh:
            fh.write(b" " * (MAX_FILE_BYTES + 1))
            fh.flush()
            waited_out.append(not done.wait(timeout=10))  # the pipe stays open meanwhile

    thread = threading.Thread(target=writer, daemon=True)  # never holds up the exit
    thread.start()
    try:
        with pytest.raises(KeyStatementError, match="bytes"):
            read_statements(fifo)
    finally:
        done.set()
        thread.join(timeout=20)
    assert waited_out == [False]  # the reader returned while the writer still held it open


# ------------------------------------------------------------------ DHT


def test_a_dht_value_fits_990_bytes(key: PrivateKey) -> None:
    def sized(n: int) -> Revocation:
        cert = Revocation(key.public, T0, "", b"\0" * 64)
        pad = n - len(dumps(cert.to_doc()))
        return Revocation(key.public, T0, "x" * pad, b"\0" * 64)

    assert dht_value(sized(990)) == (key.public, DHT_SALT, dumps(sized(990).to_doc()))
    with pytest.raises(KeyStatementError) as info:
        dht_value(sized(991))
    assert str(info.value) == "statement of 991 bytes does not fit a BEP 44 item"


def test_dht_items_keep_the_newest_rotation_and_count_the_newest_time(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey
) -> None:
    from p2pweights import generate_key

    third = generate_key(tmp_path / "third.pem")
    newer = rotate(key, other_key, now=T0 + 10)
    same_time = rotate(key, third, now=T0 + 10)
    older = rotate(key, other_key, now=T0)
    # Newest first: an older rotation listed later never replaces it; at the same time,
    # the one listed last wins.
    assert dht_items([newer, older]) == [
        (key.public, DHT_SALT, 2 * (T0 + 10), dumps(newer.to_doc()))
    ]
    assert dht_items([newer, same_time, older])[0][3] == dumps(same_time.to_doc())


def test_a_revocation_at_time_zero_has_seq_one(key: PrivateKey) -> None:
    cert = revoke(key, now=0)
    assert dht_items([cert]) == [(key.public, DHT_SALT, 1, dumps(cert.to_doc()))]


# ------------------------------------------------------------------ a publisher's own


def test_a_release_carries_the_chain_to_its_signer_and_nothing_else(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey
) -> None:
    home, release = tmp_path / "home", tmp_path / "release"
    release.mkdir()
    assert add_to_release(home, other_key.public, release) == 0  # no own statements yet
    assert not (release / STATEMENTS_NAME).exists()
    rot, cert = rotate(key, other_key, now=T0), revoke(key, now=T0 + 1)
    (home / "keys").mkdir(parents=True)
    (home / OWN_STATEMENTS).write_bytes(statements_bytes([rot, cert]))
    assert add_to_release(home, key.public, release) == 0  # nothing leads to the old key
    assert not (release / STATEMENTS_NAME).exists()
    assert add_to_release(home, other_key.public, release) == 2
    assert (release / STATEMENTS_NAME).read_bytes() == statements_bytes([rot, cert])


def test_a_publisher_never_signs_with_a_key_they_revoked(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey
) -> None:
    home = tmp_path / "home"
    refuse_own_revoked(home, key.public)  # no own statements: nothing to refuse
    (home / "keys").mkdir(parents=True)
    statements = [rotate(key, other_key, now=T0), revoke(key, now=T0 + 1)]
    (home / OWN_STATEMENTS).write_bytes(statements_bytes(statements))
    refuse_own_revoked(home, other_key.public)
    with pytest.raises(RevokedKeyError) as info:
        refuse_own_revoked(home, key.public)
    assert str(info.value) == (f"you revoked key {key.public.fingerprint}; sign with another key")
