"""Property tests of hostile input to the daemon: magnets, torrents, and API request bodies.

``parse_magnet`` and ``parse_torrent`` may only succeed or raise ``FormatError``. The
control API, driven through aiohttp's test server with arbitrary bodies and query strings,
must always answer a JSON object with a 2xx or 4xx status, and may only ever call the
service with the argument types its handlers promise. The service here is a recording
fake: the real daemon has its own integration tests.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pweights.errors import FormatError
from p2pweightsd.api import MAX_BODY, make_app
from p2pweightsd.engine import parse_magnet, parse_torrent


def _settings(n: int) -> settings:
    return settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=n,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


HEX = "0123456789abcdef"
V2 = "ab" * 32

# ---------------------------------------------------------------- 5. magnets and torrents


def _magnet(uri: str) -> Any:
    try:
        m = parse_magnet(uri)
    except FormatError:
        return None
    assert len(m.info_hash_v2) == 64 and all(c in HEX for c in m.info_hash_v2)
    assert m.info_hash_v1 is None or (
        len(m.info_hash_v1) == 40 and all(c in HEX for c in m.info_hash_v1)
    )
    for host, port in m.peers:
        assert isinstance(host, str) and host and 0 < port < 65536
    return m


@_settings(600)
@given(st.one_of(st.text(max_size=200), st.text(max_size=200).map(lambda s: "magnet:?" + s)))
def test_parse_magnet_arbitrary_strings(uri: str) -> None:
    _magnet(uri)


def _quote(s: str) -> str:
    return urllib.parse.quote(s.encode("utf-8", "surrogatepass"), safe=":/[]")


hex_digits = st.text(alphabet="0123456789abcdefABCDEFg", min_size=0, max_size=70)
raw_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "%", "%zz", "%00", "%0A", "%ff%fe", "+", "&", "=", "\ud800", "²"]),
    st.integers(min_value=300, max_value=70_000).map(lambda n: "x" * n),
)
param_value = st.one_of(
    hex_digits.map(lambda h: "urn:btmh:1220" + h),
    st.just("urn:btmh:1220" + V2),
    hex_digits.map(lambda h: "urn:btih:" + h),
    st.just("urn:btih:" + "cd" * 20),
    st.sampled_from(
        [
            "http://127.0.0.1:9/announce",
            "udp://tracker:1",
            "ftp://x",
            "http://[x",
            "http://[::1]:80/a",
            "javascript:alert(1)",
            "127.0.0.1:6881",
            "[::1]:6881",
            "[zz]:1",
            "host:0",
            "host:65536",
            "host:²",
            "h\u00e9:1",
            "a:b:c",
        ]
    ),
    raw_text,
    raw_text.map(_quote),
)
param_key = st.sampled_from(["xt", "dn", "tr", "x.pe", "xl", "ws", "", "x%74", "XT", "kt"])
param = st.tuples(param_key, param_value, st.booleans())


def _join(params: list[tuple[str, str, bool]]) -> str:
    return "&".join(f"{k}={v}" if with_eq else k for k, v, with_eq in params)


@_settings(800)
@given(
    st.lists(param, max_size=6),
    st.booleans(),
    st.sampled_from(["", "&", "&&", "#frag", "\x00", "\n"]),
)
def test_parse_magnet_structured(
    params: list[tuple[str, str, bool]], with_v2: bool, tail: str
) -> None:
    if with_v2:
        params = [("xt", f"urn:btmh:1220{V2}", True), *params]
    uri = "magnet:?" + _join(params) + tail
    m = _magnet(uri)
    if m is not None:
        assert any(k == "xt" for k, _, _ in params)


@_settings(300)
@given(
    st.lists(
        st.sampled_from(["dn=model", "tr=http://t:1/a", "x.pe=127.0.0.1:1", "x.pe=[::1]:2"]),
        max_size=4,
        unique=True,
    ),
    st.booleans(),
)
def test_parse_magnet_accepts_well_formed(extra: list[str], hybrid: bool) -> None:
    if hybrid:
        extra.append("xt=urn:btih:" + "cd" * 20)
    uri = "&".join([f"magnet:?xt=urn:btmh:1220{V2}", *extra])
    m = _magnet(uri)
    assert m is not None and m.info_hash_v2 == V2


@_settings(600)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.binary(max_size=200).map(lambda b: b"d4:info" + b),
        st.lists(
            st.sampled_from([b"d", b"l", b"e", b"i1e", b"i-0e", b"4:info", b"0:", b"99:"])
        ).map(b"".join),
    )
)
def test_parse_torrent_arbitrary_bytes(data: bytes) -> None:
    try:
        tf = parse_torrent(data)
    except FormatError:
        return
    assert len(tf.info_hash_v2) == 64


# ---------------------------------------------------------------- 6. the control API


class FakeService:
    """Records every call and checks its argument types; answers plain dicts."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.bad: list[str] = []

    def __repr__(self) -> str:
        return f"FakeService(<{len(self.calls)} calls>)"

    def _check(self, name: str, ok: bool, args: dict[str, Any]) -> dict[str, Any]:
        if not ok:
            self.bad.append(f"{name}{args!r:.300}")
        self.calls.append((name, args))
        return {"id": "0" * 64, "call": name}

    @staticmethod
    def _text(v: object) -> bool:
        return isinstance(v, str) and "\x00" not in v and len(v) <= 8192

    @staticmethod
    def _texts(v: object) -> bool:
        return isinstance(v, list) and all(
            isinstance(x, str) and 0 < len(x) <= 1024 and "\x00" not in x for x in v
        )

    async def publish(
        self,
        path: str,
        *,
        hybrid: bool = False,
        private: bool = False,
        trackers: list[str] | None = None,
        web_seeds: list[str] | None = None,
        tags: list[str] | None = None,
    ) -> dict[str, Any]:
        args = {
            "path": path,
            "hybrid": hybrid,
            "private": private,
            "trackers": trackers,
            "web_seeds": web_seeds,
            "tags": tags,
        }
        ok = (
            self._text(path)
            and type(hybrid) is bool
            and type(private) is bool
            and all(self._texts(v) for v in (trackers, web_seeds, tags))
        )
        return self._check("publish", ok, args)

    async def pack_and_publish(
        self,
        *,
        source: str,
        name: str,
        version: int,
        label: str,
        key_file: str,
        hybrid: bool,
        tags: list[str] | None = None,
    ) -> dict[str, Any]:
        args = {
            "source": source,
            "name": name,
            "version": version,
            "label": label,
            "key_file": key_file,
            "hybrid": hybrid,
            "tags": tags,
        }
        ok = (
            all(self._text(v) for v in (source, name, label, key_file))
            and self._texts(tags)
            and len(name) <= 200
            and len(label) <= 256
            and type(version) is int
            and 0 <= version < 2**53
            and type(hybrid) is bool
        )
        return self._check("pack_and_publish", ok, args)

    async def fetch(
        self,
        uri: str,
        *,
        peers: list[str],
        trackers: list[str],
        include: list[str],
        trust_on_first_use: bool,
        ordered: bool,
        web_seeds: list[str],
        allow_stale: bool = False,
    ) -> dict[str, Any]:
        args = {
            "uri": uri,
            "peers": peers,
            "trackers": trackers,
            "include": include,
            "trust_on_first_use": trust_on_first_use,
            "ordered": ordered,
            "web_seeds": web_seeds,
            "allow_stale": allow_stale,
        }
        ok = (
            self._text(uri)
            and all(self._texts(v) for v in (peers, trackers, include, web_seeds))
            and type(trust_on_first_use) is bool
            and type(ordered) is bool
            and type(allow_stale) is bool
        )
        return self._check("fetch", ok, args)

    def list_releases(self) -> list[dict[str, Any]]:
        self.calls.append(("list_releases", {}))
        return []

    def show(self, rid: str) -> dict[str, Any]:
        return self._check("show", isinstance(rid, str), {"rid": rid})

    async def wait(self, rid: str, timeout: float) -> dict[str, Any]:
        ok = (
            isinstance(rid, str)
            and isinstance(timeout, float)
            and math.isfinite(timeout)
            and 0.0 <= timeout <= 3600.0
        )
        return self._check("wait", ok, {"rid": rid, "timeout": timeout})

    async def remove(self, rid: str, *, delete_data: bool) -> dict[str, Any]:
        ok = isinstance(rid, str) and type(delete_data) is bool
        return self._check("remove", ok, {"rid": rid, "delete_data": delete_data})

    def status(self) -> dict[str, Any]:
        self.calls.append(("status", {}))
        return {"version": "test", "releases": 0}

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(("events", {}))
        yield {"kind": "test", "id": "0" * 64}


