"""Fetching a release through the daemon, for ``load(uri)`` and ``p2pw fetch``.

A source is remote when it is a magnet link, a 64-digit v2 info-hash, or a ``.torrent``
file. The daemon is started on demand, fetches and verifies the release, and keeps seeding
it; the caller gets the path of the verified release dir in the daemon's store.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._canonical import loads_strict
from .client import DEFAULT_TIMEOUT, ensure_daemon, error_named
from .errors import (
    FetchTimeoutError,
    LoadError,
    ManifestError,
    ReleaseMismatchError,
    SwarmError,
)
from .export import export, reuse_export
from .names import is_name
from .paths import data_dir
from .release import EXPORT_POINTER, Release, open_release
from .trust import trust_for

__all__ = [
    "DEFAULT_TIMEOUT",
    "Revision",
    "check_revision",
    "ensure_daemon",
    "export_to_local_dir",
    "fetch",
    "fetch_async",
    "is_remote",
    "parse_revision",
    "raise_release_error",
]

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_REV_VERSION = re.compile(r"[0-9]{1,7}")
_REV_SHA = re.compile(r"[0-9a-fA-F]{8,64}")


def is_remote(source: str | Path) -> bool:
    """True for magnet links, ``p2pw://`` names, bare v2 info-hashes and ``.torrent`` files."""
    text = str(source)
    return (
        text.startswith("magnet:")
        or is_name(text)
        or bool(_HEX64.fullmatch(text))
        or text.endswith(".torrent")
    )


def raise_release_error(info: dict[str, Any]) -> None:
    """Turn a failed release's recorded error back into the matching exception.

    Raises:
        P2PWeightsError: the subclass named in the error, when it is one of ours.
    """
    text = str(info.get("error") or "failed")
    kind, _, message = text.partition(": ")
    raise error_named(kind, message or text) or SwarmError(text)


@dataclass(frozen=True, slots=True)
class Revision:
    """A pinned revision: a release version, or a prefix of the manifest's sha256."""

    text: str
    version: int | None = None
    sha256_prefix: str | None = None


def parse_revision(revision: str | int) -> Revision:
    """Parse a ``revision`` pin.

    Up to 7 decimal digits (or an int) name a release ``version``; 8 to 64 hex digits are
    a prefix of the sha256 of the release's signed ``manifest.json``. The HF "commit" that
    ``p2pw export --hf-cache`` writes is that sha256's first 40 digits, so it pins too.

    Raises:
        LoadError: anything else.
    """
    if isinstance(revision, int) and not isinstance(revision, bool) and revision >= 0:
        return Revision(str(revision), version=revision)
    text = revision if isinstance(revision, str) else ""
    if _REV_VERSION.fullmatch(text):
        return Revision(text, version=int(text))
    if _REV_SHA.fullmatch(text):
        return Revision(text, sha256_prefix=text.lower())
    raise LoadError(
        f"revision {str(revision)[:80]!r} is neither a release version (up to 7 digits) "
        "nor a manifest sha256 prefix (8 to 64 hex digits)"
    )


def check_revision(release: Release, pin: Revision) -> None:
    """Raise unless ``release`` is the one ``pin`` names.

    Raises:
        ReleaseMismatchError: another version, or another manifest.
    """
    m = release.manifest
    if pin.version is not None and m.version != pin.version:
        raise ReleaseMismatchError(
            f"fetched {m.name} v{m.version}, but revision {pin.text!r} pins version {pin.version}"
        )
    if pin.sha256_prefix is not None and not release.manifest_sha256.startswith(pin.sha256_prefix):
        raise ReleaseMismatchError(
            f"fetched {m.name} v{m.version}, manifest sha256 "
            f"{release.manifest_sha256[:16]}..., not revision {pin.text!r}"
        )


def _open_fetched(path: Path, home: Path | str | None) -> Release:
    return open_release(path, trust_for(None, home))


