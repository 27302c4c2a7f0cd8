"""BEP 27 private torrents: the flag, its trackers, and what is refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from p2pweights.errors import FormatError, LoadError
from p2pweightsd.engine.torrents import make_torrent

from .conftest import p2pw

URL = "http://10.77.0.1:6969/announce"


def test_private_torrent_has_the_flag_and_its_own_info_hash(
    make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> None:
    release = make_release(make_model())
    public = make_torrent(release)
    private = make_torrent(release, private=True, trackers=[URL])
    assert b"7:privatei1e" in private.data and b"7:private" not in public.data
    assert URL.encode() in private.data
    # The flag is inside the info dict: a different swarm, reproducibly.
    assert private.id != public.id
    assert make_torrent(release, private=True, trackers=[URL]).id == private.id


def test_private_needs_a_tracker_and_trackers_must_be_urls(
    make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> None:
    release = make_release(make_model())
    with pytest.raises(FormatError, match="needs a tracker"):
        make_torrent(release, private=True)
    with pytest.raises(FormatError, match="http/https/udp"):
        make_torrent(release, trackers=["file:///etc/passwd"])


def test_cli_private_without_tracker_is_refused_before_anything(tmp_path: Path) -> None:
    out = p2pw(tmp_path / "home", "publish", str(tmp_path), "--private")
    assert out.returncode == LoadError.exit_code
    assert "--private needs at least one --tracker" in out.stderr
    assert not (tmp_path / "home" / "daemon.pid").exists()  # no daemon was started for it
