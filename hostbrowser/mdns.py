"""Browse `_libvirt._tcp.local.` with python-zeroconf: a known host's announcement has the browser connect now.

The node agent announces its libvirtd (nodeagent.announce: the port, TXT fqdn and uuid) each time it has
(re)configured and restarted it: the host is up now. So the browser connects at once instead of at its next
scan or retry. Only identify
creates hosts: an announcement matching no approved host is logged once per name and changes nothing.

mDNS is unauthenticated. An announcement is only a hint to try now: it must name an approved host's FQDN
and DMI UUID, and the connection it triggers is Kerberos-authenticated both ways as any other. Its address
is never used (the host's FQDN is resolved as always), and its port is taken only for a host whose port is
not known yet: the node agent says its port in every heartbeat (HTTPS, its agent token), and that is what
the browser connects to; a packet anyone on the segment can send never moves a host's connection.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from appliance import hosts
from appliance.config import Config
from appliance.db.engine import session_scope
from appliance.db.models import Host, HostState
from appliance.errors import DroverError

log = logging.getLogger(__name__)

SERVICE_TYPE = "_libvirt._tcp.local."  # nodeagent.announce.SERVICE_TYPE
RESOLVE_MS = 3000
MAX_UNKNOWN = 1024  # names remembered for "logged once"; past that, unknown names are logged at debug level


@dataclass(frozen=True)
class Announcement:
    name: str  # the mDNS instance name, e.g. node7._libvirt._tcp.local.
    fqdn: str
    uuid: str
    port: int


def announcement(name: str, port: int | None, properties: dict[Any, Any] | None) -> Announcement | None:
    """What a resolved `_libvirt._tcp` service says, or None when it lacks what we match on."""

    def text(key: bytes) -> str:
        value = (properties or {}).get(key)
        return value.decode(errors="replace").strip() if isinstance(value, bytes) else ""

    fqdn = text(b"fqdn").lower().rstrip(".")
    if not fqdn or port is None or not 0 < port < 65536:
        return None
    return Announcement(name, fqdn, text(b"uuid").lower(), port)


@dataclass(frozen=True)
class Match:
    host_id: int | None
    why: str  # for the log: what was found or stored
    port_changed: bool = False
    ignored: bool = False  # a connected host's announcement of another port: nothing to do


def match(engine: Engine, found: Announcement, default_port: int) -> Match:
    """The approved host this announcement is from, its announced port stored when it differs."""
    with session_scope(engine) as s:
        rows = s.scalars(
            select(Host).where(
                Host.hostname == found.fqdn, Host.approved_at.is_not(None), Host.credentials_issued_at.is_not(None)
            )
        ).all()
        if found.uuid:
            rows = [h for h in rows if h.uuid == found.uuid]
        if len(rows) != 1:
            return Match(None, "no approved host of that name and UUID" if not rows else "several hosts match")
        host = rows[0]
        if found.port == (host.libvirt_port or default_port):
            return Match(host.id, f"port {found.port}")
        old = host.libvirt_port or default_port
        if host.state in (HostState.AVAILABLE, HostState.MAINTENANCE):
            # Its session is up on the stored port, Kerberos-authenticated: an unauthenticated multicast
            # packet must not move it elsewhere (that would cut a healthy host off, and make it a fencing
            # candidate).
            log.warning("%s is connected on port %s: announced port %s ignored", found.fqdn, old, found.port)
            return Match(host.id, f"connected on port {old}, announced port {found.port} ignored", ignored=True)
        if host.libvirt_port is not None:
            # Known already, from its agent's authenticated heartbeat (which also follows a libvirtd that
            # really moved): a packet anyone can send does not send the reconnection elsewhere. Still a
            # hint that the host is up: try now, on its own port.
            log.warning("%s: announced port %s ignored, its heartbeat says port %s", found.fqdn, found.port, old)
            return Match(host.id, f"announced port {found.port} ignored, trying port {old}")
        host.libvirt_port = found.port
        hosts.event(s, host, "host.libvirt_port", f"libvirtd announced on port {found.port} (was {old})")
        return Match(host.id, f"port {old} -> {found.port}", port_changed=True)


def zeroconf_interfaces(chosen: list[str] | None) -> Any:
    """Zeroconf's `interfaces` argument: a list, or InterfaceChoice.All (it raises TypeError for a string)."""
    from zeroconf import InterfaceChoice  # noqa: PLC0415 - only drover serve needs it

    return chosen or InterfaceChoice.All


