"""Following a name: fetch each new version of a ``p2pw://`` name as it appears.

A followed name is kept in the catalog's ``follows`` table (so a watch survives a
restart). One task polls every followed name at ``follow_interval`` seconds, each wait
drawn from ±20 % around it so that the daemons of a cluster do not ask the DHT in step.
A new version is fetched by name (so every check of :mod:`.names` applies, trust
included) with the follow's ``include``; since chunks are shared by content, only the
chunks that changed move. With ``keep`` N, releases of the name older than the N newest
are removed with the chunks that only they use. Events: ``name_update`` (a newer version
was found) and ``name_fetched`` (it is complete), both with the name and version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from p2pweights.errors import LoadError, P2PWeightsError
from p2pweights.names import parse_name

from .catalog import Catalog
from .config import DaemonConfig
from .names import Names

__all__ = ["Follow", "Follower"]

log = logging.getLogger(__name__)

Fetch = Callable[..., Awaitable[dict[str, Any]]]
Wait = Callable[[str, float], Awaitable[dict[str, Any]]]
Remove = Callable[..., Awaitable[dict[str, Any]]]
Notify = Callable[..., None]
_DONE = ("seeding", "complete")


@dataclass(frozen=True, slots=True)
class Follow:
    """A name this daemon follows."""

    name: str
    include: tuple[str, ...]
    keep: int
    version: int | None
    """The newest version fetched for it so far."""

    def view(self) -> dict[str, Any]:
        """The JSON shape (``GET /v1/follows``, ``p2pw ls``)."""
        return {
            "name": self.name,
            "include": list(self.include),
            "keep": self.keep,
            "version": self.version,
        }


class Follower:
    """The follows table and the task that polls it."""

    def __init__(
        self,
        config: DaemonConfig,
        catalog: Catalog,
        names: Names,
        *,
        fetch: Fetch,
        wait: Wait,
        remove: Remove,
        notify: Notify,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.names = names
        self._fetch, self._wait, self._remove, self._notify = fetch, wait, remove, notify
        self._wake = asyncio.Event()

    def follows(self) -> list[Follow]:
        """Every followed name."""
        rows = self.catalog.db.execute(
            "SELECT name, include_json, keep, version FROM follows ORDER BY added"
        ).fetchall()
        return [Follow(n, tuple(json.loads(i)), int(k), v) for n, i, k, v in rows]

    def follow(self, name: str, *, include: Sequence[str] = (), keep: int = 0) -> Follow:
        """Start following ``name`` (again, with these settings if already followed).

        Raises:
            NameFormatError: a malformed name.
            LoadError: a name pinned to a version (it never changes).
        """
        ref = parse_name(name)
        if ref.version is not None:
            raise LoadError(f"{name[:120]} is pinned to version {ref.version}: nothing to follow")
        with self.catalog.transaction():
            self.catalog.db.execute(
                "INSERT INTO follows (name, include_json, keep, version, added)"
                " VALUES (?,?,?,NULL,?) ON CONFLICT (name) DO UPDATE SET"
                " include_json=excluded.include_json, keep=excluded.keep",
                (ref.text, json.dumps(list(include)), keep, time.time()),
            )
        self._wake.set()  # look now, not after the next interval
        return next(f for f in self.follows() if f.name == ref.text)

    def unfollow(self, name: str) -> bool:
        """Stop following ``name``; True if it was followed."""
        text = parse_name(name).text
        with self.catalog.transaction():
            cur = self.catalog.db.execute("DELETE FROM follows WHERE name=?", (text,))
        return cur.rowcount > 0

    async def run_forever(self) -> None:
        """Poll the followed names, until cancelled."""
        while True:
            for f in self.follows():
                try:
                    await self.check(f)
                except (P2PWeightsError, OSError) as exc:
                    log.warning("following %s: %s", f.name, exc)
            interval = self.config.follow_interval * random.uniform(0.8, 1.2)  # noqa: S311
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()

    async def check(self, f: Follow) -> dict[str, Any] | None:
        """Fetch ``f``'s name if it points to a newer version than the last one fetched.

        Returns:
            The fetched release's record, or None when there was nothing new.
        """
        resolved = await self.names.resolve(f.name)
        version = resolved.record.version
        if f.version is not None and version <= f.version:
            return None
        rid = resolved.record.info_hash
        self._notify(rid, "name_update", name=f.name, version=version)
        await self._fetch(f.name, include=f.include)
        info = await self._wait(rid, 3600)
        if info["state"] not in _DONE:
            raise LoadError(f"{f.name} v{version}: the fetch ended {info['state']}")
        with self.catalog.transaction():
            self.catalog.db.execute(
                "UPDATE follows SET version=? WHERE name=?", (version, f.name)
            )
        self._notify(rid, "name_fetched", name=f.name, version=version)
        if f.keep:
            await self._prune(resolved.record.name, resolved.key.text, f.keep)
        return info

    async def _prune(self, release_name: str, publisher: str, keep: int) -> None:
        """Remove all but the ``keep`` newest releases of the name, and their own chunks."""
        rows = [
            r
            for r in self.catalog.releases(torrents=False)
            if r.name == release_name and r.publisher == publisher and r.state in _DONE
        ]
        rows.sort(key=lambda r: r.version or 0, reverse=True)
        for old in rows[keep:]:
            await self._remove(old.id, delete_data=True)
