"""Hardware facts from a root directory (default "/"): DMI UUID, CPU, memory, NICs, disks -> wire.Facts.

Everything is read from /sys and /proc under `root`, so a test can point it at a tree it built.
Addresses come from `ip -j addr` output, which the caller passes in (it runs `ip` only on the
live system; a fake tree has no kernel behind it).
"""

from __future__ import annotations

import json
import logging
import platform
import socket
from pathlib import Path
from typing import Any

from nodeagent import wire

log = logging.getLogger(__name__)

_SKIP_DISKS = ("loop", "ram", "zram", "sr", "fd", "nbd")
_ARPHRD_ETHER = "1"


class FactsError(RuntimeError):
    """A fact the appliance cannot do without (the host identity) is missing."""


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:  # missing, or EINVAL (speed of a down link)
        return default


def _int(text: str, default: int = 0) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def host_uuid(root: Path) -> str:
    """The DMI system UUID; /etc/machine-id (as a UUID) only when the machine has no DMI table."""
    dmi = _read(root / "sys/class/dmi/id/product_uuid")
    if dmi:
        return wire.normalize_uuid(dmi)
    machine_id = _read(root / "etc/machine-id")
    if len(machine_id) == 32:
        log.warning("no DMI product_uuid: using /etc/machine-id, which a stateless node changes every boot")
        m = machine_id.lower()
        return wire.normalize_uuid(f"{m[:8]}-{m[8:12]}-{m[12:16]}-{m[16:20]}-{m[20:]}")
    raise FactsError(f"no host identity: neither {root}/sys/class/dmi/id/product_uuid nor {root}/etc/machine-id")


def cpu(root: Path) -> wire.Cpu:
    model = ""
    flags: tuple[str, ...] = ()
    count = 0
    cores_by_socket: dict[str, int] = {}
    for block in _read(root / "proc/cpuinfo").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" not in fields:
            continue
        count += 1
        model = model or fields.get("model name", fields.get("cpu model", ""))
        flags = flags or tuple(fields.get("flags", "").split())
        socket_id = fields.get("physical id", "0")
        cores_by_socket[socket_id] = max(cores_by_socket.get(socket_id, 0), _int(fields.get("cpu cores", "1"), 1))
    sockets = max(len(cores_by_socket), 1)
    cores = sum(cores_by_socket.values()) or count
    return wire.Cpu(
        model=model or platform.processor() or "unknown", count=count, cores=cores, sockets=sockets, flags=flags
    )