def interfaces(cfg: Config) -> list[str] | None:
    """Where to browse: the interface of [nodes] listen (nodes reach us there), all when it is a wildcard."""
    try:
        address = ipaddress.ip_address(cfg.nodes.listen)
    except ValueError:
        return None
    if address.version != 4 or address.is_unspecified:
        return None
    return [str(address)]


class ZeroconfWatcher:
    """Browses in zeroconf's threads; resolving and the database are in one thread of ours, off theirs."""

    def __init__(
        self,
        cfg: Config,
        engine: Engine,
        nudge: Callable[[int], None],
        wake: Callable[[], None],
        service_type: str = SERVICE_TYPE,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.nudge = nudge
        self.wake = wake
        self.service_type = service_type
        self.seen = 0  # announcements resolved (status, tests)
        self._names: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._unknown: set[str] = set()
        self._zc: Any = None
        self._browser: Any = None
        self._thread = threading.Thread(target=self._run, name="hostbrowser-mdns", daemon=True)

    def start(self) -> None:
        from zeroconf import IPVersion, ServiceBrowser, Zeroconf  # noqa: PLC0415 - only drover serve needs it

        chosen = interfaces(self.cfg)
        self._zc = Zeroconf(interfaces=zeroconf_interfaces(chosen), ip_version=IPVersion.V4Only)
        self._thread.start()
        self._browser = ServiceBrowser(self._zc, self.service_type, handlers=[self._changed])
        log.info("browsing %s on %s", self.service_type, ", ".join(chosen) if chosen else "all interfaces")

    def stop(self) -> None:
        if self._browser is not None:
            self._browser.cancel()
        self._names.put(None)
        if self._thread.is_alive():
            self._thread.join(RESOLVE_MS / 1000 + 2)
        if self._zc is not None:
            self._zc.close()

    def _changed(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        # zeroconf's thread: only hand the name over. Added and Updated (a re-announcement with a new
        # port or TXT) matter; Removed (the agent stopping) is for keepalive to judge.
        if state_change.name in ("Added", "Updated"):
            self._names.put(name)

    def _run(self) -> None:
        while True:
            name = self._names.get()
            if name is None:
                return
            try:
                self._handle(name)
            except Exception:  # a daemon logs and carries on
                log.exception("handling the announcement %s failed", name)

    def _handle(self, name: str) -> None:
        info = self._zc.get_service_info(self.service_type, name, timeout=RESOLVE_MS)
        found = announcement(name, info.port, info.properties) if info is not None else None
        if found is None:
            log.debug("%s: no answer, or no fqdn and port in it", name)
            return
        self.seen += 1
        try:
            got = match(self.engine, found, self.cfg.nodes.libvirt_port)
        except DroverError as exc:
            log.error("announcement of %s: %s", found.fqdn, exc)
            return
        if got.host_id is None:
            if found.fqdn in self._unknown or len(self._unknown) >= MAX_UNKNOWN:
                log.debug("ignoring %s (%s): %s", found.fqdn, name, got.why)
            else:
                self._unknown.add(found.fqdn)
                log.info("ignoring announcements of %s (%s): %s", found.fqdn, name, got.why)
            return
        self._unknown.discard(found.fqdn)
        if got.ignored:
            return  # match() logged it; the session is up, there is nothing to connect
        log.info("%s announced its libvirtd (%s): connecting now", found.fqdn, got.why)
        if got.port_changed:
            self.wake()  # a new URI: the browser's next scan starts the host's session over on it
        self.nudge(got.host_id)
