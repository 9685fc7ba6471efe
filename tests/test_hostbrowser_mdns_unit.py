"""hostbrowser.mdns: where the appliance browses, as an argument its zeroconf accepts (no packets sent)."""

from __future__ import annotations

from dataclasses import replace

from zeroconf import IPVersion
from zeroconf._utils.net import normalize_interface_choice

from appliance.config import Config
from hostbrowser.mdns import interfaces, zeroconf_interfaces


def test_a_wildcard_listen_browses_everywhere_with_an_argument_zeroconf_accepts() -> None:
    cfg = Config()
    wildcard = replace(cfg, nodes=replace(cfg.nodes, listen="0.0.0.0"))
    assert interfaces(wildcard) is None
    # The string "all" raised TypeError here: `drover serve` with [nodes] listen = 0.0.0.0 browsed nothing.
    assert len(normalize_interface_choice(zeroconf_interfaces(interfaces(wildcard)), IPVersion.V4Only)) >= 1
    loopback = replace(cfg, nodes=replace(cfg.nodes, listen="127.0.0.1"))
    assert normalize_interface_choice(zeroconf_interfaces(interfaces(loopback)), IPVersion.V4Only) == ["127.0.0.1"]
