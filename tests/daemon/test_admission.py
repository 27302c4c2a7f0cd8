"""Unit tests of the admission checks: a fetched manifest against its torrent, and TOFU.

No daemon runs here: ``authenticate`` gets a release dir, a torrent made from a release,
and a trust file, as the service hands them over once the manifest has arrived.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p2pweights import PrivateKey, TrustStore
from p2pweights.errors import (
    FormatError,
    LoadError,
    ManifestError,
    ReleaseMismatchError,
    SignatureError,
    UntrustedKeyError,
)
from p2pweights.manifest import LIMITS, Limits
from p2pweights.release import MANIFEST_NAME, SIGNATURE_NAME, open_self_signed
from p2pweightsd.admission import (
    PRIO_CHUNK,
    PRIO_META,
    authenticate,
    manifest_and_warmup,
    manifest_only,
    parse_peer,
    store_layout,
    wanted_chunks,
)
from p2pweightsd.catalog import Catalog
from p2pweightsd.engine import TorrentFile, make_torrent
from p2pweightsd.store import FileStamp, Store

MakeModel = Callable[..., Path]
MakeRelease = Callable[..., Path]


@pytest.fixture
def release(make_model: MakeModel, make_release: MakeRelease) -> Path:
    return make_release(make_model())


@pytest.fixture
def trust_file(tmp_path: Path) -> Path:
    return tmp_path / "leech-trust.json"


def _trusted(trust_file: Path, key: PrivateKey) -> bool:
    return TrustStore.load(trust_file).name_of(key.public) is not None


def _with_file(tf: TorrentFile, which: str, **change: object) -> TorrentFile:
    files = tuple(
        dataclasses.replace(f, **change) if f.path == which else f  # type: ignore[arg-type]
        for f in tf.files
    )
    return dataclasses.replace(tf, files=files)


def test_tofu_trusts_a_new_key_once_every_check_passed(
    release: Path, trust_file: Path, key: PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="p2pweightsd.admission"):
        got = authenticate(release, make_torrent(release), trust_file, tofu=True)
    assert got.manifest.publisher == key.public
    fingerprint = key.public.fingerprint
    assert TrustStore.load(trust_file).name_of(key.public) == "tofu-" + fingerprint.replace(":", "")
    assert [r.getMessage() for r in caplog.records] == [
        f"trusting publisher {fingerprint} on first use, for test/model only"
    ]
    # Trusted for this release's exact name only, not for every name the key signs.
    entry = TrustStore.load(trust_file).entry_of(key.public)
    assert entry is not None and entry.scopes == ("test/model",)
    # Next time the key is known: no TOFU needed.
    authenticate(release, make_torrent(release), trust_file, tofu=False)


@pytest.mark.parametrize("tofu", [False, True])
def test_the_callers_limits_apply_to_a_known_and_a_new_publisher(
    release: Path, trust_file: Path, key: PrivateKey, tofu: bool
) -> None:
    """The daemon's own (lower) caps reach the manifest parser on both paths: the size cap
    (read first) and the schema caps (checked only once the publisher is known)."""
    if not tofu:
        TrustStore.load(trust_file).add(key.public, "publisher")
    size = (release / MANIFEST_NAME).stat().st_size
    chunks = len(open_self_signed(release).manifest.chunks)
    tf = make_torrent(release)
    with pytest.raises(ManifestError) as info:
        authenticate(release, tf, trust_file, tofu=tofu, limits=Limits(manifest_bytes=size - 1))
    assert str(info.value) == (
        f"manifest {release / MANIFEST_NAME} is over the limit of {size - 1} bytes"
    )
    with pytest.raises(ManifestError) as info:
        authenticate(release, tf, trust_file, tofu=tofu, limits=Limits(chunks=chunks - 1))
    assert str(info.value) == f"chunks has {chunks} entries, over the limit of {chunks - 1}"
    assert _trusted(trust_file, key) is not tofu


def test_without_tofu_an_unknown_key_is_refused_and_not_recorded(
    release: Path, trust_file: Path, key: PrivateKey
) -> None:
    with pytest.raises(UntrustedKeyError):
        authenticate(release, make_torrent(release), trust_file, tofu=False)
    assert not _trusted(trust_file, key)


def test_a_mismatch_names_at_most_three_files(release: Path, trust_file: Path) -> None:
    tf = make_torrent(release)
    chunks = sorted(c.path for c in open_self_signed(release).manifest.chunks)
    assert len(chunks) >= 4
    tf = dataclasses.replace(tf, files=tuple(f for f in tf.files if f.path not in chunks[:4]))
    with pytest.raises(ReleaseMismatchError) as info:
        authenticate(release, tf, trust_file, tofu=True)
    assert str(info.value).endswith(f"(e.g. {chunks[:3]})")


@pytest.mark.parametrize("lie", ["v2_root", "size", "extra", "missing"])
def test_tofu_records_no_key_for_a_torrent_that_disagrees_with_the_manifest(
    release: Path, trust_file: Path, key: PrivateKey, lie: str
) -> None:
    tf = make_torrent(release)
    chunk = open_self_signed(release).manifest.chunks[0]
    if lie == "v2_root":
        tf = _with_file(tf, chunk.path, v2_root="ab" * 32)
    elif lie == "size":
        tf = _with_file(tf, chunk.path, size=chunk.size + 1)
    elif lie == "extra":
        tf = _with_file(tf, chunk.path, path="chunks/" + "0" * 64)
    else:
        tf = dataclasses.replace(tf, files=tuple(f for f in tf.files if f.path != chunk.path))
    with pytest.raises(ReleaseMismatchError) as info:
        authenticate(release, tf, trust_file, tofu=True)
    if lie in ("v2_root", "size"):
        assert str(info.value) == (
            f"torrent file {chunk.path} has another size or v2 root than the signed manifest"
        )
    else:
        odd = sorted({chunk.path} | ({"chunks/" + "0" * 64} if lie == "extra" else set()))
        assert str(info.value) == (
            f"the torrent's files differ from the signed chunk list (e.g. {odd})"
        )
    # The key of a release that failed a check must not become trusted.
    assert not _trusted(trust_file, key)


def test_tofu_records_no_key_for_a_bad_signature(
    release: Path, trust_file: Path, key: PrivateKey
) -> None:
    sig = bytearray((release / SIGNATURE_NAME).read_bytes())
    sig[0] ^= 1
    (release / SIGNATURE_NAME).write_bytes(bytes(sig))
    with pytest.raises(SignatureError):
        authenticate(release, make_torrent(release), trust_file, tofu=True)
    assert not _trusted(trust_file, key)


def test_manifest_only_wants_the_two_manifest_files(release: Path) -> None:
    tf = make_torrent(release)
    prios = manifest_only(tf)
    assert len(prios) == tf.num_files
    wanted = {i for i, p in enumerate(prios) if p}
    assert wanted == {tf.file(MANIFEST_NAME).index, tf.file(SIGNATURE_NAME).index}
    assert {prios[i] for i in wanted} == {PRIO_META}


def test_a_streaming_warm_up_wants_the_manifest_first_then_the_largest_chunk(
    release: Path,
) -> None:
    tf = make_torrent(release)
    prios = manifest_and_warmup(tf)
    sizes = {c.path: c.size for c in open_self_signed(release).manifest.chunks}
    wanted = {f.path: prios[f.index] for f in tf.files if prios[f.index]}
    chunk = [path for path in wanted if path in sizes]
    assert len(chunk) == 1 and sizes[chunk[0]] == max(sizes.values())
    assert wanted == {MANIFEST_NAME: PRIO_META, SIGNATURE_NAME: PRIO_META, chunk[0]: PRIO_CHUNK}
    assert PRIO_META > PRIO_CHUNK  # libtorrent picks the manifest's pieces first


def test_wanted_chunks_by_include_pattern(release: Path) -> None:
    rel = open_self_signed(release)
    assert wanted_chunks(rel, []) == [c.path for c in rel.manifest.chunks]
    name = sorted(rel.manifest.tensors)[0]
    assert wanted_chunks(rel, [name]) == [rel.manifest.tensors[name].chunk]
    patterns = [f"no.such.tensor{i}*" for i in range(7)]
    with pytest.raises(LoadError) as info:
        wanted_chunks(rel, patterns)
    assert str(info.value) == f"include patterns {patterns[:5]} match no tensor"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.2:6881", ("127.0.0.2", 6881)),
        ("[::1]:1", ("::1", 1)),
        ("10.0.0.1:65535", ("10.0.0.1", 65535)),
    ],
)
def test_parse_peer_accepts_ip_and_port(text: str, want: tuple[str, int]) -> None:
    assert parse_peer(text) == want


@pytest.mark.parametrize(
    "text", ["host:1", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:x", ":1"]
)
def test_parse_peer_refuses_the_rest(text: str) -> None:
    with pytest.raises(FormatError) as info:
        parse_peer(text)
    assert str(info.value) == f"peer {text[:80]!r} is not IP:PORT"


@pytest.mark.parametrize("text", ["x10.0.0.1]:5", "127.0.0.1:+5", "127.0.0.1: 5", "y" * 200 + ":1"])
def test_parse_peer_refuses_near_misses(text: str) -> None:
    with pytest.raises(FormatError) as info:
        parse_peer(text)
    assert str(info.value) == f"peer {text[:80]!r} is not IP:PORT"


# ---------------------------------------------------------------- store_layout


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    s.open()
    return s


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    c = Catalog(tmp_path / "catalog.sqlite3")
    yield c
    c.close()


def _place(store: Store, catalog: Catalog, release: Path, path: str) -> FileStamp:
    """Put ``release``'s chunk ``path`` into the store, verified and recorded."""
    chunk = next(c for c in open_self_signed(release).manifest.chunks if c.path == path)
    dest = store.root / path
    dest.write_bytes((release / path).read_bytes())
    stamp = FileStamp.of(dest)
    catalog.record_chunk(chunk, stamp)
    return stamp


