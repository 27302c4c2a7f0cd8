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
import contextlib
import hashlib
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .admission import CHUNK_NAME, parse_peer
from .engine import Engine, EngineError, TorrentFile

__all__ = [
    "PRIO_SHARE",
    "SEED_CAP",
    "STALL_S",
    "SeedCap",
    "Share",
    "ask_share_first",
    "chunk_pieces",
    "keep_share",
    "share_of",
]

PRIO_SHARE = 7
_REFRESH_S = 0.5
SEED_CAP = 16 * 1024
"""Bytes/s a capped seed may send: a block a second, so that a block already asked of it
still comes (libtorrent does not ask another peer for a block in flight until its end
game)."""
STALL_S = 3.0
"""Seconds without a new piece after which the seeds are uncapped."""


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


@dataclass(frozen=True)
class Share:
    """A node's share of the chunk pieces, and the fellows it shares them with."""

    pieces: tuple[int, ...]
    fellows: frozenset[str]
    """The IP addresses of the other fetching nodes the pieces were shared among."""


def ask_share_first(
    engine: Engine, tid: str, tf: TorrentFile, peers: Sequence[tuple[str, int]]
) -> Share:
    """Give this node's share of the chunk pieces the top priority (see the module).

    Needs this node's own address (a bound listen or outgoing interface) and the peers
    named for the fetch; without them every piece keeps its file's priority. Call it
    after every :meth:`Engine.set_file_priorities`, which resets the pieces.

    Returns:
        The share (no pieces when there is none).
    """
    own = _own_address(engine)
    if own is None or not peers:
        return Share((), frozenset())
    connected = [p for p in engine.peers(tid) if "web_seed" not in p.sources]
    seeds = {parse_peer(p.address)[0] for p in connected if p.seed}
    others = [host for host, _ in peers if host not in seeds and host != own]
    chunks = [f.path for f in tf.files if CHUNK_NAME.fullmatch(f.path)]
    share = share_of(own, others, chunk_pieces(tf, chunks))
    if share:
        engine.set_piece_priorities(tid, dict.fromkeys(share, PRIO_SHARE))
    return Share(tuple(share), frozenset(others) if share else frozenset())


@dataclass
class SeedCap:
    """When to cap the seeds once this node has its share (see :func:`keep_share`).

    Fed the swarm once a tick; no I/O. The seeds are capped while all of these hold:
    this node has its whole share; a piece has arrived within ``stall_s`` seconds; and
    the fellow fetchers send faster than the seeds did before the cap (``seed_rate``).
    The last keeps a fast seed uncapped where the fellows' uplinks are slow (a data
    centre seeding home connections): a cap would then cost this node time, and the
    seed's uplink was not the swarm's bottleneck anyway.
    """

    stall_s: float = STALL_S
    capped: bool = False
    seed_rate: int = 0
    """Bytes/s the seeds sent this node when last uncapped."""
    _have: int = -1
    _moved: float = 0.0

    def step(
        self, now: float, *, share_done: bool, have: int, seed_rate: int, fellow_rate: int
    ) -> bool:
        """Whether the seeds are to be capped now.

        Args:
            now: a monotonic clock.
            share_done: this node has every piece of its share.
            have: the pieces this node has (a change is progress).
            seed_rate: bytes/s the seeds send this node now.
            fellow_rate: bytes/s every other peer sends this node now.
        """
        if have != self._have:
            self._have, self._moved = have, now
        if not self.capped and seed_rate > 0:
            self.seed_rate = seed_rate
        self.capped = (
            share_done and now - self._moved < self.stall_s and 0 < self.seed_rate <= fellow_rate
        )
        return self.capped


async def keep_share(
    engine: Engine, tid: str, share: Share, prio: int, unordered: Callable[[], bool]
) -> None:
    """Keep this node's demands on the seeds to its share; runs until cancelled or done.

    Twice a second:

    * **A share piece another leecher comes to hold** goes back to ``prio``. That
      happens when the seeder let that leecher start before this node (it uploads to a
      few peers at a time) or after it had its own share: at priority 7 this node would
      still ask the seeder for it, while at the chunks' priority it takes it from that
      leecher, rarest first like any other.
    * **Once this node has its share, the seeds are capped** at :data:`SEED_CAP` (see
      :class:`SeedCap` for when). libtorrent asks every connected peer for whatever it
      has and this node lacks, as soon as that peer's request queue has room; the seeder
      has everything, so a leecher with its share in asks it for pieces that their
      owners are fetching from it at the same time, and the seeder sends them twice
      (measured at N = 8: each leecher took 0.4-3.2 MB beyond its 9.2 MB share from it).
      Piece priorities cannot say "not from this peer"; a per-connection download cap
      can. The seeds' uplink then goes to the owners, and this node takes the rest
      from them. A seed that is one of the fellows (a leecher that finished) is never
      capped.

    Stops once ``unordered()`` is false (a streaming reader's window then sets every
    piece), and lifts the cap when it stops.
    """
    left, own = set(share.pieces), frozenset(share.pieces)
    cap = SeedCap()
    capped: list[str] = []
    try:
        while own:
            await asyncio.sleep(_REFRESH_S)
            if not unordered():  # a reader asked for an order: its window sets every piece
                return
            view = engine.swarm_view(tid)
            if view is None:
                continue
            if not view.missing:
                return
            taken = left & view.held_by_fetchers
            if taken:
                engine.set_piece_priorities(tid, dict.fromkeys(taken, prio))
                left -= taken
            peers = [p for p in engine.peers(tid) if "web_seed" not in p.sources]
            seeds = [p for p in peers if p.seed and parse_peer(p.address)[0] not in share.fellows]
            seed_rate = sum(p.download_rate for p in seeds)
            if cap.step(
                time.monotonic(),
                share_done=not own & view.missing,
                have=view.have,
                seed_rate=seed_rate,
                fellow_rate=sum(p.download_rate for p in peers) - seed_rate,
            ):
                capped = [p.address for p in seeds]
                engine.cap_peer_download(tid, capped, SEED_CAP)
            elif capped:
                engine.cap_peer_download(tid, capped, 0)
                capped = []
    except EngineError:  # the torrent went away (removed, failed): nothing to steer
        return
    finally:
        if capped:
            with contextlib.suppress(EngineError):
                engine.cap_peer_download(tid, capped, 0)
