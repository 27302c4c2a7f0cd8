"""The daemon's web page in a real browser (Debian's chromium, driven by selenium).

Two daemons on loopback, each with its TCP listener: the seeder's page lists what it
published, the other's page fetches it, shows it filling, and removes it. The login is
one-time and cookie-based; other origins can neither act nor read; hostile text from a
manifest stays text.

Waits are events: a ``MutationObserver`` in the page resolves when the DOM reaches the
state asked for (``wait_dom``), with a timeout.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p2pweights import PrivateKey, TrustStore

from ..conftest import layer_state
from ._browser import chromium, why_no_browser
from .conftest import Daemon

_NO_BROWSER = why_no_browser()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_NO_BROWSER is not None, reason=_NO_BROWSER or ""),
]

DaemonFactory = Callable[..., Daemon]
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'

# Resolves (through selenium's async-script callback) once `check()` is true: checked at
# once, then on every DOM change. selenium's script timeout bounds the wait.
_WAIT_DOM = """
const check = new Function(arguments[0]);
const done = arguments[arguments.length - 1];
if (check()) { done(true); return; }
const seen = new MutationObserver(() => {
  if (check()) { seen.disconnect(); done(true); }
});
seen.observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
"""


def wait_dom(drv: Any, condition: str, timeout: float = 60) -> None:
    """Wait until the JavaScript expression ``condition`` is true in the page."""
    drv.set_script_timeout(timeout)
    drv.execute_async_script(_WAIT_DOM, f"return Boolean({condition});")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class UiDaemon:
    daemon: Daemon
    port: int

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def login_url(self) -> str:
        return str(self.daemon.call("request", "POST", "/ui/login")["url"])

    def login(self, drv: Any) -> None:
        drv.get(self.login_url())
        wait_dom(drv, "document.getElementById('daemon').textContent === 'live'")


def ui_daemon(daemons: DaemonFactory, key: PrivateKey) -> UiDaemon:
    port = _free_port()
    d = daemons("--tcp-port", str(port))
    TrustStore.load(d.home / "trust.json").add(key.public, "publisher")
    return UiDaemon(d, port)


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as drv:
        yield drv


def _rows(drv: Any) -> list[dict[str, str]]:
    script = """return [...document.querySelectorAll('#release-rows tr')].map(tr => ({
        id: tr.dataset.id, text: tr.innerText,
        progress: tr.querySelector('progress').getAttribute('value')}));"""
    return list(drv.execute_script(script))


def test_page_lists_the_published_release(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    browser: Any,
) -> None:
    seeder = ui_daemon(daemons, key)
    ui_daemon(daemons, key)  # a second daemon on loopback, with a page of its own
    info = seeder.daemon.call("publish", make_release(make_model()))
    seeder.login(browser)
    assert "token=" not in browser.current_url  # the one-time token left the address bar
    assert browser.current_url == f"{seeder.origin}/ui/"
    wait_dom(browser, "document.querySelectorAll('#release-rows tr').length === 1")
    [row] = _rows(browser)
    assert row["id"] == info["id"]
    assert "test/model" in row["text"]
    assert "seeding" in row["text"]
    assert "trusted" in row["text"] and "publisher" in row["text"]  # name from the trust store
    assert key.public.fingerprint in row["text"]
    assert row["progress"] == "100"
    _check_controls(browser)
    cookies = browser.get_cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
        (f"p2pw_session_{seeder.port}", True, "Strict")
    ]


def _accessible_names(browser: Any) -> set[str]:
    """The accessible names of the visible controls, read again if a live update
    re-renders the page under the reading (a bounded number of times)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):
        try:
            return {
                c.accessible_name
                for c in browser.find_elements("css selector", "a, button, input")
                if c.is_displayed()
            }
        except StaleElementReferenceException:
            continue
    raise AssertionError("the page kept re-rendering its controls")


def _check_controls(browser: Any) -> None:
    """Every control has a name a screen reader can say, and a keyboard can reach it.

    Live updates re-render the rows, so an element found a moment ago can go stale; the
    check is read again from the page as it is then (a bounded number of times).
    """
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):
        try:
            controls = [
                c
                for c in browser.find_elements("css selector", "a, button, input")
                if c.is_displayed()
            ]
            assert len(controls) >= 8
            unnamed = [c.get_attribute("outerHTML") for c in controls if not c.accessible_name]
            assert not unnamed
            assert all(c.get_attribute("tabindex") in (None, "0") for c in controls)
            # A seeding release has nothing to pause: the control is there, named, disabled.
            pause = browser.find_element(
                "css selector", "#release-rows button[aria-label^='Pause']"
            )
            assert pause.accessible_name == "Pause test/model" and not pause.is_enabled()
            bar = browser.find_element("css selector", "#release-rows progress")
            assert bar.aria_role == "progressbar"
            assert bar.accessible_name == "Progress of test/model"
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError("the page kept re-rendering its rows")


