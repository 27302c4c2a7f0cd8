"""Key statements at admission: in the torrent, wanted with the manifest, capped, applied.

No daemon runs here: the pieces the fetch flow calls get a release made by the test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pweights import PrivateKey, TrustStore
from p2pweights.errors import ReleaseMismatchError, RevokedKeyError
from p2pweights.key_statements import STATEMENTS_NAME, revoke, rotate, statements_bytes
from p2pweightsd.admission import PRIO_META, authenticate, manifest_only, meta_files, store_layout
from p2pweightsd.catalog import Catalog
from p2pweightsd.engine import make_torrent
from p2pweightsd.store import Store

MakeModel = Callable[..., Path]
MakeRelease = Callable[..., Path]


@pytest.fixture
def rotated(
    make_model: MakeModel, make_release: MakeRelease, key: PrivateKey, other_key: PrivateKey
) -> Path:
    """A release signed by ``other_key``, carrying the rotation from ``key``."""
    release = make_release(make_model(), signer=other_key)
    (release / STATEMENTS_NAME).write_bytes(statements_bytes([rotate(key, other_key)]))
    return release


def test_the_statements_travel_in_the_torrent_and_come_with_the_manifest(
    rotated: Path, make_release: MakeRelease, make_model: MakeModel
) -> None:
    tf = make_torrent(rotated)
    assert STATEMENTS_NAME in {f.path for f in tf.files}
    prios = manifest_only(tf)
    wanted = {f.path for f in tf.files if prios[f.index] == PRIO_META}
    assert wanted == {"manifest.json", "manifest.sig", STATEMENTS_NAME}
    assert sorted(meta_files(tf)) == sorted(tf.file(p).index for p in wanted)
    # The same release without the file is another torrent: the info-hash pins the file.
    (rotated / STATEMENTS_NAME).rename(rotated.parent / "aside.json")
    assert make_torrent(rotated).id != tf.id


def test_store_layout_maps_the_statements_and_caps_their_size(
    tmp_path: Path, rotated: Path
) -> None:
    store = Store(tmp_path / "store")
    store.open()
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    tf = make_torrent(rotated)
    layout = store_layout(tf.id, tf, store, catalog)
    assert layout[tf.file(STATEMENTS_NAME).index] == store.statements_path(tf.id)
    huge = dataclasses.replace(
        tf,
        files=tuple(
            dataclasses.replace(f, size=70_000) if f.path == STATEMENTS_NAME else f
            for f in tf.files
        ),
    )
    with pytest.raises(ReleaseMismatchError, match="over the limit"):
        store_layout(tf.id, huge, store, catalog)
    catalog.close()


def test_authenticate_follows_the_rotation_and_refuses_a_revoked_key_even_with_tofu(
    tmp_path: Path, rotated: Path, key: PrivateKey, other_key: PrivateKey
) -> None:
    trust_file = tmp_path / "trust.json"
    TrustStore.load(trust_file).add(key.public, "org")
    tf = make_torrent(rotated)
    release = authenticate(rotated, tf, trust_file, tofu=False)
    assert release.publisher_name == "org"
    assert TrustStore.load(trust_file).name_of(other_key.public) == "org"
    revoked = tmp_path / "revoked.json"
    TrustStore.load(revoked).revoke(revoke(other_key))
    with pytest.raises(RevokedKeyError):
        authenticate(rotated, tf, revoked, tofu=True)
    assert TrustStore.load(revoked).entries == []