def memory_bytes(root: Path) -> int:
    for line in _read(root / "proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return _int(line.split()[1]) * 1024
    return 0


def parse_ip_json(text: str) -> dict[str, tuple[str, ...]]:
    """`ip -j addr` output -> {ifname: ("10.0.2.15/24", "fe80::1/64", ...)}."""
    result: dict[str, tuple[str, ...]] = {}
    try:
        links: Any = json.loads(text) if text.strip() else []
    except json.JSONDecodeError:
        return result
    for link in links if isinstance(links, list) else []:
        addrs = tuple(
            f"{a['local']}/{a['prefixlen']}"
            for a in link.get("addr_info", [])
            if isinstance(a, dict) and "local" in a and "prefixlen" in a
        )
        result[str(link.get("ifname", ""))] = addrs
    return result


def has_routable_address(addresses: dict[str, tuple[str, ...]]) -> bool:
    """Any IPv4 or global IPv6 address outside loopback: DHCP (or static config) has done its part."""
    for ifname, addrs in addresses.items():
        if ifname == "lo":
            continue
        for cidr in addrs:
            ip = cidr.split("/", 1)[0]
            if ip.startswith("127.") or ip.lower().startswith("fe80:") or ip == "::1":
                continue
            return True
    return False


def nics(root: Path, addresses: dict[str, tuple[str, ...]], boot_mac: str = "") -> tuple[wire.Nic, ...]:
    """Physical Ethernet interfaces (those with a `device` link); bridges, taps, ifb and lo are left out."""
    found = []
    net = root / "sys/class/net"
    for dev in sorted(net.iterdir()) if net.is_dir() else []:
        if not (dev / "device").exists() or _read(dev / "type", _ARPHRD_ETHER) != _ARPHRD_ETHER:
            continue
        try:
            mac = wire.normalize_mac(_read(dev / "address"))
        except wire.WireError:
            continue
        if mac == "00:00:00:00:00:00":
            continue
        speed = max(_int(_read(dev / "speed", "0")), 0)  # -1 or EINVAL when the link is down
        found.append(wire.Nic(dev.name, mac, speed, addresses.get(dev.name, ()), bool(boot_mac) and mac == boot_mac))
    return tuple(found)


def disks(root: Path) -> tuple[wire.Disk, ...]:
    found = []
    block = root / "sys/block"
    for dev in sorted(block.iterdir()) if block.is_dir() else []:
        if dev.name.startswith(_SKIP_DISKS):
            continue
        sectors = _int(_read(dev / "size", "0"))  # always 512-byte units, whatever the logical block size
        found.append(
            wire.Disk(
                name=dev.name,
                size_bytes=sectors * 512,
                model=_read(dev / "device/model"),
                serial=_read(dev / "device/serial") or _read(dev / "serial"),
                rotational=_read(dev / "queue/rotational") == "1",
            )
        )
    return tuple(found)


def _dhcp_name(root: Path) -> str:
    """The FQDN a DHCP server gave this node (systemd-networkd's lease files: HOSTNAME=, DOMAINNAME=), or ""."""
    leases = root / "run/systemd/netif/leases"
    try:
        files = sorted(p for p in leases.iterdir() if p.is_file())
    except OSError:
        return ""
    for lease in files:
        fields = dict(
            line.split("=", 1) for line in _read(lease).splitlines() if "=" in line and not line.startswith("#")
        )
        host, domain = fields.get("HOSTNAME", "").strip(), fields.get("DOMAINNAME", "").strip()
        if "." in host:
            return host
        if host and domain:
            return f"{host}.{domain}"
    return ""


def names(root: Path) -> tuple[str, str]:
    """(hostname, fqdn): the kernel's hostname; the FQDN from the resolver only on the live system.

    A stateless node's image carries one placeholder hostname for every node: when neither the kernel
    hostname nor the resolver gives an FQDN, the name the DHCP server handed out counts (it is per node).
    """
    hostname = _read(root / "proc/sys/kernel/hostname") or _read(root / "etc/hostname") or "localhost"
    if "." in hostname:
        return hostname.split(".", 1)[0], hostname
    # The lease first: it is what the site's DHCP server says this node is called, and asking the
    # resolver about a single-label name can wait seconds on LLMNR/mDNS timeouts at every boot.
    dhcp = _dhcp_name(root)
    if "." in dhcp:
        return dhcp.split(".", 1)[0], dhcp
    fqdn = hostname
    if root == Path("/"):
        resolved = socket.getfqdn(hostname)
        # getfqdn falls back to any alias of the address, often "localhost": only a longer name counts.
        if resolved.startswith(hostname + "."):
            fqdn = resolved
    if "." not in fqdn and dhcp:
        hostname, fqdn = dhcp, dhcp
    return hostname.split(".", 1)[0], fqdn


def gather(root: Path = Path("/"), *, ip_json: str = "", boot_mac: str = "", agent_version: str = "") -> wire.Facts:
    hostname, fqdn = names(root)
    return wire.Facts(
        uuid=host_uuid(root),
        hostname=hostname,
        fqdn=fqdn,
        arch=_read(root / "proc/sys/kernel/arch") or platform.machine(),
        kernel=_read(root / "proc/sys/kernel/osrelease"),
        memory_bytes=memory_bytes(root),
        cpu=cpu(root),
        nics=nics(root, parse_ip_json(ip_json), boot_mac),
        disks=disks(root),
        boot_mac=boot_mac,
        agent_version=agent_version,
    )
