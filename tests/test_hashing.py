"""BEP 52 roots and sha256 computed in one streaming pass."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from p2pweights.hashing import BLOCK_SIZE, StreamHasher, hash_file, hash_files, merkle_root


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_known_tree_shapes() -> None:
    one = os.urandom(100)
    assert merkle_root([_leaf(one)]) == _leaf(one)
    a, b, c = (os.urandom(BLOCK_SIZE) for _ in range(3))
    ab = hashlib.sha256(_leaf(a) + _leaf(b)).digest()
    assert merkle_root([_leaf(a), _leaf(b)]) == ab
    c0 = hashlib.sha256(_leaf(c) + bytes(32)).digest()
    assert merkle_root([_leaf(a), _leaf(b), _leaf(c)]) == hashlib.sha256(ab + c0).digest()


@pytest.mark.parametrize(
    "size", [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 5 * BLOCK_SIZE + 7]
)
def test_streaming_matches_whole_input_for_any_slicing(size: int) -> None:
    data = os.urandom(size)
    whole = StreamHasher()
    whole.update(data)
    sliced = StreamHasher()
    for i in range(0, size, 1000):
        sliced.update(data[i : i + 1000])
    expected_root = (
        merkle_root([_leaf(data[i : i + BLOCK_SIZE]) for i in range(0, size, BLOCK_SIZE)]).hex()
        if size
        else ""
    )
    d1, d2 = whole.digest(), sliced.digest()
    assert d1 == d2
    assert d1.size == size
    assert d1.sha256 == hashlib.sha256(data).hexdigest()
    assert d1.v2_root == expected_root


def test_hash_file_and_parallel_hash_files(tmp_path: Path) -> None:
    files = []
    for i in range(5):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(100_000 * (i + 1)))
        files.append(p)
    assert hash_files(files) == [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    assert hash_file(files[0]).sha256 == hashlib.sha256(files[0].read_bytes()).hexdigest()
