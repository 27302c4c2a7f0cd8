"""A foreground `p2pw fetch`: its progress, Ctrl-C (pause), and clean-up after a failure."""

from __future__ import annotations

import json
import shlex
from typing import Any
from urllib.parse import quote

import click

from ..client import DaemonClient, fetch_body
from ..errors import DaemonError, FetchTimeoutError, P2PWeightsError
from ._base import Ctx, client_for, run
from ._progress import FetchProgress, human_bytes

__all__ = ["foreground_fetch", "release_name", "summary"]


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
        cause = str(exc)
        if isinstance(exc, FetchTimeoutError):  # the library's "goes on fetching": not now
            cause = (
                f"{release_name(info)} not complete after {kw.get('timeout') or 0:.0f}s "
                f"(state {info['state']})"
            )
            if info["state"] == "metadata" and not info.get("peers"):
                cause += ": no peer has answered"
        removed = "it" if isinstance(exc, FetchTimeoutError) else release_name(info)
        raise type(exc)(
            f"{cause}; removed {removed} and its partial data "
            "(`p2pw fetch --keep` keeps a failed fetch and goes on fetching it)"
        ) from exc


def _fetch_with_progress(
    ctx: Ctx, uri: str, started: dict[str, Any], **kw: Any
) -> dict[str, Any]:
    from ..remote import fetch_async  # noqa: PLC0415 - aiohttp; `fetch --no-wait` skips it

    progress = FetchProgress(uri, peers_given=len(kw.get("peers") or ()))
    progress.live = progress.live and not ctx.json
    client = DaemonClient(ctx.home)
    named = False

    def on_event(event: dict[str, Any]) -> None:
        nonlocal named
        if not progress.live:
            return
        if not named and event.get("kind") in ("manifest", "downloading"):
            named = True  # the manifest is in: the daemon knows the release's name now
            info = client.request_sync("GET", f"/releases/{quote(str(event['id']), safe='')}")
            if info.get("name"):
                progress.named(release_name(info))
        progress.on_event(event)

    progress.start()
    total: int | None = None
    try:
        info = run(
            fetch_async(uri, home=ctx.home, on_event=on_event, on_started=started.update, **kw)
        )
        total = int(info.get("total_bytes") or 0)
        return info
    except KeyboardInterrupt:
        progress.finish()
        if not started:  # interrupted before the daemon's answer came: find it by source
            source = fetch_body(uri)["uri"]
            rows = client.request_sync("GET", "/releases")["releases"]
            started.update(next((r for r in rows if r.get("source") == source), {}))
        if not started:
            raise
        _pause_and_exit(ctx, uri, str(started["id"]))
        raise  # not reached: _pause_and_exit exits
    finally:
        progress.finish(total=total)


def summary(ctx: Ctx, info: dict[str, Any], seconds: float) -> str:
    """One line: what arrived, its size, the time, and who signed it."""
    from ..keys import PublicKey  # noqa: PLC0415 - cryptography, once at the end
    from ..trust import trust_for  # noqa: PLC0415

    signer = "an unknown key"
    if info.get("publisher"):
        key = PublicKey.parse(info["publisher"])
        who = trust_for(None, ctx.home).name_of(key) or "an untrusted key"
        signer = f"{who} ({key.fingerprint})"
    return (
        f"fetched {release_name(info)}: {human_bytes(int(info.get('total_bytes') or 0))} "
        f"in {seconds:.1f} s, verified, signed by {signer}"
    )


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
