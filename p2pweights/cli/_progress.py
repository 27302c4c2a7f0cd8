"""The progress line of a foreground `p2pw fetch`, on stderr when it is a terminal.

One line, redrawn in place and never wider than the terminal: the stage (metadata,
manifest, downloading, verifying), the release's name, bytes done of total, peers, the
rate and a labelled ETA. After a quiet spell with no peer and no byte, one line names the
likely cause and the fixes. It is drawn from the daemon's events and on a timer of its
own, so it moves (the elapsed time, the hint) even when no event comes.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import time
from typing import Any, TextIO

__all__ = ["FetchProgress", "human_bytes"]

_STAGES = {"added": "metadata", "manifest": "manifest", "downloading": "downloading"}
_TICK = 0.5
_DN = re.compile(r"[?&]dn=([^&]+)")
HINT_ENV = "P2PW_NO_PEERS_HINT_AFTER"
"""Seconds without a peer before the hint (default 30; tests set it lower)."""


def human_bytes(n: float) -> str:
    """``1.2 GB``-style sizes (powers of 1000, as download tools show them)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class FetchProgress:
    """A redrawn status line; a no-op unless ``out`` is a terminal.

    Args:
        uri: what is being fetched (its ``dn=`` names it until the manifest is known).
        out: where to draw (stderr).
        peers_given: how many ``--peer`` addresses were given (for the hint).
    """

    def __init__(self, uri: str, out: TextIO | None = None, *, peers_given: int = 0) -> None:
        self.out = out if out is not None else sys.stderr
        self.live = self.out.isatty()
        dn = _DN.search(uri)
        self.name = dn.group(1) if dn else (uri if len(uri) <= 24 else uri[:12] + "…")
        self.stage = "metadata"
        self.done = self.total = 0
        self.peers = 0
        self.sources: dict[str, int] = {}
        """How the connected peers were found (explicit, dht, lsd, tracker, pex, ...)."""
        self.rate = 0.0
        self.started = self.quiet_since = time.monotonic()
        self.hinted = False
        self.peers_given = peers_given
        self.hint_after = float(os.environ.get(HINT_ENV) or 30)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> FetchProgress:
        """Start redrawing on a timer."""
        if self.live:
            self._thread = threading.Thread(target=self._tick, name="p2pw-progress", daemon=True)
            self._thread.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(_TICK):
            self.draw()

    def named(self, name: str) -> None:
        """The release's name, once the manifest says it."""
        with self._lock:
            self.name = name

    def on_event(self, event: dict[str, Any]) -> None:
        """Take one daemon event of this release."""
        with self._lock:
            kind = str(event.get("kind", ""))
            self.stage = _STAGES.get(kind, self.stage)
            if str(event.get("state", "")).startswith("checking"):
                self.stage = "verifying"
            if "peers" in event:
                self.peers = int(event["peers"])
                self.sources = dict(event.get("peer_sources") or {})
                self.rate = float(event.get("download_rate") or 0)
            if self.stage == "downloading" and "wanted" in event:
                self.total = int(event["wanted"])
                self.done = int(event.get("wanted_done") or 0)
            if self.peers or self.done:
                self.quiet_since = time.monotonic()
        self.draw()

    def line(self, width: int) -> str:
        """The status line, at most ``width`` characters."""
        with self._lock:
            parts = [f"{self.stage:<11}", self.name]
            if self.total:
                parts.append(
                    f"{100 * self.done / self.total:3.0f}% "
                    f"{human_bytes(self.done)}/{human_bytes(self.total)}"
                )
            found = ", ".join(f"{k} {v}" for k, v in sorted(self.sources.items()))
            parts.append(
                f"{self.peers} peer{'s' * (self.peers != 1)}" + (f" ({found})" if found else "")
            )
            if self.rate > 0:
                parts.append(f"{human_bytes(self.rate)}/s")
                if self.total > self.done:
                    parts.append(f"ETA {_clock((self.total - self.done) / self.rate)}")
            else:
                parts.append(f"{_clock(time.monotonic() - self.started)} elapsed")
            percent = self.done / self.total if self.total else None
        text = " ".join(parts)
        room = width - len(text) - 3
        if percent is not None and room >= 10:  # a bar only where it fits
            cells = min(room, 30)
            full = round(cells * percent)
            text = f"{parts[0]} [{'#' * full}{'-' * (cells - full)}] " + " ".join(parts[1:])
        return text[:width]

    def draw(self) -> None:
        """Redraw the line in place (and print the no-peers hint once, when it is due)."""
        if not self.live:
            return
        width = max(shutil.get_terminal_size((80, 24)).columns - 1, 10)
        hint = None
        with self._lock:
            quiet = time.monotonic() - self.quiet_since
            if not self.hinted and not self.peers and not self.done and quiet >= self.hint_after:
                self.hinted = True
                fix = "check --peer" if self.peers_given else "add --peer IP:PORT"
                hint = f"no peers after {quiet:.0f} s: {fix}, or use a daemon profile with DHT"
        with self._lock:
            if hint is not None:
                self.out.write(f"\r\x1b[K{hint}\n")
        self.out.write(f"\r\x1b[K{self.line(width)}")
        self.out.flush()

    def finish(self, *, total: int | None = None) -> None:
        """Stop the timer; a fetch that completed (``total`` bytes) shows 100 % last."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.live:
            return
        if total is not None:
            with self._lock:
                self.stage, self.rate = "done", 0.0
                self.done = self.total = max(total, self.total, 1)
            self.draw()
        self.out.write("\n")
        self.out.flush()
