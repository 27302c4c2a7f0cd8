"""The libtorrent settings the daemon exposes, and the real-world and loopback profiles."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

import libtorrent as lt

from .values import EngineError

DEFAULT_DHT_BOOTSTRAP = (
    "dht.libtorrent.org:25401,router.bittorrent.com:6881,router.utorrent.com:6881,"
    "dht.transmissionbt.com:6881,dht.aelitis.com:6881"
)
"""libtorrent's own default bootstrap list, spelled out so the real-world profile is explicit."""

CREATOR = "p2pweights"

UNLIMITED_TICK_MS = 500
"""libtorrent's default tick; 100 ms measured slower for an unlimited loopback fetch."""
RATE_LIMITED_TICK_MS = 10
"""The tick while a rate limit is set: quota (and so every message) comes once a tick.
20 ms, not 100: a magnet's metadata and the manifest stage took 0.77 s at 100 ms ticks
and 0.21 s at 20 ms (``bench_stream``). 10 ms, not 20: a request round trip to a
limited seeder takes about two ticks, and a new connection's slow start doubles once a
round trip, so the stream's first layer came 0.2-0.6 s sooner; an idle daemon seeding
one release used 0.3 % of a core (0.23 % at 20 ms, 0.53 % at 5 ms)."""
UNLIMITED_UNCHOKE_SLOTS = 8
"""libtorrent's default number of peers uploaded to at once."""
UPLOAD_LIMITED_UNCHOKE_SLOTS = 2
"""Peers uploaded to at once under an upload limit: a slow uplink split 2 ways finishes
each piece sooner, so it is passed on sooner (``docs/performance.md``, swarm efficiency)."""