TOKEN = "property-test-token"


class Api:
    """One app, server and client, shared by every example of the module."""

    def __init__(
        self, runner: asyncio.Runner, client: TestClient[Any, Any], service: FakeService
    ) -> None:
        self.runner = runner
        self.client = client
        self.service = service

    def __repr__(self) -> str:
        return "Api(<shared test client>)"

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, str, Any]:
        async def go() -> tuple[int, str, Any]:
            headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
            async with self.client.request(method, path, headers=headers, **kwargs) as resp:
                raw = await resp.read()
                return resp.status, resp.content_type, raw

        status, ctype, raw = self.runner.run(go())
        return status, ctype, raw


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    # TestServer listens on loopback TCP, where the guard insists on a bearer token (the
    # daemon's Unix socket needs none); the request bodies are what is under test here.
    with asyncio.Runner() as runner:
        service = FakeService()

        async def start() -> TestClient[Any, Any]:
            app = make_app(service, token=TOKEN)  # type: ignore[arg-type]
            client: TestClient[Any, Any] = TestClient(TestServer(app))
            await client.start_server()
            return client

        client = runner.run(start())
        try:
            yield Api(runner, client, service)
        finally:
            runner.run(client.close())


@pytest.fixture(scope="module")
def unix_api() -> Iterator[Api]:
    # The Unix socket: the only listener where publish may name local paths, so the only
    # one where a publish body reaches the service and its argument types are checked.
    with tempfile.TemporaryDirectory(prefix="p2pw-api-") as tmp, asyncio.Runner() as runner:
        service = FakeService()
        sock = os.path.join(tmp, "api.sock")

        async def start() -> tuple[web.AppRunner, aiohttp.ClientSession]:
            app_runner = web.AppRunner(make_app(service, token=None))  # type: ignore[arg-type]
            await app_runner.setup()
            await web.UnixSite(app_runner, sock).start()
            connector = aiohttp.UnixConnector(path=sock)
            return app_runner, aiohttp.ClientSession("http://localhost", connector=connector)

        app_runner, session = runner.run(start())
        try:
            yield Api(runner, session, service)  # type: ignore[arg-type]
        finally:
            runner.run(session.close())
            runner.run(app_runner.cleanup())


