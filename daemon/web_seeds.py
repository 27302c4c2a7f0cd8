"""Web seeds (BEP 19 HTTP origins): which may be contacted, retries, and metadata from them.

A web seed URL is *trusted* when the user gave it (``p2pw fetch --web-seed``, the
``mirrors`` config list) and *untrusted* when it came inside a magnet (``ws=``) or a
torrent (``url-list``): a stranger wrote those. An untrusted URL is used only if every
address its host resolves to is allowed by ``web_seed_policy`` (SSRF: a stranger's magnet
must not make a daemon inside a private network send requests to its neighbours):

``public``    global unicast addresses only (the default profile)
``loopback``  those and loopback (the ``local`` profile, whose peers are on 127/8)
``any``       no check

Private, link-local, shared (CGNAT), multicast and reserved ranges are refused under both
``public`` and ``loopback``. Redirects libtorrent follows from a global address to a
local one are refused by libtorrent's own ``ssrf_mitigation`` (on by default).

Every byte from a web seed is checked against the signed v2 roots like a peer's: a seed
that sends a piece failing the check is banned by libtorrent at once (``ban_web_seeds``),
and named here. One that answers with an HTTP error or not at all is retried with
exponential backoff, then given up on.

While a fetch runs, :mod:`.origin_rule` decides a few times a second whether its web
seeds are on (:meth:`WebSeeds.steer`): used from the start, spared while peers and fellow
fetchers can send what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from p2pweights.errors import FormatError, SwarmError

from .config import WebSeedPolicy
from .engine import Engine, EngineError, MagnetLink, TorrentFile, parse_torrent
from .engine.torrents import MAX_TORRENT_BYTES, check_web_seed
from .origin_rule import OriginRule, Steer

__all__ = ["WebSeedPolicy", "WebSeeds", "address_allowed", "check_untrusted"]

log = logging.getLogger(__name__)

_METADATA_TIMEOUT = 15.0
METADATA_GRACE = 1.0
"""Seconds a magnet's peers get to send the metadata before the web seeds are asked."""
_MAX_REDIRECTS = 5
STEER_EVERY = 0.25
"""Seconds between two looks of the web seed rule at a fetch's swarm."""


def address_allowed(addr: str, policy: WebSeedPolicy) -> bool:
    """Whether an untrusted web seed may be contacted at ``addr`` under ``policy``."""
    if policy == "any":
        return True
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return policy == "loopback"
    return ip.is_global and not ip.is_multicast


async def check_untrusted(url: str, policy: WebSeedPolicy) -> str | None:
    """Why ``url`` (an untrusted web seed) must not be contacted, or None if it may be."""
    try:
        check_web_seed(url)
    except FormatError as exc:
        return str(exc)
    if policy == "any":
        return None
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        addrs = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, parts.port or 80, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            return f"cannot resolve {host[:60]}: {exc}"
        addrs = [str(info[4][0]) for info in infos]
    bad = [a for a in addrs if not address_allowed(a, policy)]
    if bad:
        return f"{host[:60]} is {bad[0]}, not allowed for an untrusted web seed (policy {policy})"
    return None


@dataclass
class _Release:
    active: list[str] = field(default_factory=list)
    trusted: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    retries: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    steering: asyncio.Task[None] | None = None
    steer: Steer | None = None