async def fetch_async(
    uri: str,
    *,
    home: Path | str | None = None,
    include: Sequence[str] = (),
    peers: Sequence[str] = (),
    trackers: Sequence[str] = (),
    trust_on_first_use: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    web_seeds: Sequence[str] = (),
    revision: str | int | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_started: Callable[[dict[str, Any]], None] | None = None,
    allow_stale: bool = False,
) -> dict[str, Any]:
    """Fetch through the daemon and wait; returns the daemon's record of the release.

    ``revision`` (see :func:`parse_revision`) is checked against the fetched release's
    authenticated manifest, read locally with this data dir's trust store. A magnet or
    info-hash already pins the exact content; the revision makes that pin explicit and
    readable. A release that does not match stays in the daemon (verified, seeding) but is
    not returned. ``on_event`` sees the release's daemon events; ``on_started`` the
    daemon's first answer (its id), before the wait.

    Raises:
        LoadError: a malformed ``revision`` (before anything is fetched).
        ReleaseMismatchError: the fetched release is not the pinned revision.
        FetchTimeoutError: not complete within ``timeout`` (the daemon's fetch goes on).
        SwarmError: the swarm failed.
        TrustError, FormatError, ...: the release was refused (the daemon's reason).
    """
    pin = parse_revision(revision) if revision is not None else None
    client = await ensure_daemon(data_dir(home))
    started = await client.fetch(
        uri,
        peers=peers,
        trackers=trackers,
        include=include,
        trust_on_first_use=trust_on_first_use,
        web_seeds=web_seeds,
        allow_stale=allow_stale,
    )
    rid = str(started["id"])
    if on_started is not None:
        on_started(started)
    watcher: asyncio.Task[None] | None = None
    if on_event is not None:
        callback = on_event

        async def watch() -> None:
            async for event in client.events():
                if event.get("id") == rid:
                    callback(event)

        watcher = asyncio.create_task(watch())
    deadline = time.monotonic() + timeout
    try:
        while True:  # the daemon answers a wait within an hour at most
            info = await client.wait(rid, max(0.0, min(deadline - time.monotonic(), 3600.0)))
            if not info.get("timed_out") or time.monotonic() >= deadline:
                break
    finally:
        if watcher is not None:
            watcher.cancel()
            with_suppressed = asyncio.gather(watcher, return_exceptions=True)
            await with_suppressed
    if info["state"] in ("error", "paused"):  # paused: the store's disk is full
        raise_release_error(info)
    if info.get("timed_out"):
        raise FetchTimeoutError(
            f"release {rid[:12]} not complete after {timeout:.0f}s (state {info['state']}); "
            "the daemon goes on fetching it: wait longer with a larger timeout"
        )
    if pin is not None:
        release = await asyncio.to_thread(_open_fetched, Path(info["path"]), home)
        check_revision(release, pin)
    return info


def _exported_from(local_dir: Path, release: Path) -> str | None:
    """The manifest sha256 that ``local_dir``'s export pointer names, if it names ``release``.

    A claim only: :func:`p2pweights.export.reuse_export` then checks every file.
    """
    pointer = local_dir / EXPORT_POINTER
    if not pointer.is_file() or pointer.is_symlink():
        return None
    try:
        doc = loads_strict(pointer.read_bytes(), max_bytes=1 << 16, what="export pointer")
    except (ManifestError, OSError):
        return None
    if not isinstance(doc, dict) or doc.get("release") != str(release.resolve()):
        return None
    sha = doc.get("manifest_sha256")
    return sha if isinstance(sha, str) else None


def export_to_local_dir(release: Path, local_dir: Path, *, home: Path | str | None) -> Path:
    """A linked export of a fetched release into ``local_dir``, for ``from_pretrained``.

    Exporting the same release into the same dir again is a no-op, as with
    ``snapshot_download(local_dir=...)``, but only when every file there is still the
    export's own (a pointer file alone proves nothing: its fields are public); any other
    non-empty dir is refused.

    Raises:
        ExportError: ``local_dir`` holds something else.
        Everything :func:`p2pweights.export` raises.
    """
    local_dir = Path(local_dir).expanduser()
    rel = _open_fetched(release, home)
    if _exported_from(local_dir, release) == rel.manifest_sha256:
        reuse_export(rel, local_dir)
        return local_dir
    export(release, local_dir, home=home)
    return local_dir


def fetch(
    uri: str,
    *,
    local_dir: Path | str | None = None,
    include: Sequence[str] | None = None,
    revision: str | int | None = None,
    home: Path | str | None = None,
    peers: Sequence[str] = (),
    trust_on_first_use: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Fetch a release through the daemon (started on demand), like ``snapshot_download``.

    Args:
        uri: a magnet link, a ``p2pw://`` name, a v2 info-hash, or a ``.torrent`` file.
        local_dir: also write a linked HF-layout export there (symlinks to the verified
            chunks, read by ``from_pretrained``) and return it.
        include: fetch only the chunks holding tensors matching these globs.
        revision: pin the release: a version (``"3"``) or a manifest sha256 prefix of 8+
            hex digits (see :func:`parse_revision`).
        home: the data dir (default ``$P2PW_HOME``, else the platform's).
        peers: ``IP:PORT`` peers to dial.
        trust_on_first_use: trust the publisher key if it is not trusted yet.
        timeout: seconds to wait for the fetch to complete (then
            :class:`~p2pweights.errors.FetchTimeoutError`; the daemon goes on fetching).

    Returns:
        ``local_dir`` when given, else the verified release dir in the daemon's store
        (pass it to :func:`p2pweights.load`).

    Raises:
        LoadError: a malformed ``revision``, or ``include`` with ``local_dir`` (an HF dir
            with only some weights would load with the others left random).
        ReleaseMismatchError: the fetched release is not the pinned revision.
        ExportError: ``local_dir`` holds something else.
        SwarmError, TrustError, ...: as :func:`fetch_async`.
    """
    if local_dir is not None and include:
        raise LoadError("fetch with include cannot write a local_dir: it would miss weights")
    info = asyncio.run(
        fetch_async(
            uri,
            home=home,
            include=include or (),
            peers=peers,
            trust_on_first_use=trust_on_first_use,
            timeout=timeout,
            revision=revision,
        )
    )
    path = Path(info["path"])
    if local_dir is None:
        return path
    return export_to_local_dir(path, Path(local_dir), home=home)
