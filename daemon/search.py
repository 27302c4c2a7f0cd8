"""Search: each publisher's signed index of its names, kept and read through the swarm.

* **Keep.** When a publish puts a name (its key in ``DATA/keys``, the DHT on), the release
  goes into the ``index_entries`` table under its publisher, with the tags it was
  published with. The publisher's index (:mod:`p2pweights.search_index`) is made anew
  from that table, packed as a release named ``p2pw.index``, signed with the same key,
  seeded, and its ``p2pw://KEY/p2pw.index`` name put like any other; the previous index
  release is removed. At start an index that does not list what the table holds is made
  again.
* **Search.** For each trusted key, and each key given with ``publisher``, the index name
  is resolved with every defence of :mod:`.names` (forgery, rollback, freeze), its release
  is fetched through the swarm, and accepted only if its manifest is signed by that same
  key and is the one the record points to. Its document must name that key too
  (:func:`~p2pweights.search_index.decode_index`): an index lists its signer's names
  only. A key given by hand is read for display (its rows say ``trusted: false``), as a
  name under an untrusted key resolves for display. A publisher whose index cannot be
  had is reported with the reason; the others still answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from p2pweights.errors import (
    CorruptChunkError,
    FetchTimeoutError,
    NameResolutionError,
    P2PWeightsError,
    PointerMismatchError,
    SearchIndexError,
    SearchQueryError,
)
from p2pweights.key_statements import MAX_FILE_BYTES
from p2pweights.keys import PublicKey
from p2pweights.names import NAME_SCHEME, key_text, name_uri, parse_name
from p2pweights.pack import pack
from p2pweights.release import Release, open_self_signed
from p2pweights.search_index import (
    INDEX_FILE,
    INDEX_NAME,
    MAX_INDEX_BYTES,
    IndexEntry,
    SearchIndex,
    check_tags,
    decode_index,
)
from p2pweights.trust import TrustStore, trust_for

from .catalog import Catalog
from .config import DaemonConfig
from .engine import EngineError, TorrentFile
from .names import Names, Resolved, iso_time, magnet_of

__all__ = ["MAX_INDEX_TORRENT", "MAX_PUBLISHERS", "Search", "check_index_torrent", "index_signer"]

log = logging.getLogger(__name__)

MAX_PUBLISHERS = 32
"""Keys one search may name with ``publisher``."""
_EPOCH = 1_600_000_000
"""Index versions count seconds from here (a version has at most 9 digits): a publisher
that lost its catalog still makes a higher version than its last one."""
_PARALLEL = 16
_DONE = ("seeding", "complete")

Publish = Callable[..., Awaitable[dict[str, Any]]]
Fetch = Callable[..., Awaitable[dict[str, Any]]]
Wait = Callable[[str, float], Awaitable[dict[str, Any]]]
Remove = Callable[..., Awaitable[dict[str, Any]]]


def index_signer(catalog: Catalog, rid: str) -> PublicKey | None:
    """The key a fetch of an index must be signed by, when ``rid`` is one; else None.

    A search records the index it fetches like a name's fetch (``name_fetches``); the
    fetch then accepts the manifest under that key alone, trusted or not.
    """
    row = catalog.db.execute(
        "SELECT publisher, name FROM name_fetches WHERE release_id=?", (rid,)
    ).fetchone()
    if row is None or row[1] != INDEX_NAME:
        return None
    return PublicKey.parse(str(row[0]))


MAX_INDEX_TORRENT = MAX_INDEX_BYTES + MAX_FILE_BYTES + (1 << 20)
"""Bytes an index's torrent may hold: the document, the key statements, and 1 MiB for the
manifest and signature of a one-file release."""


def check_index_torrent(catalog: Catalog, rid: str, tf: TorrentFile) -> None:
    """Refuse, at its metadata, an index fetch whose torrent is larger than an index can be.

    The key that signs an index may be any key given with ``--publisher``: its "index"
    could be gigabytes, and a fetch of every chunk starts before the manifest is checked.

    Raises:
        SearchIndexError: ``rid`` is an index fetch and its torrent is too large.
    """
    size = sum(f.size for f in tf.files)
    if size > MAX_INDEX_TORRENT and index_signer(catalog, rid) is not None:
        raise SearchIndexError(
            f"the search index {rid[:16]} holds {size} bytes; an index is at most "
            f"{MAX_INDEX_TORRENT}"
        )


class Search:
    """The publisher's indexes, and search over the indexes of others."""

    def __init__(
        self,
        config: DaemonConfig,
        catalog: Catalog,
        names: Names,
        *,
        staging: Path,
        release_dir: Callable[[str], Path],
        publish: Publish,
        fetch: Fetch,
        wait: Wait,
        remove: Remove,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.names = names
        self._staging, self._release_dir = staging, release_dir
        self._publish, self._fetch, self._wait, self._remove = publish, fetch, wait, remove
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ keep

    def entries(self, publisher: PublicKey) -> list[IndexEntry]:
        """What the publisher's index lists now (from the table)."""
        rows = self.catalog.db.execute(
            "SELECT name, version, info_hash, manifest_sha256, label, tags_json, issued"
            " FROM index_entries WHERE publisher=? ORDER BY name",
            (publisher.text,),
        ).fetchall()
        return [
            IndexEntry(n, v, ih, ms, label, tuple(json.loads(t)), i)
            for n, v, ih, ms, label, t, i in rows
        ]

    async def update(
        self, release: Release, rid: str, tags: Sequence[str]
    ) -> dict[str, Any] | None:
        """Add a published release to its publisher's index, and publish the index anew.

        A newer version already listed stays (with its tags).

        Raises:
            SearchIndexError: bad tags.
        """
        m = release.manifest
        clean = check_tags(list(tags))
        with self.catalog.transaction():
            self.catalog.db.execute(
                "INSERT INTO index_entries VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT (publisher, name) DO UPDATE SET version=excluded.version,"
                " info_hash=excluded.info_hash, manifest_sha256=excluded.manifest_sha256,"
                " label=excluded.label, tags_json=excluded.tags_json, issued=excluded.issued"
                " WHERE excluded.version >= index_entries.version",
                (
                    m.publisher.text, m.name, m.version, rid, release.manifest_sha256,
                    m.label, json.dumps(list(clean)), int(time.time()),
                ),
            )  # fmt: skip
        return await self.publish_index(m.publisher)

    async def publish_index(self, publisher: PublicKey) -> dict[str, Any] | None:
        """Make, sign, seed and name the publisher's index; drop the one it replaces.

        Returns:
            The index's name, version, id and size; None without the key or the DHT.
        """
        key = self.names.signing_key(publisher)
        if key is None or not self.names.engine.dht_enabled:
            return None
        async with self._lock:  # two publishes at once make one index after the other
            now = int(time.time())
            index = SearchIndex(publisher.text, now, tuple(self.entries(publisher)))
            data = index.encode()
            hw = self.names.high_water(publisher, INDEX_NAME)
            version = max(now - _EPOCH, hw[1] + 1 if hw else 1)
            work = self._staging / f"index-{os.getpid()}-{time.monotonic_ns()}"
            try:
                (work / "src").mkdir(parents=True)
                (work / "src" / INDEX_FILE).write_bytes(data)
                await asyncio.to_thread(
                    pack, work / "src", work / "release", name=INDEX_NAME, version=version,
                    key=key, label=f"search index of {publisher.fingerprint}",
                )  # fmt: skip
                info = await self._publish(str(work / "release"), index=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            await self._drop_old(publisher, info["id"])
        log.info("search index v%d of %s: %d names", version, publisher.fingerprint,
                 len(index.entries))
        return {
            "name": name_uri(publisher, INDEX_NAME),
            "version": version,
            "id": info["id"],
            "entries": len(index.entries),
        }

    async def refresh(self) -> None:
        """Make an index again where it does not list what the table holds (at start).

        It waits for the DHT's bootstrap first: a torrent added before it is announced to
        no node, and the index would be named but not found.
        """
        rows = self.catalog.db.execute("SELECT DISTINCT publisher FROM index_entries").fetchall()
        stale = []
        for (text,) in rows:
            publisher = PublicKey.parse(str(text))
            current = self._latest_index(publisher)
            try:
                listed = None if current is None else self._read(current, publisher).entries
            except (P2PWeightsError, OSError):
                listed = None
            if listed is None or set(listed) != set(self.entries(publisher)):
                stale.append(publisher)
        engine = self.names.engine
        if not stale or not engine.dht_enabled or not await engine.dht_bootstrapped(120):
            return
        for publisher in stale:
            try:
                await self.publish_index(publisher)
            except (P2PWeightsError, EngineError, OSError) as exc:
                log.warning("search index of %s not made again: %s", publisher.fingerprint, exc)

    def _latest_index(self, publisher: PublicKey) -> str | None:
        rows = [
            r
            for r in self.catalog.releases(torrents=False)
            if r.name == INDEX_NAME and r.publisher == publisher.text and r.state in _DONE
        ]
        return max(rows, key=lambda r: r.version or 0).id if rows else None

    async def _drop_old(self, publisher: PublicKey, keep: str) -> None:
        for r in self.catalog.releases(torrents=False):
            if r.name == INDEX_NAME and r.publisher == publisher.text and r.id != keep:
                await self._remove(r.id, delete_data=True)

    # ------------------------------------------------------------------ search

    def candidates(
        self, trust: TrustStore, publishers: Sequence[str]
    ) -> dict[str, tuple[PublicKey, bool]]:
        """Every key to read: the trusted ones, and those given (flagged True).

        Raises:
            SearchQueryError: more than :data:`MAX_PUBLISHERS` given.
            NameFormatError: a given publisher that is neither a key nor a trust name.
            TrustStoreError: a trust-store name that is not in the store.
        """
        if len(publishers) > MAX_PUBLISHERS:
            raise SearchQueryError(f"at most {MAX_PUBLISHERS} --publisher keys per search")
        out = {e.key.text: (e.key, False) for e in trust.entries}
        for text in publishers:
            key = parse_name(f"{NAME_SCHEME}{text}/{INDEX_NAME}").publisher_key(trust)
            out[key.text] = (key, True)
        return out

    async def search(
        self, words: tuple[str, ...], publishers: Sequence[str], timeout: float
    ) -> dict[str, Any]:
        """The rows of every index read whose name, label or tags hold every word.

        Raises:
            NameResolutionError: the DHT is off.
            SearchQueryError, NameFormatError, TrustStoreError: see :meth:`candidates`.
        """
        trust = trust_for(None, self.config.home)
        keys = self.candidates(trust, publishers)
        self.names.need_dht()  # the same one line a name gives without the DHT
        gate = asyncio.Semaphore(_PARALLEL)

        async def one(key: PublicKey, given: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            async with gate:
                return await self._one(key, given, words, trust, timeout)

        # One deadline for the whole search: a publisher still not read by then is
        # reported as such (its fetch goes on in the background for the next search).
        tasks = {asyncio.ensure_future(one(k, g)): k for k, g in keys.values()}
        finished, late = (
            await asyncio.wait(tasks, timeout=timeout + self.config.name_resolve_timeout)
            if tasks
            else (set(), set())
        )
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        done = [t.result() for t in tasks if t in finished]
        for task in late:
            key = tasks[task]
            entry = trust.entry_of(key)
            done.append(({
                "publisher": key.text, "publisher_name": entry.name if entry else None,
                "trusted": entry is not None, "given": keys[key.text][1], "status": "error",
                "error": f"FetchTimeoutError: its index was not read within {timeout:g} s",
            }, []))  # fmt: skip
        rows = sorted(
            (r for _, rs in done for r in rs),
            key=lambda r: (not r["trusted"], r["publisher_name"] or r["publisher"], r["release"]),
        )
        return {"words": list(words), "results": rows, "publishers": [p for p, _ in done]}

    async def _one(
        self, key: PublicKey, given: bool, words: tuple[str, ...], trust: TrustStore,
        timeout: float,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        entry = trust.entry_of(key)
        report: dict[str, Any] = {
            "publisher": key.text,
            "publisher_name": entry.name if entry else None,
            "trusted": entry is not None,
            "given": given,
        }
        try:
            resolved = await self.names.resolve(name_uri(key, INDEX_NAME))
            keep = entry is not None or self.names.signing_key(key) is not None  # or our own
            index = await self._get(resolved, timeout, keep=keep)
        except NameResolutionError as exc:
            report.update(status="no index", error=str(exc))
            return report, []
        except (P2PWeightsError, OSError) as exc:
            report.update(status="error", error=f"{type(exc).__name__}: {exc}")
            return report, []
        report.update(status="ok", index_version=resolved.record.version,
                      issued=iso_time(index.issued_at), entries=len(index.entries))
        rows = []
        for e in index.entries:
            trusted = entry is not None and entry.covers(e.name)
            if not e.matches(words) or not (trusted or given):
                continue  # a trusted key's names outside its scope count as untrusted
            who = entry.name if entry else key_text(key)
            rows.append({
                "publisher": key.text, "publisher_name": entry.name if entry else None,
                "trusted": trusted, "name": f"{NAME_SCHEME}{who}/{e.name}",
                "release": e.name, "version": e.version, "label": e.label,
                "tags": list(e.tags), "info_hash": e.info_hash,
                "manifest_sha256": e.manifest_sha256, "issued": iso_time(e.issued_at),
            })  # fmt: skip
        report["matches"] = len(rows)
        return report, rows

    async def _get(self, resolved: Resolved, timeout: float, *, keep: bool) -> SearchIndex:
        """The index a resolved index name points to: fetched if need be, then checked.

        A trusted key's latest index stays, seeded (it helps the next reader); the ones it
        replaces go, and so does the index of a key read only because it was given.
        """
        r = resolved.record
        row = self.catalog.get(r.info_hash)
        if row is None or row.state not in _DONE:
            with self.catalog.transaction():  # the fetch accepts this key's manifest, no other
                self.catalog.db.execute(
                    "INSERT OR REPLACE INTO name_fetches VALUES (?,?,?,?,?)",
                    (r.info_hash, resolved.key.text, r.name, r.version, r.manifest_sha256),
                )
            await self._fetch(magnet_of(r))
            info = await self._wait(r.info_hash, timeout)
            if info["state"] not in _DONE:
                raise FetchTimeoutError(
                    f"the index v{r.version} of {resolved.key.fingerprint} was not fetched "
                    f"within {timeout:g} s ({info['state']}: {info.get('error') or 'no peer'})"
                )
        try:
            return self._read(r.info_hash, resolved.key, r.manifest_sha256)
        finally:
            await self._drop_old(resolved.key, r.info_hash if keep else "")

    def _read(self, rid: str, publisher: PublicKey, sha256: str | None = None) -> SearchIndex:
        """Read and check the index document of release ``rid``."""
        release = open_self_signed(self._release_dir(rid))
        m = release.manifest
        if m.publisher != publisher or m.name != INDEX_NAME or (
            sha256 is not None and release.manifest_sha256 != sha256
        ):
            raise PointerMismatchError(
                f"release {rid[:16]} is not the index of {publisher.fingerprint} its name "
                "points to"
            )
        f = next((f for f in m.files if f.name == INDEX_FILE and f.chunk), None)
        if f is None or f.chunk is None or f.size > MAX_INDEX_BYTES:
            raise SearchIndexError(f"release {rid[:16]} holds no {INDEX_FILE} of sane size")
        with open(release.chunk_path(f.chunk), "rb") as fh:
            data = fh.read(MAX_INDEX_BYTES + 1)
        if hashlib.sha256(data).hexdigest() != f.sha256:
            raise CorruptChunkError(f"{INDEX_FILE} of release {rid[:16]} is not the signed file")
        return decode_index(data, publisher)
