"""The web seed rule's decisions (``daemon/origin_rule.py``), from swarm views built here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from p2pweightsd.engine import SwarmView
from p2pweightsd.origin_rule import OriginRule, Ring

TID = "ab" * 32
ME = b"-LT2110-000000000000"
PEERS = tuple(f"-LT2110-{i:012d}".encode() for i in range(1, 16))
MIB = 2**20


def _view(
    missing: Iterable[int], held: Iterable[int] = (), peers: tuple[bytes, ...] = (), *,
    have: int = 0, peer_rate: int = 0, web_rate: int = 0,
) -> SwarmView:
    return SwarmView(num_pieces=64, piece_size=MIB, missing=frozenset(missing),
                     held=frozenset(held), peers=peers, peer_rate=peer_rate,
                     web_rate=web_rate, have=have)


def test_ring_gives_each_piece_one_owner_evenly_and_moves_only_a_leavers_pieces() -> None:
    members = [ME, *PEERS]
    rings = [Ring(bytes.fromhex(TID)) for _ in members]
    for ring in rings:
        ring.place(reversed(members))  # the order members are seen in does not matter
    pieces = range(4096)
    owners = [rings[0].owner(p) for p in pieces]
    assert all(r.owner(p) == o for r in rings for p, o in zip(pieces, owners, strict=True))
    shares = Counter(owners)
    assert set(shares) == set(members)
    assert max(shares.values()) < 1.6 * len(pieces) / len(members)
    leaver = PEERS[3]
    rings[0].place([m for m in members if m != leaver])
    moved = [p for p, o in zip(pieces, owners, strict=True) if rings[0].owner(p) != o]
    assert moved and all(owners[p] == leaver for p in moved)


def test_a_lone_fetcher_uses_the_web_seed_for_everything_unsteered() -> None:
    rule = OriginRule(TID, ME, stall=3.0)
    steer = rule.decide(_view(range(64)), now=0.0)
    assert steer.web and not steer.mask and not steer.boost


def test_fetchers_split_the_unheld_pieces_and_mask_the_others() -> None:
    members = (ME, *PEERS[:3])
    rules = {m: OriginRule(TID, m, stall=3.0) for m in members}
    steers = {m: r.decide(_view(range(64), peers=tuple(x for x in members if x != m)), 0.0)
              for m, r in rules.items()}
    mine = [s.boost for s in steers.values()]
    assert all(s.web for s in steers.values())
    assert sorted(p for b in mine for p in b) == list(range(64))  # each piece once
    for s in steers.values():
        assert s.mask == frozenset(range(64)) - s.boost


def test_held_pieces_are_masked_only_once_the_own_share_fits_in_the_pipeline() -> None:
    rule = OriginRule(TID, ME, stall=3.0)
    many = rule.decide(_view(range(64), held={60, 61, 62, 63}, peers=PEERS[:1]), 0.0)
    assert many.web and not many.mask & {60, 61, 62, 63}
    mine = sorted(many.boost)
    few = rule.decide(_view(set(mine[:2]) | {60, 61}, held={60, 61}, peers=PEERS[:1]), 0.1)
    assert few.web and few.boost == frozenset(mine[:2]) and few.mask == {60, 61}


def test_a_seed_peer_or_owners_elsewhere_turn_the_web_seed_off_until_a_stall() -> None:
    rule = OriginRule(TID, ME, stall=3.0)
    held = _view(range(10), held=set(range(10)), have=54, peer_rate=1_000_000)
    assert not rule.decide(held, 0.0).web
    rule.ring.place([ME, *PEERS[:1]])
    theirs = {p for p in range(64) if rule.ring.owner(p) == PEERS[0]}
    waiting = _view(theirs, peers=PEERS[:1], have=64 - len(theirs))
    assert not rule.decide(waiting, 1.0).web  # the owner fetches them; pieces came at 1
    assert not rule.decide(waiting, 3.5).web  # quiet for 2.5 s
    stalled = rule.decide(waiting, 4.0)  # quiet for 3 s: the origin helps, nothing masked
    assert stalled.web and not stalled.mask and not stalled.boost
    assert rule.decide(waiting, 9.0).web  # still stalled: peers hold nothing for it
    back = _view(theirs, held=theirs, peers=PEERS[:1], have=64 - len(theirs), peer_rate=10**6)
    assert not rule.decide(back, 9.5).web  # peers send again: spared again


def test_nothing_missing_leaves_the_web_seed_on_and_pieces_alone() -> None:
    steer = OriginRule(TID, ME, stall=3.0).decide(_view(set(), peers=PEERS), 0.0)
    assert steer.web and not steer.boost and not steer.mask


def test_the_stall_wait_grows_with_the_time_the_origin_takes_per_piece() -> None:
    rule = OriginRule(TID, ME, stall=3.0)
    rule.ring.place([ME, *PEERS[:1]])
    theirs = {p for p in range(64) if rule.ring.owner(p) == PEERS[0]}
    mine = set(range(64)) - theirs
    # The origin gave this node 0.25 MiB/s: an owner takes about 4 s a piece.
    assert rule.decide(_view(set(mine) | theirs, peers=PEERS[:1], web_rate=MIB // 4), 0.0).web
    waiting = _view(theirs, peers=PEERS[:1], have=len(mine))
    assert not rule.decide(waiting, 1.0).web
    assert not rule.decide(waiting, 8.5).web  # 7.5 s quiet: under two pieces' time (8 s)
    assert rule.decide(waiting, 9.0).web
