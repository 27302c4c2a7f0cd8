"""What the page shows of a torrent's swarm: its peers, and how far each file has come.

libtorrent's ``peer_info.source`` is a bitmask of how a peer was learnt of (tracker, DHT,
PEX, LSD, resume data); peers we dial ourselves (``connect_peer``, the ``peers`` of a
fetch) carry either no bit or the resume-data bit, and web seeds are told apart by their
connection type. Everything here is read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import libtorrent as lt

__all__ = ["PeerInfo", "endpoint_text", "file_progress", "peers_of"]

_SOURCES = (
    (lt.peer_info.tracker, "tracker"),
    (lt.peer_info.dht, "dht"),
    (lt.peer_info.pex, "pex"),
    (lt.peer_info.lsd, "lsd"),
)


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """One connected peer (or web seed) of a torrent."""

    address: str
    """``host:port`` (``[v6]:port``), or the URL of a web seed."""
    client: str
    """What the peer says it is (hostile text: render it as text)."""
    sources: tuple[str, ...]
    """How it was found: ``explicit``, ``incoming``, ``tracker``, ``dht``, ``pex``,
    ``lsd`` or ``web_seed``."""
    download_rate: int
    upload_rate: int
    downloaded: int
    uploaded: int
    progress: float
    """How much of the torrent the peer has, 0 to 1."""
    seed: bool


def _sources(p: Any) -> tuple[str, ...]:
    if int(p.connection_type) in (int(lt.peer_info.web_seed), int(lt.peer_info.http_seed)):
        return ("web_seed",)
    bits = int(p.source)
    # atp.peers arrive as resume-data peers, connect_peer ones with no bit at all; a peer
    # named explicitly may also have been learnt of another way since (bits accumulate).
    found = [name for bit, name in _SOURCES if bits & int(bit)]
    outgoing = bool(int(p.flags) & int(lt.peer_info.outgoing_connection))
    if bits & int(lt.peer_info.resume_data) or (not found and outgoing):
        found.insert(0, "explicit")
    return tuple(found) or ("incoming",)


def _text(value: Any) -> str:
    """A peer's self-description: bytes from the wire in some bindings, text in others."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def endpoint_text(endpoint: Any) -> str:
    """``host:port`` of a libtorrent endpoint tuple, ``[v6]:port`` for IPv6."""
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def peers_of(handle: Any) -> list[PeerInfo]:
    """The connected peers of a libtorrent torrent handle, busiest first."""
    out = [
        PeerInfo(
            address=endpoint_text(p.ip),
            client=_text(p.client)[:200],
            sources=_sources(p),
            download_rate=int(p.payload_down_speed),
            upload_rate=int(p.payload_up_speed),
            downloaded=int(p.total_download),
            uploaded=int(p.total_upload),
            progress=float(p.progress),
            seed=bool(int(p.flags) & int(lt.peer_info.seed)),
        )
        for p in handle.get_peer_info()
    ]
    out.sort(key=lambda p: (-(p.download_rate + p.upload_rate), p.address))
    return out


def file_progress(handle: Any, *, verified: bool = True) -> list[int]:
    """Bytes of each file (by index): in pieces that passed the hash check, or all in."""
    if handle.torrent_file() is None:
        return []
    flags = lt.file_progress_flags_t.piece_granularity if verified else 0
    return [int(b) for b in handle.file_progress(flags)]
