"""The web page's login and session rules, without a browser (these run everywhere).

A one-time token from the Unix socket becomes an ``HttpOnly``, ``SameSite=Strict`` cookie;
the cookie reads, and acts only with the page's own ``Origin``; the bearer token never
mixes with an ``Origin``; every answer carries the page's security headers.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from p2pweights import PrivateKey
from p2pweights.chunking import chunk_order, layer_order
from p2pweights.errors import CorruptChunkError
from p2pweights.release import open_self_signed
from p2pweightsd import webui

from .conftest import Daemon, p2pw

DaemonFactory = Callable[..., Daemon]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _req(
    method: str, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    # No cookie jar: each call sends exactly the headers given.
    jar = aiohttp.DummyCookieJar()
    async with (
        aiohttp.ClientSession(cookie_jar=jar) as session,
        session.request(method, url, headers=headers or {}, allow_redirects=False) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.text()


def req(
    method: str, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    return asyncio.run(_req(method, url, headers))


async def _unix_get(d: Daemon, path: str) -> int:
    connector = aiohttp.UnixConnector(path=str(d.home / "daemon.sock"))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"http://localhost{path}") as resp,
    ):
        return resp.status


def test_sessions_are_one_time_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(webui.time, "monotonic", lambda: now[0])
    s = webui.Sessions()
    token = s.mint()
    assert s.redeem("x" + token) is None
    session = s.redeem(token)
    assert session is not None and s.valid(session)
    assert s.redeem(token) is None  # used up
    late = s.mint()
    now[0] += webui.LOGIN_TTL + 1
    assert s.redeem(late) is None  # expired
    now[0] += webui.SESSION_TTL
    assert not s.valid(session)


@pytest.mark.slow
def test_login_cookie_origin_and_headers(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    port = _free_port()
    d = daemons("--tcp-port", str(port))
    release = make_release(make_model())
    rid = d.call("publish", release)["id"]
    base = f"http://127.0.0.1:{port}"
    token = (d.home / "api.token").read_text().strip()
    bearer = {"Authorization": f"Bearer {token}"}

    # Tokens are minted on the Unix socket only.
    code, _, body = req("POST", f"{base}/v1/ui/login", bearer)
    assert code == 403 and "Unix socket" in body
    url = d.call("request", "POST", "/ui/login")["url"]
    assert url.startswith(f"{base}/ui/login?token=")

    # Without a session: 401 and no data, for the page and the API alike.
    for path in ("/", "/ui/", "/ui/style.css", "/v1/releases", f"/v1/releases/{rid}/chunks"):
        code, _, body = req("GET", base + path)
        assert code == 401 and rid not in body, path
    assert req("GET", f"{base}/ui/login?token=wrong")[0] == 401

    code, headers, _ = req("GET", url)
    assert code == 303 and headers["Location"] == "/ui/"
    set_cookie = headers["Set-Cookie"]
    assert set_cookie.startswith(f"p2pw_session_{port}=")
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/" in set_cookie
    assert req("GET", url)[0] == 401  # one use
    cookie = {"Cookie": set_cookie.split(";")[0]}

    code, headers, body = req("GET", f"{base}/ui/", cookie)
    assert code == 200 and "<script" in body and "/ui/app.js" in body
    for answer in (headers, req("GET", f"{base}/v1/releases", cookie)[1]):
        assert answer["Cache-Control"] == "no-store"
        assert answer["X-Frame-Options"] == "DENY"
        assert answer["X-Content-Type-Options"] == "nosniff"
        assert answer["Cross-Origin-Resource-Policy"] == "same-origin"
        csp = answer["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
    assert req("GET", f"{base}/v1/releases", cookie)[0] == 200
    # Another site (another port of 127.0.0.1 is the same site, not the same origin).
    for site in ("same-site", "cross-site"):
        headers = {**cookie, "Sec-Fetch-Site": site}
        assert req("GET", f"{base}/v1/releases", headers)[0] == 403
    # DNS rebinding: the Host check stays, cookie or not.
    assert req("GET", f"{base}/v1/releases", {**cookie, "Host": "evil.example"})[0] == 403
    # Acting needs the page's own Origin, exactly.
    rm = f"{base}/v1/releases/{rid}"
    assert req("DELETE", rm, cookie)[0] == 403
    for origin in (
        "null",
        "http://evil.example",
        f"http://127.0.0.1:{port + 1}",
        f"https://127.0.0.1:{port}",
    ):
        assert req("DELETE", rm, {**cookie, "Origin": origin})[0] == 403, origin
    # The bearer token is for programs: with an Origin it is refused, even the page's own.
    assert req("GET", f"{base}/v1/releases", {**bearer, "Origin": base})[0] == 403
    assert req("GET", f"{base}/v1/releases", bearer)[0] == 200
    # The page is not served on the Unix socket.
    assert asyncio.run(_unix_get(d, "/ui/")) == 404

    # The chunk map lists every chunk in layer order, all verified once seeding.
    doc = d.call("request", "GET", f"/releases/{rid}/chunks")
    manifest = open_self_signed(release).manifest
    tensors = manifest.tensors
    order = chunk_order(layer_order(tensors), {n: t.chunk for n, t in tensors.items()})
    paths = [c["path"] for c in doc["chunks"]]
    assert paths[: len(order)] == order
    assert sorted(paths) == sorted(c.path for c in manifest.chunks)
    assert {c["state"] for c in doc["chunks"]} == {"verified"}
    assert doc["counts"]["verified"] == len(manifest.chunks)

    # A full verify re-hashes the store's chunks, and names a corrupt one.
    done = d.call("request", "POST", f"/releases/{rid}/verify")
    assert done["ok"] and done["chunks"] == len(manifest.chunks)
    victim = d.home / "store" / doc["chunks"][0]["path"]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptChunkError, match=doc["chunks"][0]["path"].split("/")[-1][:16]):
        d.call("request", "POST", f"/releases/{rid}/verify")

    assert req("DELETE", rm, {**cookie, "Origin": base})[0] == 200
    assert d.call("releases") == []


@pytest.mark.slow
def test_p2pw_ui_prints_a_login_url_or_says_what_is_missing(daemons: DaemonFactory) -> None:
    plain = daemons()
    out = p2pw(plain.home, "ui")
    assert out.returncode == 15, out
    assert "tcp_port" in out.stderr
    port = _free_port()
    d = daemons("--tcp-port", str(port))
    out = p2pw(d.home, "ui")
    assert out.returncode == 0, out.stderr
    url = out.stdout.splitlines()[0]
    assert url.startswith(f"http://127.0.0.1:{port}/ui/login?token=")
    assert req("GET", url)[0] == 303
    assert req("GET", url)[0] == 401
