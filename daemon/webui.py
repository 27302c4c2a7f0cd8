"""The daemon's web page: its login, its files, and the read-only data only it needs.

A login turns a one-time token into a cookie; the page's own endpoints are the chunk map,
the peers and the publishers, and a full verify of a release's chunks.

The page is served on the TCP listener (127.0.0.1 only), never on the Unix socket, and
every part of it needs a session:

* ``p2pw ui`` asks the daemon, over the 0600 Unix socket, for a one-time login token
  (``POST /v1/ui/login``). It is good for ``LOGIN_TTL`` seconds and one use.
* ``GET /ui/login?token=…`` trades it for a random session id in an ``HttpOnly``,
  ``SameSite=Strict`` cookie named after the port (two daemons on one host keep their
  own), then redirects to ``/ui/``, which drops the token from the address bar.
* A request authenticated by that cookie is a browser's. A state-changing one (anything
  but GET and HEAD) must also carry ``Origin`` equal to the daemon's own origin; every
  one must not come from another site (``Sec-Fetch-Site``). Any other ``Origin`` is
  refused by the API's guard, as before, and so is an ``Origin`` on a bearer-token call.

Every answer carries a strict Content-Security-Policy (no inline script), ``X-Frame-Options:
DENY``, ``nosniff``, ``Cross-Origin-Resource-Policy: same-origin`` and ``no-store``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from p2pweights.chunking import chunk_order, layer_order
from p2pweights.errors import ApiError, P2PWeightsError
from p2pweights.keys import PublicKey
from p2pweights.manifest import Manifest
from p2pweights.paths import trust_path
from p2pweights.trust import TrustStore

from .service import Service

__all__ = [
    "LOGIN_PATH",
    "LOGIN_TTL",
    "SESSION_TTL",
    "Sessions",
    "cookie_name",
    "own_origin",
    "session_refusal",
    "setup",
]

LOGIN_PATH = "/ui/login"
LOGIN_TTL = 120.0
"""Seconds a one-time login token stays good."""
SESSION_TTL = 12 * 3600.0
"""Seconds a page session lasts (the daemon forgets them all when it stops)."""
_MAX_PENDING = 16
_MAX_SESSIONS = 64
_STATIC = Path(__file__).parent / "static"
_FILES = {
    "": ("index.html", "text/html"),
    "index.html": ("index.html", "text/html"),
    "app.js": ("app.js", "text/javascript"),
    "style.css": ("style.css", "text/css"),
}
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_SAFE_METHODS = ("GET", "HEAD")
_DONE = ("seeding", "complete")


def cookie_name(port: int) -> str:
    """The session cookie of the daemon on ``port``: cookies are per host, not per port."""
    return f"p2pw_session_{port}"


@dataclass
class Sessions:
    """One-time login tokens and the page sessions they were traded for (in memory)."""

    pending: dict[str, float] = field(default_factory=dict)
    """Login token -> expiry (monotonic)."""
    live: dict[str, float] = field(default_factory=dict)
    """Session id -> expiry (monotonic)."""

    def mint(self) -> str:
        """A new one-time login token."""
        self._expire()
        while len(self.pending) >= _MAX_PENDING:  # the oldest makes room
            self.pending.pop(next(iter(self.pending)))
        token = secrets.token_urlsafe(32)
        self.pending[token] = time.monotonic() + LOGIN_TTL
        return token

    def redeem(self, token: str) -> str | None:
        """A new session id for a good login token (which is used up), else None."""
        self._expire()
        found = _find(self.pending, token)
        if found is None:
            return None
        del self.pending[found]
        while len(self.live) >= _MAX_SESSIONS:
            self.live.pop(next(iter(self.live)))
        session = secrets.token_urlsafe(32)
        self.live[session] = time.monotonic() + SESSION_TTL
        return session

    def valid(self, session: str) -> bool:
        """Whether ``session`` is a live session id."""
        self._expire()
        return _find(self.live, session) is not None

    def _expire(self) -> None:
        now = time.monotonic()
        for table in (self.pending, self.live):
            for key in [k for k, until in table.items() if until <= now]:
                del table[key]


def _find(table: dict[str, float], given: str) -> str | None:
    """The key equal to ``given``, compared in constant time against every key."""
    found = None
    for key in table:
        if hmac.compare_digest(key.encode(), given.encode()):
            found = key
    return found


SESSIONS: web.AppKey[Sessions] = web.AppKey("sessions", Sessions)
_SERVICE: web.AppKey[Service] = web.AppKey("webui_service", Service)


# ------------------------------------------------------------------ the guard's checks


def own_origin(request: web.Request, port: int | None) -> bool:
    """Whether the request's ``Origin`` is the daemon's own (the page's) origin."""
    origin = request.headers.get("Origin")
    return port is not None and origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}")