def test_fetch_from_the_page_completes_and_remove_works(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    browser: Any,
) -> None:
    seeder = daemons()
    ui = ui_daemon(daemons, key)
    info = seeder.call("publish", make_release(make_model(layer_state(layers=6))))
    ui.login(browser)
    browser.find_element("id", "fetch-uri").send_keys(info["magnet"])
    browser.find_element("id", "fetch-peers").send_keys(seeder.peer)
    browser.find_element("id", "fetch-ordered").click()
    browser.find_element("id", "fetch-button").click()
    rid = info["id"]
    row = f"document.querySelector('#release-rows tr[data-id=\"{rid}\"]')"
    wait_dom(browser, row)
    # Open its view while it fetches: the map fills, then every chunk is verified.
    browser.get(f"{ui.origin}/ui/#/release/{rid}")
    wait_dom(browser, "document.getElementById('daemon').textContent === 'live'")
    summary = "document.getElementById('chunk-summary')"
    wait_dom(
        browser,
        f"{summary}.dataset.total > 0 && {summary}.dataset.verified === {summary}.dataset.total",
        timeout=120,
    )
    wait_dom(browser, "document.getElementById('release-progress').value === 100")
    cells = browser.execute_script(
        "return [...document.querySelectorAll('#chunk-map .cell')].map(c => c.dataset.state)"
    )
    assert cells and set(cells) == {"verified"}
    bar = browser.find_element("id", "release-progress")
    assert bar.get_attribute("value") == "100"
    assert bar.get_attribute("max") == "100"
    assert bar.aria_role == "progressbar"
    assert ui.daemon.call("show", rid)["state"] == "seeding"
    log = browser.find_element("id", "event-log").text
    assert "complete" in log and "chunk" in log
    names = _accessible_names(browser)
    assert names >= {"Verify", "Remove", "Remove with data"}
    assert all(names)
    # Verify re-hashes every chunk in the store.
    browser.find_element("id", "release-verify").click()
    wait_dom(browser, "document.getElementById('message').textContent.includes('intact')")
    assert f"all {len(cells)} chunks intact" in browser.find_element("id", "message").text
    # Peers: the seeder, which we named. When both ends dial at once the connection that
    # survives may be the seeder's own, so it is listed as incoming, not explicit.
    peers = browser.find_element("id", "peer-rows").text
    assert seeder.addr in peers and ("explicit" in peers or "incoming" in peers), peers

    # Remove, with its data, from the overview.
    browser.get(f"{ui.origin}/ui/#/")
    wait_dom(browser, row)
    button = browser.find_element("css selector", f'tr[data-id="{rid}"] button.danger')
    assert button.accessible_name == "Remove with data test/model"
    button.click()
    browser.switch_to.alert.accept()
    wait_dom(browser, f"!{row}")
    assert ui.daemon.call("releases") == []
    assert not list((ui.daemon.home / "store" / "chunks").iterdir())


class _OtherOrigin(http.server.BaseHTTPRequestHandler):
    """Serves one page from another origin that tries everything against the daemon."""

    target = ""

    def do_GET(self) -> None:
        body = _ATTACK.replace("TARGET", self.target).replace("HASH", "0" * 63 + "1").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


# A form POST (no preflight, cookie sent: another port of 127.0.0.1 is the same site),
# a credentialed fetch, a <script> include of the JSON, and a frame of the page.
_ATTACK = """<!doctype html><html><body>
<iframe id="frame" src="TARGET/ui/"></iframe>
<form id="f" method="POST" action="TARGET/v1/fetch" enctype="text/plain" target="frame2">
<input name='{"uri": "HASH", "include": ["' value='"]}'>
</form><iframe name="frame2" id="frame2"></iframe>
<script>
window.results = {};
window.leak = null;
fetch("TARGET/v1/releases", {credentials: "include"})
  .then(r => r.text()).then(t => { results.fetch = "read: " + t; })
  .catch(e => { results.fetch = "blocked"; });
fetch("TARGET/v1/releases/abc", {method: "DELETE", credentials: "include", mode: "no-cors"})
  .then(r => { results.del = r.type; }).catch(e => { results.del = "blocked"; });
const s = document.createElement("script");
s.src = "TARGET/v1/releases";
s.onload = () => { results.script = "loaded"; };
s.onerror = () => { results.script = "error"; };
document.body.append(s);
document.getElementById("frame2").onload = () => { results.form = "sent"; };
document.getElementById("f").submit();
</script></body></html>"""


