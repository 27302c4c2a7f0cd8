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
from pathlib import Path
from typing import Any

from .client import DaemonClient, error_named, start_daemon
from .errors import DaemonUnavailableError, SwarmError
from .paths import data_dir

__all__ = ["ensure_daemon", "fetch", "is_remote", "raise_release_error"]

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def is_remote(source: str | Path) -> bool:
    """True for magnet links, bare v2 info-hashes and ``.torrent`` files."""
    text = str(source)
    return text.startswith("magnet:") or bool(_HEX64.fullmatch(text)) or text.endswith(".torrent")


async def ensure_daemon(home: Path, *, autostart: bool = True) -> DaemonClient:
    """A client whose daemon answers, starting one in the background if needed.

    Raises:
        DaemonUnavailableError: none answers and ``autostart`` is off, or it failed to start.
    """
    client = DaemonClient(home)
    try:
        await client.status()
    except DaemonUnavailableError:
        if not autostart:
            raise
        try:
            await asyncio.to_thread(start_daemon, home)
        except DaemonUnavailableError:
            # Another process may have started one first (ours then exits because the
            # data dir is locked): use it if it answers, else report our failure.
            await client.status()
            return client
        await client.status()
    return client


def raise_release_error(info: dict[str, Any]) -> None:
    """Turn a failed release's recorded error back into the matching exception.

    Raises:
        P2PWeightsError: the subclass named in the error, when it is one of ours.
    """
    text = str(info.get("error") or "failed")
    kind, _, message = text.partition(": ")
    raise error_named(kind, message or text) or SwarmError(text)


async def fetch_async(
    uri: str,
    *,
    home: Path | str | None = None,
    include: Sequence[str] = (),
    peers: Sequence[str] = (),
    trackers: Sequence[str] = (),
    trust_on_first_use: bool = False,
    timeout: float = 3600.0,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Fetch through the daemon and wait; returns the daemon's record of the release.

    Raises:
        SwarmError: not complete within ``timeout``, or the swarm failed.
        TrustError, FormatError, ...: the release was refused (the daemon's reason).
    """
    client = await ensure_daemon(data_dir(home))
    started = await client.fetch(
        uri, peers=peers, trackers=trackers, include=include, trust_on_first_use=trust_on_first_use
    )
    rid = str(started["id"])
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
    if info["state"] == "error":
        raise_release_error(info)
    if info.get("timed_out"):
        raise SwarmError(
            f"release {rid[:12]} not complete after {timeout:.0f}s (state {info['state']})"
        )
    return info


def fetch(
    uri: str,
    *,
    home: Path | str | None = None,
    include: Sequence[str] | None = None,
    peers: Sequence[str] = (),
    trust_on_first_use: bool = False,
    timeout: float = 3600.0,
) -> Path:
    """Fetch a release through the daemon (started on demand) and return its directory.

    The directory is a verified release dir: pass it to :func:`p2pweights.load`.
    """
    info = asyncio.run(
        fetch_async(
            uri,
            home=home,
            include=include or (),
            peers=peers,
            trust_on_first_use=trust_on_first_use,
            timeout=timeout,
        )
    )
    return Path(info["path"])
