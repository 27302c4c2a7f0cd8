"""The trust store's edges: exact refusals, retired keys, rotations met twice, own keys.

Each test pins one behaviour that a mutation of ``p2pweights/trust.py`` changed without
any other test noticing (see docs/testing.md, "Mutation score").
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from p2pweights import PrivateKey, TrustStore, generate_key
from p2pweights.errors import (
    OutOfScopeError,
    RevokedKeyError,
    TrustStoreError,
    UntrustedKeyError,
)
from p2pweights.key_statements import revoke, rotate
from p2pweights.trust import Admission, Retired, TrustEntry, own_keys, trust_for

T0 = 1_700_000_000
T0_ISO = "2023-11-14T22:13:20+00:00"


def _write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _damage(path: Path) -> str:
    with pytest.raises(TrustStoreError) as info:
        TrustStore.load(path)
    prefix = f"trust store {path} is damaged: "
    assert str(info.value).startswith(prefix)
    return str(info.value)[len(prefix) :]


# ------------------------------------------------------------------ the file


def test_scope_count_limit_is_256_exactly(tmp_path: Path, key: PrivateKey) -> None:
    store = TrustStore(path=tmp_path / "trust.json")
    store.add(key.public, "org", scopes=[f"org/m{i}" for i in range(256)])
    assert len(store.entries[0].scopes) == 256
    with pytest.raises(TrustStoreError) as info:
        store.add(key.public, "org", scopes=[f"org/m{i}" for i in range(257)])
    assert str(info.value) == "a trust entry takes at most 256 scopes"


def test_a_bad_scope_is_named_by_its_first_80_characters(key: PrivateKey) -> None:
    pattern = "a" * 90 + " b"
    with pytest.raises(TrustStoreError) as info:
        TrustStore().add(key.public, "org", scopes=[pattern])
    assert str(info.value) == (
        f"scope {'a' * 80!r} is not a release-name pattern "
        "(letters, digits, '.', '_', '-', '/' and the wildcards * ? [ ] !)"
    )


def test_entry_object_refusals_say_what_is_expected(tmp_path: Path, key: PrivateKey) -> None:
    path = _write(tmp_path / "trust.json", {"keys": {"org": {"key": key.public.text}}})
    assert _damage(path) == (
        'a trust entry object must be {"key": KEY, "scopes": [PATTERN], '
        '"retired": [{"key": KEY, "until": TIME}]} with scopes or retired keys'
    )
    _write(path, {"keys": {"org": {"key": key.public.text, "scopes": []}}})
    assert _damage(path) == "trust entry 'org' has an empty scope list"


def test_an_entry_with_retired_keys_and_no_scopes_loads_unscoped(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey
) -> None:
    retired = [{"key": other_key.public.text, "until": T0}]
    path = _write(
        tmp_path / "trust.json", {"keys": {"org": {"key": key.public.text, "retired": retired}}}
    )
    assert TrustStore.load(path).entries == [
        TrustEntry("org", key.public, (), (Retired(other_key.public, T0),))
    ]


@pytest.mark.parametrize(
    "retired",
    [
        {"until": T0, "extra": 1},
        {},
        {"until": "1700000000"},
        {"until": True},
    ],
)
def test_a_retired_key_must_be_exactly_key_and_integer_until(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey, retired: dict[str, object]
) -> None:
    doc = {"key": other_key.public.text, **retired} if retired else "not an object"
    path = _write(
        tmp_path / "trust.json", {"keys": {"org": {"key": key.public.text, "retired": [doc]}}}
    )
    assert _damage(path) == 'a retired key must be {"key": KEY, "until": UNIX_SECONDS}'


@pytest.mark.parametrize("doc", [b'["keys"]', b'{"revoked":[]}'])
def test_a_store_without_a_keys_object_is_damage(tmp_path: Path, doc: bytes) -> None:
    path = tmp_path / "trust.json"
    path.write_bytes(doc)
    assert _damage(path) == 'trust store must be {"keys": {name: key}}'


def test_revoked_holds_only_revocations(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey
) -> None:
    rot = rotate(key, other_key, now=T0).to_doc()
    path = _write(tmp_path / "trust.json", {"keys": {}, "revoked": [rot]})
    assert _damage(path) == '"revoked" holds only revocation certificates'


# ------------------------------------------------------------------ messages


def test_a_revoked_key_is_refused_with_the_certificate_date(key: PrivateKey) -> None:
    store = TrustStore()
    store.revoke(revoke(key, now=T0))
    with pytest.raises(RevokedKeyError) as info:
        store.refuse_revoked(key.public)
    assert str(info.value) == (
        f"publisher key {key.public.fingerprint} ({key.public.text}) was revoked by its own "
        f"certificate of {T0_ISO}; it is never trusted again"
    )


def test_require_scope_of_an_untrusted_key_is_untrusted(key: PrivateKey) -> None:
    with pytest.raises(UntrustedKeyError, match=key.public.fingerprint):
        TrustStore().require_scope(key.public, "org/model")


def _long_scopes() -> list[str]:
    return [f"org/model-{i:03}-*" for i in range(20)]  # 16 characters each, 358 joined


def test_out_of_scope_message_lists_200_characters_of_scopes(key: PrivateKey) -> None:
    store = TrustStore()
    store.add(key.public, "org", scopes=_long_scopes())
    with pytest.raises(OutOfScopeError) as info:
        store.require_scope(key.public, "other/model")
    scopes = ", ".join(_long_scopes())[:200]
    assert str(info.value) == (
        f"publisher key {key.public.fingerprint} is trusted as 'org' only for {scopes}, not "
        f"for release 'other/model'; widen it with `p2pw trust add {key.public.text} "
        "--name org --scope ...` if you trust it for that name"
    )


def test_a_retired_key_is_trusted_up_to_and_including_its_rotation_time(
    key: PrivateKey, other_key: PrivateKey
) -> None:
    entry = TrustEntry("org", other_key.public, (), (Retired(key.public, T0),))
    store = TrustStore([entry])
    admission = store.admission(key.public)
    assert admission == Admission(key.public, entry, retired_until=T0)
    assert store.admit(admission, "org/model", T0) == "org"
    with pytest.raises(UntrustedKeyError) as info:
        store.admit(admission, "org/model", T0 + 1)
    assert str(info.value) == (
        f"publisher key {key.public.fingerprint} was rotated out at {T0_ISO}; it is not "
        "trusted for a release created at 2023-11-14T22:13:21+00:00"
    )


def test_a_retired_key_out_of_scope_message(key: PrivateKey, other_key: PrivateKey) -> None:
    entry = TrustEntry("org", other_key.public, tuple(_long_scopes()), (Retired(key.public, T0),))
    store = TrustStore([entry])
    with pytest.raises(OutOfScopeError) as info:
        store.admit(store.admission(key.public), "other/model", T0)
    scopes = ", ".join(_long_scopes())[:200]
    assert str(info.value) == (
        f"retired key {key.public.fingerprint} of 'org' is trusted only for {scopes}, "
        "not for release 'other/model'"
    )


# ------------------------------------------------------------------ admission and rotation


def test_a_trusted_key_is_admitted_by_its_entry(key: PrivateKey) -> None:
    store = TrustStore()
    store.add(key.public, "org")
    assert store.admission(key.public) == Admission(key.public, TrustEntry("org", key.public))


def test_a_cycle_of_rotations_between_untrusted_keys_is_untrusted(
    key: PrivateKey, other_key: PrivateKey
) -> None:
    cycle = [rotate(key, other_key, now=T0), rotate(other_key, key, now=T0 + 1)]
    with pytest.raises(UntrustedKeyError):
        TrustStore().admission(other_key.public, cycle)


def test_a_rotation_is_found_after_other_statements(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey
) -> None:
    third = generate_key(tmp_path / "third.pem")
    store = TrustStore()
    store.add(key.public, "org")
    rot = rotate(key, other_key, now=T0)
    statements = [revoke(third, now=T0), rotate(third, other_key, now=T0), rot]
    assert store.admission(other_key.public, statements).moves == (rot,)


def test_a_rotation_by_a_revoked_key_is_passed_over_for_the_next(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey
) -> None:
    third = generate_key(tmp_path / "third.pem")
    store = TrustStore()
    store.add(key.public, "org")
    store.revoke(revoke(third, now=T0))
    rot = rotate(key, other_key, now=T0)
    statements = [rotate(third, other_key, now=T0), rot]
    assert store.admission(other_key.public, statements).moves == (rot,)


def test_a_move_logs_both_keys_and_the_rotation_date(
    key: PrivateKey, other_key: PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    store = TrustStore()
    store.add(key.public, "org")
    admission = store.admission(other_key.public, [rotate(key, other_key, now=T0)])
    with caplog.at_level(logging.WARNING, logger="p2pweights.trust"):
        assert store.admit(admission, "org/model", T0) == "org"
    assert caplog.messages == [
        f"trust entry 'org' moved from key {key.public.fingerprint} to key "
        f"{other_key.public.fingerprint} by a rotation statement of {T0_ISO}"
    ]


def test_a_move_leaves_the_other_entries_alone(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey
) -> None:
    third = generate_key(tmp_path / "third.pem").public
    store = TrustStore()
    store.add(key.public, "org")
    store.add(third, "zoo")
    store.admit(store.admission(other_key.public, [rotate(key, other_key, now=T0)]), "o/m", T0)
    assert store.entries == [
        TrustEntry("org", other_key.public, (), (Retired(key.public, T0),)),
        TrustEntry("zoo", third),
    ]


def test_a_move_of_one_own_key_leaves_the_other_own_keys_unsaved(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey
) -> None:
    third = generate_key(tmp_path / "third.pem").public
    fourth = generate_key(tmp_path / "fourth.pem").public
    own = [TrustEntry("own-a", key.public), TrustEntry("own-b", third)]
    store = TrustStore(path=tmp_path / "trust.json", transient=own)
    store.admit(store.admission(other_key.public, [rotate(key, other_key, now=T0)]), "o/m", T0)
    store.add(fourth, "saved")
    assert json.loads((tmp_path / "trust.json").read_text())["keys"] == {"saved": fourth.text}


def test_a_move_met_after_the_new_key_got_its_own_entry_changes_nothing(
    key: PrivateKey, other_key: PrivateKey
) -> None:
    """Two callers: the admission was decided before the new key was trusted by name."""
    store = TrustStore()
    store.add(key.public, "org")
    admission = store.admission(other_key.public, [rotate(key, other_key, now=T0)])
    store.add(other_key.public, "new")
    assert store.admit(admission, "org/model", T0) == "new"
    assert store.entries == [
        TrustEntry("new", other_key.public),
        TrustEntry("org", key.public),
    ]


# ------------------------------------------------------------------ revocation


def test_revoking_a_retired_key_drops_it_from_the_entry_and_logs_the_dropped_entry(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    third = generate_key(tmp_path / "third.pem")
    store = TrustStore(
        [
            TrustEntry(
                "org", other_key.public, (), (Retired(key.public, T0), Retired(third.public, T0))
            ),
            TrustEntry("bad", third.public),
        ]
    )
    with caplog.at_level(logging.WARNING, logger="p2pweights.trust"):
        assert store.revoke(revoke(key, now=T0)) == []
        assert store.entries[1].retired == (Retired(third.public, T0),)
        assert store.revoke(revoke(third, now=T0)) == ["bad"]
    assert store.entries == [TrustEntry("org", other_key.public)]
    assert caplog.messages == [
        f"trust entry 'bad' dropped: key {third.public.fingerprint} is revoked"
    ]


# ------------------------------------------------------------------ own keys


def test_own_keys_read_the_pub_beside_an_encrypted_pem_and_skip_what_is_no_key(
    tmp_path: Path, key: PrivateKey
) -> None:
    keys = tmp_path / "keys"  # the key fixture's publisher.pem is in here
    (keys / "a-broken.pem").write_text("not a key")
    locked = generate_key(keys / "locked.pem", passphrase=b"secret")
    (keys / "locked.pub").write_text(locked.public.text + "\n")
    generate_key(keys / "no-pub.pem", passphrase=b"secret")  # encrypted, no .pub: skipped
    assert own_keys(tmp_path) == [
        TrustEntry(f"your own key {keys / 'locked.pem'}", locked.public),
        TrustEntry(f"your own key {keys / 'publisher.pem'}", key.public),
    ]


def test_trust_for_adds_only_own_keys_neither_trusted_nor_revoked(
    tmp_path: Path, key: PrivateKey, other_key: PrivateKey
) -> None:
    home = tmp_path / "home"
    trusted = generate_key(home / "keys" / "trusted.pem")
    revoked = generate_key(home / "keys" / "revoked.pem")
    fresh = generate_key(home / "keys" / "fresh.pem")
    store = TrustStore(path=home / "trust.json")
    store.add(trusted.public, "org")
    store.revoke(revoke(revoked, now=T0))
    got = trust_for(None, home)
    assert got.entries == [
        TrustEntry("org", trusted.public),
        TrustEntry(f"your own key {home / 'keys' / 'fresh.pem'}", fresh.public),
    ]
    assert got.revoked.keys() == {revoked.public}
    assert got.path == home / "trust.json"