def _check_response(api: Api, status: int, ctype: str, raw: bytes) -> Any:
    assert 200 <= status < 300 or 400 <= status < 500, (status, raw[:300])
    assert ctype == "application/json", (status, ctype, raw[:300])
    doc = json.loads(raw)
    assert isinstance(doc, dict)
    if status >= 400:
        assert {"error", "type", "exit_code"} <= set(doc), doc
        assert isinstance(doc["error"], str) and isinstance(doc["type"], str)
        assert isinstance(doc["exit_code"], int)
    assert not api.service.bad, api.service.bad
    return doc


any_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=2**53 - 2, max_value=2**64),
        st.floats(),
        st.text(max_size=30),
        st.sampled_from(["\x00", "a\x00b", "\ud800", "", "x" * 9000]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=10), children, max_size=4),
    ),
    max_leaves=15,
)

FETCH_FIELDS = [
    "uri", "peers", "trackers", "include", "trust_on_first_use", "ordered", "web_seeds",
    "allow_stale",
]
PUBLISH_FIELDS = [
    "path", "hybrid", "private", "trackers", "web_seeds",
    "source", "name", "version", "label", "key_file", "tags",
]
absolute_path = st.text(max_size=50).map(lambda s: "/" + s)
well_typed = {
    "uri": st.text(max_size=50),
    "path": st.one_of(st.text(max_size=50), absolute_path),
    "source": st.one_of(st.text(max_size=50), absolute_path),
    "name": st.text(max_size=50),
    "label": st.text(max_size=50),
    "key_file": st.one_of(st.text(max_size=50), absolute_path),
    "peers": st.lists(st.text(min_size=1, max_size=20), max_size=3),
    "trackers": st.lists(st.text(min_size=1, max_size=20), max_size=3),
    "include": st.lists(st.text(min_size=1, max_size=20), max_size=3),
    "web_seeds": st.lists(st.text(min_size=1, max_size=20), max_size=3),
    "tags": st.lists(st.text(min_size=1, max_size=20), max_size=3),
    "private": st.booleans(),
    "trust_on_first_use": st.booleans(),
    "ordered": st.booleans(),
    "allow_stale": st.booleans(),
    "hybrid": st.booleans(),
    "version": st.integers(min_value=0, max_value=2**53 - 1),
}


