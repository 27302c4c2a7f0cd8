"""The chunks a fetch downloads, those already in, and the order it wants them in.

An unordered download wants every chunk at once and lets libtorrent pick rarest first,
which spreads pieces best across a swarm. An ordered one (a streaming reader) wants only
a window of its next chunks and moves it on as each completes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pweights.chunking import chunk_order, layer_order
from p2pweights.release import Release

from .admission import PRIO_CHUNK, PRIO_META, manifest_only
from .engine import TorrentFile

__all__ = ["PRIO_HEAD", "WINDOW_BYTES", "WINDOW_CHUNKS", "Download"]

WINDOW_CHUNKS = 2
WINDOW_BYTES = 4 * 1024 * 1024
"""An ordered download wants only its next chunks (at least ``WINDOW_CHUNKS``, and up to
``WINDOW_BYTES``) and moves the window on as each completes. File priority levels cannot
order it: with only seeds in the swarm every piece has the same availability, so
libtorrent's picker ignores levels 1-6 (measured: chunks came in random order), while a
window keeps every request on the next layers and enough of them in flight to fill the
pipe."""
PRIO_HEAD = PRIO_META
"""The window's first chunk: libtorrent's top priority, the one level its picker serves
before the others even when every peer is a seed. The head then completes first (it is
what the reader waits for), and the chunks behind it fill what the head leaves of the
pipe, so the torrent stays interested while the window moves on (with equal priorities
both chunks of a two-chunk window completed together, the torrent was briefly finished,
told its peers "not interested" and left libtorrent's slow start)."""


@dataclass(eq=False)
class Download:
    """The chunks a fetch downloads, those ready, and the order it wants them in."""

    torrent: TorrentFile
    release: Release
    wanted: list[str]
    order: list[str] | None = None
    """Chunk paths, most wanted first; None downloads in libtorrent's own order."""
    complete: dict[str, None] = field(default_factory=dict)
    """Chunks libtorrent has whole (maybe still being hashed and placed in the store)."""
    ready: dict[str, None] = field(default_factory=dict)
    """Chunks complete, placed in the store and recorded, in the order they came."""
    index: dict[str, int] = field(init=False)
    """Each file's index in the torrent (``TorrentFile.file`` scans the file list)."""
    sizes: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {f.path: f.index for f in self.torrent.files}
        self.sizes = {c.path: c.size for c in self.release.manifest.chunks}

    def layer_order(self) -> list[str]:
        """Every chunk of the release in layer order (see ``chunking.layer_order``)."""
        tensors = self.release.manifest.tensors
        return chunk_order(layer_order(tensors), tensors.chunk_by_name())

    def pending(self) -> list[str]:
        """Wanted chunks not complete yet, most wanted first."""
        if self.order is None:
            ranked = self.wanted
        else:
            wanted, named = set(self.wanted), set(self.order)
            ranked = [p for p in self.order if p in wanted]
            ranked += [p for p in self.wanted if p not in named]
        return [p for p in ranked if p not in self.complete]

    def priorities(self) -> list[int]:
        """One libtorrent priority per file: the metadata files, then the chunks."""
        prios = manifest_only(self.torrent)
        if self.order is None:
            for path in self.wanted:
                prios[self.index[path]] = PRIO_CHUNK
            return prios
        for path in self.complete:
            prios[self.index[path]] = PRIO_CHUNK
        window = 0
        for count, path in enumerate(self.pending()):
            if count >= WINDOW_CHUNKS and window + self.sizes[path] > WINDOW_BYTES:
                break
            prios[self.index[path]] = PRIO_CHUNK if count else PRIO_HEAD
            window += self.sizes[path]
        return prios
