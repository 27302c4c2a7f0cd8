"""What an ordered and an unordered download want from libtorrent (no session needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from p2pweights import PrivateKey, TrustStore
from p2pweights.release import open_release
from p2pweightsd.admission import PRIO_CHUNK, PRIO_META
from p2pweightsd.download import PRIO_HEAD, WINDOW_BYTES, WINDOW_CHUNKS, Download
from p2pweightsd.engine import make_torrent

from ..conftest import layer_state


def _download(
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    key: PrivateKey,
    hidden: int = 64,
) -> Download:
    release_dir = make_release(make_model(layer_state(layers=8, hidden=hidden)))
    release = open_release(release_dir, TrustStore.of_keys([key.public]))
    tf = make_torrent(release_dir)
    return Download(tf, release, [c.path for c in release.manifest.chunks])


def _wanted(d: Download) -> list[str]:
    prios = d.priorities()
    return [c.path for c in d.release.manifest.chunks if prios[d.torrent.file(c.path).index]]


def test_unordered_wants_every_chunk_and_the_manifest(
    make_model: Callable[..., Path], make_release: Callable[..., Path], key: PrivateKey
) -> None:
    d = _download(make_model, make_release, key)
    prios = d.priorities()
    assert prios[d.torrent.file("manifest.json").index] == PRIO_META
    assert set(_wanted(d)) == set(d.wanted)
    assert all(prios[d.torrent.file(p).index] == PRIO_CHUNK for p in d.wanted)


def test_ordered_wants_a_window_in_layer_order_that_moves_on(
    make_model: Callable[..., Path], make_release: Callable[..., Path], key: PrivateKey
) -> None:
    # Layers of ~4.7 MB: over the byte cap, so the window is its minimum of two chunks.
    d = _download(make_model, make_release, key, hidden=384)
    d.order = d.layer_order()
    # Blobs (config.json) hold no tensor: they are not ordered, and come last.
    blobs = set(d.wanted) - set(d.order)
    assert blobs and set(d.pending()[-len(blobs) :]) == blobs
    assert _wanted(d) == sorted(d.order[:WINDOW_CHUNKS], key=_position(d))
    # The head at libtorrent's top priority: it completes first; the rest fill in behind.
    prios = d.priorities()
    assert prios[d.torrent.file(d.order[0]).index] == PRIO_HEAD > PRIO_CHUNK
    assert {prios[d.torrent.file(p).index] for p in d.order[1:WINDOW_CHUNKS]} == {PRIO_CHUNK}
    # The head completes: it stays wanted (a complete file keeps a priority), and the
    # window moves one chunk on.
    d.complete[d.order[0]] = None
    assert set(_wanted(d)) == {d.order[0], *d.order[1 : 1 + WINDOW_CHUNKS]}
    # A chosen order goes first; what it does not name follows in layer order.
    d.complete.clear()
    last = d.layer_order()[-1]
    d.order = [last, *d.layer_order()[:-1]]
    assert d.pending()[0] == last
    assert set(_wanted(d)) == {last, d.layer_order()[0]}


def test_the_byte_cap_widens_the_window_for_small_chunks(
    make_model: Callable[..., Path], make_release: Callable[..., Path], key: PrivateKey
) -> None:
    d = _download(make_model, make_release, key)
    d.order = d.layer_order()
    sizes = {c.path: c.size for c in d.release.manifest.chunks}
    window = _wanted(d)
    assert len(window) > WINDOW_CHUNKS
    assert sum(sizes[p] for p in window) <= WINDOW_BYTES
    assert set(window) == set(d.pending()[: len(window)])


def _position(d: Download) -> Callable[[str], int]:
    order = [c.path for c in d.release.manifest.chunks]
    return order.index