def test_store_layout_maps_the_manifest_files_and_fetches_chunks_into_partial_files(
    release: Path, store: Store, catalog: Catalog
) -> None:
    tf = make_torrent(release)
    rid = tf.id
    want = {tf.file(MANIFEST_NAME).index: f"releases/{rid}/{MANIFEST_NAME}",
            tf.file(SIGNATURE_NAME).index: f"releases/{rid}/{SIGNATURE_NAME}"}
    chunks = [f for f in tf.files if f.path.startswith("chunks/")]
    assert len(chunks) >= 4
    want |= {f.index: f"partial/{rid}/{f.path.removeprefix('chunks/')}" for f in chunks}
    assert store_layout(rid, tf, store, catalog) == want
    assert (store.releases / rid / "chunks").readlink() == Path("../../chunks")


def test_store_layout_maps_a_chunk_only_onto_a_recorded_unchanged_store_file(
    release: Path, store: Store, catalog: Catalog
) -> None:
    tf = make_torrent(release)
    paths = sorted(f.path for f in tf.files if f.path.startswith("chunks/"))
    recorded, unrecorded = paths[0], paths[1]
    _place(store, catalog, release, recorded)
    # A file with the right bytes but no record: not vouched for, so not mapped.
    (store.root / unrecorded).write_bytes((release / unrecorded).read_bytes())
    layout = store_layout(tf.id, tf, store, catalog)
    assert layout[tf.file(recorded).index] == recorded
    assert layout[tf.file(unrecorded).index] == store.partial_path(tf.id, unrecorded)
    assert all(
        layout[f.index] == store.partial_path(tf.id, f.path)
        for f in tf.files if f.path.startswith("chunks/") and f.path != recorded
    )
    # Recorded, but gone from the store: fetched again.
    (store.root / recorded).unlink()
    layout = store_layout(tf.id, tf, store, catalog)
    assert layout[tf.file(recorded).index] == store.partial_path(tf.id, recorded)


