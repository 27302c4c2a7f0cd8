"""Shares of a swarm's pieces: every node computes the same partition on its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import libtorrent as lt

from p2pweightsd.engine import make_torrent
from p2pweightsd.spread import chunk_pieces, share_of

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
