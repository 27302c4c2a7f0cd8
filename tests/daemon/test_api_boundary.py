"""The control API's boundary, on real daemons: who may call it, and what a call may touch.

What ``test_daemon.py`` already proves is not repeated here (socket and token file 0600,
401 without the right token, 403 for a foreign ``Origin`` or ``Host``, 413 for a declared
body over the limit). Here:

- the token is compared with ``hmac.compare_digest``, on every TCP request;
- no CORS: no ``Access-Control-*`` header on any answer, preflights refused, look-alike
  ``Host`` headers refused;
- the body limit holds for chunked bodies on the Unix socket too;
- over TCP, every endpoint that names a local path (publish, pack-and-publish, fetch of a
  ``.torrent`` file) is refused with 403, while the same calls work on the socket;
- hostile bodies (path traversal, relative paths, symlinks that lead out of the data dir,
  traversal in release ids) write nothing outside the data dir.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from p2pweights import PrivateKey
from p2pweightsd.api import MAX_BODY, make_app
from p2pweightsd.service import Service

from .conftest import Daemon

pytestmark = pytest.mark.slow

DaemonFactory = Callable[..., Daemon]
Answer = tuple[int, dict[str, Any], dict[str, str]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _call(
    d: Daemon,
    method: str,
    path: str,
    *,
    tcp_port: int | None = None,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> Answer:
    """One raw request, on the socket or on TCP; the status, JSON answer and headers."""
    connector: aiohttp.BaseConnector = (
        aiohttp.TCPConnector()
        if tcp_port
        else aiohttp.UnixConnector(path=str(d.home / "daemon.sock"))
    )
    base = f"http://127.0.0.1:{tcp_port}" if tcp_port else "http://localhost"
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, base + path, headers=headers or {}, data=data) as resp,
    ):
        text = await resp.text()
        return resp.status, json.loads(text) if text else {}, dict(resp.headers)


def call(d: Daemon, method: str, path: str, **kw: Any) -> Answer:
    return asyncio.run(_call(d, method, path, **kw))


@pytest.fixture
def tcp_daemon(daemons: DaemonFactory) -> tuple[Daemon, int, dict[str, str]]:
    port = _free_port()
    d = daemons("--tcp-port", str(port), name="api")
    token = (d.home / "api.token").read_text().strip()
    return d, port, {"Authorization": f"Bearer {token}"}


# ---- the token, in constant time ---------------------------------------------------------


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TCP request goes through ``hmac.compare_digest``, right or wrong token."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    token = "t" * 43

    class Status:
        def status(self) -> dict[str, Any]:
            return {"ok": True}

    async def go() -> list[int]:
        app = make_app(cast(Service, Status()), token=token)
        async with TestClient(TestServer(app)) as client:
            codes = []
            for given in ("", "Bearer x", f"Bearer {token[:-1]}", f"Bearer {token}"):
                async with client.get("/v1/status", headers={"Authorization": given}) as r:
                    codes.append(r.status)
            return codes

    assert asyncio.run(go()) == [401, 401, 401, 200]
    assert len(calls) == 4
    assert all(b == f"Bearer {token}".encode() for _, b in calls)


# ---- no CORS, Host and Origin ------------------------------------------------------------


def test_no_cors_and_look_alike_hosts(tcp_daemon: tuple[Daemon, int, dict[str, str]]) -> None:
    d, port, auth = tcp_daemon
    answers = [
        call(d, "GET", "/v1/status", tcp_port=port, headers=auth),
        call(d, "GET", "/v1/releases", tcp_port=port, headers=auth),
        call(d, "GET", "/v1/status", tcp_port=port, headers={**auth, "Origin": "null"}),
        call(
            d,
            "OPTIONS",
            "/v1/publish",
            tcp_port=port,
            headers={
                "Origin": "http://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        ),
        call(d, "OPTIONS", "/v1/status", tcp_port=port, headers=auth),
        call(d, "GET", "/v1/status", headers={"Origin": f"http://127.0.0.1:{port}"}),
    ]
    for _, _, headers in answers:
        assert not [h for h in headers if h.lower().startswith("access-control-")], headers
    assert [a[0] for a in answers] == [200, 200, 403, 403, 405, 403]
    # The socket refuses an Origin too: a page cannot reach it, but a proxy might.
    for host in (
        f"127.0.0.1.evil.example:{port}",
        f"evil.example:{port}",
        "127.0.0.1",
        f"127.0.0.1:{port + 1}",
        f"localhost.:{port}",
    ):
        status, doc, _ = call(d, "GET", "/v1/status", tcp_port=port, headers={**auth, "Host": host})
        assert status == 403 and "Host" in doc["error"], (host, status, doc)
    assert (
        call(d, "GET", "/v1/status", tcp_port=port, headers={**auth, "Host": f"localhost:{port}"})[
            0
        ]
        == 200
    )


# ---- the body limit on the socket --------------------------------------------------------


def test_body_limit_holds_on_the_socket_chunked_or_not(daemons: DaemonFactory) -> None:
    d = daemons(name="limit")
    big = b'{"uri": "' + b"x" * MAX_BODY + b'"}'

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    for body in (big, chunked()):
        status, doc, _ = call(d, "POST", "/v1/fetch", body=body)
        assert status == 413 and doc["type"] == "ApiError", (status, doc)
    # The daemon is unharmed.
    assert d.call("status")["pid"] == d.pid


# ---- local paths: only on the socket -----------------------------------------------------


def test_tcp_refuses_every_endpoint_that_names_a_local_path(
    tcp_daemon: tuple[Daemon, int, dict[str, str]],
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    tmp_path: Path,
    key: PrivateKey,
) -> None:
    d, port, auth = tcp_daemon
    source = make_model()
    release = make_release(source)
    key_file = tmp_path / "keys" / "publisher.pem"
    torrent = tmp_path / "some.torrent"
    torrent.write_bytes(b"d4:infod4:name1:xee")
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("/v1/publish", {"path": str(release)}),
        ("/v1/publish", {"path": "/etc"}),
        (
            "/v1/publish",
            {"source": str(source), "name": "test/m", "version": 1, "key_file": str(key_file)},
        ),
        ("/v1/fetch", {"uri": str(torrent)}),
        ("/v1/fetch", {"uri": "/etc/passwd.torrent"}),
    ]
    for path, body in bodies:
        status, doc, _ = call(d, "POST", path, tcp_port=port, headers=auth, body=body)
        assert status == 403, (path, body, status, doc)
        assert doc["type"] == "ApiError" and "use the Unix socket" in doc["error"], doc
    assert d.call("releases") == []  # nothing was read, packed or added
    assert not any((d.home / "store" / "chunks").iterdir())
    # A magnet names no local path: a token holder may fetch it.
    magnet = "magnet:?xt=urn:btmh:1220" + "ab" * 32
    status, doc, _ = call(d, "POST", "/v1/fetch", tcp_port=port, headers=auth, body={"uri": magnet})
    assert status == 202, doc
    # The same publish works on the socket (the same user).
    status, doc, _ = call(d, "POST", "/v1/publish", body={"path": str(release)})
    assert status == 201 and doc["state"] == "seeding", doc


# ---- hostile bodies write nothing outside the data dir -----------------------------------


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``root`` but ``skip``: (mode, size, mtime_ns), links not followed."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [n for n in dirnames if here / n != skip]
        for name in [*dirnames, *filenames]:
            st = (here / name).lstat()
            out[str(here / name)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_hostile_bodies_write_nothing_outside_the_data_dir(
    daemons: DaemonFactory,
    make_model: Callable[..., Path],
    tmp_path: Path,
    key: PrivateKey,
) -> None:
    d = daemons(name="victim")
    source = make_model()
    key_file = tmp_path / "keys" / "publisher.pem"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not touch")
    # A release dir whose parts lead out of it: chunks and manifest are symlinks.
    tricky = tmp_path / "tricky"
    tricky.mkdir()
    (tricky / "chunks").symlink_to(outside)
    (tricky / "manifest.json").symlink_to(outside / "secret.txt")
    (tricky / "manifest.sig").write_bytes(b"\0" * 64)
    # A model dir whose weights file is a symlink to a file outside.
    linked_model = tmp_path / "linked-model"
    linked_model.mkdir()
    (linked_model / "model.safetensors").symlink_to(outside / "secret.txt")
    ups = "../" * 12
    hostile: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/publish", {"path": f"{ups}{outside}"}),
        ("POST", "/v1/publish", {"path": "relative/release"}),
        ("POST", "/v1/publish", {"path": str(outside / ".." / "outside")}),
        ("POST", "/v1/publish", {"path": str(tricky)}),
        ("POST", "/v1/publish", {"path": str(outside / "secret.txt")}),
        ("POST", "/v1/publish", {"path": str(d.home / ".." / "outside")}),
        *[
            (
                "POST",
                "/v1/publish",
                {"source": src, "name": name, "version": 1, "key_file": kf, "label": label},
            )
            for src, name, kf, label in [
                (str(source), f"{ups}evil/model", str(key_file), f"{ups}x"),
                (str(source), "test/model", f"{ups}{key_file}", ""),
                (str(source), "test/model", "keys/publisher.pem", ""),
                ("relative/model", "test/model", str(key_file), ""),
                (str(linked_model), "test/model", str(key_file), ""),
                (str(outside), "test/model", str(key_file), ""),
                (str(source), "test/model", str(outside / "secret.txt"), ""),
                (str(source), "../../..", str(key_file), "/etc/passwd"),
            ]
        ],
        ("POST", "/v1/fetch", {"uri": f"{ups}etc/x.torrent"}),
        ("POST", "/v1/fetch", {"uri": str(outside / "secret.txt")}),
        ("POST", "/v1/fetch", {"uri": "file:///etc/passwd"}),
        ("POST", "/v1/fetch", {"uri": "magnet:?xt=urn:btmh:1220" + "ab" * 32 + "&dn=../../x"}),
        *[
            (method, f"/v1/releases/{rid}{tail}", {})
            for method, tail in [
                ("GET", ""),
                ("DELETE", "?delete_data=1"),
                ("GET", "/wait?timeout=0"),
            ]
            for rid in ("..%2F..%2Fetc", "%2e%2e", "." * 64, "abcdef%2F..%2F..")
        ],
    ]
    before = _snapshot(tmp_path, skip=d.home)
    answers = []
    for method, path, body in hostile:
        status, doc, _ = call(d, method, path, body=body if method == "POST" else None)
        answers.append((path, body, status, doc.get("type")))
        if status >= 400:
            assert {"error", "type", "exit_code"} <= set(doc), doc
        assert status < 500, (path, body, status, doc)
    after = _snapshot(tmp_path, skip=d.home)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, sorted(changed)
    assert (outside / "secret.txt").read_text() == "do not touch"
    # Accepted: the magnet fetch (it waits for peers), and the pack of ``outside`` as a
    # plain dir of blobs: on the socket the caller is this user, who may publish any dir
    # they can read. Everything else was refused.
    accepted = [(p, b) for p, b, s, _ in answers if s < 300]
    assert accepted == [
        ("/v1/publish", hostile[11][2]),
        ("/v1/fetch", hostile[17][2]),
    ], accepted
    assert hostile[11][2]["source"] == str(outside)
    # Whatever got in is inside the data dir.
    for info in d.call("releases"):
        assert Path(info["path"]).resolve().is_relative_to(d.home.resolve())
    staging = d.home / "store" / "staging"
    assert not staging.exists() or not any(staging.iterdir())