@pytest.mark.parametrize("lie", ["v2_root", "size"])
def test_store_layout_refuses_other_bytes_under_a_recorded_name(
    release: Path, store: Store, catalog: Catalog, lie: str
) -> None:
    tf = make_torrent(release)
    path = sorted(f.path for f in tf.files if f.path.startswith("chunks/"))[0]
    _place(store, catalog, release, path)
    own = tf.file(path)
    tf = _with_file(tf, path, **({"v2_root": "ab" * 32} if lie == "v2_root" else
                                 {"size": own.size + 1}))
    with pytest.raises(ReleaseMismatchError) as info:
        store_layout(tf.id, tf, store, catalog)
    assert str(info.value) == (
        f"torrent file {path} claims other bytes than the store's verified chunk of that name"
    )


@pytest.mark.parametrize("drop", [(MANIFEST_NAME,), (SIGNATURE_NAME,), (MANIFEST_NAME,
                                                                        SIGNATURE_NAME)])
def test_store_layout_refuses_a_torrent_without_the_manifest_files(
    release: Path, store: Store, catalog: Catalog, drop: tuple[str, ...]
) -> None:
    tf = make_torrent(release)
    tf = dataclasses.replace(tf, files=tuple(f for f in tf.files if f.path not in drop))
    with pytest.raises(ReleaseMismatchError) as info:
        store_layout(tf.id, tf, store, catalog)
    assert str(info.value) == "the torrent has no manifest.json and manifest.sig"
    assert not (store.releases / tf.id).exists()


def test_store_layout_bounds_the_manifest_and_signature_sizes(
    release: Path, store: Store, catalog: Catalog
) -> None:
    tf = make_torrent(release)
    at_limit = _with_file(tf, MANIFEST_NAME, size=LIMITS.manifest_bytes)
    assert store_layout(tf.id, at_limit, store, catalog)[tf.file(MANIFEST_NAME).index] == (
        f"releases/{tf.id}/{MANIFEST_NAME}"
    )
    over = _with_file(tf, MANIFEST_NAME, size=LIMITS.manifest_bytes + 1)
    with pytest.raises(ReleaseMismatchError) as info:
        store_layout(tf.id, over, store, catalog)
    assert str(info.value) == "the torrent's manifest.json is over the limit"
    for size in (63, 65):
        with pytest.raises(ReleaseMismatchError) as info:
            store_layout(tf.id, _with_file(tf, SIGNATURE_NAME, size=size), store, catalog)
        assert str(info.value) == "the torrent's manifest.sig is not 64 bytes"


@pytest.mark.parametrize(
    "name",
    [
        "model.safetensors",
        "chunks/" + "A" * 64,
        "chunks/" + "0" * 64 + ".bin",
        "chunks/" + "0" * 63,
        "releases/" + "0" * 64 + "/manifest.json",
        "x" * 100,
    ],
)
def test_store_layout_refuses_a_file_that_is_not_part_of_a_release(
    release: Path, store: Store, catalog: Catalog, name: str
) -> None:
    tf = make_torrent(release)
    path = sorted(f.path for f in tf.files if f.path.startswith("chunks/"))[0]
    with pytest.raises(ReleaseMismatchError) as info:
        store_layout(tf.id, _with_file(tf, path, path=name), store, catalog)
    assert str(info.value) == (
        f"torrent file {name[:80]!r} is not part of a p2pweights release"
    )