def _doc_of(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    value_for = {name: st.one_of(well_typed[name], any_json) for name in fields}
    return st.fixed_dictionaries(
        {},
        optional={
            **value_for,
            "unknown": any_json,
            "": any_json,
        },
    )


class Body(bytes):
    """Request body bytes with a short repr (some are over 64 KiB)."""

    def __repr__(self) -> str:
        head = bytes(self[:120])
        return f"Body({head!r}{'...' if len(self) > 120 else ''}, {len(self)} bytes)"


def _body_of(fields: list[str]) -> st.SearchStrategy[Body]:
    doc = _doc_of(fields)
    return st.one_of(
        doc.map(lambda d: json.dumps(d).encode()),
        doc.map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),
        any_json.map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=300),
        st.sampled_from(
            [
                b"",
                b"null",
                b"[]",
                b'"x"',
                b"{",
                b'{"uri": "a", "uri": 1}',
                b"\xef\xbb\xbf{}",
                b"\xff\xfe{}",
                b'{"uri": "\\u0000"}',
                b'{"version": NaN, "uri": Infinity}',
                b'{"version": 1e400}',
                b"[" * 30_000 + b"]" * 30_000,
                b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
                b'{"uri": ' + b"9" * 5000 + b"}",
                b'{"version": -' + b"9" * 4400 + b"}",
                b'{"uri": "' + b"x" * (MAX_BODY + 10) + b'"}',
                b'{"uri": "' + b"x" * (MAX_BODY - 20) + b'"}',
            ]
        ),
    ).map(Body)


def _chunked(data: bytes) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 16 * 1024):
            yield data[i : i + 16 * 1024]
        if not data:
            yield b""

    return gen()


def _post(api: Api, path: str, body: bytes, chunked: bool) -> tuple[int, Any]:
    before = len(api.service.calls)
    data: Any = _chunked(body) if chunked else body
    status, ctype, raw = api.request(
        "POST", path, data=data, headers={"Content-Type": "application/json"}
    )
    doc = _check_response(api, status, ctype, raw)
    called = len(api.service.calls) > before
    assert called == (200 <= status < 300), (status, doc)
    return status, doc


@_settings(700)
@given(_body_of(FETCH_FIELDS), st.booleans())
def test_fetch_bodies(api: Api, body: bytes, chunked: bool) -> None:
    _post(api, "/v1/fetch", body, chunked)


@_settings(700)
@given(_body_of(PUBLISH_FIELDS), st.booleans())
def test_publish_bodies(api: Api, body: bytes, chunked: bool) -> None:
    _post(api, "/v1/publish", body, chunked)


@_settings(700)
@given(_body_of(PUBLISH_FIELDS), st.booleans())
def test_publish_bodies_on_the_unix_socket(unix_api: Api, body: bytes, chunked: bool) -> None:
    _post(unix_api, "/v1/publish", body, chunked)


def _no_nul(doc: dict[str, Any]) -> bool:
    texts = [v for v in doc.values() if isinstance(v, str)]
    texts += [x for v in doc.values() if isinstance(v, list) for x in v]
    return all("\x00" not in v for v in texts)


@_settings(200)
@given(
    st.one_of(
        st.fixed_dictionaries(
            {"path": absolute_path, "hybrid": st.booleans(), "private": st.booleans()}
            | {k: well_typed[k] for k in ("trackers", "web_seeds", "tags")}
        ),
        st.fixed_dictionaries(
            {k: well_typed[k] for k in ("source", "name", "version", "label", "hybrid", "tags")}
            | {"key_file": absolute_path}
        ).filter(lambda d: d["source"].startswith("/")),
    )
)
def test_well_typed_publish_reaches_the_service_on_the_unix_socket(
    unix_api: Api, doc: dict[str, Any]
) -> None:
    status, _ = _post(unix_api, "/v1/publish", json.dumps(doc).encode(), False)
    assert (status == 201) == _no_nul(doc)
    if status == 201:
        name = "publish" if "path" in doc else "pack_and_publish"
        assert unix_api.service.calls[-1] == (name, doc)


@_settings(200)
@given(st.fixed_dictionaries({k: well_typed[k] for k in FETCH_FIELDS}))
def test_well_typed_fetch_reaches_the_service(api: Api, doc: dict[str, Any]) -> None:
    ok = (
        "\x00" not in doc["uri"]
        and all(
            "\x00" not in s for k in ("peers", "trackers", "include", "web_seeds") for s in doc[k]
        )
        # a .torrent path names a local file: refused over TCP, which this server is
        and not (doc["uri"].endswith(".torrent") and not doc["uri"].startswith("magnet:"))
        # trust on first use changes the trust store: a local, socket-only act (403)
        and not doc["trust_on_first_use"]
    )
    status, _ = _post(api, "/v1/fetch", json.dumps(doc).encode(), False)
    assert (status == 202) == ok
    if ok:
        assert api.service.calls[-1] == ("fetch", doc)


