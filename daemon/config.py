"""The daemon's configuration: a TOML file, then the environment, then flags; built once.

File: ``$P2PW_CONFIG``; else ``config.toml`` in the data dir, if there is one (handy
for a data dir per daemon); else ``config.toml`` in the per-user config dir
(platformdirs). Keys (all optional)::

    profile = "default"            # or "local": loopback only, no DHT/LSD/UPnP/NAT-PMP/uTP;
                                   # or "lan": DHT and LSD inside the LAN, no public
                                   # bootstrap, no UPnP/NAT-PMP, listen on the LAN address
    listen = "0.0.0.0:6881"        # libtorrent listen interface(s)
    outgoing_interface = ""
    dht = true
    dht_bootstrap = ["dht.libtorrent.org:25401", ...]
    lsd = true
    lsd_interval = 0               # seconds between LSD re-announces, 0 = libtorrent's 300
    upnp = true
    natpmp = true
    utp = true
    upload_rate = 0                # bytes/s, 0 = unlimited
    upload_slots = 0               # peers uploaded to at once, 0 = 2 under an upload
                                   # limit, else libtorrent's 8
    download_rate = 0
    rate_limit_local = false       # apply the rate limits to loopback/LAN peers too
    seed_ratio_limit = 0.0         # stop seeding at this upload/size ratio, 0 = never
    seed_time_limit = 0            # stop seeding after this many seconds, 0 = never
    resume_interval = 60           # seconds between periodic resume-data saves
    store_check_interval = 300     # seconds between checks that store files are unchanged
    tcp_port = 0                   # also serve the API on 127.0.0.1:PORT (bearer token)
    max_torrent_files = 20000      # refuse a torrent of more files (and a manifest of more
                                   # chunks or files); 0 = the format's own limits
    max_manifest_tensors = 500000  # refuse a manifest of more tensors; 0 = the format's limit
    mirrors = []                   # web seeds (mirror tree roots) for every fetch
    web_seed_spare = true          # spare web seeds while peers can send (origin_rule.py)
    web_seed_stall = 3.0           # seconds without a piece before spared web seeds return
    name_ttl = 604800              # seconds a p2pw:// name record is valid after signing
    name_republish_interval = 1800 # seconds between re-puts of names (DHT nodes drop them ~2 h)
    name_resolve_timeout = 10      # seconds a name's DHT walk may take
    follow_interval = 300          # seconds between looks at followed names (±20 % jitter)

Environment: ``P2PW_PROFILE``, ``P2PW_LISTEN``, ``P2PW_OUTGOING_INTERFACE``,
``P2PW_DHT_BOOTSTRAP`` (comma-separated), ``P2PW_UPLOAD_RATE``, ``P2PW_DOWNLOAD_RATE``,
``P2PW_TCP_PORT``, ``P2PW_LSD``/``P2PW_DHT`` (0 or 1).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import platformdirs

from p2pweights.client import socket_path
from p2pweights.errors import ConfigError
from p2pweights.manifest import LIMITS, Limits
from p2pweights.paths import data_dir

__all__ = ["PUBLIC_BOOTSTRAP", "DaemonConfig", "lan_address", "load_config"]

Profile = Literal["default", "local", "lan"]
WebSeedPolicy = Literal["public", "loopback", "any"]

PUBLIC_BOOTSTRAP = (
    "dht.libtorrent.org:25401",
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
)
_MAX_SOCKET_PATH = 104  # sun_path is 108 bytes on Linux, 104 on macOS


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything the daemon needs to start; immutable once built."""

    home: Path
    profile: Profile = "default"
    listen: str = "0.0.0.0:6881,[::]:6881"
    outgoing_interface: str = ""
    dht: bool = True
    dht_bootstrap: tuple[str, ...] = PUBLIC_BOOTSTRAP
    lsd: bool = True
    lsd_interval: int = 0
    upnp: bool = True
    natpmp: bool = True
    utp: bool = True
    upload_rate: int = 0
    upload_slots: int = 0
    download_rate: int = 0
    rate_limit_local: bool = False
    seed_ratio_limit: float = 0.0
    seed_time_limit: int = 0
    resume_interval: float = 60.0
    store_check_interval: float = 300.0
    tcp_port: int = 0
    max_torrent_files: int = 20_000
    """Caps on what a fetch accepts, far below libtorrent's bdecode limit (about 450,000
    files) and the format's (:data:`p2pweights.manifest.LIMITS`): a 50,000-file torrent
    costs the daemon about 95 MB before a byte of it is checked. The largest open-weight
    checkpoints come to a few thousand chunks and on the order of 100,000 tensors."""
    max_manifest_tensors: int = 500_000
    mirrors: tuple[str, ...] = ()
    """Web seeds (mirror tree roots) every fetch uses; trusted, like ``--web-seed``."""
    web_seed_policy: WebSeedPolicy = "public"
    """Which addresses an untrusted web seed (from a magnet or torrent) may have: see
    ``daemon/web_seeds.py``. The local profile allows loopback too."""
    web_seed_retries: int = 4
    web_seed_backoff: float = 5.0
    """Seconds before the first retry of a failed web seed; doubled on each retry."""
    web_seed_spare: bool = True
    """Spare the web seeds while peers can send (``daemon/origin_rule.py``); off, libtorrent
    fetches from them whatever it likes."""
    web_seed_stall: float = 3.0
    """Seconds without a new piece, with the web seeds spared, before they are used again."""
    name_ttl: int = 7 * 24 * 3600
    """Seconds a name record this daemon signs stays valid (its signed expiry)."""
    name_republish_interval: float = 1800.0
    """Seconds between re-puts of names: own ones re-signed, others' verbatim."""
    name_resolve_timeout: float = 10.0
    """Seconds a name's DHT walk may take before the best answer so far is used."""
    follow_interval: float = 300.0
    """Seconds between looks at each followed name (each wait drawn from ±20 %)."""

    @property
    def manifest_limits(self) -> Limits:
        """The format's limits, lowered to this config's caps (a cap of 0 lowers nothing)."""
        files = min(self.max_torrent_files or LIMITS.chunks, LIMITS.chunks)
        return replace(
            LIMITS,
            chunks=files,
            files=min(files, LIMITS.files),
            tensors=min(self.max_manifest_tensors or LIMITS.tensors, LIMITS.tensors),
        )

    @property
    def socket_path(self) -> Path:
        """The Unix socket of the control API (where the client looks for it)."""
        return socket_path(self.home)

    @property
    def token_path(self) -> Path:
        """The bearer token file for the TCP API."""
        return self.home / "api.token"

    @property
    def pid_path(self) -> Path:
        """The pid file (also the single-instance lock)."""
        return self.home / "daemon.pid"

    @property
    def store_dir(self) -> Path:
        """Where chunks and per-release manifests live."""
        return self.home / "store"

    @property
    def catalog_path(self) -> Path:
        """The SQLite catalog."""
        return self.home / "catalog.sqlite3"


