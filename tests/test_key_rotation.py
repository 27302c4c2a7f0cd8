"""Trust moving along a key rotation, and never coming back to a revoked key."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import p2pweights
from p2pweights import PrivateKey, TrustStore, generate_key
from p2pweights.errors import (
    KeyStatementError,
    OutOfScopeError,
    RevokedKeyError,
    SignatureError,
    TrustStoreError,
    UntrustedKeyError,
)
from p2pweights.key_statements import (
    STATEMENTS_NAME,
    Statement,
    revoke,
    rotate,
    statements_bytes,
)
from p2pweights.release import SIGNATURE_NAME, open_release
from p2pweights.trust import Retired, TrustEntry, trust_for

T0 = 1_700_000_000  # v1 is packed at T0
T_ROTATE = T0 + 1000


def _pack(
    src: Path,
    out: Path,
    key: PrivateKey,
    *,
    version: int,
    created: int,
    name: str = "org/model",
    statements: list[Statement] | None = None,
) -> Path:
    p2pweights.pack(src, out, name=name, version=version, key=key, now=created)
    if statements:
        (out / STATEMENTS_NAME).write_bytes(statements_bytes(statements))
    return out


@pytest.fixture
def store(tmp_path: Path, key: PrivateKey) -> TrustStore:
    s = TrustStore.load(tmp_path / "client" / "trust.json")
    s.add(key.public, "org", scopes=["org/*"])
    return s


def test_a_release_by_the_new_key_moves_the_entry_keeping_name_and_scopes(
    tmp_path: Path,
    key: PrivateKey,
    other_key: PrivateKey,
    store: TrustStore,
    make_model: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = make_model()
    v1 = _pack(src, tmp_path / "v1", key, version=1, created=T0)
    ab = rotate(key, other_key, now=T_ROTATE)
    v2 = _pack(src, tmp_path / "v2", other_key, version=2, created=T_ROTATE + 10, statements=[ab])
    with caplog.at_level(logging.WARNING, logger="p2pweights.trust"):
        assert open_release(v2, store).publisher_name == "org"
    assert "moved from key" in caplog.text and "'org'" in caplog.text
    expected = TrustEntry("org", other_key.public, ("org/*",), (Retired(key.public, T_ROTATE),))
    assert store.entries == [expected]
    again = TrustStore.load(store.path)  # type: ignore[arg-type]
    assert again.entries == [expected]  # saved, and read back the same
    # What the old key signed before the rotation still loads under the entry's name;
    # nothing it signs later does.
    assert open_release(v1, again).publisher_name == "org"
    late = _pack(src, tmp_path / "late", key, version=3, created=T_ROTATE + 1)
    with pytest.raises(UntrustedKeyError, match="rotated out"):
        open_release(late, again)
    # The scope moved with the name: the new key signs nothing outside it.
    outside = _pack(src, tmp_path / "out", other_key, version=1, created=T0, name="evil/x")
    with pytest.raises(OutOfScopeError):
        open_release(outside, again)


def test_without_the_statement_the_new_key_is_untrusted(
    tmp_path: Path,
    other_key: PrivateKey,
    store: TrustStore,
    make_model: Callable[..., Path],
) -> None:
    v2 = _pack(make_model(), tmp_path / "v2", other_key, version=2, created=T0)
    before = store.path.read_bytes()  # type: ignore[union-attr]
    with pytest.raises(UntrustedKeyError):
        open_release(v2, store)
    assert store.path.read_bytes() == before  # type: ignore[union-attr]


def test_a_rotation_from_an_untrusted_key_moves_nothing(
    tmp_path: Path,
    other_key: PrivateKey,
    store: TrustStore,
    make_model: Callable[..., Path],
) -> None:
    stranger = generate_key(tmp_path / "stranger.pem")
    v2 = _pack(
        make_model(),
        tmp_path / "v2",
        other_key,
        version=2,
        created=T0,
        statements=[rotate(stranger, other_key, now=T0)],
    )
    with pytest.raises(UntrustedKeyError):
        open_release(v2, store)
    assert [e.key for e in store.entries] == [store.entries[0].key] and len(store.entries) == 1
    assert store.entry_of(other_key.public) is None


def test_the_move_waits_for_a_good_signature(
    tmp_path: Path,
    key: PrivateKey,
    other_key: PrivateKey,
    store: TrustStore,
    make_model: Callable[..., Path],
) -> None:
    v2 = _pack(
        make_model(),
        tmp_path / "v2",
        other_key,
        version=2,
        created=T0,
        statements=[rotate(key, other_key, now=T_ROTATE)],
    )
    sig = bytearray((v2 / SIGNATURE_NAME).read_bytes())
    sig[0] ^= 1
    (v2 / SIGNATURE_NAME).write_bytes(bytes(sig))
    with pytest.raises(SignatureError):
        open_release(v2, store)
    assert store.entry_of(key.public) is not None and store.entry_of(other_key.public) is None
    assert TrustStore.load(store.path).entry_of(key.public) is not None  # type: ignore[arg-type]


def test_a_chain_of_rotations_is_followed(
    tmp_path: Path,
    key: PrivateKey,
    other_key: PrivateKey,
    store: TrustStore,
    make_model: Callable[..., Path],
) -> None:
    third = generate_key(tmp_path / "third.pem")
    chain = [rotate(key, other_key, now=T_ROTATE), rotate(other_key, third, now=T_ROTATE + 5)]
    v3 = _pack(make_model(), tmp_path / "v3", third, version=3, created=T0, statements=chain)
    assert open_release(v3, store).publisher_name == "org"
    (entry,) = store.entries
    assert entry.key == third.public
    assert entry.retired == (Retired(key.public, T_ROTATE), Retired(other_key.public, T_ROTATE + 5))


def test_a_damaged_statements_file_refuses_the_release(
    tmp_path: Path, key: PrivateKey, store: TrustStore, make_model: Callable[..., Path]
) -> None:
    v1 = _pack(make_model(), tmp_path / "v1", key, version=1, created=T0)
    (v1 / STATEMENTS_NAME).write_bytes(b'{"statements": [{"type": "nope"}]}')
    with pytest.raises(KeyStatementError):
        open_release(v1, store)


# ---- revocation ---------------------------------------------------------------------------


def test_a_revoked_key_is_never_trusted_again(
    tmp_path: Path, key: PrivateKey, store: TrustStore, make_model: Callable[..., Path]
) -> None:
    v1 = _pack(make_model(), tmp_path / "v1", key, version=1, created=T0)
    assert open_release(v1, store).publisher_name == "org"
    assert store.revoke(revoke(key, reason="stolen", now=T_ROTATE)) == ["org"]
    assert store.entries == []
    # Even what it signed before: a thief can date a manifest as they like.
    with pytest.raises(RevokedKeyError, match="revoked"):
        open_release(v1, store)
    again = TrustStore.load(store.path)  # type: ignore[arg-type]
    with pytest.raises(RevokedKeyError):
        open_release(v1, again)  # it survives a restart
    with pytest.raises(RevokedKeyError):
        again.add(key.public, "org-again")
    assert json.loads(again.path.read_text())["revoked"][0]["key"] == key.public.text  # type: ignore[union-attr]


def test_a_revoked_key_is_not_trusted_on_first_use_either(key: PrivateKey) -> None:
    """``RevokedKeyError`` is no ``UntrustedKeyError``: the daemon's TOFU path never sees it."""
    s = TrustStore()
    s.revoke(revoke(key, now=T0))
    with pytest.raises(RevokedKeyError) as info:
        s.admission(key.public)
    assert not isinstance(info.value, UntrustedKeyError)


