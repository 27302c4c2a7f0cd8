"""The CLI and the daemon as a new user meets them (issue 17): each item's failure mode."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

import p2pweights
from p2pweights import FetchTimeoutError

from .conftest import Daemon, p2pw

DaemonFactory = Callable[..., Daemon]

# A v2 info-hash nobody seeds: the fetch can never complete.
NOBODY = "magnet:?xt=urn:btmh:1220" + "ab" * 32


def test_load_of_an_unreachable_release_times_out_with_a_typed_error(
    daemons: DaemonFactory,
) -> None:
    d = daemons()
    with pytest.raises(FetchTimeoutError, match="not complete after 1s"):
        p2pweights.load(NOBODY, home=d.home, timeout=1)
    res = p2pw(d.home, "load", NOBODY, "--timeout", "1", "--json")
    assert res.returncode == 14, res.stderr
    assert json.loads(res.stdout)["type"] == "FetchTimeoutError"
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
