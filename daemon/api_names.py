"""The control API's endpoints for p2pw:// names and follows (``api.make_app`` adds them).

``POST /v1/resolve {name, allow_stale?}``: what a name points to, after every check.
``GET /v1/names``: the names this daemon holds records of. ``POST /v1/names/republish``:
put every name again now. ``GET /v1/follows``, ``POST /v1/follows {name, include?,
keep?}``, ``DELETE /v1/follows?name=NAME``: the followed names. ``POST /v1/search {q,
publishers?, timeout?}``: releases of trusted publishers (and of the keys given) whose
name, label or tags hold every word of ``q``.
"""

from __future__ import annotations

from aiohttp import web

from p2pweights.errors import SearchQueryError
from p2pweights.search_index import parse_words

from .api import SERVICE, Fields, _body

__all__ = ["add_routes"]


async def resolve(request: web.Request) -> web.Response:
    """POST /v1/resolve: what a p2pw:// name points to, after every check."""
    f = Fields(await _body(request), {"name", "allow_stale"})
    name = f.text("name", required=True, max_len=1024) or ""
    resolved = await request.app[SERVICE].names.resolve(name, allow_stale=f.flag("allow_stale"))
    return web.json_response(resolved.view())


async def list_names(request: web.Request) -> web.Response:
    """GET /v1/names: the names this daemon holds a record of."""
    return web.json_response({"names": request.app[SERVICE].names.held()})


async def list_follows(request: web.Request) -> web.Response:
    """GET /v1/follows."""
    follows = request.app[SERVICE].follower.follows()
    return web.json_response({"follows": [f.view() for f in follows]})


async def follow(request: web.Request) -> web.Response:
    """POST /v1/follows: follow a name."""
    f = Fields(await _body(request), {"name", "include", "keep"})
    name = f.text("name", required=True, max_len=1024) or ""
    followed = request.app[SERVICE].follower.follow(
        name, include=f.texts("include"), keep=f.integer("keep") or 0
    )
    return web.json_response(followed.view(), status=201)


async def unfollow(request: web.Request) -> web.Response:
    """DELETE /v1/follows?name=NAME: stop following a name."""
    name = request.query.get("name", "")
    removed = request.app[SERVICE].follower.unfollow(name)
    return web.json_response({"name": name, "removed": removed})


async def republish_names(request: web.Request) -> web.Response:
    """POST /v1/names/republish: put every name again now."""
    return web.json_response({"put": await request.app[SERVICE].names.republish()})


MAX_SEARCH_TIMEOUT = 300


async def search(request: web.Request) -> web.Response:
    """POST /v1/search: search the indexes of trusted publishers and of those given."""
    f = Fields(await _body(request), {"q", "publishers", "timeout"})
    words = parse_words(f.text("q", max_len=4096) or "")
    publishers = f.texts("publishers", max_items=64)
    timeout = f.integer("timeout")
    if timeout is not None and not 1 <= timeout <= MAX_SEARCH_TIMEOUT:
        raise SearchQueryError(f"a search timeout is 1 to {MAX_SEARCH_TIMEOUT} seconds")
    found = await request.app[SERVICE].search.search(words, publishers, float(timeout or 30))
    return web.json_response(found)


def add_routes(app: web.Application) -> None:
    """Add the names and follows endpoints to the API's application."""
    app.router.add_post("/v1/resolve", resolve)
    app.router.add_get("/v1/names", list_names)
    app.router.add_post("/v1/names/republish", republish_names)
    app.router.add_get("/v1/follows", list_follows)
    app.router.add_post("/v1/follows", follow)
    app.router.add_delete("/v1/follows", unfollow)
    app.router.add_post("/v1/search", search)
