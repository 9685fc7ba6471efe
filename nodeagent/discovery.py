"""Find the appliance: kernel command line > DNS SRV `_drover._tcp.<domain>` > mDNS `_drover._tcp.local.`.

Every source yields the appliance's boot service URL (plain HTTP: where `/boot/ca.pem` is served);
the CA pin always comes from the kernel command line, so a spoofed SRV or mDNS answer can at worst
point the node at a server that cannot prove it holds the pinned CA. The SRV query is a few lines of
stdlib UDP (no dnspython on the node); mDNS uses the distro's python3-zeroconf.
"""

from __future__ import annotations

import logging
import random
import secrets
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SRV_SERVICE = "_drover._tcp"
MDNS_TYPE = "_drover._tcp.local."
_QTYPE_SRV = 33
_QCLASS_IN = 1


class DiscoveryError(RuntimeError):
    """No source named the appliance."""


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class Found:
    url: str
    source: str  # "cmdline", "dns-srv" or "mdns"


# --- DNS SRV ---------------------------------------------------------------------------------


def resolv_conf(path: Path = Path("/etc/resolv.conf")) -> tuple[list[str], list[str]]:
    """(nameservers, search domains) from resolv.conf; empty lists when the file is missing."""
    servers: list[str] = []
    search: list[str] = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return servers, search
    for line in lines:
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append(words[1])
        elif len(words) >= 2 and words[0] in ("search", "domain"):
            search = words[1:]
    return servers, search


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna") if label else b""
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad DNS name {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def _read_name(msg: bytes, offset: int) -> tuple[str, int]:
    """Decode a possibly compressed name at offset; return it and the offset after it."""
    labels: list[str] = []
    end = -1
    for _ in range(128):  # bounds pointer loops in a hostile answer
        length = msg[offset]
        if length & 0xC0 == 0xC0:
            if end < 0:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | msg[offset + 1]
            continue
        if length == 0:
            return ".".join(labels), (end if end >= 0 else offset + 1)
        labels.append(msg[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    raise ValueError("DNS name compression loop")


def build_srv_query(name: str, query_id: int) -> bytes:
    return struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + _encode_name(name) + struct.pack("!HH", 33, 1)


def parse_srv_response(msg: bytes, query_id: int) -> list[SrvRecord]:
    if len(msg) < 12:
        raise ValueError("short DNS answer")
    ident, flags, qd, an, _, _ = struct.unpack("!HHHHHH", msg[:12])
    if ident != query_id:
        raise ValueError("DNS answer for another query")
    rcode = flags & 0xF
    if rcode == 3:  # NXDOMAIN
        return []
    if rcode:
        raise ValueError(f"DNS error rcode {rcode}")
    offset = 12
    for _ in range(qd):
        _, offset = _read_name(msg, offset)
        offset += 4
    records = []
    for _ in range(an):
        _, offset = _read_name(msg, offset)
        rtype, _rclass, _ttl, rdlen = struct.unpack("!HHIH", msg[offset : offset + 10])
        offset += 10
        if rtype == _QTYPE_SRV:
            prio, weight, port = struct.unpack("!HHH", msg[offset : offset + 6])
            target, _ = _read_name(msg, offset + 6)
            if target not in ("", "."):
                records.append(SrvRecord(prio, weight, port, target.rstrip(".")))
        offset += rdlen
    return records


def srv_query(name: str, server: str, port: int = 53, timeout: float = 2.0) -> list[SrvRecord]:
    """One SRV query over UDP to server:port; records sorted by priority, then weight (RFC 2782, simplified)."""
    query_id = secrets.randbits(16)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((server, port))  # a connected socket only accepts answers from that server
        sock.send(build_srv_query(name, query_id))
        while True:
            answer = sock.recv(4096)
            try:
                records = parse_srv_response(answer, query_id)
            except ValueError as exc:
                if "another query" in str(exc):
                    continue
                raise
            return sorted(records, key=lambda r: (r.priority, -r.weight, random.random()))


def find_srv(domains: Sequence[str], servers: Sequence[tuple[str, int]], timeout: float = 2.0) -> str:
    """`http://target:port` from the first domain whose `_drover._tcp` SRV answers; '' when none."""
    for domain in domains:
        name = f"{SRV_SERVICE}.{domain.strip('.')}"
        for server, port in servers:
            try:
                records = srv_query(name, server, port, timeout)
            except (OSError, ValueError) as exc:
                log.info("SRV %s at %s:%s: %s", name, server, port, exc)
                continue
            if records:
                best = records[0]
                log.info("SRV %s -> %s:%s", name, best.target, best.port)
                return f"http://{best.target}:{best.port}"
            break  # an authoritative "no such record": the next server would say the same
    return ""


# --- mDNS ------------------------------------------------------------------------------------


def zeroconf_interfaces(interfaces: Sequence[str]) -> Any:
    """Zeroconf's `interfaces` argument: the addresses given, or every interface. Not the string "all":
    zeroconf takes a list or an InterfaceChoice and raises TypeError for anything else (which ended the agent
    on a node whose kernel line and DNS named no appliance)."""
    from zeroconf import InterfaceChoice  # noqa: PLC0415 - distro package, as in find_mdns

    return list(interfaces) or InterfaceChoice.All


def find_mdns(service_type: str = MDNS_TYPE, timeout: float = 3.0, interfaces: Sequence[str] = ()) -> str:
    """Browse for service_type with zeroconf for up to timeout seconds; `http://addr:port[path]` or ''."""
    from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf  # noqa: PLC0415 - distro package, imported on use: the venv tests import this module without it

    found: list[str] = []
    seen = threading.Event()

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change is ServiceStateChange.Added:
            found.append(name)
            seen.set()

    zc = Zeroconf(interfaces=zeroconf_interfaces(interfaces), ip_version=IPVersion.V4Only)
    try:
        browser = ServiceBrowser(zc, service_type, handlers=[on_change])
        try:
            if not seen.wait(timeout):
                return ""
            for name in sorted(found):
                info = zc.get_service_info(service_type, name, timeout=int(timeout * 1000))
                if info is None or not info.addresses:
                    continue
                address = socket.inet_ntoa(info.addresses[0])
                raw_path = (info.properties or {}).get(b"path") or b""
                path = raw_path.decode(errors="replace").rstrip("/")
                log.info("mDNS %s -> %s:%s", name, address, info.port)
                return f"http://{address}:{info.port}{path}"
            return ""
        finally:
            browser.cancel()
    finally:
        zc.close()


# --- the order -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiscoverySettings:
    dns_servers: tuple[tuple[str, int], ...] = ()  # empty: nameservers from resolv.conf, port 53
    dns_domains: tuple[str, ...] = ()  # empty: resolv.conf search list, else the FQDN's domain
    resolv_conf: Path = Path("/etc/resolv.conf")
    mdns_type: str = MDNS_TYPE
    mdns_interfaces: tuple[str, ...] = ()
    mdns_timeout: float = 3.0
    dns_timeout: float = 2.0


def discover(cmdline_url: str, fqdn: str, settings: DiscoverySettings) -> Found:
    """Kernel command line, else DNS SRV, else mDNS; DiscoveryError when all three come up empty."""
    if cmdline_url:
        return Found(cmdline_url, "cmdline")
    servers_conf, search = resolv_conf(settings.resolv_conf)
    servers = list(settings.dns_servers) or [(s, 53) for s in servers_conf]
    domains = list(settings.dns_domains) or search or ([fqdn.split(".", 1)[1]] if "." in fqdn else [])
    if servers and domains:
        url = find_srv(domains, servers, settings.dns_timeout)
        if url:
            return Found(url, "dns-srv")
    url = find_mdns(settings.mdns_type, settings.mdns_timeout, settings.mdns_interfaces)
    if url:
        return Found(url, "mdns")
    raise DiscoveryError("no appliance: no drover.appliance= on the kernel command line, no SRV record, no mDNS")
