"""Announce this node's libvirtd as `_libvirt._tcp` (port 16509, TXT uuid + fqdn) with python3-zeroconf."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

SERVICE_TYPE = "_libvirt._tcp.local."


def ipv4_addresses(cidrs: Sequence[str]) -> list[str]:
    out = []
    for cidr in cidrs:
        try:
            addr = ipaddress.ip_interface(cidr).ip
        except ValueError:
            continue
        if addr.version == 4 and not addr.is_loopback:
            out.append(str(addr))
    return out


class Announcer:
    def __init__(self, interfaces: Sequence[str] = (), service_type: str = SERVICE_TYPE) -> None:
        self.interfaces = list(interfaces)
        self.service_type = service_type
        self._zc: Any = None
        self._info: Any = None

    def announce(self, hostname: str, fqdn: str, uuid: str, addresses: Sequence[str], port: int = 16509) -> None:
        from zeroconf import InterfaceChoice, IPVersion, ServiceInfo, Zeroconf  # noqa: PLC0415 - distro package, imported on use: the venv tests import this module without it

        self.withdraw()
        info = ServiceInfo(
            self.service_type,
            f"{hostname}.{self.service_type}",
            addresses=[socket.inet_aton(a) for a in addresses],
            port=port,
            properties={"uuid": uuid, "fqdn": fqdn},
            server=f"{hostname}.local.",
        )
        zc = Zeroconf(interfaces=self.interfaces or InterfaceChoice.All, ip_version=IPVersion.V4Only)
        # allow_name_change: a stale announcement of our own name from before a reboot is not a conflict
        zc.register_service(info, allow_name_change=True)
        self._zc, self._info = zc, info
        log.info("announced %s port %s (%s)", info.name, port, ", ".join(addresses) or "no address")

    def withdraw(self) -> None:
        if self._zc is not None:
            try:
                self._zc.unregister_service(self._info)
            finally:
                self._zc.close()
            self._zc = self._info = None
