"""p2pw:// names in the daemon: publish, keep alive, resolve with its defences, fetch.

* **Publish.** After ``publish``, a publisher whose signing key sits unencrypted in
  ``DATA/keys`` signs two BEP 44 items: one under the release name (the latest version)
  and one under ``NAME@VERSION``. The sequence number is ``max(now in seconds, last + 1)``,
  so it keeps rising even after the DHT forgot the item (see :mod:`.engine.krpc`).
* **Keep alive.** Every ``name_republish_interval`` seconds the publisher signs its items
  again with a new sequence number and a renewed expiry, and every daemon that seeds a
  release puts the latest signed item it holds for it back, verbatim: a name outlives its
  publisher's uptime up to the item's signed expiry.
* **Resolve.** The engine walks the DHT and keeps the highest sequence number whose
  signature holds; the signature is checked here again, then the record: the name it
  names (a salt is a hash), the high-water mark of sequence number and version kept in
  the catalog per (publisher, name) (rollback), and the signed expiry (freeze).
* **Fetch.** Only under a key trusted for the name (or with trust on first use); the
  manifest that arrives must carry the record's name, version and sha256 (mix-and-match).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from p2pweights.errors import (
    KeyFileError,
    NameResolutionError,
    OutOfScopeError,
    P2PWeightsError,
    PointerMismatchError,
    RollbackError,
    SignatureError,
    StaleNameError,
    UntrustedKeyError,
)
from p2pweights.keys import PrivateKey, PublicKey, load_private_key
from p2pweights.names import (
    NameRecord,
    NameRef,
    SignedItem,
    name_uri,
    parse_name,
    salt_for,
)
from p2pweights.release import Release
from p2pweights.trust import TrustStore, trust_for

from .catalog import Catalog
from .config import DaemonConfig
from .engine import Engine, EngineError
from .key_items import learn_from_dht, put_own_statements

__all__ = ["Names", "Resolved"]

log = logging.getLogger(__name__)

Notify = Callable[..., None]


@dataclass(frozen=True, slots=True)
class Resolved:
    """A name's verified record, and what this daemon knows of its publisher."""

    ref: NameRef
    key: PublicKey
    item: SignedItem
    record: NameRecord
    trust_name: str | None
    """The trust-store entry of the key, if it is trusted for the name."""
    stale: bool
    authoritative: bool

    def view(self) -> dict[str, Any]:
        """The JSON shape of ``p2pw resolve``."""
        r = self.record
        return {
            "name": self.ref.text,
            "release": r.name,
            "version": r.version,
            "info_hash": r.info_hash,
            "manifest_sha256": r.manifest_sha256,
            "issued": iso_time(r.issued_at),
            "expires": iso_time(r.expires_at),
            "seq": self.item.seq,
            "publisher": self.key.text,
            "publisher_name": self.trust_name,
            "trusted": self.trust_name is not None,
            "stale": self.stale,
            "web_seeds": list(r.web_seeds),
            "magnet": magnet_of(r),
            "source": "dht" if self.authoritative else "dht (walk cut short by the timeout)",
        }


def magnet_of(record: NameRecord) -> str:
    """A v2 magnet for the record; its web seeds go in as ``ws=``, which stay untrusted."""
    seeds = "".join(f"&ws={quote(u, safe='')}" for u in record.web_seeds)
    return f"magnet:?xt=urn:btmh:1220{record.info_hash}{seeds}"