def session_refusal(request: web.Request, port: int) -> ApiError | None:
    """Why a request without the bearer token is refused; None if its cookie lets it in."""
    session = request.cookies.get(cookie_name(port), "")
    if not session or not request.app[SESSIONS].valid(session):
        return ApiError("a valid bearer token or session cookie is required", status=401)
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return ApiError("requests from another site are refused", status=403)
    if request.method not in _SAFE_METHODS and not own_origin(request, port):
        return ApiError("a state-changing request needs the page's own Origin", status=403)
    return None


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"


# ------------------------------------------------------------------ login and files


def _tcp_port(request: web.Request) -> int | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return int(sockname[1]) if isinstance(sockname, tuple) else None


async def mint_login(request: web.Request) -> web.Response:
    """POST /v1/ui/login: a one-time login URL for the page (Unix socket only)."""
    if _tcp_port(request) is not None:
        raise ApiError("login tokens are given on the Unix socket only", status=403, exit_code=15)
    port = request.app[_SERVICE].config.tcp_port
    if not port:
        raise ApiError(
            "the web page needs the daemon's TCP listener: set tcp_port in config.toml "
            "(or P2PW_TCP_PORT) and restart the daemon",
            status=409,
            exit_code=15,
        )
    token = request.app[SESSIONS].mint()
    url = f"http://127.0.0.1:{port}{LOGIN_PATH}?token={token}"
    return web.json_response({"url": url, "expires_in": LOGIN_TTL}, status=201)


async def login(request: web.Request) -> web.Response:
    """GET /ui/login?token=…: trade a one-time token for the session cookie."""
    port = _tcp_port(request)
    session = request.app[SESSIONS].redeem(request.query.get("token", "")[:100])
    if port is None or session is None:
        raise ApiError("this login link is not valid (used, expired or wrong)", status=401)
    response = web.Response(status=303, headers={"Location": "/ui/"})
    response.set_cookie(
        cookie_name(port),
        session,
        httponly=True,
        samesite="Strict",
        path="/",
        max_age=int(SESSION_TTL),
    )
    return response


async def static(request: web.Request) -> web.Response:
    """GET /ui/{name}: the page's own files, from package data."""
    if _tcp_port(request) is None:
        raise ApiError("the page is served on the TCP listener only", status=404)
    entry = _FILES.get(request.match_info.get("name", ""))
    if entry is None:
        raise ApiError("no such file", status=404)
    body = (_STATIC / entry[0]).read_bytes()
    return web.Response(body=body, content_type=entry[1], charset="utf-8")


async def root(request: web.Request) -> web.Response:
    """GET /: the page."""
    raise web.HTTPSeeOther("/ui/")


# ------------------------------------------------------------------ the page's data


_MANIFESTS: dict[str, Manifest] = {}
"""Manifests parsed for the page, by sha256 (a manifest never changes; parsing a big one
takes a while, and the map is re-read up to once a second)."""
_MANIFESTS_KEPT = 8


def _manifest(service: Service, info: dict[str, Any]) -> Manifest | None:
    """The release's authenticated manifest, or None before it is known."""
    digest = info.get("manifest_sha256")
    if not digest:
        return None
    if digest in _MANIFESTS:
        return _MANIFESTS[digest]
    path = service.store.release_dir(str(info["id"])) / "manifest.json"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if hashlib.sha256(data).hexdigest() != digest:  # not the one the catalog authenticated
        return None
    manifest = Manifest.from_bytes(data)
    while len(_MANIFESTS) >= _MANIFESTS_KEPT:
        _MANIFESTS.pop(next(iter(_MANIFESTS)))
    _MANIFESTS[digest] = manifest
    return manifest


def _chunk_list(manifest: Manifest) -> list[tuple[str, str]]:
    """(chunk path, its first tensor in layer order or "") for every chunk, in layer order."""
    tensors = manifest.tensors
    order = chunk_order(layer_order(tensors), {n: t.chunk for n, t in tensors.items()})
    first: dict[str, str] = {}
    for name in layer_order(tensors):
        first.setdefault(tensors[name].chunk, name)
    rest = [c.path for c in manifest.chunks if c.path not in first]
    return [(p, first[p]) for p in order] + [(p, "") for p in rest]


