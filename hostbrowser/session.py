"""One libvirt connection to one host: keepalive, lifecycle events, a full re-sync on every (re)connect.

connect() runs in a connect worker (hostbrowser.connecting), the callbacks in libvirt's event loop thread,
reap() and close() in the browser thread: every change of the connection's state, and the report that
goes with it, happens under the session's lock, so the writer receives the reports in the order of the states.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt

from appliance.db.models import VmState
from hostbrowser import addresses
from hostbrowser.sync import Addresses, Domain, DomainChanged, HostDown, HostUp, Writer

log = logging.getLogger(__name__)

# Opens a URI. The real one is libvirt.open; the scale benchmark passes a simulated connection here,
# the only place anything stands in for libvirt.
Connector = Callable[[str], Any]

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: VmState.STOPPED,
    libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: VmState.RUNNING,  # running, waiting on I/O
    libvirt.VIR_DOMAIN_PAUSED: VmState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: VmState.STOPPING,
    libvirt.VIR_DOMAIN_SHUTOFF: VmState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: VmState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: VmState.PAUSED,
}

# For a domain that vanished before we could ask it: the state its last event implies.
_EVENT_STATES = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: VmState.RUNNING,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: VmState.PAUSED,
    libvirt.VIR_DOMAIN_EVENT_RESUMED: VmState.RUNNING,
    libvirt.VIR_DOMAIN_EVENT_STOPPED: VmState.STOPPED,
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: VmState.STOPPING,
    libvirt.VIR_DOMAIN_EVENT_CRASHED: VmState.CRASHED,
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: VmState.PAUSED,
}


def describe(dom: Any) -> Domain:
    """Ask libvirt for the domain's state and size (raises libvirtError if it is gone)."""
    state, max_kib, _mem, vcpus, _cpu = dom.info()
    found = _STATES.get(state, VmState.STOPPED)
    # Shut off with a managed save image is a saved VM (the task engine's save): not stopped.
    if state == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage():
        found = VmState.SAVED
    return Domain(dom.UUIDString(), dom.name(), found, vcpus, max_kib // 1024)


@dataclass(frozen=True)
class Target:
    host_id: int
    hostname: str
    uri: str


class HostSession:
    """Connects, watches and reports one host; the browser has `connect()` run again while it is down."""

    def __init__(self, target: Target, writer: Writer, connector: Connector, keepalive: tuple[int, int]) -> None:
        self.target = target
        self.writer = writer
        self.connector = connector
        self.keepalive = keepalive
        self.conn: Any = None
        self.down_since: float | None = time.monotonic()
        self.last_error = ""
        self.auth_failed = False  # the last connect was refused by SASL/Kerberos (see HostBrowser.refresh)
        self.nudged = False  # the host showed signs of life (heartbeat, zeroconf): reconnect without waiting
        self._lock = threading.Lock()
        self._callback_id: int | None = None
        self._ended = False  # closed by the browser: a connect that returns late must not revive it

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def connect(self) -> bool:
        """Open the connection and re-sync every domain; False (and the host reported down) on failure."""
        try:
            conn = self.connector(self.target.uri)
            conn.setKeepAlive(*self.keepalive)
            conn.registerCloseCallback(self._closed, None)
            callback_id = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle,
                                                      None)  # fmt: skip
            domains = tuple(describe(d) for d in conn.listAllDomains(0))
        except libvirt.libvirtError as exc:
            reason = " ".join(str(exc).split())
            with self._lock:
                self.auth_failed = exc.get_error_code() == libvirt.VIR_ERR_AUTH_FAILED
                self.down_since = time.monotonic()  # the next attempt waits reconnect_seconds from now
                if self._ended:
                    return False
                self._down(f"libvirt unreachable: {reason}", reason)
            return False
        with self._lock:
            if self._ended:  # the host was dropped or moved while we were connecting
                log.info("connected to %s too late: the session was closed meanwhile", self.target.uri)
                _quietly_close(conn, callback_id)
                return False
            self.conn, self._callback_id, self.down_since, self.last_error = conn, callback_id, None, ""
            self.auth_failed = False
            # Events were registered before listing, so nothing is missed: any queued meanwhile are no newer
            # than this list, which is applied after them; events after the list are queued after it.
            self.writer.put(HostUp(self.target.host_id, domains))
        log.info("connected to %s (%d domains)", self.target.uri, len(domains))
        return True

    def poll_addresses(self) -> None:
        """Ask the host for its running VMs' addresses (in a connect worker: libvirt may take a moment)."""
        conn = self.conn
        if conn is None:
            return
        try:
            found = addresses.of_host(conn)
        except libvirt.libvirtError as exc:
            log.info("addresses of %s's VMs: %s", self.target.hostname, exc)
            return
        self.writer.put(
            Addresses(self.target.host_id, tuple((uuid, tuple(a), src) for uuid, (a, src) in sorted(found.items())))
        )

    def abandon(self, seconds: float) -> None:
        """The browser gave up waiting for a connect that is still inside libvirt (see hostbrowser.connecting)."""
        with self._lock:
            if self._ended or self.down_since is None:
                return  # it got through (or was closed) just as it was given up: nothing to report
            self._down(
                f"libvirtd did not answer within {seconds:g}s (connect_timeout_seconds): connect abandoned, "
                "the host is tried again once that call returns",
                f"no answer within {seconds:g}s, connect abandoned",
            )

    def _down(self, reason: str, short: str) -> None:
        """Report the host down (lock held); log only when the reason changes, the report every time."""
        if short != self.last_error:
            log.warning("cannot reach %s at %s: %s", self.target.hostname, self.target.uri, short)
        self.last_error = short
        self.writer.put(HostDown(self.target.host_id, reason))

    def _lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        # Runs in the event loop thread: no database here, and only cached or quick calls to libvirt.
        try:
            found = describe(dom)
        except libvirt.libvirtError:
            found = Domain(dom.UUIDString(), dom.name(), None)
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            found = Domain(found.uuid, found.name, None)
        elif found.state is None and event in _EVENT_STATES:
            found = Domain(found.uuid, found.name, _EVENT_STATES[event])
        self.writer.put(DomainChanged(self.target.host_id, found))

    def _closed(self, conn: Any, reason: int, opaque: Any) -> None:
        why = {
            libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "I/O error",
            libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "connection closed by the host",
            libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timed out",
        }.get(reason, f"closed ({reason})")
        log.warning("lost %s: %s", self.target.hostname, why)
        with self._lock:
            self.down_since = time.monotonic()
            self.writer.put(HostDown(self.target.host_id, why))
        # Closing the dead connection is left to the browser thread: closing from inside its own
        # close callback is not allowed.

    def reap(self) -> None:
        """Drop a dead connection (browser thread), so the next connect() starts clean."""
        with self._lock:
            if self.down_since is None or self.conn is None:
                return
            conn, callback_id, self.conn, self._callback_id = self.conn, self._callback_id, None, None
        _quietly_close(conn, callback_id)

    def close(self) -> None:
        with self._lock:
            self._ended = True
            conn, callback_id, self.conn, self._callback_id = self.conn, self._callback_id, None, None
        if conn is not None:
            _quietly_close(conn, callback_id)


def _quietly_close(conn: Any, callback_id: int | None) -> None:
    for step in (
        lambda: conn.domainEventDeregisterAny(callback_id) if callback_id is not None else None,
        conn.unregisterCloseCallback,
        conn.close,
    ):
        # The peer may be gone; then there is nothing left to tidy on its side.
        with contextlib.suppress(libvirt.libvirtError):
            step()
