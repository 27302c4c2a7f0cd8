"""The lan profile listens on the host's LAN address, found on its interfaces."""

from __future__ import annotations

import sys

from netlab import Lab


def test_lan_address_is_the_hosts_private_address(lab: Lab) -> None:
    host = lab.add_host()
    out = host.run([sys.executable, "-c",
                    "from p2pweightsd.config import lan_address; print(lan_address())"])
    assert out.strip() == host.addr


def test_no_lan_address_is_a_config_error(lab: Lab) -> None:
    # A host with only loopback (the eth0 address removed) has no LAN address.
    host = lab.add_host()
    host.run(["ip", "addr", "flush", "dev", "eth0"])
    out = host.run([sys.executable, "-c",
                    "from p2pweights.errors import ConfigError\n"
                    "from p2pweightsd.config import lan_address\n"
                    "try:\n    lan_address()\n"
                    "except ConfigError as e:\n    print(type(e).__name__)"])
    assert out.strip() == "ConfigError"