def test_no_rotation_from_or_to_a_revoked_key_is_honoured(
    tmp_path: Path,
    key: PrivateKey,
    other_key: PrivateKey,
    store: TrustStore,
    make_model: Callable[..., Path],
) -> None:
    src = make_model()
    ab = rotate(key, other_key, now=T_ROTATE)
    v2 = _pack(src, tmp_path / "v2", other_key, version=2, created=T0, statements=[ab])
    # To a revoked new key: refused, and the old entry stays as it was.
    to_revoked = TrustStore.load(tmp_path / "a" / "trust.json")
    to_revoked.add(key.public, "org")
    to_revoked.revoke(revoke(other_key, now=T0))
    with pytest.raises(RevokedKeyError):
        open_release(v2, to_revoked)
    assert to_revoked.entry_of(key.public) is not None
    # From a revoked old key: the rotation is not followed, whatever its date.
    from_revoked = TrustStore.load(tmp_path / "b" / "trust.json")
    from_revoked.add(key.public, "org")
    from_revoked.revoke(revoke(key, now=T_ROTATE + 9999))
    with pytest.raises(UntrustedKeyError):
        open_release(v2, from_revoked)
    assert from_revoked.entry_of(other_key.public) is None
    # Nor through a revoked key in the middle of a chain: A -> B -> C with B revoked.
    third = generate_key(tmp_path / "third.pem")
    chain = [ab, rotate(other_key, third, now=T_ROTATE + 1)]
    v3 = _pack(src, tmp_path / "v3", third, version=3, created=T0, statements=chain)
    middle = TrustStore.load(tmp_path / "m" / "trust.json")
    middle.add(key.public, "org")
    middle.revoke(revoke(other_key, now=T0))
    with pytest.raises(UntrustedKeyError):
        open_release(v3, middle)
    assert middle.entry_of(key.public) is not None and middle.entry_of(third.public) is None


