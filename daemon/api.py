"""The control API: versioned JSON over aiohttp, on a 0600 Unix socket (and optional TCP).

Every request body is hostile until checked: the size is capped, fields are typed and
unknown fields refused. A browser page cannot drive the API: requests that carry an
``Origin`` header are refused (no CORS), and on TCP the ``Host`` header must name the
loopback address (against DNS rebinding) and a bearer token is required, compared in
constant time.

Endpoints (all under ``/v1``)::

    GET    /status                       daemon status
    POST   /publish      {path, hybrid?, private?, trackers?, tags?}
                         or {source, name, version, key_file, label?, tags?}
    POST   /fetch        {uri, peers?, trackers?, include?, trust_on_first_use?, allow_stale?}
    POST   /resolve      {name, allow_stale?}    what a p2pw:// name points to, checked
    GET    /names                        names this daemon holds records of
    POST   /names/republish              put every name again now (own ones re-signed)
    GET    /follows                      followed names
    POST   /follows      {name, include?, keep?}   follow a name (fetch each new version)
    DELETE /follows?name=NAME            stop following it
    POST   /search       {q, publishers?, timeout?}   releases in publishers' signed indexes
    GET    /releases                     list
    GET    /releases/{id}                show
    GET    /releases/{id}/wait?timeout=  long-poll until complete or failed
    POST   /releases/{id}/order  {chunks}  fetch these chunks first (a streaming reader)
    POST   /releases/{id}/mirror {dir}   write the release as a static mirror tree
    POST   /releases/{id}/pause          pause a fetch until it is asked for again
    POST   /releases/{id}/verify?full=1  check the store files (a mismatch marks it damaged)
    DELETE /releases/{id}?delete_data=1  stop seeding, optionally delete data
    GET    /events                       progress as Server-Sent Events

The web page (``webui``) adds ``/ui/``, ``POST /v1/ui/login`` (socket only) and the
read-only ``/v1/releases/{id}/chunks``, ``/v1/releases/{id}/peers`` and
``/v1/publishers``. On TCP its session cookie stands in for the bearer token, and its own
``Origin`` is the only one let through (see ``webui``).

Local paths (``publish``'s ``path``, ``source`` and ``key_file``; ``mirror``'s ``dir``; a
``.torrent`` file as ``fetch``'s ``uri``) must be absolute and are accepted only on the Unix
socket: over TCP they are refused with 403. The daemon only reads them, except the
mirror tree it writes where the caller asked; otherwise it writes only in its data dir.
So is ``fetch``'s ``trust_on_first_use``: it changes the user's trust store, which only
the user may do.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import math
import os
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientConnectionResetError, web

from p2pweights.errors import (
    ApiError,
    ChunkError,
    ConfigError,
    DiskFullError,
    FormatError,
    KeyFileError,
    LoadError,
    P2PWeightsError,
    SwarmError,
    TrustError,
)

from . import webui
from .service import NotFoundError, Service

__all__ = ["MAX_BODY", "SERVICE", "TOKEN", "make_app"]

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
_MAX_ORDER = 1024
"""Chunk paths an order may name (the body limit allows about 850 anyway)."""
SERVICE: web.AppKey[Service] = web.AppKey("service", Service)
TOKEN: web.AppKey[str | None] = web.AppKey("token", str)


class _Streams:
    """The event streams open now: stopping ends them."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()


_STREAMS: web.AppKey[_Streams] = web.AppKey("streams", _Streams)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _status_for(exc: P2PWeightsError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, TrustError):
        return 403
    if isinstance(exc, FormatError | LoadError | ConfigError | KeyFileError):
        return 400  # KeyFileError: pack-and-publish named a key file that is not one
    if isinstance(exc, ChunkError):
        return 409
    if isinstance(exc, DiskFullError):
        return 507
    if isinstance(exc, SwarmError):
        return 502
    if isinstance(exc, ApiError):
        return exc.status
    return 500


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "disk is full" in str(exc)  # SQLite's SQLITE_FULL


def _error(status: int, exc: BaseException, exit_code: int = 1) -> web.Response:
    body = {"error": str(exc)[:2000], "type": type(exc).__name__, "exit_code": exit_code}
    return web.json_response(body, status=status)


