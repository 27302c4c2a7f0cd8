"""Typed values of the engine: errors, torrents, statuses and events (no libtorrent)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from p2pweights.errors import (
    SwarmError,
)


class EngineError(SwarmError):
    """The BitTorrent engine failed: a session, torrent or operation that did not work."""


class TorrentFailedError(EngineError):
    """A torrent stopped on an error (disk, file or torrent error reported by libtorrent)."""


@dataclass(frozen=True, slots=True)
class TorrentFileEntry:
    """One real (non-pad) file of a torrent."""

    index: int
    """libtorrent's file index (pad files take indices too, so these are not contiguous)."""
    path: str
    """Path below the torrent's root directory, e.g. ``chunks/<sha256>.safetensors``."""
    size: int
    v2_root: str
    """Hex BEP 52 file root; the empty string for an empty file (as in the manifest)."""


@dataclass(frozen=True, slots=True)
class TorrentFile:
    """A parsed, validated v2 (or hybrid) torrent."""

    data: bytes
    """The bencoded .torrent."""
    name: str
    """The torrent's root directory name."""
    info_hash_v2: str
    info_hash_v1: str | None
    """Set for hybrid torrents only."""
    piece_size: int
    magnet: str
    """A ``magnet:?xt=urn:btmh:1220…`` link (plus ``btih`` for hybrids)."""
    files: tuple[TorrentFileEntry, ...]
    num_files: int
    """libtorrent's file count, pad files included: the length of a priority list."""
    web_seeds: tuple[str, ...] = ()
    """The torrent's BEP 19 ``url-list`` (untrusted: it comes with the torrent)."""

    @property
    def id(self) -> str:
        """The engine's id for this torrent: the v2 info-hash in hex."""
        return self.info_hash_v2

    def file(self, path: str) -> TorrentFileEntry:
        """The entry for ``path`` (below the root).

        Raises:
            KeyError: no such file.

        """
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    def release_layout(self, prefix: str = "") -> dict[int, str]:
        """``file_paths`` that lay the torrent out as a release dir at ``save_path/prefix``."""
        base = prefix.strip("/")
        return {f.index: f"{base}/{f.path}" if base else f.path for f in self.files}


@dataclass(frozen=True, slots=True)
class MagnetLink:
    """A validated magnet link that names a v2 torrent."""

    uri: str
    info_hash_v2: str
    info_hash_v1: str | None
    name: str | None
    peers: tuple[tuple[str, int], ...]
    trackers: tuple[str, ...]
    web_seeds: tuple[str, ...] = ()
    """``ws=`` web seeds (untrusted: they come with the link)."""

    @property
    def id(self) -> str:
        """The engine's id for this torrent: the v2 info-hash in hex."""
        return self.info_hash_v2


TorrentState = Literal[
    "queued_for_checking",
    "checking_files",
    "downloading_metadata",
    "downloading",
    "finished",
    "seeding",
    "allocating",
    "checking_resume_data",
    "unknown",
]


@dataclass(frozen=True, slots=True)
class TorrentStatus:
    """A snapshot of one torrent."""

    id: str
    name: str
    state: TorrentState
    paused: bool
    has_metadata: bool
    is_finished: bool
    """All wanted pieces are there (state finished or seeding)."""
    is_seeding: bool
    progress: float
    """0.0-1.0 of the wanted bytes."""
    total_done: int
    total_wanted: int
    total_wanted_done: int
    total_payload_download: int
    """Payload bytes downloaded in this session (since add)."""
    total_payload_upload: int
    all_time_download: int
    all_time_upload: int
    download_rate: int
    """Payload bytes per second."""
    upload_rate: int
    num_peers: int
    num_seeds: int
    failed_bytes: int
    """Bytes that failed the hash check (``total_failed_bytes``)."""
    redundant_bytes: int
    error: str | None


EventKind = Literal[
    "added",
    "metadata",
    "state",
    "file_completed",
    "finished",
    "checked",
    "paused",
    "resumed",
    "hash_failed",
    "error",
    "removed",
    "renamed",
    "resume_rejected",
    "progress",
    "piece",
    "disk_full",
    "web_seed_failed",
]


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """Something that happened to a torrent; what a daemon forwards to an event stream."""

    kind: EventKind
    torrent: str
    status: TorrentStatus | None = None
    """Set for ``progress`` events (periodic, only for torrents that changed)."""
    file_index: int | None = None
    message: str = ""
    url: str = ""
    """The web seed a ``web_seed_failed`` event is about."""