def _post(url: str, body: str, cookie: str, origin: str | None) -> int:
    headers = {"Content-Type": "text/plain", "Cookie": cookie}
    if origin is not None:
        headers["Origin"] = origin
    req = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_no_cookie_wrong_token_and_other_origins_are_refused(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    browser: Any,
) -> None:
    ui = ui_daemon(daemons, key)
    ui.daemon.call("publish", make_release(make_model()))

    def page_text(url: str) -> tuple[str, str]:
        browser.get(url)
        body = browser.find_element("tag name", "body").text
        title = browser.execute_script("return document.title")
        return body, title

    # No cookie: the page, its files and the API are 401, with no data.
    for path in ("/ui/", "/ui/app.js", "/v1/releases", "/v1/publishers", "/v1/events"):
        body, _ = page_text(ui.origin + path)
        doc = json.loads(body)
        assert doc["type"] == "ApiError" and "session cookie" in doc["error"], path
        assert "test/model" not in body
    # A wrong token, and a good one used twice.
    body, _ = page_text(f"{ui.origin}/ui/login?token=not-the-token")
    assert "not valid" in json.loads(body)["error"]
    assert browser.get_cookies() == []
    url = ui.login_url()
    browser.get(url)
    wait_dom(browser, "document.getElementById('daemon').textContent === 'live'")
    browser.delete_all_cookies()
    body, _ = page_text(url)
    assert "not valid" in json.loads(body)["error"]
    assert browser.get_cookies() == []
    # A cookie not minted by the daemon.
    browser.add_cookie({"name": f"p2pw_session_{ui.port}", "value": "forged", "path": "/"})
    body, _ = page_text(f"{ui.origin}/v1/releases")
    assert "session cookie" in json.loads(body)["error"]

    # Logged in for real, then a page from another origin (another port of 127.0.0.1,
    # so the same site: the Strict cookie goes along) tries its luck.
    ui.login(browser)
    _OtherOrigin.target = ui.origin
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtherOrigin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait_dom(
            browser,
            "window.results && ['fetch', 'del', 'script', 'form']"
            ".every(k => window.results[k] !== undefined)",
        )
        results = browser.execute_script("return window.results")
    finally:
        server.shutdown()
        server.server_close()
    assert results["fetch"] == "blocked"  # no CORS: the answer cannot be read
    assert results["script"] == "error"  # JSON as a script: refused (nosniff, CORP)
    assert ui.daemon.call("releases")[0]["state"] == "seeding"  # the DELETE did nothing
    assert len(ui.daemon.call("releases")) == 1  # and the form POST fetched nothing
    console = " ".join(e["message"] for e in browser.get_log("browser"))
    assert "frame-ancestors 'none'" in console and "has been blocked" in console
    # The control: the very body the form sent, with the cookie, is refused for its
    # Origin alone; from the page's own origin it starts a fetch.
    cookie = f"p2pw_session_{ui.port}={browser.get_cookie(f'p2pw_session_{ui.port}')['value']}"
    form_body = '{"uri": "' + "0" * 63 + '1", "include": ["="]}\r\n'
    other = f"http://127.0.0.1:{server.server_address[1]}"
    assert _post(f"{ui.origin}/v1/fetch", form_body, cookie, other) == 403
    assert _post(f"{ui.origin}/v1/fetch", form_body, cookie, None) == 403  # no Origin
    assert _post(f"{ui.origin}/v1/fetch", form_body, cookie, ui.origin) == 202
    assert len(ui.daemon.call("releases")) == 2
    # The page itself still works: the session was not spent.
    browser.get(f"{ui.origin}/ui/")
    wait_dom(browser, "document.querySelectorAll('#release-rows tr').length === 2")


def test_hostile_label_and_tensor_name_stay_text(
    daemons: DaemonFactory,
    key: PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    browser: Any,
) -> None:
    ui = ui_daemon(daemons, key)
    state = layer_state(layers=2)
    # The manifest's name rule refuses "<" (org/model characters only), so the hostile
    # text goes where free text is allowed: the label, and a tensor name.
    state[f"model.layers.0.{HOSTILE}"] = state.pop("model.layers.0.input_layernorm.weight")
    info = ui.daemon.call("publish", make_release(make_model(state), label=HOSTILE))
    ui.login(browser)
    wait_dom(browser, "document.querySelectorAll('#release-rows tr').length === 1")
    label = browser.find_element("css selector", "#release-rows .label")
    assert label.text == HOSTILE  # shown as the text it is
    browser.get(f"{ui.origin}/ui/#/release/{info['id']}")
    wait_dom(browser, "document.querySelectorAll('#chunk-map .cell').length > 0")
    assert browser.find_element("id", "release-label").text == HOSTILE
    titles = browser.execute_script(
        "return [...document.querySelectorAll('#chunk-map .cell')].map(c => c.title)"
    )
    assert any(HOSTILE in t for t in titles)
    # A hostile "magnet" typed into the form comes back in an error, as text too.
    browser.get(f"{ui.origin}/ui/#/")
    wait_dom(browser, "document.getElementById('daemon').textContent === 'live'")
    browser.find_element("id", "fetch-uri").send_keys(HOSTILE)
    browser.find_element("id", "fetch-button").click()
    wait_dom(browser, "!document.getElementById('message').hidden")
    assert "<img" in browser.find_element("id", "message").text
    # Nothing ran, and no element came out of the hostile text.
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.execute_script("return document.querySelectorAll('main img, main script')") == []
    console = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not [e for e in console if "pwned" in e["message"] or "/x" in e["message"]], console
