"""libvirt connections of one task engine process: one per host, shared by its worker threads, reopened
when it dies; and which libvirt errors are worth a retry.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import libvirt

from appliance import libvirtloop
from appliance.db.models import Host
from appliance.errors import DroverError
from appliance.libvirtclient import host_uri

log = logging.getLogger(__name__)

# Errors of the link, not of the request: the host may answer on the next try. A system error counts only
# when it comes from the RPC layer (connection reset): elsewhere it is a file or device the host lacks.
_TRANSIENT_CODES = frozenset(
    {
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_OPERATION_TIMEOUT,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    }
)
_TRANSIENT_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})


class HostUnreachable(DroverError):
    """The host's libvirtd could not be reached (transient: retried with back-off)."""

    http_status = 503


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, HostUnreachable):
        return True
    if isinstance(exc, libvirt.libvirtError):
        return exc.get_error_code() in _TRANSIENT_CODES or exc.get_error_domain() in _TRANSIENT_DOMAINS
    return False


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; drover reports them itself."""


libvirt.registerErrorHandler(_quiet, None)


class Connections:
    def __init__(self, default_port: int, keepalive: tuple[int, int] = (5, 3)) -> None:
        self.default_port = default_port
        # A ping every interval seconds, the link dead after count unanswered ones: a call to a frozen or
        # vanished host fails (transient) instead of holding its worker thread for ever.
        self.keepalive = keepalive
        self._lock = threading.Lock()
        self._conns: dict[str, libvirt.virConnect] = {}
        self._host_locks: dict[str, threading.Lock] = {}

    def uri(self, host: Host) -> str:
        return host_uri(host.hostname, host.libvirt_port or self.default_port)

    def get(self, host: Host) -> libvirt.virConnect:
        uri = self.uri(host)
        with self._lock:
            host_lock = self._host_locks.setdefault(uri, threading.Lock())
        with host_lock:  # one open per host at a time; other hosts are not held up
            conn = self._conns.get(uri)
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except libvirt.libvirtError:
                    pass
                self._drop(uri, conn)
            libvirtloop.ensure_running()
            try:
                conn = libvirt.open(uri)
                conn.setKeepAlive(*self.keepalive)
            except libvirt.libvirtError as exc:
                raise HostUnreachable(f"cannot reach libvirt on {host.hostname} ({uri}): {exc}") from None
            self._conns[uri] = conn
            return conn

    def forget(self, host: Host) -> None:
        """Drop the cached connection (after a transient error on it)."""
        uri = self.uri(host)
        with self._lock:
            conn = self._conns.get(uri)
        if conn is not None:
            self._drop(uri, conn)

    def _drop(self, uri: str, conn: libvirt.virConnect) -> None:
        with self._lock:
            if self._conns.get(uri) is conn:
                del self._conns[uri]
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def close(self) -> None:
        with self._lock:
            conns = list(self._conns.items())
            self._conns.clear()
        for _, conn in conns:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
