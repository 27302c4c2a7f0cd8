"""The daemon's BitTorrent engine: the one package that imports libtorrent (the seam).

It does three things:

* **Torrents from releases.** :func:`make_torrent` turns a release directory into a
  BitTorrent v2 torrent (v2-only by default, hybrid on request) whose files are exactly
  ``manifest.json``, ``manifest.sig`` and the manifest's chunks, never local state such as
  the verify records. :func:`parse_torrent` and :func:`parse_magnet` read hostile input
  strictly.
* **A session in asyncio.** :class:`Engine` owns one ``libtorrent.session``. Alerts reach
  the event loop through ``session.set_alert_fd`` on a socket pair watched with
  ``loop.add_reader``: libtorrent writes one byte from its own thread and never touches
  Python, so there is no busy polling and no GIL deadlock (``set_alert_notify`` calls a
  Python callback from the network thread, which the libtorrent docs warn can deadlock).
* **Awaitable milestones.** Metadata, file completion, finishing, renames, rechecks,
  pauses and resume data are futures resolved from alerts. Waiters never time out on
  their own; wrap them in :func:`asyncio.wait_for`. A ``torrent_error_alert`` or
  ``file_error_alert`` fails every waiter of that torrent with :class:`TorrentFailedError`.
  Hash failures are not fatal (libtorrent bans the peer and fetches the piece again);
  they are counted in :attr:`TorrentStatus.failed_bytes` and reported as events.

Torrent layout. Every file of a release torrent sits under one root directory, the
torrent's name, derived from the manifest: ``ORG/MODEL`` version ``N`` gives
``ORG--MODEL-vN``. :attr:`TorrentFileEntry.path` is the path *below* that root, i.e. the
path inside the release directory (``manifest.json``, ``chunks/<sha256>.safetensors``).
libtorrent itself would place file ``i`` at ``save_path/<name>/<path>``; pass
``file_paths`` (libtorrent's ``renamed_files``) to put any file anywhere below
``save_path``. ``TorrentFile.release_layout()`` maps a torrent onto a release directory
(``save_path`` = the release dir), which is how a publisher seeds in place.

Torrents are identified by their v2 info-hash in hex (64 characters). v1-only torrents
and magnets are refused: the chain of trust needs the v2 per-file roots.
"""

from __future__ import annotations

from .peers import PeerInfo
from .pieces import SwarmView
from .session import Engine, EventStream
from .settings import DEFAULT_DHT_BOOTSTRAP, EngineSettings
from .stall import StallReport
from .torrents import DEFAULT_PIECE_SIZE, make_torrent, parse_magnet, parse_torrent, torrent_name
from .values import (
    EngineError,
    EngineEvent,
    MagnetLink,
    TorrentFailedError,
    TorrentFile,
    TorrentFileEntry,
    TorrentStatus,
)

__all__ = [
    "DEFAULT_DHT_BOOTSTRAP",
    "DEFAULT_PIECE_SIZE",
    "Engine",
    "EngineError",
    "EngineEvent",
    "EngineSettings",
    "EventStream",
    "MagnetLink",
    "PeerInfo",
    "StallReport",
    "SwarmView",
    "TorrentFailedError",
    "TorrentFile",
    "TorrentFileEntry",
    "TorrentStatus",
    "make_torrent",
    "parse_magnet",
    "parse_torrent",
    "torrent_name",
]
