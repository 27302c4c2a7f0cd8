"""The typed client of the daemon's control API, and starting the daemon on demand.

Finding and starting the daemon process lives in :mod:`.daemon_process`; its names are
re-exported here, where callers have always found them.

The library reaches the daemon only through this module, over HTTP on the daemon's Unix
socket (or 127.0.0.1 TCP with a bearer token). It never imports the daemon: it starts it
as a process (``python -m p2pweightsd run``), the way ``docker`` or ``ollama`` users expect.

Two transports share one error mapping: the async methods use aiohttp (imported on first
use), and :meth:`DaemonClient.request_sync` uses the standard library's ``http.client``,
so a CLI verb that makes one call (``p2pw ls``, ``show``, ``status``, ``rm``) costs what
a plain Python start costs, not aiohttp's import.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from . import errors
from .daemon_process import (
    check_data_dir,
    daemon_log_path,
    running_daemon_pid,
    save_start_args,
    saved_start_args,
    socket_path,
    start_daemon,
)
from .errors import ApiError, DaemonError, DaemonUnavailableError, P2PWeightsError

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "DEFAULT_TIMEOUT",
    "DaemonClient",
    "check_data_dir",
    "daemon_log_path",
    "ensure_daemon",
    "ensure_daemon_sync",
    "error_named",
    "fetch_body",
    "running_daemon_pid",
    "save_start_args",
    "saved_start_args",
    "socket_path",
    "start_daemon",
]

DEFAULT_TIMEOUT = 600.0
"""Seconds ``load``, ``fetch`` and ``stream`` wait for a remote release by default.

Finite, so an unreachable release fails with ``FetchTimeoutError`` rather than hanging;
the daemon's fetch goes on, and a later call picks up where it is.
"""


def error_named(kind: str, message: str) -> P2PWeightsError | None:
    """An instance of our exception class called ``kind``, or None if there is none."""
    cls = getattr(errors, kind, None)
    if (
        isinstance(cls, type)
        and issubclass(cls, P2PWeightsError)
        and cls not in (ApiError, P2PWeightsError)
    ):
        return cls(message)
    return None


def _remote_error(status: int, data: dict[str, Any]) -> P2PWeightsError:
    """The daemon's error as the same exception class it raised, where that is ours."""
    message = str(data.get("error", f"HTTP {status}"))
    kind = str(data.get("type", "ApiError"))
    exit_code = data.get("exit_code")
    named = error_named(kind, message)
    if named is not None:
        return named
    return ApiError(
        message, status=status, kind=kind, exit_code=exit_code if isinstance(exit_code, int) else 15
    )


def _decode(status: int, raw: bytes) -> dict[str, Any]:
    """The JSON object of one answer, or the daemon's error raised as our exception."""
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError:
        data = {"error": text[:200]}
    if status >= 400:
        raise _remote_error(status, data if isinstance(data, dict) else {})
    if not isinstance(data, dict):
        raise ApiError("daemon answered with a non-object", status=status)
    return data