def _tcp_port(request: web.Request) -> int | None:
    """The port of the TCP listener the request came in on; None on the Unix socket."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return int(sockname[1]) if isinstance(sockname, tuple) else None


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Origin, Host and token checks, then one JSON error shape for every failure."""
    port = _tcp_port(request)
    # Only the web page's own origin passes, and only with its session cookie (below).
    if "Origin" in request.headers and not webui.own_origin(request, port):
        return _error(403, ApiError("cross-origin requests are refused"), 15)
    if port is not None:
        if request.host not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            return _error(403, ApiError("the Host header must name the loopback address"), 15)
        token = request.app[TOKEN]
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token}"
        if token is not None and hmac.compare_digest(given.encode(), expected.encode()):
            if "Origin" in request.headers:  # a bearer-token client is not a browser page
                return _error(403, ApiError("cross-origin requests are refused"), 15)
        elif request.path != webui.LOGIN_PATH:  # the login checks its one-time token
            refusal = webui.session_refusal(request, port)
            if refusal is not None:
                return _error(refusal.status, refusal, 15)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        # aiohttp's own refusals (no such route, wrong method, a chunked body over
        # client_max_size) get the same JSON error shape as ours.
        if exc.status < 400:
            raise
        response = _error(exc.status, ApiError(exc.reason), 15)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except P2PWeightsError as exc:
        return _error(_status_for(exc), exc, exc.exit_code)
    except asyncio.CancelledError:
        raise
    except (sqlite3.OperationalError, OSError) as exc:
        if not _is_disk_full(exc):
            log.exception("internal error on %s %s", request.method, request.path)
            return _error(500, exc, 1)
        full = DiskFullError(f"the data dir's disk is full ({exc}); free space and retry")
        return _error(507, full, full.exit_code)
    except Exception as exc:  # the daemon stays up; the client gets the reason
        log.exception("internal error on %s %s", request.method, request.path)
        return _error(500, exc, 1)


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(f"request body over {MAX_BODY} bytes", status=413, exit_code=15)
    raw = await request.read()  # the whole body; client_max_size caps it (413)
    try:
        doc = json.loads(raw.decode("utf-8") or "{}")
    # ValueError covers JSONDecodeError and UnicodeDecodeError, and also integers past
    # Python's digit limit ({"version": 99…9} with 4301+ digits), which was a 500.
    except (ValueError, RecursionError) as exc:
        raise ApiError(f"request body is not JSON: {exc}", status=400, exit_code=15) from None
    if not isinstance(doc, dict):
        raise ApiError("request body must be a JSON object", status=400, exit_code=15)
    return doc


class Fields:
    """Typed access to a request body; unknown fields are an error."""

    def __init__(self, doc: dict[str, Any], allowed: set[str]) -> None:
        extra = sorted(set(doc) - allowed)
        if extra:
            raise ApiError(f"unknown field(s): {', '.join(extra)[:200]}", status=400, exit_code=15)
        self.doc = doc

    def text(self, name: str, *, required: bool = False, max_len: int = 8192) -> str | None:
        value = self.doc.get(name)
        if value is None:
            if required:
                raise ApiError(f"field {name!r} is required", status=400, exit_code=15)
            return None
        if not isinstance(value, str) or len(value) > max_len or "\x00" in value:
            raise ApiError(f"field {name!r} must be a string", status=400, exit_code=15)
        return value

    def texts(self, name: str, *, max_items: int = 256) -> list[str]:
        value = self.doc.get(name, [])
        if (
            not isinstance(value, list)
            or len(value) > max_items
            or not all(isinstance(v, str) and 0 < len(v) <= 1024 and "\x00" not in v for v in value)
        ):
            raise ApiError(f"field {name!r} must be a list of strings", status=400, exit_code=15)
        return list(value)

    def flag(self, name: str) -> bool:
        value = self.doc.get(name, False)
        if not isinstance(value, bool):
            raise ApiError(f"field {name!r} must be true or false", status=400, exit_code=15)
        return value

    def integer(self, name: str, *, required: bool = False) -> int | None:
        value = self.doc.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
            raise ApiError(
                f"field {name!r} must be a non-negative integer", status=400, exit_code=15
            )
        return value


