"""Web seeds and mirrors as an origin: real nginx, lying/redirecting/failing aiohttp mirrors."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import p2pweights
from p2pweights import PrivateKey, TrustStore
from p2pweights.errors import FormatError
from p2pweightsd.engine.torrents import make_torrent, parse_magnet
from p2pweightsd.web_seeds import address_allowed

from ..conftest import layer_state
from ._web_servers import NGINX, NO_NGINX, Mirror, Nginx
from .conftest import Daemon, p2pw

DaemonFactory = Callable[..., Daemon]
_HOSTS = (f"127.0.{b}.{c}" for b, c in itertools.product(range(250, 252), range(2, 250)))
PRIVATE = "10.99.0.1"
"""A private address put on this namespace's loopback device for the SSRF test."""


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start nginx or aiohttp mirrors on fresh loopback addresses; all stopped at the end."""
    made: list[Nginx | Mirror] = []

    def make(kind: str, root: Path, *, addr: str | None = None, **kw: Any) -> Any:
        host = addr or next(_HOSTS)
        if kind == "nginx":
            if NGINX is None:
                pytest.skip(NO_NGINX)
            server: Nginx | Mirror = Nginx(root, host, tmp_path / f"nginx{len(made)}", **kw)
        else:
            server = Mirror(root, host, **kw)
        made.append(server)
        return server.start()

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def mirrored(
    tmp_path: Path,
    daemons: DaemonFactory,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> dict[str, Any]:
    """A release published by a daemon, written with `p2pw mirror`; the daemon keeps running."""
    state = layer_state(layers=6, hidden=96)
    release = make_release(make_model(state))
    publisher = daemons(name="publisher")
    info = publisher.call("publish", release)
    tree = tmp_path / "tree"
    out = p2pw(publisher.home, "mirror", info["id"], str(tree), "--json")
    assert out.returncode == 0, out.stderr
    return {"state": state, "info": info, "tree": tree, "publisher": publisher}


def _leech(daemons: DaemonFactory, key: PrivateKey, *args: str, name: str) -> Daemon:
    d = daemons(*args, name=name)
    TrustStore.load(d.home / "trust.json").add(key.public, "publisher")
    return d


def _equal(path: str, home: Path, state: dict[str, torch.Tensor]) -> None:
    loaded = p2pweights.load(path, home=home, verify="full")
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[n], t) for n, t in state.items())


def _fetch(d: Daemon, uri: str, timeout: float = 60, **kw: Any) -> dict[str, Any]:
    started = d.call("fetch", uri, **kw)
    return dict(d.call("wait", started["id"], timeout))


# ---------------------------------------------------------------- no daemon


def test_web_seeds_in_torrent_and_magnet_round_trip(
    make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> None:
    release = make_release(make_model())
    url = "http://mirror.example/models/"
    tf = make_torrent(release, web_seeds=[url])
    assert tf.web_seeds == (url,)
    assert tf.id == make_torrent(release).id  # url-list is outside the info dict
    assert "ws=" in tf.magnet
    assert parse_magnet(tf.magnet).web_seeds == (url,)
    with pytest.raises(FormatError, match="http/https"):
        make_torrent(release, web_seeds=["file:///etc/passwd"])
    with pytest.raises(FormatError, match="web seed"):
        parse_magnet(tf.magnet + "&ws=gopher%3A%2F%2Fx%2F")


def test_untrusted_address_policy() -> None:
    for addr in ("10.1.2.3", "192.168.1.1", "172.16.0.1", "169.254.169.254", "100.64.0.1",
                 "fc00::1", "fe80::1", "0.0.0.0", "224.0.0.1", "::ffff:10.0.0.1"):
        assert not address_allowed(addr, "public"), addr
        assert not address_allowed(addr, "loopback"), addr
        assert address_allowed(addr, "any"), addr
    for addr in ("127.0.0.1", "::1", "127.9.9.9"):
        assert not address_allowed(addr, "public") and address_allowed(addr, "loopback")
    assert address_allowed("93.184.216.34", "public")
    assert address_allowed("2606:2800:220:1::1", "loopback")


# ---------------------------------------------------------------- nginx origin


def test_web_seed_only_magnet_completes_with_metadata_from_the_mirror(
    mirrored: dict[str, Any], servers: Callable[..., Any], daemons: DaemonFactory, key: PrivateKey
) -> None:
    tree = mirrored["tree"]
    info = mirrored["info"]
    name = next(p.name for p in tree.iterdir() if p.is_dir())
    assert {p.name for p in tree.iterdir()} == {name, f"{name}.torrent", f"{info['id']}.torrent"}
    assert (tree / name / "manifest.json").is_file() and (tree / name / "manifest.sig").is_file()
    origin = servers("nginx", tree)
    mirrored["publisher"].stop()  # no peer at all
    leech = _leech(daemons, key, name="leech")
    out = p2pw(leech.home, "fetch", info["magnet"], "--web-seed", origin.url, "--timeout", "60",
               "--json")
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout)
    assert done["state"] == "seeding"
    assert done["web_seeds"]["active"] == [origin.url] and not done["web_seeds"]["dropped"]
    assert origin.bytes_sent() >= int(info["total_bytes"])
    _equal(done["path"], leech.home, mirrored["state"])


def test_peer_and_web_seed_both_contribute(
    mirrored: dict[str, Any], servers: Callable[..., Any], daemons: DaemonFactory, key: PrivateKey,
    make_model: Callable[..., Path], make_release: Callable[..., Path],
) -> None:
    """A peer that holds some chunks sends those; the web seed sends the rest.

    (With a seed peer the web seed is spared: see the next test.)
    """
    state = layer_state(layers=12, hidden=128)
    release = make_release(make_model(state), version=2)
    publisher = daemons(name="seeder")
    info = publisher.call("publish", release)
    tree = mirrored["tree"]
    assert p2pw(publisher.home, "mirror", info["id"], str(tree)).returncode == 0
    partial = _leech(daemons, key, "--upload-rate", "1000000", "--rate-limit-local",
                     name="partial")
    some = _fetch(partial, info["magnet"], peers=[publisher.peer],
                  include=["model.layers.1*", "model.layers.2.*"])
    assert some["state"] == "seeding", some
    publisher.stop()  # the peer with some chunks is the only one
    origin = servers("nginx", tree, rate="1m")
    leech = _leech(daemons, key, name="leech")
    done = _fetch(leech, info["magnet"], peers=[partial.peer], web_seeds=[origin.url])
    assert done["state"] == "seeding", done
    from_peer = int(partial.call("show", info["id"])["transfer"]["uploaded"])
    from_origin = origin.bytes_sent()
    assert from_peer > 0 and from_origin > 0, (from_peer, from_origin)
    assert from_peer + from_origin >= int(info["total_bytes"])
    _equal(done["path"], leech.home, state)


def test_a_seeding_peer_spares_the_web_seed(
    mirrored: dict[str, Any], servers: Callable[..., Any], daemons: DaemonFactory, key: PrivateKey,
    make_model: Callable[..., Path], make_release: Callable[..., Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a seed peer connected the origin sends a small share; with the rule off, far more.

    Seeder and origin both send at 1 MB/s. Without the rule libtorrent takes about half
    from each; with it the web seed is on only until the rule first sees the seed's pieces.
    """
    state = layer_state(layers=12, hidden=128)
    release = make_release(make_model(state), version=2)
    seeder = daemons("--upload-rate", "1000000", "--rate-limit-local", name="seeder")
    info = seeder.call("publish", release)
    tree = mirrored["tree"]
    assert p2pw(seeder.home, "mirror", info["id"], str(tree)).returncode == 0
    shares: dict[bool, float] = {}
    for spare in (False, True):
        origin = servers("nginx", tree, rate="1m")
        config = tmp_path / f"spare-{spare}.toml"
        config.write_text(f"web_seed_spare = {str(spare).lower()}\n")
        monkeypatch.setenv("P2PW_CONFIG", str(config))
        leech = _leech(daemons, key, name=f"leech-spare-{spare}")
        done = _fetch(leech, info["magnet"], peers=[seeder.peer], web_seeds=[origin.url])
        assert done["state"] == "seeding", done
        leech.stop()  # closes the web seed's connections, so nginx logs what it sent
        shares[spare] = origin.bytes_sent() / int(info["total_bytes"])
        _equal(done["path"], leech.home, state)
    assert shares[True] < 0.2 <= shares[False], shares


