"""Running VMs' IP addresses, asked of libvirt: the qemu guest agent when the guest runs one (it knows every
address, even on an isolated network), else the host's neighbour table (ARP/NDP entries for the VM's MACs,
what a bridge's guests leave there as soon as they talk). Loopback and link-local addresses are left out."""

from __future__ import annotations

import ipaddress
from typing import Any

import libvirt

SOURCES = (
    ("agent", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT),
    ("arp", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP),
)


def of_domain(dom: Any) -> tuple[list[str], str]:
    """(addresses as CIDR, the source that gave them: agent | arp | "")."""
    for name, source in SOURCES:
        try:
            found = dom.interfaceAddresses(source, 0) or {}
        except libvirt.libvirtError:
            continue  # no agent in the guest, or it is not answering: the next source
        out = []
        for iface in found.values():
            for addr in iface.get("addrs") or []:
                try:
                    ip = ipaddress.ip_address(addr.get("addr", ""))
                except ValueError:
                    continue
                if ip.is_loopback or ip.is_link_local:
                    continue
                prefix = addr.get("prefix") or 0  # the neighbour table knows no prefix length
                out.append(f"{ip}/{prefix}" if prefix else str(ip))
        if out:
            return sorted(set(out)), name
    return [], ""


def of_host(conn: Any) -> dict[str, tuple[list[str], str]]:
    """UUID -> (addresses, source) for every running domain of the connection."""
    out: dict[str, tuple[list[str], str]] = {}
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        out[dom.UUIDString()] = of_domain(dom)
    return out