def _wanted(manifest: Manifest, include: list[str]) -> set[str]:
    if not include:
        return {c.path for c in manifest.chunks}
    return {
        t.chunk
        for t in manifest.tensors.values()
        if any(fnmatch.fnmatchcase(t.name, pat) for pat in include)
    }


async def chunks(request: web.Request) -> web.Response:
    """GET /v1/releases/{id}/chunks: every chunk in layer order, with its state.

    ``verified`` (every piece passed the hash check against the signed roots),
    ``in_flight`` (some bytes are in), ``missing``, or ``skipped`` (not wanted: ``include``).
    """
    service = request.app[_SERVICE]
    info = service.show(request.match_info["id"])
    rid = str(info["id"])
    manifest = _manifest(service, info)
    if manifest is None:
        return web.json_response({"id": rid, "state": info["state"], "chunks": [], "counts": {}})
    sizes = {c.path: c.size for c in manifest.chunks}
    wanted = _wanted(manifest, list(info.get("include") or []))
    ready = set(info.get("ready_chunks") or [])
    verified_bytes: dict[str, int] = {}
    any_bytes: dict[str, int] = {}
    engine = service.engine
    tf = engine.torrent_file(rid) if rid in engine else None
    if tf is not None and info["state"] not in _DONE:
        try:
            checked, got = engine.file_progress(rid), engine.file_progress(rid, verified=False)
        except P2PWeightsError:
            checked, got = [], []
        for f in tf.files:
            if f.index < len(checked):
                verified_bytes[f.path] = checked[f.index]
                any_bytes[f.path] = got[f.index]
    out = []
    counts = {"verified": 0, "in_flight": 0, "missing": 0, "skipped": 0}
    for path, tensor in _chunk_list(manifest):
        size = sizes[path]
        if path not in wanted:
            state = "skipped"
        elif info["state"] in _DONE or path in ready or verified_bytes.get(path, -1) == size:
            state = "verified"
        elif any_bytes.get(path, 0) > 0:
            state = "in_flight"
        else:
            state = "missing"
        counts[state] += 1
        out.append({"path": path, "size": size, "state": state, "tensor": tensor})
    return web.json_response({"id": rid, "state": info["state"], "chunks": out, "counts": counts})


async def peers(request: web.Request) -> web.Response:
    """GET /v1/releases/{id}/peers: connected peers, and how each was found."""
    service = request.app[_SERVICE]
    rid = str(service.show(request.match_info["id"])["id"])
    try:
        found = service.engine.peers(rid) if rid in service.engine else []
    except P2PWeightsError:
        found = []  # removed meanwhile
    rows = [
        {
            "address": p.address,
            "client": p.client,
            "sources": list(p.sources),
            "download_rate": p.download_rate,
            "upload_rate": p.upload_rate,
            "downloaded": p.downloaded,
            "uploaded": p.uploaded,
            "progress": round(p.progress, 4),
            "seed": p.seed,
        }
        for p in found
    ]
    return web.json_response({"id": rid, "peers": rows})


async def publishers(request: web.Request) -> web.Response:
    """GET /v1/publishers: name, fingerprint and trust of each releases' publisher key."""
    service = request.app[_SERVICE]
    trust = TrustStore.load(trust_path(service.config.home))
    out: dict[str, dict[str, Any]] = {}
    for info in service.list_releases():
        text = info.get("publisher")
        if not text or text in out:
            continue
        try:
            key = PublicKey.parse(text)
        except P2PWeightsError:
            continue
        name = trust.name_of(key)
        out[text] = {"fingerprint": key.fingerprint, "name": name, "trusted": name is not None}
    return web.json_response({"publishers": out})


def setup(app: web.Application, service: Service) -> None:
    """Add the page, its login and its endpoints to the API's application."""
    app[SESSIONS] = Sessions()
    app[_SERVICE] = service
    app.on_response_prepare.append(_headers)
    app.router.add_post("/v1/ui/login", mint_login)
    app.router.add_get(LOGIN_PATH, login)
    app.router.add_get("/", root)
    app.router.add_get("/ui/", static)
    app.router.add_get("/ui/{name}", static)
    app.router.add_get("/v1/releases/{id}/chunks", chunks)
    app.router.add_get("/v1/releases/{id}/peers", peers)
    app.router.add_get("/v1/publishers", publishers)