class _UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over the daemon's Unix socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True, slots=True)
class DaemonClient:
    """A connection recipe for one daemon; each call opens a short-lived session.

    Args:
        home: the daemon's data dir (its socket is ``home/daemon.sock``).
        tcp_port: use 127.0.0.1:PORT instead of the socket.
        token: the bearer token for TCP.
        timeout: seconds for one request (``wait`` adds its own).
    """

    home: Path
    tcp_port: int | None = None
    token: str | None = None
    timeout: float = 120.0

    def _session(self, timeout: float) -> aiohttp.ClientSession:
        import aiohttp  # noqa: PLC0415 - heavy; one-shot CLI calls use request_sync

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        connector: aiohttp.BaseConnector = (
            aiohttp.TCPConnector()
            if self.tcp_port
            else aiohttp.UnixConnector(path=str(socket_path(self.home)))
        )
        return aiohttp.ClientSession(
            connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        )

    def _url(self, path: str) -> str:
        host = f"127.0.0.1:{self.tcp_port}" if self.tcp_port else "localhost"
        return f"http://{host}/v1{path}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One API call; returns the JSON object.

        Raises:
            DaemonUnavailableError: nothing answers.
            DaemonError: no answer in time, or the connection broke.
            P2PWeightsError: the daemon refused, re-raised as the class it raised (or
                ``ApiError`` with the remote type and exit code).
        """
        import aiohttp  # noqa: PLC0415 - heavy; one-shot CLI calls use request_sync

        try:
            async with (
                self._session(timeout or self.timeout) as session,
                session.request(method, self._url(path), json=body, params=params) as resp,
            ):
                return _decode(resp.status, await resp.read())
        except (
            aiohttp.ClientConnectorError,
            aiohttp.ServerDisconnectedError,
            FileNotFoundError,
            ConnectionRefusedError,
        ) as exc:
            raise self._unavailable() from exc
        except TimeoutError as exc:
            raise self._late(method, path, timeout) from exc
        except aiohttp.ClientError as exc:
            raise DaemonError(f"talking to the daemon failed: {exc}") from exc

    def request_sync(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One API call without an event loop or aiohttp (standard library only).

        Raises:
            The same as :meth:`request`.
        """
        seconds = timeout or self.timeout
        conn: http.client.HTTPConnection = (
            http.client.HTTPConnection("127.0.0.1", self.tcp_port, timeout=seconds)
            if self.tcp_port
            else _UnixHTTPConnection(socket_path(self.home), seconds)
        )
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        url = f"/v1{path}" + (f"?{urlencode(params)}" if params else "")
        try:
            try:
                conn.connect()
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise self._unavailable() from exc
            except OSError as exc:  # e.g. a socket of another user's daemon
                raise DaemonError(f"cannot connect to the daemon: {exc}") from exc
            try:
                conn.request(method, url, body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except TimeoutError as exc:
                raise self._late(method, path, timeout) from exc
            except (OSError, http.client.HTTPException) as exc:
                raise DaemonError(f"talking to the daemon failed: {exc}") from exc
            return _decode(resp.status, raw)
        finally:
            conn.close()

    def _unavailable(self) -> DaemonUnavailableError:
        where = f"127.0.0.1:{self.tcp_port}" if self.tcp_port else socket_path(self.home)
        return DaemonUnavailableError(
            f"no daemon answers at {where}; start one with `p2pw daemon start`"
        )

    def _late(self, method: str, path: str, timeout: float | None) -> DaemonError:
        return DaemonError(
            f"the daemon did not answer {method} {path} within "
            f"{timeout or self.timeout:.0f}s (it may still be working)"
        )

    async def status(self) -> dict[str, Any]:
        """GET /status."""
        return await self.request("GET", "/status")

    async def publish(
        self,
        path: Path,
        *,
        hybrid: bool = False,
        private: bool = False,
        trackers: Sequence[str] = (),
        timeout: float = 6 * 3600,
        web_seeds: Sequence[str] = (),
        tags: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Seed a release dir (the daemon checks and hashes it first: allow for its size).

        ``tags`` go into the publisher's search index with the release (not the manifest).

        ``private`` makes a BEP 27 private torrent, announced only to ``trackers``.
        ``web_seeds`` go into the torrent's url-list and the magnet's ``ws=``.
        """
        body: dict[str, Any] = {"path": str(path.resolve()), "hybrid": hybrid}
        if private or trackers:
            body.update(private=private, trackers=list(trackers))
        if web_seeds:
            body["web_seeds"] = list(web_seeds)
        if tags:
            body["tags"] = list(tags)
        return await self.request(
            "POST",
            "/publish",
            body=body,
            timeout=timeout,
        )

    async def fetch(
        self,
        uri: str,
        *,
        peers: Sequence[str] = (),
        trackers: Sequence[str] = (),
        include: Sequence[str] = (),
        trust_on_first_use: bool = False,
        ordered: bool = False,
        web_seeds: Sequence[str] = (),
        allow_stale: bool = False,
    ) -> dict[str, Any]:
        """Start a fetch; returns the release's id and state at once.

        ``ordered`` asks for the chunks in layer order (for a streaming reader);
        ``web_seeds`` are HTTP mirrors (``p2pw mirror`` trees) for this fetch;
        ``allow_stale`` accepts a ``p2pw://`` name's record past its signed expiry.
        """
        return await self.request(
            "POST",
            "/fetch",
            body=fetch_body(
                uri,
                peers=peers,
                trackers=trackers,
                include=include,
                trust_on_first_use=trust_on_first_use,
                ordered=ordered,
                web_seeds=web_seeds,
                allow_stale=allow_stale,
            ),
        )

    async def resolve(self, name: str, *, allow_stale: bool = False) -> dict[str, Any]:
        """What a ``p2pw://`` name points to, checked (``POST /resolve``)."""
        body = {"name": name, "allow_stale": allow_stale}
        return await self.request("POST", "/resolve", body=body)

    async def search(
        self, words: str = "", *, publishers: Sequence[str] = (), timeout: int = 30
    ) -> dict[str, Any]:
        """Releases in the signed indexes of trusted publishers and of ``publishers``."""
        body = {"q": words, "publishers": list(publishers), "timeout": timeout}
        return await self.request("POST", "/search", body=body, timeout=timeout + 60)

    async def follow(
        self, name: str, *, include: Sequence[str] = (), keep: int = 0
    ) -> dict[str, Any]:
        """Follow a ``p2pw://`` name: the daemon fetches each new version (``POST /follows``)."""
        body = {"name": name, "include": list(include), "keep": keep}
        return await self.request("POST", "/follows", body=body)

    async def follows(self) -> list[dict[str, Any]]:
        """The names the daemon follows."""
        return list((await self.request("GET", "/follows"))["follows"])

    async def mirror(self, rid: str, directory: Path) -> dict[str, Any]:
        """Write a release as a static mirror tree under ``directory`` (see ``p2pw mirror``)."""
        return await self.request(
            "POST",
            f"/releases/{rid}/mirror",
            body={"dir": str(directory.resolve())},
            timeout=6 * 3600,
        )

    async def order(self, rid: str, chunks: Sequence[str]) -> dict[str, Any]:
        """Have a fetch download these chunk paths first, in this order."""
        path = f"/releases/{quote(rid, safe='')}/order"
        return await self.request("POST", path, body={"chunks": list(chunks)})

    async def releases(self) -> list[dict[str, Any]]:
        """All releases."""
        data = await self.request("GET", "/releases")
        return list(data["releases"])

    async def show(self, rid: str) -> dict[str, Any]:
        """One release."""
        return await self.request("GET", f"/releases/{quote(rid, safe='')}")

    async def check(self, rid: str, *, full: bool = False) -> dict[str, Any]:
        """Have the daemon check a complete release's store files now.

        Raises:
            CorruptChunkError: a file changed; the release is ``damaged``, not seeded.
        """
        params = {"full": "1"} if full else None
        return await self.request("POST", f"/releases/{quote(rid, safe='')}/verify", params=params)

    async def wait(self, rid: str, timeout: float) -> dict[str, Any]:
        """Until the release is complete or failed (``timed_out`` says which)."""
        return await self.request(
            "GET",
            f"/releases/{quote(rid, safe='')}/wait",
            params={"timeout": str(timeout)},
            timeout=timeout + 30,
        )

    async def remove(self, rid: str, *, delete_data: bool = False) -> dict[str, Any]:
        """Stop a release, optionally deleting its data."""
        return await self.request(
            "DELETE",
            f"/releases/{quote(rid, safe='')}",
            params={"delete_data": "1" if delete_data else "0"},
        )

    async def events(self) -> AsyncGenerator[dict[str, Any]]:
        """The daemon's event stream (Server-Sent Events), until it closes."""
        import aiohttp  # noqa: PLC0415 - heavy; one-shot CLI calls use request_sync

        try:
            async with (
                self._session(24 * 3600) as session,
                session.get(self._url("/events")) as resp,
            ):
                async for raw in resp.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if line.startswith("data: "):
                        yield json.loads(line[len("data: ") :])
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailableError(f"no daemon answers at {socket_path(self.home)}") from exc


def fetch_body(
    uri: str,
    *,
    peers: Sequence[str] = (),
    trackers: Sequence[str] = (),
    include: Sequence[str] = (),
    trust_on_first_use: bool = False,
    ordered: bool = False,
    web_seeds: Sequence[str] = (),
    allow_stale: bool = False,
) -> dict[str, Any]:
    """The body of ``POST /fetch`` (a local ``.torrent`` is sent as an absolute path)."""
    if uri.endswith(".torrent") and Path(uri).is_file():
        uri = str(Path(uri).resolve())
    return {
        "uri": uri,
        "peers": list(peers),
        "trackers": list(trackers),
        "include": list(include),
        "trust_on_first_use": trust_on_first_use,
        "ordered": ordered,
        **({"web_seeds": list(web_seeds)} if web_seeds else {}),
        **({"allow_stale": True} if allow_stale else {}),
    }


async def ensure_daemon(home: Path, *, autostart: bool = True) -> DaemonClient:
    """A client whose daemon answers, starting one in the background if needed.

    An auto-started daemon takes the flags of the last ``p2pw daemon start`` on ``home``.

    Raises:
        DaemonUnavailableError: none answers and ``autostart`` is off, or it failed to start.
    """
    import asyncio  # noqa: PLC0415 - the sync twin below needs no event loop

    check_data_dir(home)
    client = DaemonClient(home)
    try:
        await client.status()
    except DaemonUnavailableError:
        if not autostart:
            raise
        # Another process may have started one first (ours then exits because the data
        # dir is locked): use whichever answers, else report that none does.
        with contextlib.suppress(DaemonUnavailableError):
            await asyncio.to_thread(start_daemon, home, extra_args=saved_start_args(home))
        await client.status()
    return client


def ensure_daemon_sync(home: Path, *, autostart: bool = True) -> DaemonClient:
    """:func:`ensure_daemon` without an event loop (for one-shot CLI verbs).

    Raises:
        DaemonUnavailableError: none answers and ``autostart`` is off, or it failed to start.
    """
    check_data_dir(home)
    client = DaemonClient(home)
    try:
        client.request_sync("GET", "/status")
    except DaemonUnavailableError:
        if not autostart:
            raise
        with contextlib.suppress(DaemonUnavailableError):
            start_daemon(home, extra_args=saved_start_args(home))
        client.request_sync("GET", "/status")
    return client
