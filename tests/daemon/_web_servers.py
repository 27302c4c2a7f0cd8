"""Real HTTP origins for web seed tests: nginx serving a mirror tree, and aiohttp mirrors
that lie, redirect or fail, each on its own loopback address."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from .conftest import wait_pid_exit

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
)
NO_NGINX = "nginx is not installed (scripts/setup.sh installs Debian's nginx-light)"


def free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def wait_listening(addr: str, port: int, pid: int, timeout: float = 10.0) -> None:
    """Wait until ``addr:port`` accepts, or the server exits (then fail at once)."""
    deadline = timeout
    while deadline > 0:
        try:
            socket.create_connection((addr, port), timeout=0.5).close()
            return
        except OSError:
            # Waits on the server's exit for 50 ms: returns at once if it died.
            assert not wait_pid_exit(pid, 0.05), "the server exited at start"
            deadline -= 0.05
    raise AssertionError(f"nothing listens on {addr}:{port} after {timeout} s")


@dataclass
class Nginx:
    """nginx serving ``root`` on ``addr``, with a generated config in ``workdir``."""

    root: Path
    addr: str
    workdir: Path
    rate: str = ""
    """nginx ``limit_rate`` per connection (e.g. ``1m``); empty for none."""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}/"

    def start(self) -> Nginx:
        assert NGINX is not None, NO_NGINX
        self.port = free_port(self.addr)
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        temps = "".join(
            f"  {kind}_temp_path {w}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (w / "nginx.conf").write_text(
            # As root, nginx's workers would become nobody, who cannot read pytest's 0700
            # temp dirs: keep them as this user.
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"daemon off;\nworker_processes 1;\npid {w}/nginx.pid;\nerror_log {w}/error.log;\n"
            "events { worker_connections 128; }\n"
            "http {\n"
            f"  access_log {w}/access.log;\n{temps}"
            "  default_type application/octet-stream;\n"
            "  server {\n"
            f"    listen {self.addr}:{self.port};\n"
            f"    root {self.root};\n"
            + (f"    limit_rate {self.rate};\n" if self.rate else "")
            + "  }\n}\n"
        )
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(w), "-c", str(w / "nginx.conf"), "-e", str(w / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.addr, self.port, self.proc.pid)
        return self

    def bytes_sent(self) -> int:
        """Body bytes nginx sent, from its access log (combined format)."""
        total = 0
        log = self.workdir / "access.log"
        for line in log.read_text().splitlines() if log.exists() else ():
            parts = line.split('"')
            if len(parts) > 2:
                fields = parts[2].split()
                total += int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
        return total

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class Mirror:
    """An aiohttp origin in a thread of its own: honest, lying, redirecting or failing."""

    root: Path
    addr: str
    mode: str = "honest"
    """``honest``, ``lie`` (every chunk byte flipped), ``redirect`` (302 to ``target``),
    or an HTTP status to answer everything with (e.g. ``404``)."""
    target: str = ""
    port: int = 0
    requests: list[str] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}/"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        if self.mode == "redirect":
            raise web.HTTPFound(self.target.rstrip("/") + request.path_qs)
        if self.mode.isdigit():
            return web.Response(status=int(self.mode), text="no")
        path = (self.root / request.path.lstrip("/")).resolve()
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            return web.Response(status=404)
        if self.mode == "honest" or path.suffix == ".torrent":
            return web.FileResponse(path)
        body = bytes(b ^ 0x5A for b in path.read_bytes())
        rng = request.http_range
        start, stop = rng.start or 0, len(body) if rng.stop is None else rng.stop
        headers = {"Content-Range": f"bytes {start}-{stop - 1}/{len(body)}"}
        return web.Response(status=206, body=body[start:stop], headers=headers)

    def start(self) -> Mirror:
        self.port = free_port(self.addr)
        ready = threading.Event()

        async def serve() -> None:
            app = web.Application()
            app.router.add_get("/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, self.addr, self.port).start()
            ready.set()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            loop.run_until_complete(serve())
            loop.run_forever()
            assert self._runner is not None
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "the mirror did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


ServerFactory = Callable[..., Nginx | Mirror]
