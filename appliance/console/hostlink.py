"""The libvirt side of one console session: a Kerberos connection of its own to the VM's host, the VNC port from
the live domain XML, a one-time VNC password set on the domain, and the serial console as a libvirt stream.

Every method blocks (libvirt calls): the proxy runs them in threads. The serial stream is non-blocking and
read from libvirt's event loop thread, handing data to the proxy's asyncio loop through a bounded buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import libvirt

from appliance import libvirtloop
from appliance.config import Config
from appliance.errors import DroverError
from appliance.kerberos.realm import Realm
from appliance.libvirtclient import ClientTicket, host_uri

log = logging.getLogger(__name__)

_ticket_lock = threading.Lock()
_ticket: ClientTicket | None = None


class ConsoleUnavailable(DroverError):
    """The host or the domain cannot give a console now (host unreachable, domain gone, no VNC device)."""

    http_status = 503


def ensure_client_ticket(cfg: Config) -> None:
    """The appliance's own Kerberos ticket for libvirt in this process (a ccache of the consoles' own, renewed)."""
    global _ticket  # noqa: PLW0603 - one renewing ticket per process, like libvirt's event loop
    with _ticket_lock:
        if _ticket is None:
            ticket = ClientTicket(Realm.from_config(cfg), cfg.state_dir / "console" / "libvirt.ccache",
                                  "console-ticket")  # fmt: skip
            ticket.start()
            _ticket = ticket


@dataclass(frozen=True)
class VncDisplay:
    port: int
    listen: str  # the live XML's listen address: where qemu bound it on the host


def vnc_display(domain_xml: str) -> VncDisplay:
    graphics = ET.fromstring(domain_xml).find("devices/graphics[@type='vnc']")
    if graphics is None:
        raise ConsoleUnavailable("the VM has no VNC display", "its domain has no <graphics type='vnc'> device")
    port = int(graphics.get("port", "-1"))
    if port <= 0:
        raise ConsoleUnavailable("the VM's VNC display has no port yet", "try again in a moment")
    return VncDisplay(port, graphics.get("listen", ""))


def password_xml(domain_xml: str, password: str, valid_until: datetime) -> str:
    """The live VNC device with a new password valid until `valid_until` (UTC), as updateDeviceFlags wants it."""
    graphics = ET.fromstring(domain_xml).find("devices/graphics[@type='vnc']")
    if graphics is None:
        raise ConsoleUnavailable("the VM has no VNC display")
    graphics.set("passwd", password)
    graphics.set("passwdValidTo", valid_until.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return ET.tostring(graphics, encoding="unicode")


def one_time_password() -> str:
    # VNC authentication uses at most 8 bytes of a password: 8 random printable characters (~48 bits), only
    # valid for seconds and replaced by another unknown one as soon as the proxy has logged in.
    return secrets.token_urlsafe(6)[:8]


class HostLink:
    """One libvirt connection to a host for one console session, closed with it."""

    def __init__(self, cfg: Config, hostname: str, libvirt_port: int | None) -> None:
        self.cfg = cfg
        self.uri = host_uri(hostname, libvirt_port or cfg.nodes.libvirt_port)
        self.conn: libvirt.virConnect | None = None

    def open(self) -> None:
        ensure_client_ticket(self.cfg)
        libvirtloop.ensure_running()
        try:
            self.conn = libvirt.open(self.uri)
            self.conn.setKeepAlive(5, 3)
        except libvirt.libvirtError as exc:
            raise ConsoleUnavailable(f"cannot reach libvirt at {self.uri}: {exc}") from None

    def domain(self, uuid: str) -> libvirt.virDomain:
        if self.conn is None:
            raise ConsoleUnavailable("not connected")
        try:
            dom = self.conn.lookupByUUIDString(uuid)
            if not dom.isActive():
                raise ConsoleUnavailable("the VM is not running on its host")
        except libvirt.libvirtError as exc:
            raise ConsoleUnavailable(f"the VM is not on its host: {exc}") from None
        return dom

    def set_vnc_password(self, dom: libvirt.virDomain, password: str, valid_seconds: float) -> VncDisplay:
        """Give the live VNC display `password` (expiring after `valid_seconds`; <= 0: already expired)."""
        try:
            xml = dom.XMLDesc(0)
            display = vnc_display(xml)
            until = datetime.now(UTC) + timedelta(seconds=valid_seconds)
            dom.updateDeviceFlags(password_xml(xml, password, until), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise ConsoleUnavailable(f"cannot set the VM's VNC password: {exc}") from None
        return display

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self.conn.close()
            self.conn = None


_EVENTS = libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP
CHUNK = 16 * 1024


class SerialStream:
    """A domain's serial console as a libvirt stream, read on libvirt's event loop thread into an asyncio queue.

    At most `limit` bytes wait in the queue: past that, reading stops (the guest's output waits in libvirt and
    qemu) until the WebSocket side has taken half of it. None in the queue means the console ended.
    """

    def __init__(self, link: HostLink, dom: libvirt.virDomain, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        if link.conn is None:
            raise ConsoleUnavailable("not connected")
        self.loop = loop
        self.limit = limit
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._lock = threading.Lock()
        self._buffered = 0
        self._paused = False
        self._closed = False
        self.stream = link.conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        try:
            # FORCE: a console left open elsewhere (a closed tab's, `virsh console`) is taken over, not refused.
            dom.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            self.stream.eventAddCallback(_EVENTS, self._on_event, None)
        except libvirt.libvirtError as exc:
            raise ConsoleUnavailable(f"cannot open the VM's serial console: {exc}") from None

    def _push(self, data: bytes | None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, data)

    def _on_event(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        """On libvirt's event thread: drain what is readable, up to the limit."""
        if self._closed:
            return
        while True:
            try:
                data = stream.recv(CHUNK)
            except libvirt.libvirtError as exc:
                log.info("serial console stream ended: %s", exc)
                self._end()
                return
            if data == -2:  # nothing more now
                if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
                    self._end()
                return
            if not data:  # end of stream: the guest went away
                self._end()
                return
            self._push(data)
            with self._lock:
                self._buffered += len(data)
                if self._buffered >= self.limit:
                    self._paused = True
                    with contextlib.suppress(libvirt.libvirtError):
                        stream.eventUpdateCallback(0)
                    return

    def _end(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(libvirt.libvirtError):
                self.stream.eventRemoveCallback()
            self._push(None)

    def taken(self, n: int) -> None:
        """The WebSocket side sent `n` bytes on: resume reading once at most half the limit waits."""
        with self._lock:
            self._buffered -= n
            if self._paused and self._buffered <= self.limit // 2 and not self._closed:
                self._paused = False
                with contextlib.suppress(libvirt.libvirtError):
                    self.stream.eventUpdateCallback(_EVENTS)

    def send(self, data: bytes) -> None:
        """Blocking: write keystrokes to the guest (a non-blocking stream may take part of it at a time)."""
        view = memoryview(data)
        waited = 0.0
        while view:
            sent = self.stream.send(bytes(view))
            if sent == -2:
                if waited > 5.0:
                    raise ConsoleUnavailable("the guest's serial console takes no input")
                threading.Event().wait(0.01)
                waited += 0.01
                continue
            view = view[sent:]

    def close(self) -> None:
        with self._lock:
            was_closed = self._closed
            self._closed = True
        if not was_closed:
            with contextlib.suppress(libvirt.libvirtError):
                self.stream.eventRemoveCallback()
        with contextlib.suppress(libvirt.libvirtError):
            self.stream.abort()