def test_a_revocation_travelling_with_a_release_is_recorded(
    tmp_path: Path,
    key: PrivateKey,
    other_key: PrivateKey,
    make_model: Callable[..., Path],
) -> None:
    """The publisher revokes an old key; a release by the new one spreads the certificate."""
    s = TrustStore.load(tmp_path / "c" / "trust.json")
    s.add(other_key.public, "org")
    s.add(key.public, "old-org")
    v2 = _pack(
        make_model(),
        tmp_path / "v2",
        other_key,
        version=2,
        created=T0,
        statements=[revoke(key, now=T0)],
    )
    assert open_release(v2, s).publisher_name == "org"
    assert key.public in TrustStore.load(s.path).revoked  # type: ignore[arg-type]
    assert s.entry_of(key.public) is None


def test_a_forged_certificate_in_the_trust_file_is_damage(tmp_path: Path, key: PrivateKey) -> None:
    path = tmp_path / "trust.json"
    cert = revoke(key, now=T0).to_doc()
    cert["reason"] = "edited"
    path.write_text(json.dumps({"keys": {}, "revoked": [cert]}))
    with pytest.raises(TrustStoreError, match="damaged"):
        TrustStore.load(path)


def _own_key_rotated_away(
    tmp_path: Path, other_key: PrivateKey, make_model: Callable[..., Path]
) -> tuple[Path, PrivateKey, Path]:
    """A data dir whose own key rotated to ``other_key``, and v2 signed by ``other_key``."""
    home = tmp_path / "home"
    own = generate_key(home / "keys" / "publisher.pem")
    v2 = _pack(
        make_model(),
        tmp_path / "v2",
        other_key,
        version=2,
        created=T0,
        statements=[rotate(own, other_key, now=int(time.time()))],
    )
    return home, own, v2


def test_own_keys_follow_a_rotation_but_are_never_saved(
    tmp_path: Path, other_key: PrivateKey, make_model: Callable[..., Path]
) -> None:
    home, _, v2 = _own_key_rotated_away(tmp_path, other_key, make_model)
    store = trust_for(None, home)
    assert open_release(v2, store).publisher_name.startswith("your own key ")
    assert not (home / "trust.json").exists()  # nothing of the own keys is written


def test_revoking_a_retired_key_of_an_own_key_writes_no_own_entry(
    tmp_path: Path, other_key: PrivateKey, make_model: Callable[..., Path]
) -> None:
    """The own keys stay out of trust.json whatever happens to them in memory."""
    home, own, v2 = _own_key_rotated_away(tmp_path, other_key, make_model)
    store = trust_for(None, home)
    open_release(v2, store)  # the own entry moved to other_key, own retired
    store.revoke(revoke(own, now=T0))
    doc = json.loads((home / "trust.json").read_text())
    assert doc["keys"] == {} and len(doc["revoked"]) == 1
    assert TrustStore.load(home / "trust.json").revoked.keys() == {own.public}
