"""A network lab: N hosts, each its own network namespace, joined by one Linux bridge.

Shared by the tests (``tests/lab``) and the benchmarks (``bench_swarm.py --net lab``)::

    with Lab() as lab:
        a, b = lab.add_host(rate=4_000_000), lab.add_host(rate=4_000_000)
        proc = b.popen(["some-server", "--listen", b.addr])
        with a.entered():           # this thread's sockets and children live in host a
            ...

Layout. A hidden "switch" namespace holds the bridge ``br0``; every host namespace holds
``lo`` and ``eth0``, one end of a veth pair whose other end is a port of the bridge. Each
host gets one address in a private test subnet (``10.77.0.0/16`` by default). Nothing
touches the caller's own namespace: no route, no address and no link in it changes, so no
packet of the lab can leave the lab, whatever namespace the lab is built from (the
private one ``scripts/test.sh`` runs the suite in, or the host's).

Namespaces are anonymous: each is held by a small ``unshare -n`` process of this run,
not a name under ``/run/netns``, so runs never collide (several agents or CI jobs may
use the same subnet at once, each in its own lab), and a crashed run leaves nothing
behind: a holder exits when its stdin closes, which the kernel does when this process
dies, and the namespace goes with its last process.

Shaping. A host's uplink (``eth0`` egress) can be limited with ``tbf`` (token bucket,
10 ms of burst). This kernel has ``tbf`` and ``htb`` but no ``netem``: the lab emulates
no latency or loss; round trips are a veth hop's (~tens of µs).

It needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for ``setns``), ``unshare``, ``nsenter``,
``ip`` and ``tc``; :func:`unavailable` says why not, for a test's skip reason.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Host", "Lab", "LabError", "start_opentracker", "tracker_hash", "unavailable"]

DEFAULT_SUBNET = "10.77.0.0/16"
_CLONE_NEWNET = 0x40000000
_TOOLS = ("unshare", "nsenter", "ip", "tc")
_HOLDER = "ip link set lo up && echo ready && exec cat >/dev/null"
"""What holds a namespace: ``cat`` exits when its stdin (our pipe) closes."""


class LabError(RuntimeError):
    """The lab could not be built or a command in it failed."""


def unavailable() -> str | None:
    """Why the lab cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, veth, tc)"
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        return f"the network lab needs {', '.join(missing)} (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"cannot create a network namespace here: {probe.stderr.decode().strip()}"
    return None


def _run(argv: Sequence[str], *, stdin: str | None = None) -> str:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False,
                          timeout=60)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise LabError(f"setns: {os.strerror(err)}")


class _Namespace:
    """An anonymous network namespace held by one ``unshare -n`` process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "-n", "--", "sh", "-c", _HOLDER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        # Until the holder says so, /proc/PID/ns/net is still the caller's namespace.
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise LabError(f"namespace holder exited with {self.proc.wait()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace (nsenter execs it: the pid stays the same)."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def sh(self, argv: Sequence[str], *, stdin: str | None = None) -> str:
        return _run(self.argv(argv), stdin=stdin)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@dataclass
class Host:
    """One host of the lab: a namespace with ``lo`` and ``eth0`` at :attr:`addr`."""

    lab: Lab
    name: str
    addr: str
    ns: _Namespace
    rate: int = 0
    """The uplink's limit in bytes/s (0 = the veth's own speed)."""
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The pid holding this host's namespace (``nsenter -t PID -n`` enters it)."""
        return self.ns.pid

    def shape(self, rate: int, *, burst_s: float = 0.01) -> None:
        """Limit this host's upload (``eth0`` egress) to ``rate`` bytes/s with tbf."""
        burst = max(int(rate * burst_s), 32 * 1024)
        self.ns.sh(["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
                    "rate", f"{rate * 8}bit", "burst", str(burst), "latency", "100ms"])
        self.rate = rate

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs in this host."""
        return self.ns.argv(argv)

    def run(self, argv: Sequence[str]) -> str:
        """Run a command in this host and return its stdout (LabError if it fails)."""
        return self.ns.sh(argv)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process in this host; it is stopped when the lab closes."""
        proc = subprocess.Popen(self.argv(argv), **kwargs)
        self.procs.append(proc)
        return proc

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread into this host (sockets and children), and back.

        Namespaces are per thread: other threads stay where they are, so threads of a
        pool can each start processes in a different host at once.
        """
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.ns.path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(back)
        finally:
            os.close(target)
            os.close(back)

    def start_daemon(self, home: Path, extra_args: Sequence[str] = ()) -> int:
        """Start a p2pweights daemon in this host (``start_daemon``); it dies with the lab."""
        from p2pweights.client import start_daemon

        with self.entered():
            pid = start_daemon(home, extra_args=list(extra_args))
        self.lab.track(pid)
        return pid

    def counters(self) -> dict[str, int]:
        """``eth0``'s byte and packet counters (from ``/proc/PID/net/dev``)."""
        for line in Path(f"/proc/{self.pid}/net/dev").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == "eth0":
                v = [int(x) for x in rest.split()]
                return {"rx_bytes": v[0], "rx_packets": v[1], "tx_bytes": v[8],
                        "tx_packets": v[9]}
        raise LabError(f"{self.name} has no eth0")

    def qdisc_stats(self) -> dict[str, int]:
        """The root qdisc's counters (``tc -s``): bytes, packets, drops, overlimits."""
        out = json.loads(self.ns.sh(["tc", "-s", "-j", "qdisc", "show", "dev", "eth0"]) or "[]")
        root = next((q for q in out if q.get("root")), out[0] if out else {})
        return {k: int(root.get(k, 0)) for k in ("bytes", "packets", "drops", "overlimits")}