class WebSeeds:
    """The web seeds of every fetch: selection, retries with backoff, and their problems."""

    def __init__(
        self,
        engine: Engine,
        *,
        policy: WebSeedPolicy,
        retries: int,
        backoff: float,
        mirrors: Sequence[str] = (),
        spare: bool = True,
        stall: float = 3.0,
    ) -> None:
        self.engine = engine
        self.spare = spare
        """Whether the web seed rule (:mod:`.origin_rule`) spares the origin."""
        self.stall = stall
        self.mirrors = list(mirrors)
        """The config's mirrors: trusted, for every fetch."""
        self._given: dict[str, list[str]] = {}
        """Web seeds a ``fetch --web-seed`` gave (trusted; kept until the daemon stops)."""
        self.policy = policy
        self.retries = retries
        self.backoff = backoff
        self._releases: dict[str, _Release] = {}

    def remember(self, rid: str, urls: Sequence[str]) -> None:
        """Use ``urls`` (trusted: the user gave them) for the fetch of ``rid``.

        Raises:
            FormatError: one is not an http/https URL.
        """
        if urls:
            self._given[rid] = [check_web_seed(u) for u in urls]

    async def select(self, rid: str, *, untrusted: Sequence[str]) -> list[str]:
        """The web seeds a fetch may use: every trusted one, and the untrusted the policy allows.

        Trusted ones are those :meth:`remember` was given and the config's mirrors; those
        in ``untrusted`` (from a magnet or a torrent) are checked. Refused ones are
        remembered with the reason, for ``show``.
        """
        state = self._releases.setdefault(rid, _Release())
        trusted = [*self._given.get(rid, ()), *self.mirrors, *state.trusted]
        chosen = [u for u in dict.fromkeys(trusted) if u not in state.dropped]
        state.trusted.update(chosen)
        for url in dict.fromkeys(untrusted):
            if url in chosen or url in state.dropped:
                continue
            why = await check_untrusted(url, self.policy)
            if why is None:
                chosen.append(url)
            else:
                log.warning("release %s: web seed %s refused: %s", rid[:12], url[:80], why)
                state.refused[url] = why
        state.active = chosen
        return list(chosen)

    def on_failure(self, rid: str, url: str, message: str) -> None:
        """A web seed failed: drop a liar now; retry others with backoff, then give up."""
        state = self._releases.get(rid)
        if state is None or url in state.dropped or url not in state.active:
            return
        with contextlib.suppress(SwarmError):
            self.engine.add_web_seed(rid, url, remove=True)
        if message == "banned":
            self._drop(state, url, "sent data that failed the hash check; dropped")
            return
        count = state.failures[url] = state.failures.get(url, 0) + 1
        if count >= self.retries:
            self._drop(state, url, f"gave up after {count} tries: {message}")
            return
        delay = self.backoff * 2 ** (count - 1)
        log.info("web seed %s failed (%s); retry %d in %.1f s", url[:80], message, count, delay)
        state.retries[url] = asyncio.create_task(self._retry(rid, url, delay))

    def _drop(self, state: _Release, url: str, why: str) -> None:
        log.warning("web seed %s: %s", url[:80], why)
        state.dropped[url] = why
        with contextlib.suppress(ValueError):
            state.active.remove(url)

    async def _retry(self, rid: str, url: str, delay: float) -> None:
        await asyncio.sleep(delay)
        state = self._releases.get(rid)
        if state is None or url in state.dropped:
            return
        state.retries.pop(url, None)
        if state.steer is not None and not state.steer.web:
            return  # spared: the rule adds it back when the origin is wanted again
        with contextlib.suppress(SwarmError):
            self.engine.add_web_seed(rid, url)

    def forget(self, rid: str) -> None:
        """Stop a release's pending retries (it is complete, failed or removed)."""
        self._given.pop(rid, None)
        self.unsteer(rid)
        state = self._releases.pop(rid, None)
        if state is not None:
            for task in state.retries.values():
                task.cancel()

    def steer(self, rid: str) -> None:
        """Run the web seed rule on the fetch of ``rid`` until :meth:`unsteer`.

        Nothing happens without web seeds, or with ``spare`` off.
        """
        state = self._releases.get(rid)
        if not self.spare or state is None or not state.active or state.steering is not None:
            return
        state.steering = asyncio.create_task(self._steer(rid, state), name=f"steer-{rid[:12]}")

    def steering(self, rid: str) -> bool:
        """True while the web seed rule sets the piece priorities of ``rid``'s fetch."""
        state = self._releases.get(rid)
        return state is not None and state.steering is not None

    def unsteer(self, rid: str) -> None:
        """Stop the rule on ``rid``: its web seeds are back in use, pieces as the files say."""
        state = self._releases.get(rid)
        if state is None or state.steering is None:
            return
        state.steering.cancel()
        state.steering = None
        if state.steer is not None:
            with contextlib.suppress(EngineError, SwarmError):
                self._apply(rid, state, Steer(True, "done"))
            state.steer = None

    async def _steer(self, rid: str, state: _Release) -> None:
        rule = OriginRule(rid, self.engine.peer_id, stall=self.stall)
        while True:
            await asyncio.sleep(STEER_EVERY)
            try:
                view = self.engine.swarm_view(rid)
                if view is None:
                    continue
                steer = rule.decide(view, time.monotonic())
                self._apply(rid, state, steer)
            except EngineError:  # re-added meanwhile (the fetch flow does), or gone
                continue
            if steer.web != (state.steer is None or state.steer.web):
                log.info("release %s: web seeds %s: %s", rid[:12],
                         "on" if steer.web else "off", steer.why)
            state.steer = steer

    def _apply(self, rid: str, state: _Release, steer: Steer) -> None:
        """Make the torrent's piece priorities, and its web seeds, what ``steer`` asks.

        Web seeds change only when the rule turns them on or off: libtorrent may have
        put a redirect's target in place of a URL it was given.
        """
        self.engine.steer_pieces(rid, steer.boost, steer.mask)
        if steer.web == (state.steer is None or state.steer.web):
            return
        if steer.web:
            for url in state.active:
                if url not in state.retries:
                    self.engine.add_web_seed(rid, url)
        else:
            for url in self.engine.web_seeds(rid):
                self.engine.add_web_seed(rid, url, remove=True)

    def info(self, rid: str) -> dict[str, Any] | None:
        """What ``show`` reports: the seeds in use, refused and dropped (with reasons)."""
        state = self._releases.get(rid)
        if state is None:
            return None
        return {
            "active": list(state.active),
            "in_use": state.steer is None or state.steer.web,
            "rule": state.steer.why if state.steer is not None else None,
            "refused": dict(state.refused),
            "dropped": dict(state.dropped),
            "failures": dict(state.failures),
        }

    def problem(self, rid: str) -> str | None:
        """One line naming the dropped web seeds and why, or None."""
        state = self._releases.get(rid)
        if state is None or not state.dropped:
            return None
        return "; ".join(f"web seed {u} {why}" for u, why in state.dropped.items())

    async def metadata(
        self, tid: str, magnet: MagnetLink, seeds: Sequence[str], *, peers: bool = True
    ) -> tuple[TorrentFile, bool]:
        """A magnet's torrent: from the peers, or from a web seed when no peer answers.

        Peers get ``METADATA_GRACE`` seconds first (none where the fetch was given no
        peer and the magnet names none); then the web seeds are asked too, and whichever
        answers first wins. Returns the torrent, and whether a web seed gave it.
        """
        from_peers = asyncio.ensure_future(self.engine.wait_metadata(tid))
        if not seeds:
            return await from_peers, False
        grace = METADATA_GRACE if peers or magnet.peers else 0.0
        done, _ = await asyncio.wait([from_peers], timeout=grace)
        if done:
            return from_peers.result(), False
        state = self._releases.get(magnet.id, _Release())
        trusted = [u for u in seeds if u in state.trusted]
        untrusted = [u for u in seeds if u not in state.trusted]
        from_web = asyncio.ensure_future(
            self.fetch_metadata(magnet, trusted=trusted, untrusted=untrusted)
        )
        try:
            done, _ = await asyncio.wait([from_peers, from_web], return_when="FIRST_COMPLETED")
            if from_web in done and from_web.exception() is None:
                from_peers.cancel()
                return from_web.result(), True
            if from_web in done:
                log.warning("release %s: %s", magnet.id[:12], from_web.exception())
            return await from_peers, False
        finally:
            from_web.cancel()
            from_peers.cancel()

    async def fetch_metadata(
        self, magnet: MagnetLink, *, trusted: Sequence[str], untrusted: Sequence[str]
    ) -> TorrentFile:
        """The torrent of ``magnet`` from a mirror tree, checked against its info-hash.

        Tries ``<url>/<v2 info-hash>.torrent`` and ``<url>/<dn>.torrent`` on each web seed
        (``p2pw mirror`` writes both). An untrusted URL, and every redirect it answers
        with, must pass the policy.

        Raises:
            SwarmError: no web seed had a torrent with the magnet's info-hash.
        """
        reasons: list[str] = []
        seeds = [(u, True) for u in trusted] + [(u, False) for u in untrusted if u not in trusted]
        names = [f"{magnet.info_hash_v2}.torrent"]
        if magnet.name and "/" not in magnet.name and magnet.name not in (".", ".."):
            names.append(f"{magnet.name}.torrent")
        timeout = aiohttp.ClientTimeout(total=_METADATA_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for base, is_trusted in seeds:
                for name in names:
                    url = base.rstrip("/") + "/" + urllib.parse.quote(name)
                    try:
                        data = await self._get(session, url, is_trusted)
                        tf = parse_torrent(data)
                    except (SwarmError, FormatError, aiohttp.ClientError, TimeoutError) as exc:
                        reasons.append(f"{url[:100]}: {str(exc) or type(exc).__name__}")
                        continue
                    if tf.info_hash_v2 != magnet.info_hash_v2 or (
                        magnet.info_hash_v1 is not None and tf.info_hash_v1 != magnet.info_hash_v1
                    ):
                        reasons.append(f"{url[:100]}: another torrent ({tf.info_hash_v2[:16]})")
                        continue
                    return tf
        raise SwarmError("no metadata from the web seeds: " + "; ".join(reasons[-4:]))

    async def _get(self, session: aiohttp.ClientSession, url: str, trusted: bool) -> bytes:
        for _ in range(_MAX_REDIRECTS + 1):
            if not trusted:
                why = await check_untrusted(url, self.policy)
                if why is not None:
                    raise SwarmError(why)
            async with session.get(url, allow_redirects=False) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    url = urllib.parse.urljoin(url, resp.headers["Location"])
                    check_web_seed(url, "redirect")
                    continue
                if resp.status != 200:
                    raise SwarmError(f"HTTP {resp.status}")
                data = await resp.content.read(MAX_TORRENT_BYTES + 1)
                if len(data) > MAX_TORRENT_BYTES:
                    raise SwarmError("torrent over the size limit")
                return data
        raise SwarmError(f"more than {_MAX_REDIRECTS} redirects")