def test_configured_mirror_is_used_for_every_fetch(
    mirrored: dict[str, Any], servers: Callable[..., Any], daemons: DaemonFactory, key: PrivateKey,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    origin = servers("nginx", mirrored["tree"])
    mirrored["publisher"].stop()
    config = tmp_path / "mirrors.toml"
    config.write_text(f'mirrors = ["{origin.url}"]\n')
    monkeypatch.setenv("P2PW_CONFIG", str(config))  # the daemon started next reads it
    leech = _leech(daemons, key, name="configured")
    done = _fetch(leech, mirrored["info"]["magnet"])
    assert done["state"] == "seeding", done
    _equal(done["path"], leech.home, mirrored["state"])


# ---------------------------------------------------------------- bad mirrors


def test_lying_mirror_is_dropped_and_the_honest_one_completes(
    mirrored: dict[str, Any], servers: Callable[..., Any], daemons: DaemonFactory, key: PrivateKey
) -> None:
    tree = mirrored["tree"]
    liar = servers("aiohttp", tree, mode="lie")
    honest = servers("nginx", tree, rate="2m")
    mirrored["publisher"].stop()
    leech = _leech(daemons, key, name="leech")
    done = _fetch(leech, mirrored["info"]["magnet"], web_seeds=[liar.url, honest.url])
    # On failure, say why: the web seeds' states and the daemon's own account.
    assert done["state"] == "seeding", (done["web_seeds"], done["problem"], leech.log()[-4000:])
    assert liar.url in done["web_seeds"]["dropped"]
    assert "failed the hash check" in done["problem"] and liar.url in done["problem"]
    assert honest.url not in done["web_seeds"]["dropped"]
    assert len([r for r in liar.requests if "/chunks/" in r or "manifest" in r]) >= 1
    _equal(done["path"], leech.home, mirrored["state"])


def test_lying_mirror_alone_completes_nothing(
    mirrored: dict[str, Any], servers: Callable[..., Any], daemons: DaemonFactory, key: PrivateKey
) -> None:
    liar = servers("aiohttp", mirrored["tree"], mode="lie")
    mirrored["publisher"].stop()
    leech = _leech(daemons, key, name="leech")
    info = _fetch(leech, mirrored["info"]["magnet"], timeout=8, web_seeds=[liar.url])
    assert info["timed_out"] and info["state"] in ("metadata", "manifest"), info
    assert not info.get("ready_chunks")
    assert info["transfer"]["failed_bytes"] > 0
    assert liar.url in info["web_seeds"]["dropped"] and liar.url in info["problem"]


def test_dead_mirror_is_retried_with_backoff_then_given_up(
    mirrored: dict[str, Any], servers: Callable[..., Any], daemons: DaemonFactory, key: PrivateKey,
) -> None:
    missing = servers("aiohttp", mirrored["tree"], mode="404")
    leech = _leech(daemons, key, name="leech")
    seeder = mirrored["publisher"]
    torrent = seeder.call("show", mirrored["info"]["id"])["torrent_path"]
    # No peer: only the failing mirror. The local profile's backoff is 0.5 + 1 + 2 s, and
    # the 4th failure gives it up.
    info = _fetch(leech, torrent, timeout=10, web_seeds=[missing.url])
    assert info["timed_out"] and info["state"] == "manifest", info
    dropped = info["web_seeds"]["dropped"]
    assert "gave up after 4 tries" in dropped[missing.url] and "404" in dropped[missing.url]
    assert missing.url in info["problem"]
    # Each try starts again at the first piece, the manifest; what else one try asks for
    # before its first 404 depends on how many requests libtorrent has pipelined (two or
    # three, with chunks wanted speculatively behind the manifest).
    tries = sum(path.endswith("/manifest.json") for path in missing.requests)
    assert 1 <= tries <= 4, missing.requests
    assert len(missing.requests) <= 4 * tries, missing.requests


def test_redirect_to_another_loopback_host_completes(
    mirrored: dict[str, Any], servers: Callable[..., Any], daemons: DaemonFactory, key: PrivateKey
) -> None:
    cdn = servers("nginx", mirrored["tree"])
    hub = servers("aiohttp", mirrored["tree"], mode="redirect", target=cdn.url)
    mirrored["publisher"].stop()
    leech = _leech(daemons, key, name="leech")
    done = _fetch(leech, mirrored["info"]["magnet"], web_seeds=[hub.url])
    assert done["state"] == "seeding", done
    assert hub.requests and cdn.bytes_sent() >= int(mirrored["info"]["total_bytes"])
    _equal(done["path"], leech.home, mirrored["state"])


# ---------------------------------------------------------------- SSRF


@pytest.fixture
def private_address() -> str:
    """Put ``PRIVATE`` on lo (tests run in their own network namespace), or skip."""
    add = subprocess.run(["ip", "addr", "add", f"{PRIVATE}/32", "dev", "lo"],
                         capture_output=True, text=True, check=False)
    if add.returncode != 0 and "File exists" not in add.stderr:
        pytest.skip(f"cannot add {PRIVATE} to lo (needs its own network namespace): "
                    f"{add.stderr.strip()}")
    return PRIVATE


def test_magnet_web_seed_on_a_private_address_is_not_contacted_a_flag_one_is(
    mirrored: dict[str, Any], servers: Callable[..., Any], daemons: DaemonFactory, key: PrivateKey,
    private_address: str,
) -> None:
    inside = servers("aiohttp", mirrored["tree"], addr=private_address)
    info = mirrored["info"]
    seeder = mirrored["publisher"]
    hostile = info["magnet"] + f"&ws=http%3A%2F%2F{private_address}%3A{inside.port}%2F"
    a = _leech(daemons, key, name="a")
    done = _fetch(a, hostile, peers=[seeder.peer])
    assert done["state"] == "seeding", done
    assert inside.requests == []  # never contacted
    assert inside.url in done["web_seeds"]["refused"]
    assert "not allowed for an untrusted web seed" in done["web_seeds"]["refused"][inside.url]
    seeder.stop()
    b = _leech(daemons, key, name="b")
    done = _fetch(b, info["magnet"], web_seeds=[inside.url])  # trusted: the user gave it
    assert done["state"] == "seeding", done
    assert inside.requests
    _equal(done["path"], b.home, mirrored["state"])
