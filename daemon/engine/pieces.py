"""What the connected swarm holds, piece by piece, and steering which pieces are picked.

The web seed rule (``daemon/origin_rule.py``) decides from a :class:`SwarmView` which
pieces this node fetches from an origin; :func:`steer_pieces` carries that out with piece
priorities, over the priorities the files have (the daemon's selection and order):

* a piece boosted gets priority 7, which libtorrent's picker takes before anything else;
* a piece masked gets 0: no connection (the web seed's included) requests it;
* every other piece has its file's priority.

In a v2 torrent every piece lies in one file (files are piece-aligned), so a piece's
file priority is well defined.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import libtorrent as lt

__all__ = ["TOP_PRIORITY", "SwarmView", "steer_pieces", "swarm_view"]

TOP_PRIORITY = 7
_BITTORRENT = int(lt.peer_info.standard_bittorrent)
_WEB = (int(lt.peer_info.web_seed), int(lt.peer_info.http_seed))
_SEED = int(lt.peer_info.seed)
_DONE = _SEED | int(lt.peer_info.upload_only)
_NO_ID = bytes(20)


@dataclass(frozen=True, slots=True)
class SwarmView:
    """One torrent's pieces against its connected peers, at one moment."""

    num_pieces: int
    piece_size: int
    missing: frozenset[int]
    """Pieces of wanted files (file priority > 0) not verified yet."""
    held: frozenset[int]
    """Those of :attr:`missing` that at least one connected BitTorrent peer has."""
    peers: tuple[bytes, ...]
    """Peer ids of the connected BitTorrent peers still fetching (fellow fetchers): not
    seeds, and not done with what they want (``upload_only``)."""
    peer_rate: int
    """Payload bytes/s from BitTorrent peers."""
    web_rate: int
    """Payload bytes/s from web seeds."""
    have: int
    """Verified pieces: grows whenever a piece arrives from anyone."""
    held_by_fetchers: frozenset[int] = frozenset()
    """Those of :attr:`missing` that a connected BitTorrent peer other than a seed has."""


def _file_prios_by_piece(handle: Any, ti: Any) -> list[int]:
    """Each piece's priority as its file gives it (pad files give none)."""
    fs = ti.layout()
    prios = [0] * ti.num_pieces()
    plen = ti.piece_length()
    pad = lt.file_storage.flag_pad_file
    for i, prio in enumerate(handle.get_file_priorities()):
        size = fs.file_size(i)
        if not prio or not size or fs.file_flags(i) & pad:
            continue
        first = fs.piece_index_at_file(i)
        for p in range(first, min(first + (size + plen - 1) // plen, len(prios))):
            prios[p] = max(prios[p], int(prio))
    return prios


def swarm_view(handle: Any) -> SwarmView | None:
    """The torrent's :class:`SwarmView`, or None before its metadata is known."""
    ti = handle.torrent_file()
    if ti is None:
        return None
    have = handle.status(lt.status_flags_t.query_pieces).pieces
    wanted = _file_prios_by_piece(handle, ti)
    missing = frozenset(p for p, prio in enumerate(wanted) if prio and not have[p])
    peers: list[bytes] = []
    peer_rate = web_rate = 0
    # The union of the peers' bitfields, one byte a piece, OR-ed as big integers (C speed).
    # Piece availability cannot stand in: it counts web seeds too, a redirected one for
    # only the pieces of the files it redirected.
    union, any_seed = 0, False
    for info in handle.get_peer_info():
        kind, seed = int(info.connection_type), bool(int(info.flags) & _SEED)
        if kind in _WEB:
            web_rate += int(info.payload_down_speed)
        elif kind == _BITTORRENT:
            peer_rate += int(info.payload_down_speed)
            pid = bytes(info.pid.to_bytes())
            if seed:
                any_seed = True
                continue
            if missing:
                union |= int.from_bytes(bytes(info.pieces), "little")
            if pid != _NO_ID and not int(info.flags) & _DONE:
                peers.append(pid)
    bits = union.to_bytes(len(have), "little") if union else b""
    by_fetchers = frozenset(p for p in missing if bits and bits[p])
    return SwarmView(
        num_pieces=ti.num_pieces(),
        piece_size=ti.piece_length(),
        missing=missing,
        held=missing if any_seed else by_fetchers,
        peers=tuple(sorted(set(peers))),
        peer_rate=peer_rate,
        web_rate=web_rate,
        have=sum(1 for h in have if h),
        held_by_fetchers=by_fetchers,
    )


def steer_pieces(handle: Any, boost: Collection[int], mask: Collection[int]) -> bool:
    """Boost and mask pieces over their files' priorities (both empty: the files' alone).

    Only pieces whose file is wanted change. Returns whether priorities were changed:
    nothing is sent to libtorrent while every missing piece already has the priority
    asked (a piece that arrived keeps whatever it had; re-sorting the picker each time
    one lands would be waste).
    """
    ti = handle.torrent_file()
    if ti is None:
        return False
    files = _file_prios_by_piece(handle, ti)
    prios = list(files)
    for p in boost:
        if prios[p]:
            prios[p] = TOP_PRIORITY
    for p in mask:
        prios[p] = 0
    have = handle.status(lt.status_flags_t.query_pieces).pieces
    if not any(prio and not have[p] for p, prio in enumerate(prios)):
        # The boosted pieces arrived since the caller looked: masking every piece still
        # missing would make the torrent "finished" (and close its web seeds).
        prios = files
    current = handle.get_piece_priorities()
    if all(have[p] or int(current[p]) == prio for p, prio in enumerate(prios)):
        return False
    handle.prioritize_pieces(prios)
    return True
