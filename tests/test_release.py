"""Unit tests of opening a release: sources, export pointers, size limits, messages."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pweights import (
    LoadError,
    ManifestError,
    PrivateKey,
    ReleaseExpiredError,
    SignatureError,
    TrustStore,
    open_release,
)
from p2pweights.keys import SIGNATURE_BYTES
from p2pweights.manifest import LIMITS
from p2pweights.release import (
    EXPORT_POINTER,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    open_self_signed,
    resolve_source,
)


@pytest.fixture
def release(make_model: Callable[..., Path], make_release: Callable[..., Path]) -> Path:
    return make_release(make_model())


def test_a_release_dir_resolves_to_itself(release: Path) -> None:
    assert resolve_source(release) == release
    assert resolve_source(str(release)) == release


def test_an_export_pointer_leads_back_to_its_release(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    out.mkdir()
    pointer = out / EXPORT_POINTER
    pointer.write_text(json.dumps({"release": str(release)}))
    assert resolve_source(out) == release
    for doc, says in [
        ({"release": str(tmp_path / "gone")}, f"no longer at {str(tmp_path / 'gone')!r}"),
        ({"other": str(release)}, "no longer at None"),
        ([str(release)], "no longer at None"),
    ]:
        pointer.write_text(json.dumps(doc))
        with pytest.raises(LoadError) as info:
            resolve_source(out)
        assert str(info.value) == f"{out} was exported from a release that is {says}"
    pointer.write_bytes(b"{")
    with pytest.raises(LoadError) as info:
        resolve_source(out)
    assert str(info.value).startswith(f"{pointer} is damaged: export pointer is not valid JSON")
    pointer.write_bytes(b'{"release":"' + b"x" * (1 << 16) + b'"}')
    with pytest.raises(LoadError, match="over the limit of 65536"):
        resolve_source(out)


def test_other_sources_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(LoadError) as info:
        resolve_source(tmp_path)
    assert (
        str(info.value) == f"{tmp_path} is not a release dir (no manifest.json) nor an exported dir"
    )
    for uri in ("magnet:?xt=urn:btmh:1220" + "ab" * 32, "https://example.org/x"):
        with pytest.raises(LoadError) as uri_info:
            resolve_source(uri)
        assert str(uri_info.value) == (
            f"{uri[:80]!r}: URIs are fetched by the daemon; this is not a local path"
        )


def test_open_self_signed_needs_no_trust_and_names_the_key(
    release: Path, trust: TrustStore, key: PrivateKey
) -> None:
    data = (release / MANIFEST_NAME).read_bytes()
    own = open_self_signed(release)
    assert own.publisher_name == f"key-{key.public.fingerprint}"
    assert own.manifest_sha256 == hashlib.sha256(data).hexdigest()
    trusted = open_release(release, trust)
    assert trusted.publisher_name == trust.require(key.public)
    assert trusted.manifest_sha256 == own.manifest_sha256


def test_size_limits_and_read_errors_name_the_file(
    release: Path, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sig = release / SIGNATURE_NAME
    good = sig.read_bytes()
    assert len(good) == SIGNATURE_BYTES
    sig.write_bytes(good + b"\0")
    with pytest.raises(SignatureError) as bad_sig:
        open_release(release, trust)
    assert str(bad_sig.value) == f"signature {sig} is over the limit of {SIGNATURE_BYTES} bytes"
    sig.write_bytes(good[:-1])
    with pytest.raises(SignatureError):
        open_release(release, trust)
    sig.write_bytes(good)
    manifest = release / MANIFEST_NAME
    small = dataclasses.replace(LIMITS, manifest_bytes=manifest.stat().st_size - 1)
    with pytest.raises(ManifestError) as info:
        open_release(release, trust, limits=small)
    assert str(info.value) == (
        f"manifest {manifest} is over the limit of {manifest.stat().st_size - 1} bytes"
    )
    manifest.unlink()
    manifest.mkdir()
    with pytest.raises(ManifestError, match=f"^cannot read manifest {manifest}: "):
        open_release(release, trust)
    manifest.rmdir()
    with pytest.raises(ManifestError) as info:
        open_release(release, trust)
    assert str(info.value) == f"{manifest} is missing: not a release directory"


def test_an_expired_release_says_when(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    created = 1_700_000_000  # conftest's make_release packs at this time
    rel = make_release(make_model(), expires=created + 60)
    assert open_release(rel, trust, now=created + 60).manifest.expires == created + 60
    with pytest.raises(ReleaseExpiredError) as info:
        open_release(rel, trust, now=created + 61)
    assert str(info.value) == f"release test/model v1 expired at unix time {created + 60}"


def test_the_given_limits_bound_the_parsed_manifest_too(release: Path, trust: TrustStore) -> None:
    """Not only the manifest's size: every cap of ``limits`` applies, self-signed or not."""
    chunks = len(open_release(release, trust).manifest.chunks)
    fewer = dataclasses.replace(LIMITS, chunks=chunks - 1)
    for opened in (
        lambda: open_release(release, trust, limits=fewer),
        lambda: open_self_signed(release, limits=fewer),
    ):
        with pytest.raises(ManifestError) as info:
            opened()
        assert str(info.value) == (f"chunks has {chunks} entries, over the limit of {chunks - 1}")


def test_reading_a_manifest_stops_one_byte_past_the_limit(release: Path, trust: TrustStore) -> None:
    """A manifest that never ends (a FIFO here) is refused without waiting for its end."""
    manifest = release / MANIFEST_NAME
    manifest.unlink()
    os.mkfifo(manifest)
    small = dataclasses.replace(LIMITS, manifest_bytes=1000)
    done = threading.Event()
    waited_out: list[bool] = []

    def writer() -> None:
        with open(manifest, "wb") as fh:
            fh.write(b" " * 1001)
            fh.flush()
            waited_out.append(not done.wait(timeout=10))  # the pipe stays open meanwhile

    thread = threading.Thread(target=writer, daemon=True)  # never holds up the exit
    thread.start()
    try:
        with pytest.raises(ManifestError) as info:
            open_release(release, trust, limits=small)
    finally:
        done.set()
        thread.join(timeout=20)
    assert str(info.value) == f"manifest {manifest} is over the limit of 1000 bytes"
    assert waited_out == [False]  # the reader returned while the writer still held it open
