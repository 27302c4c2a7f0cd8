"""Read-only views of the engine's torrents: status, files, peers, progress."""

from __future__ import annotations

import libtorrent as lt

from .alerts import AlertDispatch, status_of
from .peers import PeerInfo, file_progress, peers_of
from .pieces import SwarmView, swarm_view
from .stall import StallReport, stall_report
from .torrents import torrent_from_info
from .values import EngineError, TorrentFile, TorrentFileEntry, TorrentStatus

__all__ = ["TorrentQueries"]


class TorrentQueries(AlertDispatch):
    """What the engine can tell about its torrents, without changing them."""

    peer_id: bytes = b""
    """The peer id this session sends every peer (set when the session starts)."""

    def torrents(self) -> list[str]:
        """Ids of the torrents in the session."""
        return list(self._torrents)

    def __contains__(self, tid: object) -> bool:
        """Whether the torrent is in the session (without copying the id list)."""
        return tid in self._torrents

    def status(self, tid: str) -> TorrentStatus:
        """A snapshot of the torrent.

        Raises:
            EngineError: no such torrent, or it is being removed.
        """
        t = self._get(tid)
        try:
            return t.adjust(status_of(t.handle.status()))
        except RuntimeError as exc:  # the handle went invalid under us (removal)
            raise EngineError(f"torrent {tid} is gone: {exc}") from exc

    def torrent_file(self, tid: str) -> TorrentFile | None:
        """The torrent, once its metadata is known (None before).

        For a torrent added by magnet the bytes hold the info dict only (libtorrent
        fetches v2 piece layers from peers as it goes); they load as a torrent all the
        same.

        Raises:
            OverCapError: the torrent has more files than ``settings.max_torrent_files``.
        """
        ti = self._get(tid).handle.torrent_file()
        if ti is None:
            return None
        data = lt.bencode({b"info": lt.bdecode(ti.info_section())})
        return torrent_from_info(ti, data, max_files=self.settings.max_torrent_files)

    def torrent_files(self, tid: str) -> tuple[TorrentFileEntry, ...]:
        """The torrent's real files (paths below the root), once metadata is known.

        Raises:
            EngineError: no metadata yet.

        """
        tf = self.torrent_file(tid)
        if tf is None:
            raise EngineError(f"torrent {tid} has no metadata yet")
        return tf.files

    def file_paths(self, tid: str) -> dict[int, str]:
        """Where each real file is, relative to the save path (renames applied)."""
        handle = self._get(tid).handle
        ti = handle.torrent_file()
        if ti is None:
            raise EngineError(f"torrent {tid} has no metadata yet")
        fs = ti.layout()
        renamed = handle.get_renamed_files()
        pad = lt.file_storage.flag_pad_file
        return {
            i: str(renamed.file_path(fs, i))
            for i in range(fs.num_files())
            if not fs.file_flags(i) & pad
        }

    def peers(self, tid: str) -> list[PeerInfo]:
        """The torrent's connected peers and web seeds, and how each was found."""
        return peers_of(self._get(tid).handle)

    def file_progress(self, tid: str, *, verified: bool = True) -> list[int]:
        """Bytes of each file by index, verified only or all in (empty before metadata)."""
        return file_progress(self._get(tid).handle, verified=verified)

    def swarm_view(self, tid: str) -> SwarmView | None:
        """The torrent's pieces against its connected peers (None before metadata).

        Raises:
            EngineError: no such torrent.
        """
        return swarm_view(self._get(tid).handle)

    def stall_report(self, tid: str) -> StallReport:
        """What the torrent still wants, has in flight, and can get from its peers.

        Raises:
            EngineError: no such torrent.
        """
        return stall_report(self._get(tid).handle)

    def web_seeds(self, tid: str) -> list[str]:
        """The web seeds the torrent uses now.

        Raises:
            EngineError: no such torrent.
        """
        return [str(u) for u in self._get(tid).handle.url_seeds()]