def _absolute(name: str, path: str) -> str:
    """A local path from a request must be absolute: never relative to the daemon's cwd."""
    if not os.path.isabs(path):
        raise ApiError(f"field {name!r} must be an absolute path", status=400, exit_code=15)
    return path


def _socket_only(request: web.Request, what: str) -> None:
    """Refuse ``what`` with 403 unless the request came in on the Unix socket."""
    if _tcp_port(request) is not None:
        raise ApiError(
            f"{what}; over TCP that is refused, use the Unix socket", status=403, exit_code=15
        )


def _local_paths_allowed(request: web.Request, what: str, path: str) -> None:
    """Only the Unix socket may name local paths; TCP callers get a 403.

    Over the 0600 socket the caller is this user, and the daemon only reads the paths it
    is given (every write goes into the data dir). A holder of the TCP token may be
    another program, or another machine through a forwarded port: it must not make the
    daemon read (and then seed to the world) an arbitrary file of this user.
    """
    _socket_only(request, f"{what} names a local path ({path[:80]!r})")


async def status(request: web.Request) -> web.Response:
    """GET /v1/status."""
    return web.json_response(request.app[SERVICE].status())


async def publish(request: web.Request) -> web.Response:
    """POST /v1/publish."""
    f = Fields(
        await _body(request),
        {
            "path", "hybrid", "private", "trackers", "web_seeds",
            "source", "name", "version", "label", "key_file", "tags",
        },
    )
    service = request.app[SERVICE]
    path = f.text("path")
    if path is not None:
        hybrid = f.flag("hybrid")
        _local_paths_allowed(request, "publish", _absolute("path", path))
        info = await service.publish(
            path,
            hybrid=hybrid,
            private=f.flag("private"),
            trackers=f.texts("trackers"),
            web_seeds=f.texts("web_seeds"),
            tags=f.texts("tags", max_items=64),
        )
    else:
        source = _absolute("source", f.text("source", required=True) or "")
        name = f.text("name", required=True, max_len=200) or ""
        version = f.integer("version", required=True) or 0
        label = f.text("label", max_len=256) or ""
        key_file = _absolute("key_file", f.text("key_file", required=True) or "")
        hybrid = f.flag("hybrid")
        _local_paths_allowed(request, "publish", source)
        info = await service.pack_and_publish(
            source=source,
            name=name,
            version=version,
            label=label,
            key_file=key_file,
            hybrid=hybrid,
            tags=f.texts("tags", max_items=64),
        )
    return web.json_response(info, status=201)


async def fetch(request: web.Request) -> web.Response:
    """POST /v1/fetch."""
    f = Fields(
        await _body(request),
        {
            "uri", "peers", "trackers", "include", "trust_on_first_use", "ordered", "web_seeds",
            "allow_stale",
        },
    )
    uri = f.text("uri", required=True) or ""
    peers, trackers, include = f.texts("peers"), f.texts("trackers"), f.texts("include")
    tofu, ordered = f.flag("trust_on_first_use"), f.flag("ordered")
    if uri.endswith(".torrent") and not uri.startswith("magnet:"):  # a local .torrent file
        _local_paths_allowed(request, "fetch of a .torrent file", uri)
    if tofu:
        # It adds a key to the user's trust store for good: a token holder (another
        # program, or a forwarded port) must not decide whom this user trusts.
        _socket_only(request, "trust_on_first_use changes the trust store")
    info = await request.app[SERVICE].fetch(
        uri,
        peers=peers,
        trackers=trackers,
        include=include,
        trust_on_first_use=tofu,
        ordered=ordered,
        web_seeds=f.texts("web_seeds"),
        allow_stale=f.flag("allow_stale"),
    )
    return web.json_response(info, status=202)


async def mirror(request: web.Request) -> web.Response:
    """POST /v1/releases/{id}/mirror: write the release as a static mirror tree."""
    f = Fields(await _body(request), {"dir"})
    directory = _absolute("dir", f.text("dir", required=True) or "")
    # It writes files where the caller says: only this user, over the socket.
    _local_paths_allowed(request, "mirror", directory)
    info = await request.app[SERVICE].mirror(request.match_info["id"], directory)
    return web.json_response(info, status=201)


