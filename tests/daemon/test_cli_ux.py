"""The CLI and the daemon as a new user meets them (issue 17): each item's failure mode."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest

import p2pweights
from p2pweights import FetchTimeoutError
from p2pweights.cli import cli
from p2pweights.cli._progress import HINT_ENV

from .conftest import _ADDRESSES, Daemon, p2pw

DaemonFactory = Callable[..., Daemon]

# A v2 info-hash nobody seeds: the fetch can never complete.
NOBODY = "magnet:?xt=urn:btmh:1220" + "ab" * 32


def test_load_of_an_unreachable_release_times_out_with_a_typed_error(
    daemons: DaemonFactory,
) -> None:
    d = daemons()
    with pytest.raises(FetchTimeoutError, match="not complete after 1s"):
        p2pweights.load(NOBODY, home=d.home, timeout=1)
    res = p2pw(d.home, "load", NOBODY, "--timeout", "1", "--json")
    assert res.returncode == 14, res.stderr
    assert json.loads(res.stdout)["type"] == "FetchTimeoutError"
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def _added(d: Daemon, start: Callable[[], object], timeout: float = 60) -> str:
    """Run ``start`` and return the id of the release the daemon then adds."""

    async def watch() -> str:
        events = d.client.events()
        assert (await asyncio.wait_for(anext(events), timeout))["kind"] == "subscribed"
        await asyncio.to_thread(start)
        try:
            while True:
                event = await asyncio.wait_for(anext(events), timeout)
                if event.get("kind") == "added":
                    return str(event["id"])
        finally:
            await events.aclose()

    return asyncio.run(watch())


def test_daemon_stop_is_prompt_with_a_fetch_attached_and_the_fetch_resumes(
    daemons: DaemonFactory,
) -> None:
    d = daemons()
    fg: list[subprocess.Popen[str]] = []
    env = {**os.environ, "P2PW_HOME": str(d.home)}
    exe = str(Path(sys.executable).with_name("p2pw"))
    rid = _added(
        d,
        lambda: fg.append(
            subprocess.Popen(  # a foreground fetch: long poll plus event stream
                [exe, "fetch", NOBODY], env=env, text=True, stderr=subprocess.PIPE
            )
        ),
    )
    started = time.monotonic()
    res = p2pw(d.home, "daemon", "stop", "--json")
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - started < 5, "daemon stop took too long"
    assert json.loads(res.stdout)["stopped"] is True
    try:
        _, err = fg[0].communicate(timeout=30)
    finally:
        if fg[0].poll() is None:  # a failed test must not leave it running
            fg[0].kill()
            fg[0].communicate()
    assert fg[0].returncode == 15 and "Traceback" not in err
    d.pid = 0
    d.start()
    again = d.call("show", rid)
    assert again["state"] == "metadata" and again.get("transfer") is not None  # going on


def _foreground_fetch(d: Daemon, *args: str) -> tuple[str, subprocess.Popen[str]]:
    """A `p2pw fetch` of NOBODY in a child process; returns the id once the daemon has it."""
    fg: list[subprocess.Popen[str]] = []
    env = {**os.environ, "P2PW_HOME": str(d.home)}
    exe = str(Path(sys.executable).with_name("p2pw"))
    rid = _added(
        d,
        lambda: fg.append(
            subprocess.Popen(
                [exe, "fetch", NOBODY, *args],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        ),
    )
    return rid, fg[0]


def test_ctrl_c_pauses_a_foreground_fetch_and_detach_leaves_it_running(
    daemons: DaemonFactory,
) -> None:
    d = daemons()
    rid, proc = _foreground_fetch(d)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # a failed test must not leave it running
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert f"go on with: p2pw fetch '{NOBODY}'" in err and "Traceback" not in err
    paused = d.call("show", rid)
    assert paused["state"] == "paused" and "paused by the user" in paused["error"]
    d.stop()  # a paused fetch stays paused over a restart
    d.start()
    assert d.call("show", rid)["state"] == "paused"
    res = p2pw(d.home, "fetch", NOBODY, "--detach", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["state"] == "metadata"
    assert d.call("show", rid).get("transfer") is not None  # going on in the engine


def test_failed_fetches_are_removed_unless_kept_and_rm_leaves_nothing(
    daemons: DaemonFactory, make_model: Callable[..., Path], make_release: Callable[..., Path]
) -> None:
    seeder = daemons(name="seeder")
    magnet = seeder.call("publish", make_release(make_model()))["magnet"]
    leech = daemons(name="leech")  # trusts nobody: the fetch is refused
    store = leech.home / "store"
    res = p2pw(leech.home, "fetch", magnet, "--peer", seeder.peer, "--timeout", "60")
    assert res.returncode == 4 and "removed" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert json.loads(p2pw(leech.home, "ls", "--json").stdout)["releases"] == []
    res = p2pw(leech.home, "fetch", NOBODY, "--timeout", "1")
    assert res.returncode == 14 and "removed it" in res.stderr, res.stderr
    # Removed, so the library's "the daemon goes on fetching it" is not said.
    assert "no peer has answered" in res.stderr and "daemon goes on" not in res.stderr
    assert json.loads(p2pw(leech.home, "ls", "--json").stdout)["releases"] == []
    # Kept: `ls` says it failed, and why.
    res = p2pw(leech.home, "fetch", magnet, "--peer", seeder.peer, "--timeout", "60", "--keep")
    assert res.returncode == 4 and "removed" not in res.stderr, res.stderr
    line = p2pw(leech.home, "ls").stdout
    assert " error " in line and "UntrustedKeyError" in line, line
    rid = json.loads(p2pw(leech.home, "ls", "--json").stdout)["releases"][0]["id"]
    assert p2pw(leech.home, "rm", rid[:10]).returncode == 0
    assert not (store / "partial" / rid).exists() and not (store / "releases" / rid).exists()
    leech.stop()
    doctor = p2pw(leech.home, "doctor", "--json")
    assert rid[:16] not in doctor.stdout, doctor.stdout  # never offers to re-add it


def test_an_auto_started_daemon_keeps_the_settings_of_the_last_explicit_start(
    tmp_path: Path,
) -> None:
    home, addr = tmp_path / "home", next(_ADDRESSES)
    flags = ["--profile", "local", "--listen", f"{addr}:0", "--outgoing-interface", addr]
    res = p2pw(home, "daemon", "start", *flags, "--json")
    assert res.returncode == 0, res.stderr
    try:
        assert json.loads(res.stdout)["profile"] == "local"
        assert p2pw(home, "daemon", "start", "--profile", "lan").returncode == 2  # no surprise
        assert p2pw(home, "daemon", "stop").returncode == 0
        assert p2pw(home, "ls").returncode == 0  # starts one on demand
        status = json.loads(p2pw(home, "daemon", "status", "--json").stdout)
        assert status["profile"] == "local"
    finally:
        p2pw(home, "daemon", "stop")


@pytest.mark.parametrize(
    "verb", [["ls"], ["show", "abcdef12"], ["rm", "abcdef12"], ["daemon", "status"]]
)
def test_a_read_only_verb_on_a_missing_data_dir_creates_nothing(
    tmp_path: Path, verb: list[str]
) -> None:
    typo = tmp_path / "typo"
    res = p2pw(typo, *verb)
    assert res.returncode == 15, res.stderr
    assert f"no daemon at {typo}" in res.stderr
    assert "start one with `p2pw daemon start`" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not typo.exists()


@pytest.mark.parametrize("verb", [["ls"], ["fetch", NOBODY], ["daemon", "start"], ["status"]])
def test_a_file_as_home_is_one_line_not_a_traceback(tmp_path: Path, verb: list[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    res = p2pw(afile, *(["daemon", "status"] if verb == ["status"] else verb))
    assert res.returncode == 2, res.stderr
    assert res.stderr == f"p2pw: error: data dir {afile} is not a directory\n"


def test_a_home_too_long_for_a_socket_says_so(tmp_path: Path) -> None:
    home = tmp_path / ("x" * 120)
    for verb in (["fetch", NOBODY], ["daemon", "start"]):
        res = p2pw(home, *verb)
        assert res.returncode == 2, res.stderr
        assert "too long a path for the daemon's socket" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    with pytest.raises(p2pweights.ConfigError, match="too long"):
        p2pweights.fetch(NOBODY, home=home, timeout=1)


def test_help_texts_name_commands_on_path_and_every_option_has_help(tmp_path: Path) -> None:
    assert "Usage: p2pw daemon run" in p2pw(tmp_path, "daemon", "run", "--help").stdout
    assert "p2pweightsd" not in p2pw(tmp_path, "daemon", "start", "--help").stdout

    def walk(cmd: click.Command, path: str) -> Iterator[tuple[str, click.Option]]:
        for param in cmd.params:
            if isinstance(param, click.Option):
                yield path, param
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}")

    bare = [f"{p} {o.opts[0]}" for p, o in walk(cli, "p2pw") if not o.help]
    assert bare == []


def test_trust_add_of_a_known_key_under_a_new_name_says_so(tmp_path: Path) -> None:
    pub = json.loads(p2pw(tmp_path, "key", "generate", "--json").stdout)["public_key"]
    assert (
        json.loads(p2pw(tmp_path, "trust", "add", pub, "--name", "a", "--json").stdout)[
            "previous_name"
        ]
        is None
    )
    res = p2pw(tmp_path, "trust", "add", pub, "--name", "b")
    assert res.returncode == 0 and "trusted b (renamed from a)" in res.stdout, res.stdout


def test_every_release_form_on_every_verb(
    daemons: DaemonFactory,
    key: p2pweights.PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
    tmp_path: Path,
) -> None:
    d = daemons()
    p2pweights.TrustStore.load(d.home / "trust.json").add(key.public, "publisher")
    source = make_release(make_model())
    info = d.call("publish", source)
    rid = info["id"]
    forms = [rid, rid[:10], "test/model", "test/model@1", info["path"], str(source), info["magnet"]]
    for i, form in enumerate(forms):
        shown = p2pw(d.home, "show", form, "--json")
        assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == rid, (form, shown.stderr)
        assert p2pw(d.home, "verify", form).returncode == 0, form
        out = tmp_path / f"out{i}"
        assert p2pw(d.home, "export", form, str(out)).returncode == 0, form
        if form != info["magnet"]:  # load fetches a magnet: covered by the fetch tests
            res = p2pw(d.home, "load", form, "--json")
            assert res.returncode == 0 and json.loads(res.stdout)["tensors"] > 0, res.stderr
    # Path parts are escaped: a query string never reaches the API as one.
    for bad in ("abcdef?x=1", "test/other", "test/model@9", "magnet:?xt=urn:btih:" + "a" * 40):
        res = p2pw(d.home, "show", bad)
        assert res.returncode in (12, 16) and len(res.stderr.strip().splitlines()) == 1, res
    status = json.loads(p2pw(d.home, "daemon", "status", "--json").stdout)
    assert status["peer_address"] == d.peer
    assert f"peers dial {d.peer}" in p2pw(d.home, "daemon", "status").stdout
    assert p2pw(d.home, "rm", "test/model@1").returncode == 0
    assert json.loads(p2pw(d.home, "ls", "--json").stdout)["releases"] == []


def _in_pty(
    d: Daemon, args: list[str], *, cols: int = 80, interrupt_on: str | None = None
) -> tuple[str, int]:
    """Run `p2pw ARGS` on a pseudo-terminal COLS wide; returns its output and exit code."""
    exe = str(Path(sys.executable).with_name("p2pw"))
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of our width, then p2pw
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
        os.environ.update({"P2PW_HOME": str(d.home), HINT_ENV: "2", "COLUMNS": str(cols)})
        os.execv(exe, [exe, *args])
    out = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if interrupt_on is not None and interrupt_on.encode() in out:
                os.write(fd, b"\x03")  # Ctrl-C, as the terminal sends it
                interrupt_on = None
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return out.decode("utf-8", "replace"), os.waitstatus_to_exitcode(status)


def _frames(text: str) -> list[str]:
    return [f.replace("\x1b[K", "") for f in re.split(r"[\r\n]+", text) if f.strip()]


def test_the_progress_line_in_a_terminal(
    daemons: DaemonFactory,
    key: p2pweights.PrivateKey,
    make_model: Callable[..., Path],
    make_release: Callable[..., Path],
) -> None:
    seeder = daemons(name="seeder")
    magnet = seeder.call("publish", make_release(make_model()))["magnet"]
    leech = daemons(name="leech")
    p2pweights.TrustStore.load(leech.home / "trust.json").add(key.public, "publisher")
    text, code = _in_pty(leech, ["fetch", magnet, "--peer", seeder.peer], cols=60)
    frames = _frames(text)
    assert code == 0, text
    bars = frames[:-2]  # then the summary and the release path, printed lines that may wrap
    assert all(len(f) < 60 for f in bars), [f for f in bars if len(f) >= 60]
    assert "100%" in bars[-1] and bars[-1].startswith("done"), frames[-4:]
    assert frames[-2].startswith("fetched test/model v1: ") and "in " in frames[-2]
    assert f"verified, signed by publisher ({key.public.fingerprint})" in frames[-2]
    # No peers: after the quiet spell, one line says why and what to do.
    text, code = _in_pty(leech, ["fetch", NOBODY, "--timeout", "4"])
    assert code == 14, text
    assert text.count("no peers after") == 1 and "add --peer IP:PORT" in text, text
    assert all(len(f) < 80 for f in _frames(text)[:-1])  # the error line may wrap
    # Ctrl-C pauses the fetch, and the daemon says so.
    text, code = _in_pty(leech, ["fetch", NOBODY, "--keep"], interrupt_on="metadata")
    assert code == 130 and "go on with: p2pw fetch" in text, text
    rid = NOBODY.rsplit("1220", 1)[1]
    assert leech.call("show", rid)["state"] == "paused"
    leech.stop()
    assert "Task was destroyed" not in leech.log()  # the task lifecycle is clean


def test_the_progress_line_is_quiet_off_a_terminal(daemons: DaemonFactory) -> None:
    d = daemons()
    res = p2pw(d.home, "fetch", NOBODY, "--timeout", "2")
    assert res.returncode == 14 and len(res.stderr.strip().splitlines()) == 1, res.stderr


def _json(home: Path, *args: str, code: int = 0) -> dict[str, object]:
    res = p2pw(home, *args, "--json")
    assert res.returncode == code, (args, res.stdout, res.stderr)
    doc = json.loads(res.stdout)
    assert isinstance(doc, dict)
    return doc


ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")


def test_json_shapes_and_exit_codes_of_every_verb(
    daemons: DaemonFactory, make_model: Callable[..., Path], tmp_path: Path
) -> None:
    d = daemons()
    h = d.home
    key = _json(h, "key", "generate")
    assert {"path", "public_key", "fingerprint", "encrypted"} <= set(key)
    assert {"public_key", "fingerprint"} <= set(_json(h, "key", "show"))
    pub = str(key["public_key"])
    assert {"name", "previous_name", "public_key", "fingerprint", "scopes"} <= set(
        _json(h, "trust", "add", pub, "--name", "me")
    )
    assert set(_json(h, "trust", "list")["keys"][0]) == {  # type: ignore[index]
        "name",
        "public_key",
        "fingerprint",
        "scopes",
    }
    model, rel = make_model(), tmp_path / "rel"
    packed = _json(h, "pack", str(model), "--name", "org/m", "--version", "1", "--out", str(rel))
    assert packed["path"] == str(rel) and {"name", "version", "manifest_sha256"} <= set(packed)
    verified = _json(h, "verify", str(rel))
    assert {"ok", "name", "version", "publisher", "publisher_name", "mode"} <= set(verified)
    exported = _json(h, "export", str(rel), str(tmp_path / "x"))
    assert exported["path"] == str(tmp_path / "x") and {"files", "exact"} <= set(exported)
    published = _json(h, "publish", str(rel))
    shown = _json(h, "show", "org/m")
    for info in (published, shown):
        assert {"id", "name", "version", "state", "path", "magnet", "added"} <= set(info)
        assert ISO.fullmatch(str(info["added"])), info["added"]
    listed = _json(h, "ls")["releases"]
    assert [r["id"] for r in listed] == [published["id"]]  # type: ignore[index, union-attr]
    status = _json(h, "daemon", "status")
    assert {"pid", "version", "home", "profile", "listen_port", "peer_address"} <= set(status)
    assert {"tensors", "bytes", "seconds"} <= set(_json(h, "load", "org/m@1"))
    assert _json(h, "rm", "org/m") == {"id": published["id"], "removed": True, "deleted_chunks": 0}
    assert _json(h, "trust", "remove", "me")["removed"] is True
    # Exit codes: usage errors are 2 and JSON too; an unknown release 16.
    for args in (
        ["fetch", "magnet:?xt=urn:btih:" + "a" * 40],  # not a v2 magnet
        ["fetch", "no-such-thing"],
        ["trust", "add", "ed25519:nope", "--name", "x"],  # bad key text, not a key file
        ["pack", str(model), "--name", "org/m", "--version", "2", "--out", str(rel)],  # exists
        ["export", str(rel), str(tmp_path / "x")],  # exists
        ["ls", "--no-such-flag"],
    ):
        doc = _json(h, *args, code=2)
        assert doc["exit_code"] == 2 and doc["type"] == "UsageError", (args, doc)
    assert _json(h, "show", "org/nothing", code=16)["type"] == "UnknownReleaseError"


def test_failed_pieces_are_summarised_per_peer(caplog: pytest.LogCaptureFixture) -> None:
    from p2pweightsd.runner import PieceFailures

    alerts = logging.getLogger("p2pweightsd.engine.alerts")
    failures = PieceFailures()
    alerts.addFilter(failures)
    line = "torrent %s: piece %d failed the hash check (from %s)"
    try:
        with caplog.at_level(logging.WARNING):
            for piece in range(20):
                alerts.warning(line, "ab" * 32, piece, "127.0.8.8:6881")
            alerts.warning(line, "ab" * 32, 20, "127.0.0.3:7000, 127.0.8.8:6881")
            alerts.warning(line, "cd" * 32, 4, "a peer now gone")
            alerts.warning("something else")
            failures.flush()
    finally:
        alerts.removeFilter(failures)
    tail = "; thrown away and fetched again, and a peer that keeps sending bad data is banned"
    assert [r.getMessage() for r in caplog.records] == [
        "something else",
        f"torrent {'ab' * 8}: 1 piece from 127.0.0.3:7000 failed the hash check (20){tail}",
        f"torrent {'ab' * 8}: 21 pieces from 127.0.8.8:6881 failed the hash check "
        f"(0, 1, 2, 3, 4, 5, 6, 7, ...){tail}",
        f"torrent {'cd' * 8}: 1 piece from a peer now gone failed the hash check (4){tail}",
    ]
    assert failures.pieces == {}  # flushed once, not again
