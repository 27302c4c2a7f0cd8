"""Unit tests of the control API's guard: origin, host and token checks, and error shapes.

The app runs on aiohttp's loopback test server (TCP, so the token and Host checks apply)
over a small fake service whose methods raise what a real one may raise. The real daemon
has its own integration tests (test_daemon.py, test_api_boundary.py).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from p2pweights.errors import (
    ChunkError,
    ConfigError,
    DiskFullError,
    FormatError,
    KeyFileError,
    LoadError,
    P2PWeightsError,
    SwarmError,
    TrustError,
    UnknownReleaseError,
)
from p2pweightsd.api import make_app

TOKEN = "guard-test-token"


class RaisingService:
    """``show`` raises whatever the test put in ``error``; ``status`` answers."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def status(self) -> dict[str, Any]:
        return {"version": "test"}

    def show(self, rid: str) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return {"id": rid}

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        yield {"kind": "test"}


class Guarded:
    def __init__(self, runner: asyncio.Runner, client: TestClient[Any, Any]) -> None:
        self.runner = runner
        self.client = client

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        async def go() -> tuple[int, dict[str, Any]]:
            async with self.client.get(path, headers=headers or {}) as resp:
                return resp.status, json.loads(await resp.text() or "{}")

        return self.runner.run(go())


SERVICE = RaisingService()
GOOD = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def api() -> Iterator[Guarded]:
    with asyncio.Runner() as runner:

        async def start() -> TestClient[Any, Any]:
            client: TestClient[Any, Any] = TestClient(
                TestServer(make_app(SERVICE, token=TOKEN))  # type: ignore[arg-type]
            )
            await client.start_server()
            return client

        client = runner.run(start())
        try:
            yield Guarded(runner, client)
        finally:
            runner.run(client.close())


@pytest.fixture(autouse=True)
def _no_error() -> Iterator[None]:
    SERVICE.error = None
    yield
    SERVICE.error = None


def test_the_token_is_required_and_compared_exactly(api: Guarded) -> None:
    assert api.get("/v1/status", GOOD) == (200, {"version": "test"})
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": TOKEN},
        {"Authorization": f"bearer {TOKEN}"},
    ):
        status, doc = api.get("/v1/status", headers)
        assert status == 401, headers
        assert doc["type"] == "ApiError" and doc["exit_code"] == 15


def test_no_token_configured_refuses_every_tcp_request() -> None:
    with asyncio.Runner() as runner:

        async def go() -> int:
            app = make_app(SERVICE, token=None)  # type: ignore[arg-type]
            async with TestClient(TestServer(app)) as client:
                for auth in ("", "Bearer None", "Bearer "):
                    async with client.get("/v1/status", headers={"Authorization": auth}) as r:
                        assert r.status == 401, auth
            return 0

        assert runner.run(go()) == 0


def test_an_origin_header_is_refused_even_with_the_token(api: Guarded) -> None:
    for origin in ("http://evil.example", "null", "http://127.0.0.1"):
        status, doc = api.get("/v1/status", {**GOOD, "Origin": origin})
        assert status == 403 and doc["exit_code"] == 15, origin
        assert "cross-origin" in doc["error"]


def test_the_host_header_must_name_loopback_and_the_port(api: Guarded) -> None:
    port = api.client.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert api.get("/v1/status", {**GOOD, "Host": host})[0] == 200, host
    for host in (
        "evil.example",
        f"evil.example:{port}",
        "127.0.0.1",
        f"127.0.0.1:{port + 1}",
        f"localhost.evil:{port}",
        f"127.0.0.2:{port}",
    ):
        status, doc = api.get("/v1/status", {**GOOD, "Host": host})
        assert status == 403 and "Host" in doc["error"], host


@pytest.mark.parametrize(
    ("error", "status", "kind", "code"),
    [
        (UnknownReleaseError("no such release"), 404, "UnknownReleaseError", None),
        (TrustError("untrusted"), 403, "TrustError", None),
        (FormatError("bad"), 400, "FormatError", None),
        (LoadError("bad"), 400, "LoadError", None),
        (ConfigError("bad"), 400, "ConfigError", None),
        (KeyFileError("bad"), 400, "KeyFileError", None),
        (ChunkError("bad"), 409, "ChunkError", None),
        (DiskFullError("full"), 507, "DiskFullError", None),
        (SwarmError("no peers"), 502, "SwarmError", None),
        (P2PWeightsError("other"), 500, "P2PWeightsError", None),
        # SQLite's SQLITE_FULL and the OS's ENOSPC/EDQUOT are a full disk, with its exit code.
        (sqlite3.OperationalError("database or disk is full"), 507, "DiskFullError", 17),
        (OSError(errno.ENOSPC, "No space left on device"), 507, "DiskFullError", 17),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), 507, "DiskFullError", 17),
        # Other database and OS errors are internal errors, not a full disk.
        (sqlite3.OperationalError("database is locked"), 500, "OperationalError", 1),
        (OSError(errno.EACCES, "Permission denied"), 500, "PermissionError", 1),
        (RuntimeError("bug"), 500, "RuntimeError", 1),
    ],
)
def test_errors_map_to_one_json_shape(
    api: Guarded, error: BaseException, status: int, kind: str, code: int | None
) -> None:
    SERVICE.error = error
    got, doc = api.get("/v1/releases/" + "a" * 64, GOOD)
    assert (got, doc["type"]) == (status, kind), doc
    want = code if code is not None else getattr(error, "exit_code", 1)
    assert doc["exit_code"] == want
    assert isinstance(doc["error"], str) and doc["error"]


def test_aiohttp_refusals_get_the_same_shape(api: Guarded) -> None:
    status, doc = api.get("/v1/nothing-here", GOOD)
    assert status == 404 and doc["type"] == "ApiError" and doc["exit_code"] == 15

    async def post_status() -> tuple[int, dict[str, Any], str]:
        async with api.client.post("/v1/status", headers=GOOD) as resp:
            return resp.status, json.loads(await resp.text()), resp.headers.get("Allow", "")

    status, doc, allow = api.runner.run(post_status())
    assert status == 405 and doc["type"] == "ApiError" and "GET" in allow


def test_a_long_error_is_cut_to_2000_characters(api: Guarded) -> None:
    SERVICE.error = RuntimeError("x" * 3000)
    status, doc = api.get("/v1/releases/" + "a" * 64, GOOD)
    assert status == 500 and doc["error"] == "x" * 2000


def test_the_unix_socket_needs_no_token_but_refuses_an_origin() -> None:
    # On the 0600 socket the caller is this user: no token, no Host check; Origin still counts.
    with tempfile.TemporaryDirectory(prefix="p2pw-guard-") as tmp, asyncio.Runner() as runner:
        sock = os.path.join(tmp, "api.sock")

        async def go() -> list[int]:
            app_runner = web.AppRunner(make_app(SERVICE, token=TOKEN))  # type: ignore[arg-type]
            await app_runner.setup()
            await web.UnixSite(app_runner, sock).start()
            try:
                connector = aiohttp.UnixConnector(path=sock)
                async with aiohttp.ClientSession("http://evil.example", connector=connector) as s:
                    codes = []
                    for headers in ({}, {"Origin": "http://evil.example"}):
                        async with s.get("/v1/status", headers=headers) as resp:
                            codes.append(resp.status)
                    return codes
            finally:
                await app_runner.cleanup()

        assert runner.run(go()) == [200, 403]