query_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e999",
            "-1",
            "0",
            "3601",
            "1_0",
            " 5 ",
            "0x10",
            "9" * 400,
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
raw_query = st.binary(max_size=60).map(lambda b: urllib.parse.quote(b, safe="=&;+"))


@_settings(600)
@given(
    st.text(min_size=1, max_size=30),
    st.one_of(
        query_text.map(
            lambda t: "timeout=" + urllib.parse.quote(t.encode("utf-8", "surrogatepass"))
        ),
        raw_query,
        st.lists(query_text, min_size=2, max_size=3).map(
            lambda ts: "&".join(
                "timeout=" + urllib.parse.quote(t.encode("utf-8", "surrogatepass")) for t in ts
            )
        ),
    ),
)
def test_wait_query_strings(api: Api, rid: str, query: str) -> None:
    rid_q = urllib.parse.quote(rid.encode("utf-8", "surrogatepass"), safe="")
    before = len(api.service.calls)
    status, ctype, raw = api.request(
        "GET", f"/v1/releases/{rid_q}/wait?{query}", allow_redirects=False
    )
    doc = _check_response(api, status, ctype, raw)
    if 200 <= status < 300:
        name, args = api.service.calls[-1]
        assert name == "wait" and len(api.service.calls) == before + 1
        assert doc["call"] == "wait"
        assert 0.0 <= args["timeout"] <= 3600.0


@_settings(300)
@given(
    st.text(min_size=1, max_size=30),
    st.sampled_from(["GET", "DELETE"]),
    st.one_of(st.just(""), raw_query),
)
def test_release_ids_and_queries(api: Api, rid: str, method: str, query: str) -> None:
    rid_q = urllib.parse.quote(rid.encode("utf-8", "surrogatepass"), safe="")
    status, ctype, raw = api.request(method, f"/v1/releases/{rid_q}?{query}", allow_redirects=False)
    _check_response(api, status, ctype, raw)


def test_status_list_and_events(api: Api) -> None:
    for path in ("/v1/status", "/v1/releases"):
        status, ctype, raw = api.request("GET", path)
        assert status == 200
        _check_response(api, status, ctype, raw)
    status, ctype, raw = api.request("GET", "/v1/events")
    assert status == 200 and ctype == "text/event-stream"
    assert raw.startswith(b"data: ")


def test_requests_need_the_token_on_tcp(api: Api) -> None:
    status, ctype, raw = api.request("GET", "/v1/status", headers={"Authorization": "Bearer x"})
    assert status == 401
    _check_response(api, status, ctype, raw)


@_settings(100)
@given(
    st.fixed_dictionaries({k: well_typed[k] for k in FETCH_FIELDS}),
    st.text(min_size=1, max_size=10).filter(lambda k: k not in FETCH_FIELDS),
    any_json,
)
def test_an_unknown_field_is_refused_before_the_service(
    api: Api, doc: dict[str, Any], extra: str, value: Any
) -> None:
    doc = {**doc, "uri": "magnet:?xt=urn:btmh:1220" + V2, extra: value}
    status, err = _post(api, "/v1/fetch", json.dumps(doc).encode(), False)
    assert status == 400 and "unknown field" in err["error"], err


@_settings(100)
@given(
    st.one_of(
        st.fixed_dictionaries(
            {"path": absolute_path, "hybrid": st.booleans(), "private": st.booleans()}
            | {k: well_typed[k] for k in ("trackers", "web_seeds")}
        ),
        st.fixed_dictionaries(
            {k: well_typed[k] for k in ("name", "version", "label", "hybrid")}
            | {"source": absolute_path, "key_file": absolute_path}
        ),
        st.fixed_dictionaries({"uri": absolute_path.map(lambda p: p + ".torrent")}),
    )
)
def test_local_paths_are_refused_over_tcp_and_served_on_the_socket(
    api: Api, unix_api: Api, doc: dict[str, Any]
) -> None:
    endpoint = "/v1/fetch" if "uri" in doc else "/v1/publish"
    body = json.dumps(doc).encode()
    status, err = _post(api, endpoint, body, False)
    if not _no_nul(doc):
        assert status == 400, err
        return
    assert status == 403 and "Unix socket" in err["error"], err
    status, _ = _post(unix_api, endpoint, body, False)
    assert status in (201, 202)
