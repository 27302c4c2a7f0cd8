"""The lan profile: DHT and LSD inside the LAN, nothing public, no port mapping."""

from __future__ import annotations

from pathlib import Path

from p2pweightsd.config import load_config
from p2pweightsd.runner import engine_settings


def test_lan_profile_keeps_discovery_inside_the_lan(tmp_path: Path) -> None:
    config = load_config(tmp_path, overrides={"profile": "lan", "listen": "10.77.0.5:6881"},
                         environ={})
    assert (config.dht, config.lsd, config.upnp, config.natpmp) == (True, True, False, False)
    assert config.dht_bootstrap == ()  # no public bootstrap node
    assert config.listen == "10.77.0.5:6881"
    pack = engine_settings(config).settings_pack()
    assert pack["dht_bootstrap_nodes"] == ""
    assert pack["enable_lsd"] and not pack["enable_upnp"] and not pack["enable_natpmp"]
    # Private addresses may route in the DHT (it has nothing else to route through).
    assert not pack["dht_restrict_routing_ips"]
    assert pack["local_service_announce_interval"] == 60


def test_lan_profile_bootstrap_from_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('profile = "lan"\nlisten = "10.77.0.5:6881"\n'
                   'dht_bootstrap = ["10.77.0.1:6881"]\n')
    config = load_config(tmp_path, environ={"P2PW_CONFIG": str(cfg)})
    assert config.dht_bootstrap == ("10.77.0.1:6881",)


def test_default_profile_keeps_libtorrents_lsd_interval(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={})
    assert engine_settings(config).settings_pack()["local_service_announce_interval"] == 300


def test_upload_slots_reach_libtorrent(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("upload_slots = 3\n")
    config = load_config(tmp_path, environ={"P2PW_CONFIG": str(cfg)})
    assert engine_settings(config).settings_pack()["unchoke_slots_limit"] == 3