_LOCAL: dict[str, Any] = {
    "listen": "127.0.0.1:0",
    "dht": False,
    "dht_bootstrap": (),
    "lsd": False,
    "upnp": False,
    "natpmp": False,
    "utp": False,
    "web_seed_policy": "loopback",
    "web_seed_backoff": 0.5,
}

_LAN: dict[str, Any] = {
    "dht": True,
    "dht_bootstrap": (),  # a LAN node or two, from the config file: nothing public
    "lsd": True,
    "lsd_interval": 60,
    "upnp": False,
    "natpmp": False,
}
_LAN_PORT = 6881
_SIOCGIFADDR = 0x8915

_ENV: dict[str, str] = {
    "P2PW_PROFILE": "profile",
    "P2PW_LISTEN": "listen",
    "P2PW_OUTGOING_INTERFACE": "outgoing_interface",
    "P2PW_DHT_BOOTSTRAP": "dht_bootstrap",
    "P2PW_UPLOAD_RATE": "upload_rate",
    "P2PW_DOWNLOAD_RATE": "download_rate",
    "P2PW_TCP_PORT": "tcp_port",
    "P2PW_DHT": "dht",
    "P2PW_LSD": "lsd",
}


def _coerce(name: str, value: Any) -> Any:
    types = {f.name: f.type for f in fields(DaemonConfig)}
    kind = str(types.get(name, ""))
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("0", "1", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            out = int(value)
            if out < 0:
                raise ValueError(value)
            return out
        if kind == "float":
            out_f = float(value)
            if out_f < 0:
                raise ValueError(value)
            return out_f
        if kind == "tuple[str, ...]":
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip() for i in items if str(i).strip())
        if kind == "WebSeedPolicy":
            if value not in ("public", "loopback", "any"):
                raise ValueError(value)
            return value
        if kind == "Profile":
            if value not in ("default", "local", "lan"):
                raise ValueError(value)
            return value
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"config: {name} = {value!r:.60} is not a valid {kind}") from None


def load_config(
    home: Path | str | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> DaemonConfig:
    """Build the config: file, then environment, then ``overrides`` (the CLI flags).

    A ``profile`` from any layer applies first; explicit keys then override it.

    Raises:
        ConfigError: unreadable file, unknown keys, bad values, or a socket path too long.
    """
    env = os.environ if environ is None else environ
    root = data_dir(home)
    layers: list[dict[str, Any]] = []
    if env.get("P2PW_CONFIG"):
        cfg_file = Path(env["P2PW_CONFIG"])
    elif (root / "config.toml").is_file():
        cfg_file = root / "config.toml"
    else:
        cfg_file = Path(platformdirs.user_config_dir("p2pweights", appauthor=False)) / "config.toml"
    if cfg_file.is_file():
        try:
            layers.append(tomllib.loads(cfg_file.read_text("utf-8")))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {cfg_file}: {exc}") from exc
    layers.append({key: env[var] for var, key in _ENV.items() if env.get(var)})
    layers.append({k: v for k, v in (overrides or {}).items() if v is not None})

    known = {f.name for f in fields(DaemonConfig)} - {"home"}
    merged: dict[str, Any] = {}
    for layer in layers:
        unknown = sorted(set(layer) - known)
        if unknown:
            raise ConfigError(f"config: unknown key(s) {', '.join(unknown)}")
        merged.update({k: _coerce(k, v) for k, v in layer.items()})
    config = DaemonConfig(home=root)
    if merged.get("profile") == "local":
        config = replace(config, **_LOCAL)
    elif merged.get("profile") == "lan":
        config = replace(config, **_LAN)
        if "listen" not in merged:
            config = replace(config, listen=f"{lan_address()}:{_LAN_PORT}")
    config = replace(config, **merged)
    for url in config.mirrors:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https") or " " in url:
            raise ConfigError(f"config: mirror {url[:60]!r} is not an http/https URL")
    if len(str(config.socket_path)) > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"data dir {root} is too long for a Unix socket path; use a shorter P2PW_HOME"
        )
    return config


def lan_address() -> str:
    """The host's LAN address: the first private, non-loopback IPv4 address of an interface.

    Raises:
        ConfigError: no interface has one (then set ``listen`` explicitly).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(
                    sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15])
                )
            except OSError:  # no IPv4 address on this interface
                continue
            addr = ipaddress.IPv4Address(packed[20:24])
            if addr.is_private and not (addr.is_loopback or addr.is_link_local):
                return str(addr)
    raise ConfigError("lan profile: no interface has a private IPv4 address; set listen")
