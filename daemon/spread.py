"""Shares: each node of a swarm fetches its own part of the pieces first.

Every piece is equally rare while only the first seeder holds it, so libtorrent's picker
breaks the tie at random and leechers that start together ask the seeder for the same
pieces: the seeder then uploads 1.5-2.5 F instead of 1 F (``docs/performance.md``). A
leecher that knows the other leechers (the explicit peers of its fetch, what a tracker's
answer gives it) ranks itself among them by address and gives its own share of the
pieces the top priority: each asks the seeder for pieces no other leecher asks it for,
and takes everything else from the leechers that hold it (rarest first, at the chunks'
usual priority). Every node computes the same ranking without talking to the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from collections.abc import Callable, Sequence

from .admission import CHUNK_NAME, parse_peer
from .engine import Engine, EngineError, TorrentFile

__all__ = ["PRIO_SHARE", "ask_share_first", "chunk_pieces", "share_of", "yield_share"]

PRIO_SHARE = 7
_REFRESH_S = 0.5


def _key(host: str) -> bytes:
    # A hash, not the address itself: neighbours in one subnet would otherwise always
    # get neighbouring shares.
    return hashlib.sha256(ipaddress.ip_address(host).packed).digest()


def chunk_pieces(tf: TorrentFile, chunk_paths: Sequence[str]) -> list[int]:
    """The piece indices of ``chunk_paths``, in torrent order.

    In a v2 torrent every file starts on a piece boundary, so a file of ``size`` bytes
    takes ``ceil(size / piece_size)`` pieces after those of the files before it.
    """
    wanted = set(chunk_paths)
    pieces: list[int] = []
    first = 0
    for f in sorted(tf.files, key=lambda e: e.index):
        n = -(-f.size // tf.piece_size)
        if f.path in wanted:
            pieces.extend(range(first, first + n))
        first += n
    return pieces


def share_of(own: str, leechers: Sequence[str], pieces: Sequence[int]) -> list[int]:
    """The share of ``pieces`` a node asks for first: a contiguous run, one of ``len(nodes)`` alike.

    Args:
        own: this node's IP address.
        leechers: the IP addresses of the other nodes fetching (seeds left out).
        pieces: the pieces to share out, in torrent order.

    Returns:
        The pieces this node asks for first; empty when it has no one to share with.
    """
    nodes = sorted({_key(h) for h in [own, *leechers]})
    if len(nodes) < 2:
        return []
    rank, n = nodes.index(_key(own)), len(nodes)
    lo, hi = rank * len(pieces) // n, (rank + 1) * len(pieces) // n
    return list(pieces[lo:hi])


def _own_address(engine: Engine) -> str | None:
    settings = engine.settings
    host = settings.outgoing_interface
    if not host:
        first = settings.listen_interfaces.split(",")[0]
        host = first.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if ip.is_unspecified else str(ip)


def ask_share_first(
    engine: Engine, tid: str, tf: TorrentFile, peers: Sequence[tuple[str, int]]
) -> list[int]:
    """Give this node's share of the chunk pieces the top priority (see the module).

    Needs this node's own address (a bound listen or outgoing interface) and the peers
    named for the fetch; without them every piece keeps its file's priority. Call it
    after every :meth:`Engine.set_file_priorities`, which resets the pieces.

    Returns:
        The share (empty when there is none).
    """
    own = _own_address(engine)
    if own is None or not peers:
        return []
    connected = [p for p in engine.peers(tid) if "web_seed" not in p.sources]
    seeds = {parse_peer(p.address)[0] for p in connected if p.seed}
    others = [host for host, _ in peers if host not in seeds and host != own]
    chunks = [f.path for f in tf.files if CHUNK_NAME.fullmatch(f.path)]
    share = share_of(own, others, chunk_pieces(tf, chunks))
    if share:
        engine.set_piece_priorities(tid, dict.fromkeys(share, PRIO_SHARE))
    return share


async def yield_share(
    engine: Engine, tid: str, share: Sequence[int], prio: int, unordered: Callable[[], bool]
) -> None:
    """Hand back to ``prio`` each share piece another leecher comes to hold; runs until cancelled.

    Another leecher holds a piece of this node's share when the seeder let it start
    before this node (the seeder uploads to a few peers at a time) or after it had its
    own share: at priority 7 this node would still ask the seeder for it, while at the
    chunks' priority it takes it from that leecher, rarest first like any other. Stops
    once ``unordered()`` is false: a streaming reader's window then sets every piece.
    """
    left = set(share)
    while left:
        await asyncio.sleep(_REFRESH_S)
        if not unordered():  # a reader asked for an order: its window sets every piece
            return
        try:
            taken = left & engine.pieces_held_elsewhere(tid)
            if taken:
                engine.set_piece_priorities(tid, dict.fromkeys(taken, prio))
        except EngineError:  # the torrent went away (removed, failed): nothing to hand back
            return
        left -= taken