_ALERT_MASK = (
    lt.alert.category_t.error_notification
    | lt.alert.category_t.status_notification
    | lt.alert.category_t.storage_notification
    | lt.alert.category_t.file_progress_notification
    | lt.alert.category_t.piece_progress_notification
    # peer_ban_alert: who was banned for sending bad data (rare; the log names them).
    | lt.alert.category_t.peer_notification
    # BEP 44 items (dht_mutable_item_alert) for p2pw:// names.
    | lt.alert.category_t.dht_notification
)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The libtorrent settings the daemon exposes; everything else keeps libtorrent's default."""

    listen_interfaces: str = "0.0.0.0:6881,[::]:6881"
    outgoing_interface: str = ""
    enable_dht: bool = True
    dht_bootstrap_nodes: str = DEFAULT_DHT_BOOTSTRAP
    dht_allow_local: bool = False
    """Let the DHT route through private/loopback addresses (a loopback test swarm)."""
    enable_lsd: bool = True
    lsd_interval: int = 0
    """Seconds between LSD re-announces of each torrent (``local_service_announce_interval``);
    0 = libtorrent's 300. A torrent is announced at once when it starts either way."""
    enable_upnp: bool = True
    enable_natpmp: bool = True
    enable_utp: bool = True
    upload_rate_limit: int = 0
    """Bytes per second, 0 = unlimited."""
    download_rate_limit: int = 0
    """Bytes per second, 0 = unlimited."""
    apply_limits_to_local: bool = False
    """Put every address in the global peer class, so limits bite on loopback and LAN too."""
    allow_multiple_connections_per_ip: bool = False
    close_redundant_connections: bool = True
    """Drop a connection when neither side wants anything; off keeps seeds connected to a
    torrent that wants nothing *yet* (a magnet fetched in stages)."""
    disk_io: Literal["mmap", "pread", "posix"] = "pread"
    """libtorrent's disk back end. Not mmap: in libtorrent 2.1.1 it lost blocks of a
    fetch that re-adds its torrent over store files (``docs/performance.md``, "mmap
    disk I/O dropped"); pread is libtorrent 2.1's own default."""
    min_reconnect_time: int = 60
    """Seconds before libtorrent dials a peer again, ``connect_peer`` included. A recheck
    disconnects every peer, so a staged fetch on a quiet swarm wants this small."""
    status_interval: float = 1.0
    """Seconds between progress events, while someone subscribes to events."""
    tick_interval_ms: int = 0
    """libtorrent's ``tick_interval``; 0 = :data:`RATE_LIMITED_TICK_MS` while a rate limit is
    set, else libtorrent's 500 ms. The bandwidth manager hands out quota once a tick, so
    under a limit every protocol message of a fetch's staged start (handshake, metadata,
    manifest, reconnect) waits for the next tick: 500 ms ticks cost a swarm ~2 s before
    its first payload byte, 100 ms ticks 1-1.7 s, 10 ms ticks less (``docs/performance.md``)."""
    unchoke_slots: int = 0
    """Peers uploaded to at once (``unchoke_slots_limit``); 0 = :data:`UPLOAD_LIMITED_UNCHOKE_SLOTS`
    while an upload limit is set, else libtorrent's 8."""
    max_torrent_files: int = 0
    """Refuse metadata of a torrent with more files than this (``OverCapError``); 0 = only
    libtorrent's own decode limits. Not a libtorrent setting: checked as metadata arrives."""

    @classmethod
    def default(cls) -> EngineSettings:
        """The real-world profile: DHT with public bootstrap, LSD, uTP, UPnP and NAT-PMP."""
        return cls()

    @classmethod
    def local_only(
        cls, addr: str, *, port: int = 0, dht_bootstrap_nodes: str = "", **overrides: Any
    ) -> EngineSettings:
        """A session bound to one loopback address that contacts nothing else.

        DHT, LSD, UPnP, NAT-PMP and uTP are off, and ``min_reconnect_time`` is 1 s.
        Passing ``dht_bootstrap_nodes`` (loopback ``host:port`` pairs) turns on a DHT that
        may route only among local nodes.

        Raises:
            EngineError: ``addr`` is not a loopback address.

        """
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError as exc:
            raise EngineError(f"{addr!r} is not an IP address") from exc
        if not ip.is_loopback:
            raise EngineError(f"local_only needs a loopback address, not {addr}")
        host = f"[{addr}]" if ip.version == 6 else addr
        values: dict[str, Any] = {
            "listen_interfaces": f"{host}:{port}",
            "outgoing_interface": addr,
            "enable_dht": bool(dht_bootstrap_nodes),
            "dht_bootstrap_nodes": dht_bootstrap_nodes,
            "dht_allow_local": bool(dht_bootstrap_nodes),
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_utp": False,
            "allow_multiple_connections_per_ip": True,
            # A quiet test swarm has one seeder; do not wait a minute to dial it again
            # after a recheck or after the torrent wanted nothing for a while.
            "min_reconnect_time": 1,
        }
        values.update(overrides)
        return cls(**values)

    def tick_interval(self) -> int:
        """The tick in ms: short while a rate limit is set (see ``tick_interval_ms``)."""
        if self.tick_interval_ms:
            return self.tick_interval_ms
        limited = self.upload_rate_limit or self.download_rate_limit
        return RATE_LIMITED_TICK_MS if limited else UNLIMITED_TICK_MS

    def upload_slots(self) -> int:
        """Peers uploaded to at once: few while an upload limit is set (``unchoke_slots``)."""
        if self.unchoke_slots:
            return self.unchoke_slots
        if self.upload_rate_limit:
            return UPLOAD_LIMITED_UNCHOKE_SLOTS
        return UNLIMITED_UNCHOKE_SLOTS

    def settings_pack(self) -> dict[str, Any]:
        """The libtorrent ``settings_pack`` dict for these settings."""
        return {
            "listen_interfaces": self.listen_interfaces,
            "outgoing_interfaces": self.outgoing_interface,
            "enable_dht": self.enable_dht,
            "dht_bootstrap_nodes": self.dht_bootstrap_nodes,
            "dht_restrict_routing_ips": not self.dht_allow_local,
            "dht_restrict_search_ips": not self.dht_allow_local,
            "dht_prefer_verified_node_ids": not self.dht_allow_local,
            # libtorrent blocks a node that sends it more than 5 DHT packets a second (for
            # 5 minutes), and caps its own DHT traffic at 8 kB/s: right for the internet,
            # but on a private DHT (loopback, a LAN) where the same few daemons resolve
            # p2pw:// names, ~20 quick walks got a daemon blocked, and each walk then
            # waited out timeouts (5-10 s instead of a few ms).
            **(
                {"dht_block_ratelimit": 1000, "dht_upload_rate_limit": 4_000_000}
                if self.dht_allow_local
                else {}
            ),
            "enable_lsd": self.enable_lsd,
            "local_service_announce_interval": self.lsd_interval or 300,
            "enable_upnp": self.enable_upnp,
            "enable_natpmp": self.enable_natpmp,
            "enable_outgoing_utp": self.enable_utp,
            "enable_incoming_utp": self.enable_utp,
            "upload_rate_limit": self.upload_rate_limit,
            "download_rate_limit": self.download_rate_limit,
            "allow_multiple_connections_per_ip": self.allow_multiple_connections_per_ip,
            "close_redundant_connections": self.close_redundant_connections,
            "min_reconnect_time": self.min_reconnect_time,
            "tick_interval": self.tick_interval(),
            "unchoke_slots_limit": self.upload_slots(),
            "alert_mask": _ALERT_MASK,
            "alert_queue_size": 10_000,
            # One piece per web seed request, not 16 MiB: a piece a peer sends meanwhile
            # is then not fetched from the origin as well.
            "urlseed_max_request_bytes": 1024 * 1024,
            # libtorrent's high_performance_seed send buffers: measured +8-25 % on a
            # loopback fetch, with less seeder CPU. The low mark is the high one: the
            # mark follows the upload rate of the last second, so a new connection would
            # start at the low mark, one buffer per two ticks under a rate limit (1 MiB:
            # 26 MB/s for a stream's first second, whatever the limit; docs/performance.md).
            "send_buffer_watermark": 4 * 1024 * 1024,
            "send_buffer_low_watermark": 4 * 1024 * 1024,
            "send_buffer_watermark_factor": 150,
            "send_not_sent_low_watermark": 512 * 1024,
            "user_agent": f"{CREATOR}/libtorrent {lt.__version__}",
            # No random first pieces: a fetch asks for its own share of the pieces first
            # (daemon/spread.py), and random picks would land in the others' shares
            # (lab, N = 8: 1.95x -> 1.51x the fluid bound; docs/performance.md).
            "initial_picker_threshold": 0,
            # A short request queue (1 s of the peer's rate, not 3) and no whole-piece
            # requests: a leecher then asks the seeder for little past its own share,
            # where every extra piece is one another leecher is fetching too (lab, N = 16:
            # 1.75x -> 1.40x the fluid bound, the seeder sending 1.31 F, not 1.74 F).
            "request_queue_time": 1,
            "whole_pieces_threshold": 0,
        }