async def pause(request: web.Request) -> web.Response:
    """POST /v1/releases/{id}/pause: pause a fetch (the user pressed Ctrl-C)."""
    return web.json_response(await request.app[SERVICE].pause_fetch(request.match_info["id"]))


async def order(request: web.Request) -> web.Response:
    """POST /v1/releases/{id}/order: download these chunks first, in this order."""
    f = Fields(await _body(request), {"chunks"})
    info = request.app[SERVICE].set_order(
        request.match_info["id"], f.texts("chunks", max_items=_MAX_ORDER)
    )
    return web.json_response(info)


async def list_releases(request: web.Request) -> web.Response:
    """GET /v1/releases."""
    return web.json_response({"releases": request.app[SERVICE].list_releases()})


async def show(request: web.Request) -> web.Response:
    """GET /v1/releases/{id}."""
    return web.json_response(request.app[SERVICE].show(request.match_info["id"]))


async def check(request: web.Request) -> web.Response:
    """POST /v1/releases/{id}/verify[?full=1]: check the release's store files now.

    Only the files whose stamp moved are hashed, or every one with ``full``; a changed
    file is a ``CorruptChunkError`` (409) and its releases are ``damaged``.
    """
    full = request.query.get("full", "0") in ("1", "true")
    info = await request.app[SERVICE].check(request.match_info["id"], full=full)
    return web.json_response(info)


async def wait(request: web.Request) -> web.Response:
    """GET /v1/releases/{id}/wait?timeout=SECONDS."""
    try:
        timeout = float(request.query.get("timeout", "60"))
    except ValueError:
        raise ApiError("timeout must be a number", status=400, exit_code=15) from None
    if not math.isfinite(timeout):
        raise ApiError("timeout must be a finite number", status=400, exit_code=15)
    timeout = min(max(timeout, 0.0), 3600.0)
    info = await request.app[SERVICE].wait(request.match_info["id"], timeout)
    return web.json_response(info)


async def remove(request: web.Request) -> web.Response:
    """DELETE /v1/releases/{id}."""
    delete_data = request.query.get("delete_data", "0") in ("1", "true")
    info = await request.app[SERVICE].remove(request.match_info["id"], delete_data=delete_data)
    return web.json_response(info)


async def events(request: web.Request) -> web.StreamResponse:
    """GET /v1/events: Server-Sent Events, one JSON object per event."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    task = asyncio.current_task()
    streams = request.app[_STREAMS].tasks
    if task is not None:
        streams.add(task)
    try:
        async for event in request.app[SERVICE].events():
            await response.write(f"data: {json.dumps(event, sort_keys=True)}\n\n".encode())
    except (ConnectionResetError, ClientConnectionResetError):
        pass  # the subscriber went away
    finally:
        if task is not None:
            streams.discard(task)
    return response


async def _end_event_streams(app: web.Application) -> None:
    # An idle event stream never notices that its reader left; without this, stopping
    # would wait out aiohttp's 60 s shutdown timeout for each one.
    for task in list(app[_STREAMS].tasks):
        task.cancel()


def make_app(service: Service, *, token: str | None) -> web.Application:
    """The aiohttp application for ``service``."""
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[SERVICE] = service
    app[TOKEN] = token
    app[_STREAMS] = _Streams()
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/publish", publish)
    app.router.add_post("/v1/fetch", fetch)
    from . import api_names  # noqa: PLC0415 - it imports this module's helpers

    api_names.add_routes(app)
    app.router.add_get("/v1/releases", list_releases)
    app.router.add_get("/v1/releases/{id}", show)
    app.router.add_get("/v1/releases/{id}/wait", wait)
    app.router.add_post("/v1/releases/{id}/order", order)
    app.router.add_post("/v1/releases/{id}/mirror", mirror)
    app.router.add_post("/v1/releases/{id}/pause", pause)
    app.router.add_post("/v1/releases/{id}/verify", check)
    app.router.add_delete("/v1/releases/{id}", remove)
    app.router.add_get("/v1/events", events)
    app.on_shutdown.append(_end_event_streams)
    webui.setup(app, service)
    return app
