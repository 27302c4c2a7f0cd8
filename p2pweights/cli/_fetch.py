"""A foreground `p2pw fetch`: its progress, Ctrl-C (pause), and clean-up after a failure."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any
from urllib.parse import quote

import click

from ..client import DaemonClient, fetch_body
from ..errors import DaemonError, P2PWeightsError
from ._base import Ctx, client_for, run

__all__ = ["foreground_fetch", "release_name"]


def foreground_fetch(ctx: Ctx, uri: str, *, keep: bool, **kw: Any) -> dict[str, Any]:
    """Fetch and wait; a failure or time-out removes what this fetch added, unless ``keep``.

    Raises:
        P2PWeightsError: the fetch failed or timed out (after the clean-up).
    """
    client = client_for(ctx)  # started on demand, after checking the data dir
    before = {r["id"]: r["state"] for r in client.request_sync("GET", "/releases")["releases"]}
    started: dict[str, Any] = {}
    try:
        return _fetch_with_progress(ctx, uri, started, **kw)
    except DaemonError:
        raise  # the daemon went away (or refused): nothing of ours to clean up
    except P2PWeightsError as exc:
        rid = str(started.get("id", ""))
        if keep or not rid or before.get(rid, "error") != "error":
            raise  # kept, never started, or a release that was there before us
        info = client.request_sync("GET", f"/releases/{quote(rid, safe='')}")
        if info["state"] in ("seeding", "complete"):
            raise  # verified after all (e.g. not the pinned revision): it stays
        client.request_sync(
            "DELETE", f"/releases/{quote(rid, safe='')}", params={"delete_data": "1"}
        )
        raise type(exc)(
            f"{exc}; removed {release_name(info)} and its partial data "
            "(`p2pw fetch --keep` keeps a failed fetch)"
        ) from exc


def _fetch_with_progress(
    ctx: Ctx, uri: str, started: dict[str, Any], **kw: Any
) -> dict[str, Any]:
    from ..remote import fetch_async  # noqa: PLC0415 - aiohttp; `fetch --no-wait` skips it

    bar: Any = None
    done = 0

    def on_event(event: dict[str, Any]) -> None:
        nonlocal bar, done
        if ctx.json or not sys.stderr.isatty() or "wanted" not in event:
            return
        if bar is None:
            bar = click.progressbar(
                length=max(int(event["wanted"]), 1),
                label="fetching",
                file=sys.stderr,
                show_eta=True,
                show_percent=True,
            )
            bar.__enter__()
        now = int(event.get("wanted_done", 0))
        bar.label = (
            f"fetching {event.get('download_rate', 0) / 1e6:6.1f} MB/s "
            f"{event.get('peers', 0)} peers"
        )
        bar.update(max(now - done, 0))
        done = now

    try:
        return run(
            fetch_async(uri, home=ctx.home, on_event=on_event, on_started=started.update, **kw)
        )
    except KeyboardInterrupt:
        if bar is not None:
            bar.__exit__(None, None, None)
            bar = None
        if not started:  # interrupted before the daemon's answer came: find it by source
            source = fetch_body(uri)["uri"]
            rows = DaemonClient(ctx.home).request_sync("GET", "/releases")["releases"]
            started.update(next((r for r in rows if r.get("source") == source), {}))
        if not started:
            raise
        _pause_and_exit(ctx, uri, str(started["id"]))
        raise  # not reached: _pause_and_exit exits
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


def _pause_and_exit(ctx: Ctx, uri: str, rid: str) -> None:
    """Ctrl-C on a foreground fetch: pause it in the daemon, say how to go on, exit 130."""
    info = DaemonClient(ctx.home).request_sync("POST", f"/releases/{quote(rid, safe='')}/pause")
    t = info.get("transfer") or {}
    percent = 100 * float(t.get("progress", 0))
    resume = f"p2pw fetch {shlex.quote(uri)}"
    if ctx.json:
        click.echo(json.dumps({**info, "resume": resume}, indent=2, sort_keys=True))
    click.echo(
        f"p2pw: paused {release_name(info)} at {percent:.0f}%; go on with: {resume}", err=True
    )
    raise click.exceptions.Exit(130)


def release_name(info: dict[str, Any]) -> str:
    """``org/model v3``, or the id's start while the manifest is not known yet."""
    if info.get("name"):
        return f"{info['name']} v{info.get('version')}"
    return f"release {str(info['id'])[:16]}"
