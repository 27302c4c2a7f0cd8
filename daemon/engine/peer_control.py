"""One torrent's connections and announces: a per-connection cap, a DHT re-ask."""

from __future__ import annotations

import warnings
from collections.abc import Collection

from .alerts import AlertDispatch
from .peers import endpoint_text
from .values import EngineError

__all__ = ["PeerControl"]


class PeerControl(AlertDispatch):
    """What the engine can do to one torrent's connections and announces."""

    def force_dht_announce(self, tid: str) -> None:
        """Announce the torrent on the DHT and ask it for peers now.

        Raises:
            EngineError: no such torrent.
        """
        try:
            self._get(tid).handle.force_dht_announce()
        except RuntimeError as exc:  # the handle went invalid under us (removal)
            raise EngineError(f"torrent {tid} is gone: {exc}") from exc

    def cap_peer_download(self, tid: str, addresses: Collection[str], limit: int) -> int:
        """Cap what each connected peer at ``addresses`` (``host:port``) may send us.

        ``limit`` is in bytes per second, 0 for no cap. It holds for the connection:
        a peer that reconnects starts uncapped.

        Returns:
            How many connections were capped (or uncapped).

        Raises:
            EngineError: no such torrent.
        """
        handle = self._get(tid).handle
        wanted = set(addresses)
        n = 0
        try:
            for p in handle.get_peer_info():
                if endpoint_text(p.ip) in wanted:
                    # Deprecated in the bindings, and still the only per-connection cap:
                    # peer classes cap an IP range across the whole session.
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DeprecationWarning)
                        handle.set_peer_download_limit(p.ip, int(limit))
                    n += 1
        except RuntimeError as exc:  # the handle went invalid under us (removal)
            raise EngineError(f"torrent {tid} is gone: {exc}") from exc
        return n
