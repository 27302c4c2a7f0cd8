"""Shares of a swarm's pieces: every node computes the same partition on its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import libtorrent as lt

from p2pweightsd.engine import make_torrent
from p2pweightsd.spread import SEED_CAP, SeedCap, chunk_pieces, share_of

from ..conftest import layer_state


def test_the_shares_of_every_node_partition_the_pieces() -> None:
    nodes = [f"10.77.0.{i}" for i in range(2, 19)]  # 17 leechers
    pieces = list(range(3, 88))  # the chunks' pieces; 0-2 hold the manifest files
    shares = [share_of(me, [n for n in nodes if n != me], pieces) for me in nodes]
    covered = sorted(p for share in shares for p in share)
    assert covered == pieces  # every piece in exactly one share
    assert {len(s) for s in shares} <= {len(pieces) // 17, len(pieces) // 17 + 1}


def test_a_node_sees_the_same_share_whatever_order_it_learns_the_peers_in() -> None:
    others = ["10.0.0.7", "10.0.0.3", "::1", "10.0.0.9"]
    pieces = list(range(40))
    assert share_of("10.0.0.5", others, pieces) == share_of("10.0.0.5", others[::-1], pieces)


def test_alone_a_node_has_no_share() -> None:
    assert share_of("10.0.0.5", [], list(range(10))) == []
    assert share_of("10.0.0.5", ["10.0.0.5"], list(range(10))) == []


def test_chunk_pieces_are_libtorrents_pieces_of_those_files(
    make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> None:
    tf = make_torrent(make_release(make_model(layer_state(layers=4, hidden=192))), piece_size=16384)
    ti = lt.torrent_info(tf.data)
    chunks = [f for f in tf.files if f.path.startswith("chunks/")]
    expected = sorted(
        p
        for f in chunks
        for p in range(
            ti.map_file(f.index, 0, 0).piece, ti.map_file(f.index, f.size - 1, 0).piece + 1
        )
    )
    assert chunk_pieces(tf, [f.path for f in chunks]) == expected
    assert len(expected) > len(chunks)  # several pieces per chunk: the mapping is exercised


# ------------------------------------------------------------------ the seed cap

SEED = 500_000
"""Bytes/s the seeder sent this node before its share was in (the reference)."""


def _fed(cap: SeedCap, now: float, *, done: bool = True, have: int, seed: int = SEED,
         fellows: int = 4 * SEED) -> bool:
    return cap.step(now, share_done=done, have=have, seed_rate=seed, fellow_rate=fellows)


def test_the_seeds_are_capped_only_once_the_share_is_in() -> None:
    cap = SeedCap()
    assert not _fed(cap, 0.0, done=False, have=1)
    assert not _fed(cap, 0.5, done=False, have=2)
    assert _fed(cap, 1.0, have=3)
    assert cap.seed_rate == SEED


def test_a_capped_seeds_low_rate_does_not_lower_the_reference() -> None:
    cap = SeedCap()
    assert _fed(cap, 0.0, have=1)
    # Capped, the seed sends a block a second; the reference stays what it sent before.
    assert _fed(cap, 0.5, have=2, seed=SEED_CAP)
    assert cap.seed_rate == SEED


def test_seeds_faster_than_the_fellows_are_never_capped() -> None:
    # A data centre seeding home uplinks: capping it would only cost this node time.
    cap = SeedCap()
    assert not _fed(cap, 0.0, have=1, seed=50_000_000, fellows=1_000_000)
    # And a cap is lifted once the fellows fall below what the seeds sent.
    cap = SeedCap()
    assert _fed(cap, 0.0, have=1)
    assert not _fed(cap, 0.5, have=2, seed=SEED_CAP, fellows=SEED // 2)


def test_a_stall_lifts_the_cap_until_pieces_flow_again() -> None:
    cap = SeedCap(stall_s=3.0)
    assert _fed(cap, 0.0, have=10)
    assert _fed(cap, 2.9, have=10)
    assert not _fed(cap, 3.0, have=10)  # three seconds without a piece
    assert not _fed(cap, 3.5, have=10, seed=SEED)
    assert _fed(cap, 4.0, have=11)  # a piece came: capped again


def test_no_reference_no_cap() -> None:
    # Nothing has come from a seed (none connected, or it sent nothing): nothing to spare.
    cap = SeedCap()
    assert not _fed(cap, 0.0, have=1, seed=0)
