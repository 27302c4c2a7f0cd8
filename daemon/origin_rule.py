"""The web seed rule: use the origin from the start, spare it as the swarm grows.

libtorrent alone lets every fetcher pull from a web seed whatever its picker likes, so N
nodes that start at once each fetch most of the release from the origin. This rule,
evaluated a few times a second for each fetch with web seeds, makes the origin serve
about one copy, however many fetchers share it:

* **Who fetches what from the origin.** A piece that no connected peer has yet belongs
  to one of the fetchers that see each other: this node and its connected peers that are
  not seeds, ranked on a hash ring by peer id (rendezvous of consistent hashing: when a
  fetcher joins or leaves, only its own pieces move). Each fetcher gets its own pieces
  from the origin (boosted to the top priority) and every other piece from peers, so the
  nodes fetch distinct pieces from the origin and swap them.
* **The web seed is on** only while this node owns pieces nobody around has. Then the
  pieces other fetchers own are masked (priority 0), so the web seed cannot take them;
  and when the node's own pieces left fit in the web seed's request pipeline, the pieces
  peers hold are masked too, or the web seed would run on into them.
* **Otherwise it is off**: peers send what they hold, and the owners send the rest as
  they get it.
* **Stall.** When the web seed has been off and no piece has arrived for ``stall``
  seconds (or two pieces' time at the rate the origin last gave this node, if longer;
  at most ``MAX_STALL_FACTOR`` times ``stall``) while pieces are missing (owners gone,
  peers that choke or fetch nothing from the origin themselves), the web seed comes back
  with nothing masked, until peers hold something this node lacks and send again.

A lone fetcher owns every piece, so a fetch with every peer down runs from the web seed
alone, as before. A seed peer holds every piece, so with one connected the origin is
left alone. Piece choices go through the engine (:meth:`Engine.steer_pieces`); nothing
here imports libtorrent.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from .engine import SwarmView

__all__ = ["OriginRule", "Ring", "Steer"]

VNODES = 32
"""Points per fetcher on the ring: shares within about 20 % of even."""
REQUEST_QUEUE_TIME = 3.0
"""libtorrent's ``request_queue_time``: a connection keeps this many seconds of its rate
requested ahead (and never fewer than two pieces' worth for a web seed, measured)."""


MAX_STALL_FACTOR = 10
"""The stall wait grows with the time the origin takes per piece, up to this many times
``stall``."""


def _key(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclass
class Ring:
    """Which fetcher owns each piece: consistent hashing over peer ids, salted per torrent."""

    salt: bytes
    _points: list[int] = field(default_factory=list)
    _owners: list[bytes] = field(default_factory=list)
    _members: tuple[bytes, ...] = ()
    _piece_keys: dict[int, int] = field(default_factory=dict)

    def place(self, members: Iterable[bytes]) -> None:
        """Put exactly ``members`` on the ring (cheap when they are the same as before)."""
        ids = tuple(sorted(set(members)))
        if ids == self._members:
            return
        self._members = ids
        points = sorted((_key(self.salt + m + bytes([v])), m) for m in ids for v in range(VNODES))
        self._points = [p for p, _ in points]
        self._owners = [m for _, m in points]

    def owner(self, piece: int) -> bytes:
        """The member that fetches ``piece`` from the origin."""
        key = self._piece_keys.get(piece)
        if key is None:
            key = self._piece_keys[piece] = _key(self.salt + piece.to_bytes(4, "big"))
        i = bisect.bisect(self._points, key)
        return self._owners[i % len(self._owners)]


@dataclass(frozen=True, slots=True)
class Steer:
    """What the rule asks for: web seeds on or off, and pieces boosted or masked."""

    web: bool
    why: str
    boost: frozenset[int] = frozenset()
    mask: frozenset[int] = frozenset()


class OriginRule:
    """The rule's state for one fetch: its ring, and when a piece last arrived.

    Args:
        info_hash: the torrent's id (the ring's salt, so releases spread differently).
        own_id: this node's peer id, as its peers see it.
        stall: seconds without a new piece, with the web seed off, before it comes back.
    """

    def __init__(self, info_hash: str, own_id: bytes, *, stall: float) -> None:
        self.ring = Ring(bytes.fromhex(info_hash))
        self.own_id = own_id
        self.stall = stall
        self._have = -1
        self._quiet_since = 0.0
        self._stalled = False
        self._web = True
        self._web_est = 0

    def mine(self, view: SwarmView) -> frozenset[int]:
        """The missing pieces no connected peer has that this node fetches from the origin."""
        self.ring.place([self.own_id, *view.peers])
        unheld = view.missing - view.held
        return frozenset(p for p in unheld if self.ring.owner(p) == self.own_id)

    def decide(self, view: SwarmView, now: float) -> Steer:
        """The steer for ``view``, seen at monotonic time ``now``."""
        if view.have != self._have:
            self._have, self._quiet_since = view.have, now
        if view.web_rate:
            self._web_est = view.web_rate
        steer = self._decide(view, now)
        if steer.web != self._web:
            self._web, self._quiet_since = steer.web, now
        return steer

    def _decide(self, view: SwarmView, now: float) -> Steer:
        if not view.missing:
            self._stalled = False
            return Steer(True, "nothing missing")
        # An owner gets its pieces from the origin about as fast as this node got its
        # own: waiting less than two of those before calling it a stall would bring the
        # origin back for everyone in a large swarm, where each share comes slowly.
        wait = self.stall
        if self._web_est:
            wait = min(max(wait, 2 * view.piece_size / self._web_est), MAX_STALL_FACTOR * wait)
        if self._stalled and view.held and view.peer_rate:
            self._stalled = False
        elif not self._web and now - self._quiet_since >= wait:
            self._stalled = True
        if self._stalled:
            return Steer(True, "no piece for a while: the origin helps")
        if not view.peers and not view.held:
            # A lone fetcher owns everything: nothing to steer (and no priorities to move
            # as each piece lands).
            return Steer(True, "no other fetcher")
        mine = self.mine(view)
        if not mine:
            return Steer(False, "peers and the other fetchers have every missing piece")
        mask = view.missing - view.held - mine
        # The web seed requests ahead (REQUEST_QUEUE_TIME of its rate, at least two
        # pieces): once this node's own pieces fit in that, mask what peers hold too,
        # or its next requests would be pieces a peer is about to send.
        ahead = max(2, math.ceil(self._web_est * REQUEST_QUEUE_TIME / view.piece_size)) + 1
        if len(mine) <= ahead:
            mask |= view.held
        return Steer(True, f"{len(mine)} pieces of its own", boost=mine, mask=mask)
