"""`p2pw doctor`: check a data dir offline, and rebuild a damaged catalog from the store.

The store is the source of truth for bytes; the catalog only records what the daemon
knows. So a lost or damaged catalog can be rebuilt: every ``store/releases/<id>`` that
holds its torrent, manifest and signature is checked again (info-hash, signature, every
chunk re-hashed) and recorded as seeding, or, when chunks are missing or damaged, as a
download to finish. The damaged database is kept aside, never deleted.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from p2pweights._atomic import TMP_SUFFIX
from p2pweights.client import running_daemon_pid
from p2pweights.errors import CatalogError, DaemonError, P2PWeightsError
from p2pweights.release import MANIFEST_NAME, open_self_signed
from p2pweights.verify import ChunkRecords

from .catalog import Catalog, ReleaseRow
from .config import DaemonConfig
from .engine import parse_torrent
from .store import TORRENT_NAME, Store

__all__ = ["Finding", "diagnose", "repair"]

Severity = Literal["ok", "warning", "error"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the doctor saw."""

    severity: Severity
    message: str

    def as_dict(self) -> dict[str, str]:
        """For ``--json``."""
        return asdict(self)


def _temp_files(store: Store) -> list[Path]:
    return sorted(store.root.rglob(f"*{TMP_SUFFIX}")) if store.root.exists() else []


def diagnose(config: DaemonConfig) -> list[Finding]:
    """Check the catalog and the store without changing anything."""
    findings: list[Finding] = []
    store = Store(config.store_dir)
    if not config.catalog_path.exists():
        findings.append(Finding("warning", f"no catalog at {config.catalog_path}"))
        known: set[str] = set()
    else:
        try:
            catalog = Catalog(config.catalog_path)
        except CatalogError as exc:
            return [Finding("error", f"{exc}; run `p2pw doctor --repair` to rebuild it")]
        try:
            rows = catalog.releases()
            known = {r.id for r in rows}
            for row in rows:
                findings += _check_release(catalog, store, row)
        finally:
            catalog.close()
        findings.append(Finding("ok", f"catalog readable: {len(rows)} releases"))
    if store.releases.exists():
        for root in sorted(store.releases.iterdir()):
            if root.name not in known and (root / TORRENT_NAME).is_file():
                findings.append(
                    Finding(
                        "warning",
                        f"release {root.name[:16]} is in the store "
                        "but not in the catalog (--repair adds it)",
                    )
                )
    temps = _temp_files(store)
    if temps:
        findings.append(
            Finding("warning", f"{len(temps)} temp files left by a crash (--repair removes them)")
        )
    return findings


def _check_release(catalog: Catalog, store: Store, row: ReleaseRow) -> list[Finding]:
    """A complete release's manifest and store files (hashed only where a stamp moved)."""
    rid = row.id[:16]
    if row.state == "damaged":
        return [Finding("error", f"release {rid} is damaged: {row.error}")]
    if row.state not in ("seeding", "complete"):
        return []
    if not (store.releases / row.id / MANIFEST_NAME).is_file():
        return [
            Finding("error", f"release {rid} is in the catalog, but its manifest is missing")
        ]
    files = catalog.store_chunks(catalog.release_chunk_paths(row.id))
    changed = [path for path, f in files.items() if store.intact(f.entry(), f.stamp) is None]
    if not changed:
        return []
    return [
        Finding(
            "error",
            f"release {rid}: {len(changed)} chunk file(s) changed in the store since they "
            f"were verified (e.g. {changed[0]}); the daemon stops seeding it. "
            f"`p2pw fetch {rid}` repairs it",
        )
    ]


def repair(config: DaemonConfig) -> list[Finding]:
    """Rebuild the catalog from the store, re-verifying every chunk.

    Raises:
        DaemonError: a daemon is running on this data dir (stop it first).
    """
    if running_daemon_pid(config.home) is not None:
        raise DaemonError("a daemon is running on this data dir; stop it before --repair")
    findings: list[Finding] = []
    path = config.catalog_path
    if path.exists():
        aside = path.with_name(f"{path.name}.replaced-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            old = Path(f"{path}{suffix}")
            if old.exists():
                old.rename(Path(f"{aside}{suffix}"))
        findings.append(Finding("warning", f"old catalog kept as {aside.name}"))
    store = Store(config.store_dir)
    store.open()  # also deletes temp files left behind
    catalog = Catalog(path)
    try:
        for root in sorted(store.releases.iterdir()):
            findings.append(_readmit(catalog, store, root))
    finally:
        catalog.close()
    return findings


def _readmit(catalog: Catalog, store: Store, root: Path) -> Finding:
    rid = root.name
    try:
        tf = parse_torrent((root / TORRENT_NAME).read_bytes())
        if tf.id != rid:
            return Finding("error", f"{rid[:16]}: its torrent has another info-hash; left out")
        release = open_self_signed(root)
    except (OSError, P2PWeightsError) as exc:
        return Finding("error", f"{rid[:16]}: not a usable release ({exc}); left out")
    m = release.manifest
    catalog.add_release(rid, source=tf.magnet, state="manifest", torrent=tf.data)
    catalog.record_release(rid, release, tf.data)
    bad = []
    for chunk in m.chunks:  # every file hashed; the intact ones are stamped
        stamp = store.intact(chunk, None)
        if stamp is None:
            bad.append(chunk.path)
        else:
            catalog.record_chunk(chunk, stamp)
    if bad:
        # The daemon finishes it on its next start, as a download of what is missing.
        catalog.set_state(rid, "downloading")
        return Finding(
            "warning",
            f"{m.name} v{m.version}: {len(bad)} chunks missing or damaged "
            f"(e.g. {bad[0]}); will be fetched again",
        )
    records = ChunkRecords(root)  # the loader's fast-mode records, for bytes hashed above
    for chunk in m.chunks:
        records.record(root / chunk.path, chunk.sha256)
    records.save()
    catalog.set_state(rid, "seeding")
    return Finding("ok", f"{m.name} v{m.version} ({rid[:16]}): all chunks verified, seeding")