class Lab:
    """Hosts on one bridge, torn down on :meth:`close`, on exit, and by the kernel on a crash.

    Args:
        subnet: the hosts' subnet (private; it exists only inside the lab).
        prefix: a label for this run's hosts (default ``lab<pid>``).

    Raises:
        LabError: the lab cannot be built here (see :func:`unavailable`).

    """

    def __init__(self, subnet: str = DEFAULT_SUBNET, prefix: str | None = None) -> None:
        reason = unavailable()
        if reason:
            raise LabError(reason)
        self.subnet = ipaddress.ip_network(subnet)
        self.prefix = prefix or f"lab{os.getpid()}"
        self.hosts: list[Host] = []
        self._pids: list[int] = []
        self._addrs = self.subnet.hosts()
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(self.close)
        self.switch = _Namespace()
        try:
            # No snooping: a bridge that snoops IGMP with no querier may stop flooding a
            # group (LSD's multicast) to ports it has not heard a report from.
            self.switch.sh(["ip", "-batch", "-"], stdin=(
                "link add br0 type bridge mcast_snooping 0 stp_state 0\n"
                "link set br0 up\n"))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_host(self, rate: int = 0) -> Host:
        """A new host on the bridge, with the next address; ``rate`` shapes its uplink."""
        with self._lock:
            index = len(self.hosts)
            addr = str(next(self._addrs))
            host = Host(self, f"{self.prefix}-h{index}", addr, _Namespace())
            self.hosts.append(host)
        port = f"p{index}"
        self.switch.sh(["ip", "link", "add", port, "type", "veth", "peer", "name", "eth0",
                        "netns", str(host.pid)])
        self.switch.sh(["ip", "link", "set", port, "master", "br0", "up"])
        host.ns.sh(["ip", "-batch", "-"], stdin=(
            f"addr add {addr}/{self.subnet.prefixlen} dev eth0\n"
            "link set eth0 up\n"))
        if rate:
            host.shape(rate)
        return host

    def add_hosts(self, n: int, rate: int = 0) -> list[Host]:
        """``n`` new hosts (see :meth:`add_host`)."""
        return [self.add_host(rate) for _ in range(n)]

    def track(self, pid: int) -> None:
        """Stop this pid (SIGTERM, then SIGKILL) when the lab closes."""
        self._pids.append(pid)

    def close(self) -> None:
        """Stop every process started in the lab, then release every namespace."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        procs = [p for h in self.hosts for p in h.procs]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for pid in self._pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for pid in self._pids:
            if not _wait_pid(pid, 30):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_pid(pid, 5)
        for host in self.hosts:
            host.ns.close()
        if hasattr(self, "switch"):
            self.switch.close()


def tracker_hash(v2_hex: str) -> str:
    """What a v2 torrent is announced as (BEP 52): its v2 info-hash truncated to 20 bytes."""
    return v2_hex[:40].lower()


def start_opentracker(host: Host, root: Path, v2_hashes: Sequence[str], *, port: int = 6969,
                      timeout: float = 10.0) -> subprocess.Popen[Any]:
    """Run Debian's opentracker in ``host``, serving only the given releases.

    opentracker chroots into ``root`` (made 0755: it drops to ``nobody``) and reads its
    whitelist there: one truncated v2 info-hash a line (:func:`tracker_hash`). It stops
    with the lab, or when the caller terminates it.

    Returns:
        The tracker's process; it announces on ``http://ADDR:PORT/announce`` (and UDP).

    Raises:
        LabError: opentracker is not installed or did not start listening in time.

    """
    exe = shutil.which("opentracker")
    if exe is None:
        raise LabError("opentracker is not installed (apt-get install opentracker)")
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    (root / "whitelist.txt").write_text("".join(tracker_hash(h) + "\n" for h in v2_hashes))
    (root / "whitelist.txt").chmod(0o644)
    conf = root / "opentracker.conf"
    conf.write_text(f"listen.tcp_udp {host.addr}:{port}\n"
                    f"tracker.rootdir {root}\n"
                    "access.whitelist /whitelist.txt\n"  # a path inside the chroot
                    "tracker.user nobody\n")
    proc = host.popen([exe, "-f", str(conf)], stdout=subprocess.DEVNULL,
                      stderr=subprocess.PIPE, text=True)
    # opentracker says nothing when it is ready; a refused connect (instant on a local
    # bridge) is the only sign it is not yet, so dial until it answers or exits.
    deadline = time.monotonic() + timeout
    with host.entered():
        while True:
            try:
                socket.create_connection((host.addr, port), timeout=1).close()
                return proc
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    err = proc.communicate()[1]
                    raise LabError(f"opentracker did not start: {err.strip()[-300:]}") from None
                time.sleep(0.05)


def _wait_pid(pid: int, timeout: float) -> bool:
    """Wait for a process (not necessarily our child) to exit, on its pidfd."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if ready:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        return bool(ready)
    finally:
        os.close(fd)