def iso_time(t: int) -> str:
    """A Unix time as the API writes it: ``YYYY-MM-DDTHH:MM:SSZ``, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Names:
    """The daemon's names: its table in the catalog, and the DHT through the engine."""

    def __init__(
        self,
        config: DaemonConfig,
        engine: Engine,
        catalog: Catalog,
        notify: Notify,
        seeding: Callable[[str], bool],
    ) -> None:
        self.config = config
        self.engine = engine
        self.catalog = catalog
        self._notify = notify
        self._seeding = seeding

    # ------------------------------------------------------------------ the table

    def high_water(self, publisher: PublicKey, key_name: str) -> tuple[int, int] | None:
        """The highest (sequence number, version) accepted for this name, if any."""
        row = self.catalog.db.execute(
            "SELECT seq, version FROM names WHERE publisher=? AND name=?",
            (publisher.text, key_name),
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def _store(
        self, key_name: str, item: SignedItem, record: NameRecord, *, own: bool = False
    ) -> None:
        """Keep ``item`` as the latest of its name, and raise the high-water mark."""
        publisher = PublicKey(item.key).text
        with self.catalog.transaction():
            self.catalog.db.execute(
                "INSERT INTO names (publisher, name, seq, version, item_json, info_hash, own,"
                " web_seeds_json, updated) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (publisher, name) DO UPDATE SET"
                " seq=excluded.seq, version=excluded.version, item_json=excluded.item_json,"
                " info_hash=excluded.info_hash, own=max(own, excluded.own),"
                " updated=excluded.updated WHERE excluded.seq > names.seq",
                (
                    publisher,
                    key_name,
                    item.seq,
                    record.version,
                    json.dumps(item.to_json()),
                    record.info_hash,
                    int(own),
                    json.dumps(list(record.web_seeds)),
                    time.time(),
                ),
            )

    def _items(self) -> list[tuple[str, bool, SignedItem]]:
        rows = self.catalog.db.execute("SELECT name, own, item_json FROM names").fetchall()
        return [(str(n), bool(o), SignedItem.from_json(json.loads(j))) for n, o, j in rows]

    def held(self) -> list[dict[str, Any]]:
        """Every name this daemon holds a record of (for ``ls`` and the tests)."""
        out = []
        for name, own, item in self._items():
            record = NameRecord.decode(item.value)
            out.append({"name": name, "own": own, "seq": item.seq, "version": record.version})
        return out

    # ------------------------------------------------------------------ resolve

    def _trust(self) -> TrustStore:
        return trust_for(None, self.config.home)

    def need_dht(self) -> None:
        """Raise the one-line error a name gives while the DHT is off (NameResolutionError)."""
        if not self.engine.dht_enabled:
            raise NameResolutionError(
                "p2pw:// names need the DHT, which is off in this daemon: fetch by magnet "
                "link, or enable the DHT (`p2pw daemon start --dht [--dht-bootstrap HOST:PORT]`)"
            )

    async def resolve(self, text: str, *, allow_stale: bool = False) -> Resolved:
        """Resolve a name through the DHT, with every check that follows.

        Raises:
            NameFormatError: a malformed name.
            TrustStoreError: a publisher that is neither a trust name nor a key.
            NameResolutionError: the DHT is off, or nothing is published under the name.
            SignatureError: the item's signature does not hold (forgery).
            PointerMismatchError: the record is of another name or version.
            RollbackError: an older record than one already accepted.
            StaleNameError: past its signed expiry (unless ``allow_stale``).
            RevokedKeyError: the publisher key is revoked (a certificate seen before, or
                one the DHT holds under the key: see :mod:`.key_items`).
        """
        ref = parse_name(text)
        trust = self._trust()
        key = ref.publisher_key(trust)
        self.need_dht()
        timeout = self.config.name_resolve_timeout
        try:
            got, _ = await asyncio.gather(
                self.engine.dht_get(key.raw, ref.salt, timeout),
                learn_from_dht(self.engine, trust, key, timeout),  # its revocation, if any
            )
        except EngineError as exc:
            raise NameResolutionError(f"{ref.text}: {exc}") from exc
        trust.refuse_revoked(key)
        if got.best is None:
            raise NameResolutionError(
                f"no DHT node holds a record for {ref.text[:120]} (not published, or "
                "expired from the DHT); fetch it by magnet link"
            )
        item = got.best
        if item.key != key.raw or item.salt != ref.salt:
            raise SignatureError(f"the DHT answered {ref.text[:120]} with another key's item")
        item.verify()  # libtorrent checked it too; a forged value never gets further
        record = NameRecord.decode(item.value)
        if record.name != ref.name or (ref.version is not None and record.version != ref.version):
            raise PointerMismatchError(
                f"the record under {ref.text[:120]} names {record.name} v{record.version}"
            )
        hw = self.high_water(key, ref.key_name)
        if hw is not None and (item.seq < hw[0] or record.version < hw[1]):
            raise RollbackError(
                f"{ref.text[:120]}: the DHT returned v{record.version} (seq {item.seq}), older "
                f"than v{hw[1]} (seq {hw[0]}) already seen: someone serves a superseded record"
            )
        stale = record.expired()
        if stale and not allow_stale:
            raise StaleNameError(
                f"{ref.text[:120]}: its record expired at {iso_time(record.expires_at)} "
                f"(v{record.version}); the publisher has not renewed it. A freeze attack "
                "looks the same: pass --allow-stale only if you accept an old version"
            )
        if stale:
            log.warning(
                "STALE NAME: %s points to v%d, expired at %s; used because allow_stale was given",
                ref.text,
                record.version,
                iso_time(record.expires_at),
            )
        self._store(ref.key_name, item, record)
        entry = trust.entry_of(key)
        trusted = entry.name if entry is not None and entry.covers(record.name) else None
        return Resolved(ref, key, item, record, trusted, stale, got.authoritative)

    # ------------------------------------------------------------------ fetch by name

    async def for_fetch(
        self, text: str, *, tofu: bool, allow_stale: bool
    ) -> tuple[str, Resolved]:
        """The magnet to fetch for a name, once trust allows it.

        Raises:
            UntrustedKeyError: the publisher key is not trusted, and no ``tofu``.
            OutOfScopeError: trusted, but not for this release name.
            Everything :meth:`resolve` raises.
        """
        resolved = await self.resolve(text, allow_stale=allow_stale)
        if resolved.trust_name is None and not tofu:
            entry = self._trust().entry_of(resolved.key)
            if entry is not None:
                raise OutOfScopeError(
                    f"key {entry.name!r} is not trusted for {resolved.record.name}"
                )
            raise UntrustedKeyError(
                f"{resolved.ref.text[:120]} resolves (v{resolved.record.version}), but its "
                f"publisher key {resolved.key.fingerprint} is not trusted: `p2pw trust add "
                f"{resolved.key.text}`, or fetch with --trust-on-first-use"
            )
        r = resolved.record
        with self.catalog.transaction():
            self.catalog.db.execute(
                "INSERT OR REPLACE INTO name_fetches VALUES (?,?,?,?,?)",
                (r.info_hash, resolved.key.text, r.name, r.version, r.manifest_sha256),
            )
        return magnet_of(r), resolved

    def check_fetched(self, rid: str, release: Release) -> None:
        """Refuse a release fetched for a name unless it is what the record says.

        Raises:
            PointerMismatchError: another name, version, manifest or publisher.
        """
        row = self.catalog.db.execute(
            "SELECT publisher, name, version, manifest_sha256 FROM name_fetches"
            " WHERE release_id=?",
            (rid,),
        ).fetchone()
        if row is None:
            return
        m = release.manifest
        got = (m.publisher.text, m.name, m.version, release.manifest_sha256)
        if got != tuple(row):
            raise PointerMismatchError(
                f"the manifest fetched for {row[1]} v{row[2]} is {m.name} v{m.version} "
                f"(sha256 {release.manifest_sha256[:16]}...), not what the name's record "
                "points to"
            )

    # ------------------------------------------------------------------ publish

    def record_for(
        self, release: Release, rid: str, web_seeds: Sequence[str], now: int | None = None
    ) -> NameRecord:
        """The record a publish signs; ``encode`` it to check the 1000-byte cap.

        Raises:
            NameRecordError: over BEP 44's 1000 bytes.
        """
        issued = int(time.time()) if now is None else now
        m = release.manifest
        record = NameRecord(
            m.name,
            m.version,
            rid,
            release.manifest_sha256,
            issued,
            issued + int(self.config.name_ttl),
            tuple(web_seeds),
        )
        record.encode()
        return record

    def signing_key(self, publisher: PublicKey) -> PrivateKey | None:
        """The publisher's key if it sits unencrypted in ``DATA/keys``, else None."""
        keys = Path(self.config.home) / "keys"
        for pem in sorted(keys.glob("*.pem")) if keys.is_dir() else []:
            with contextlib.suppress(KeyFileError, OSError):
                key = load_private_key(pem)
                if key.public == publisher:
                    return key
        return None

    async def announce(self, release: Release, record: NameRecord) -> dict[str, Any] | None:
        """Sign and put the release's items (latest and pinned version), if we can.

        Returns:
            The name and how many nodes took each item; None without the DHT or the key.
        """
        publisher = release.manifest.publisher
        key = self.signing_key(publisher)
        if key is None or not self.engine.dht_enabled:
            log.info(
                "%s v%d: no name put (%s)",
                record.name,
                record.version,
                "DHT off" if key is not None else "its signing key is not in DATA/keys",
            )
            return None
        names = [(record.name, record.name), (f"{record.name}@{record.version}", record.name)]
        latest = self.high_water(publisher, record.name)
        if latest is not None and latest[1] > record.version:
            names = names[1:]  # a newer version stays the latest
        stored = {}
        for key_name, _ in names:
            stored[key_name] = await self._sign_and_put(key, key_name, record)
        await put_own_statements(self.engine, Path(self.config.home), self.signing_key)
        return {"name": name_uri(publisher, record.name), "nodes": stored}

    async def _sign_and_put(self, key: PrivateKey, key_name: str, record: NameRecord) -> int:
        hw = self.high_water(key.public, key_name)
        seq = max(int(time.time()), (hw[0] + 1) if hw else 1)
        name, _, version = key_name.partition("@")
        item = SignedItem.sign(key, salt_for(name, int(version) if version else None), seq,
                               record.encode())
        self._store(key_name, item, record, own=True)
        nodes = await self.engine.dht_put(item)
        self._notify(record.info_hash, "name_put", name=key_name, seq=seq, nodes=nodes,
                     verbatim=False)
        return nodes

    # ------------------------------------------------------------------ keep alive

    async def republish_forever(self) -> None:
        """Re-put names on a schedule, until cancelled."""
        while True:
            await asyncio.sleep(self.config.name_republish_interval)
            if self.engine.dht_enabled:
                try:
                    await self.republish()
                except (P2PWeightsError, EngineError, OSError) as exc:
                    log.warning("re-putting names failed: %s", exc)

    async def republish(self) -> int:
        """Renew our own names and key statements; re-put others' items of what we seed.

        Returns:
            How many items were put.
        """
        count = await put_own_statements(self.engine, Path(self.config.home), self.signing_key)
        keys: dict[bytes, PrivateKey | None] = {}
        for key_name, own, item in self._items():
            record = NameRecord.decode(item.value)
            if own:
                if item.key not in keys:
                    keys[item.key] = self.signing_key(PublicKey(item.key))
                key = keys[item.key]
                if key is not None:
                    now = int(time.time())
                    fresh = NameRecord(
                        record.name, record.version, record.info_hash, record.manifest_sha256,
                        now, now + int(self.config.name_ttl), record.web_seeds,
                    )
                    await self._sign_and_put(key, key_name, fresh)
                    count += 1
                    continue
            if not self._seeding(record.info_hash):
                continue
            nodes = await self.engine.dht_put(item)
            self._notify(record.info_hash, "name_put", name=key_name, seq=item.seq,
                         nodes=nodes, verbatim=True)
            count += 1
        return count
