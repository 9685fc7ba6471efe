"""The node agent's networkd units for a set-up (nodeagent/netsetup.py): what is written for a bond carrying an
untagged bridge and a VLAN, and the set-ups a node refuses before touching anything. Applying them for real is
tests/test_networks_pxe.py's job, on a PXE-booted node of the real image."""

from __future__ import annotations

import pytest

from nodeagent import netsetup, wire

MACS = {"ens3": "52:54:00:00:00:01", "ens4": "52:54:00:00:00:02", "ens5": "52:54:00:00:00:03"}


def _port(**kw: object) -> wire.NetworkPort:
    base: dict[str, object] = {"name": "n", "bridge": "br-n", "nics": ("ens4",)}
    base.update(kw)
    return wire.NetworkPort(**base)  # type: ignore[arg-type]


def test_bond_with_untagged_bridge_and_vlan() -> None:
    bond = "bond1234abcd"
    setup = wire.NetworkSetup("g1", (
        _port(name="vm", bridge="br-vm", nics=("ens4", "ens5"), bond=bond, bond_mode="active-backup", mtu=1400),
        _port(name="st", bridge="br-st", nics=("ens4", "ens5"), bond=bond, bond_mode="active-backup", vlan=43,
              boot_protocol="static", address="10.43.0.5/24", gateway="10.43.0.1"),
    ))  # fmt: skip
    files = netsetup.render(setup, MACS)
    assert sorted(files) == sorted(
        f"10-drover-{n}"
        for n in ("br-vm.netdev", "br-vm.network", "br-st.netdev", "br-st.network", f"{bond}.netdev",
                  f"{bond}.network", "ens4.network", "ens5.network", f"{bond}.43.netdev", f"{bond}.43.network")
    )  # fmt: skip
    assert (
        "Kind=bond" in files[f"10-drover-{bond}.netdev"] and "Mode=active-backup" in files[f"10-drover-{bond}.netdev"]
    )
    assert f"Bond={bond}" in files["10-drover-ens4.network"]
    carrier = files[f"10-drover-{bond}.network"]
    assert "Bridge=br-vm" in carrier and f"VLAN={bond}.43" in carrier and "MTUBytes=1400" in carrier
    assert "Id=43" in files[f"10-drover-{bond}.43.netdev"]
    assert "Bridge=br-st" in files[f"10-drover-{bond}.43.network"]
    st = files["10-drover-br-st.network"]
    assert "Address=10.43.0.5/24" in st and "Gateway=10.43.0.1" in st and "DHCP" not in st
    # A bridge over a bond gets its own MAC; one over a single untagged NIC keeps the NIC's.
    assert "MACAddress" not in files["10-drover-br-vm.netdev"]
    single = netsetup.render(wire.NetworkSetup("g2", (_port(nics=("ens3",), boot_protocol="dhcp"),)), MACS)
    assert f"MACAddress={MACS['ens3']}" in single["10-drover-br-n.netdev"]
    assert "DHCP=ipv4" in single["10-drover-br-n.network"]
    assert netsetup.wanted_links(setup) == {"br-vm", "br-st", bond, "ens4", "ens5", f"{bond}.43"}


@pytest.mark.parametrize(
    ("ports", "reason"),
    [
        ((_port(nics=("ens9",)),), "this node has no NIC ens9"),
        ((_port(), _port(name="m", bridge="br-m")), "two untagged networks"),
        ((_port(nics=("ens4", "ens5"), bond="b0"), _port(name="m", bridge="br-m", nics=("ens4",), bond="b0", vlan=3)),
         "is asked to be"),
    ],
)  # fmt: skip
def test_refused_setups(ports: tuple[wire.NetworkPort, ...], reason: str) -> None:
    with pytest.raises(netsetup.SetupError, match=reason):
        netsetup.render(wire.NetworkSetup("g", ports), MACS)


def test_long_vlan_device_names_fit_linux() -> None:
    assert netsetup.vlan_device("ens4", 42) == "ens4.42"
    long = netsetup.vlan_device("bond1234abcd", 4094)
    assert len(long) <= 15 and long.startswith("vl4094-")
