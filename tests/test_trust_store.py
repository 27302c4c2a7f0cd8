"""Unit tests of the trust store file: names, damage, messages, and what is written."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from p2pweights import PrivateKey, TrustStore, TrustStoreError, UntrustedKeyError
from p2pweights.trust import trust_for


@pytest.mark.parametrize("name", ["", "-x", ".x", "a b", "a/b", "é", "a" * 101, "x\n"])
def test_a_malformed_name_is_refused_on_add_and_on_load(
    tmp_path: Path, key: PrivateKey, name: str
) -> None:
    store = TrustStore.load(tmp_path / "trust.json")
    with pytest.raises(TrustStoreError) as info:
        store.add(key.public, name)
    assert str(info.value) == "a trust name is 1-100 letters, digits, '.', '_' or '-'"
    assert not (tmp_path / "trust.json").exists()
    (tmp_path / "bad.json").write_text(json.dumps({"keys": {name: key.public.text}}))
    with pytest.raises(TrustStoreError, match=r"is damaged: a trust name is"):
        TrustStore.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "doc",
    [b"[]", b'{"keys":[]}', b'{"keys":{},"x":1}', b'{"other":{}}', b"{", b'{"keys":{"a":"nokey"}}'],
)
def test_a_damaged_store_names_its_file(tmp_path: Path, doc: bytes) -> None:
    path = tmp_path / "trust.json"
    path.write_bytes(doc)
    with pytest.raises(TrustStoreError) as info:
        TrustStore.load(path)
    assert str(info.value).startswith(f"trust store {path} is damaged: ")


def test_shape_message(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_bytes(b'{"keys":[]}')
    with pytest.raises(TrustStoreError) as info:
        TrustStore.load(path)
    assert str(info.value) == (
        f'trust store {path} is damaged: trust store must be {{"keys": {{name: key}}}}'
    )
    path.write_bytes(b"{")
    with pytest.raises(TrustStoreError, match=r"is damaged: trust store is not valid JSON: "):
        TrustStore.load(path)  # the parser names what it read
    path.write_bytes(b"[1.5]")
    with pytest.raises(TrustStoreError, match="non-integer number"):
        TrustStore.load(path)  # parsed strictly, as "trust store"


def test_an_unreadable_store_is_a_trust_store_error(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.mkdir()
    with pytest.raises(TrustStoreError, match=f"^cannot read trust store {path}: "):
        TrustStore.load(path)


def test_what_is_written_and_read_back(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey
) -> None:
    path = tmp_path / "trust.json"
    store = TrustStore.load(path)
    assert store.entries == [] and store.path == path
    store.add(key.public, "org")
    store.add(other_key.public, "other")
    assert path.read_bytes() == (
        json.dumps(
            {"keys": {"org": key.public.text, "other": other_key.public.text}},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        + b"\n"
    )
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = TrustStore.load(path)
    assert [(e.name, e.key) for e in again.entries] == [
        ("org", key.public),
        ("other", other_key.public),
    ]
    assert again.require(key.public) == "org"
    # Re-adding a key under a new name moves it; a taken name refuses another key.
    again.add(key.public, "renamed")
    assert TrustStore.load(path).name_of(key.public) == "renamed"
    with pytest.raises(TrustStoreError, match=r"^name 'other' already trusts key "):
        again.add(key.public, "other")


def test_remove_by_name_or_key_text(tmp_path: Path, key: PrivateKey, other_key: PrivateKey) -> None:
    path = tmp_path / "trust.json"
    store = TrustStore.load(path)
    store.add(key.public, "org")
    store.add(other_key.public, "other")
    removed = store.remove(other_key.public.text)
    assert (removed.name, removed.key) == ("other", other_key.public)
    assert [e.name for e in TrustStore.load(path).entries] == ["org"]
    assert store.remove("org").key == key.public
    assert TrustStore.load(path).entries == []
    with pytest.raises(TrustStoreError) as info:
        store.remove("org")
    assert str(info.value) == "no trusted key named 'org'"


def test_require_names_the_untrusted_key(key: PrivateKey) -> None:
    with pytest.raises(UntrustedKeyError) as info:
        TrustStore().require(key.public)
    assert str(info.value) == (
        f"publisher key {key.public.fingerprint} ({key.public.text}) is not in the trust "
        "store; add it with `p2pw trust add` if you trust it"
    )
    assert TrustStore.of_keys([key.public]).name_of(key.public) == f"key-{key.public.fingerprint}"


def test_a_store_that_cannot_be_written_says_so(tmp_path: Path, key: PrivateKey) -> None:
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "a-file" / "trust.json"
    store = TrustStore(path=path)
    with pytest.raises(TrustStoreError, match=f"^cannot write trust store {path}: "):
        store.add(key.public, "org")


def test_trust_for_takes_the_given_store_or_the_data_dirs(tmp_path: Path, key: PrivateKey) -> None:
    given = TrustStore.of_keys([key.public])
    assert trust_for(given, tmp_path) is given
    TrustStore.load(tmp_path / "trust.json").add(key.public, "org")
    found = trust_for(None, tmp_path)
    assert found.path == tmp_path / "trust.json" and found.require(key.public) == "org"
    assert trust_for(None, str(tmp_path)).require(key.public) == "org"
