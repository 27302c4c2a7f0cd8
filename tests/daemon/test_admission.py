"""Unit tests of the admission checks: a fetched manifest against its torrent, and TOFU.

No daemon runs here: ``authenticate`` gets a release dir, a torrent made from a release,
and a trust file, as the service hands them over once the manifest has arrived.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pweights import PrivateKey, TrustStore
from p2pweights.errors import (
    FormatError,
    LoadError,
    ReleaseMismatchError,
    SignatureError,
    UntrustedKeyError,
)
from p2pweights.release import MANIFEST_NAME, SIGNATURE_NAME, open_self_signed
from p2pweightsd.admission import (
    PRIO_META,
    authenticate,
    manifest_only,
    parse_peer,
    wanted_chunks,
)
from p2pweightsd.engine import TorrentFile, make_torrent

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
    # Next time the key is known: no TOFU needed.
    authenticate(release, make_torrent(release), trust_file, tofu=False)


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
