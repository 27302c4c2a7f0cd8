"""Background upkeep's pure parts: when a torrent is announced on the DHT again."""

from __future__ import annotations

import itertools

from p2pweightsd.upkeep import DhtRetry


def _asks(retry: DhtRetry, rid: str, times: list[float], *, lonely: bool = True) -> list[float]:
    return [t for t in times if retry.due(rid, t, lonely=lonely)]


def test_a_lonely_fetch_asks_again_backing_off_to_once_a_minute() -> None:
    retry = DhtRetry()
    ticks = [i * 2.5 for i in range(100)]  # the upkeep loop's tick, for 250 s
    asked = _asks(retry, "a", ticks)
    # First seen at 0 s: asks at 5 s, then 10, 20 and 40 s after each ask, then every 60 s.
    assert asked[:5] == [5.0, 15.0, 35.0, 75.0, 135.0]
    assert {b - a for a, b in itertools.pairwise(asked[4:])} == {60.0}
    assert retry.tries("a") == len(asked)


def test_peers_reset_the_schedule_and_each_fetch_has_its_own() -> None:
    retry = DhtRetry()
    assert _asks(retry, "a", [0.0, 5.0, 10.0]) == [5.0]
    assert not retry.due("a", 12.5, lonely=False)  # it found peers: forgotten
    assert retry.tries("a") == 0
    assert _asks(retry, "a", [20.0, 22.5, 25.0]) == [25.0]  # lonely again: 5 s from then
    assert _asks(retry, "b", [25.0, 30.0]) == [30.0]  # "b" counts from its own start


def test_ended_fetches_are_forgotten() -> None:
    retry = DhtRetry()
    assert not retry.due("a", 0.0, lonely=True)
    assert not retry.due("b", 0.0, lonely=True)
    retry.keep_only({"b"})
    assert not retry.due("a", 5.0, lonely=True)  # "a" starts over: first seen at 5 s
    assert retry.due("b", 5.0, lonely=True)
    assert retry.due("a", 10.0, lonely=True)
