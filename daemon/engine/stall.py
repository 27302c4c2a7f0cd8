"""Why a torrent makes no progress: one line for the log, read from libtorrent.

A fetch that stops moving while its peers are connected is either starved (no peer has
what it lacks, or every peer chokes it) or stuck inside libtorrent (a piece it no longer
asks anyone for). The line tells the two apart: the pieces still wanted and missing,
the pieces libtorrent has in flight with their blocks' states, and each peer's side of
the connection. Everything here is read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import libtorrent as lt

from .peers import endpoint_text

__all__ = ["StallReport", "stall_report"]

_BLOCK_STATES = {0: "none", 1: "requested", 2: "writing", 3: "finished"}
_PEER_FLAGS = (
    (lt.peer_info.interesting, "interesting"),
    (lt.peer_info.choked, "choking-them"),
    (lt.peer_info.remote_choked, "choked"),
    (lt.peer_info.remote_interested, "they-want"),
    (lt.peer_info.on_parole, "parole"),
    (lt.peer_info.snubbed, "snubbed"),
    (lt.peer_info.seed, "seed"),
)
_SHOWN = 8
_BITTORRENT = int(lt.peer_info.standard_bittorrent)
_REMOTE_CHOKED = int(lt.peer_info.remote_choked)


@dataclass(frozen=True, slots=True)
class StallReport:
    """A torrent's side of a stall, read at one moment."""

    missing: int
    """Pieces of wanted files not verified yet."""
    idle_senders: int
    """Connected BitTorrent peers that hold one of :attr:`missing`, do not choke us, and
    have no request of ours outstanding: libtorrent is not asking a peer that could send.
    (A peer that withholds data has requests outstanding, and in time is snubbed.)"""
    text: str
    """One line for the log: the missing pieces, those in flight, and every peer."""


def _pieces_text(pieces: list[int]) -> str:
    more = f" +{len(pieces) - _SHOWN}" if len(pieces) > _SHOWN else ""
    return ",".join(map(str, pieces[:_SHOWN])) + more


def _queue_text(handle: Any) -> str:
    parts = []
    for entry in handle.get_download_queue()[:_SHOWN]:
        counts: dict[str, int] = {}
        for block in entry["blocks"]:
            state = _BLOCK_STATES.get(int(block["state"]), "?")
            counts[state] = counts.get(state, 0) + 1
        blocks = " ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        parts.append(f"{entry['piece_index']} ({blocks})")
    return "; ".join(parts) or "none"


def _peer_text(info: Any) -> str:
    flags = int(info.flags)
    names = [name for bit, name in _PEER_FLAGS if flags & int(bit)]
    return (
        f"{endpoint_text(info.ip)} [{' '.join(names)}] queue {int(info.download_queue_length)}"
        f" in-flight {int(info.downloading_piece_index)}"
        f" failed {int(info.num_hashfails)}"
    )


def stall_report(handle: Any) -> StallReport:
    """What a torrent still wants, has in flight, and can get from its peers."""
    st = handle.status(lt.status_flags_t.query_pieces)
    if handle.torrent_file() is None:
        return StallReport(0, 0, f"state {st.state.name}, no metadata")
    prios = handle.get_piece_priorities()
    missing = [p for p, have in enumerate(st.pieces) if not have and int(prios[p])]
    peers = handle.get_peer_info()
    idle = 0
    for info in peers:
        if int(info.connection_type) != _BITTORRENT or int(info.flags) & _REMOTE_CHOKED:
            continue
        if int(info.download_queue_length):
            continue
        held = info.pieces
        idle += any(p < len(held) and held[p] for p in missing)
    text = (
        f"state {st.state.name}, {len(missing)} wanted pieces missing"
        f" ({_pieces_text(missing)}), in flight: {_queue_text(handle)};"
        f" peers: {' | '.join(_peer_text(p) for p in peers) or 'none'}"
    )
    return StallReport(len(missing), idle, text)
