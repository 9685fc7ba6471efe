"""sd_notify(3) without libsystemd: READY=1 and STATUS= lines to systemd over $NOTIFY_SOCKET.

The agent's unit is Type=notify and ordered before libvirtd.service, so at boot libvirtd starts once,
already configured for Kerberos on TCP, instead of starting bare and being restarted a moment later.
READY is sent once: when the first enrolment attempt has an outcome, or after a deadline, so an
unreachable appliance never keeps libvirtd (and its local clients) from starting.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

log = logging.getLogger(__name__)


def _send(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False  # not started by systemd as Type=notify (tests, a shell)
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", message.split("=", 1)[0], exc)
        return False
    return True


class Readiness:
    """READY=1 exactly once, from whichever comes first: `ready()` or the deadline."""

    def __init__(self, deadline: float) -> None:
        self._lock = threading.Lock()
        self._sent = False
        self._timer = threading.Timer(deadline, self.ready, args=("no enrolment outcome yet: starting anyway",))
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    @property
    def sent(self) -> bool:
        return self._sent

    def ready(self, why: str) -> None:
        with self._lock:
            if self._sent:
                return
            self._sent = True
        self._timer.cancel()
        log.info("ready (%s): systemd may start libvirtd now", why)
        _send(f"READY=1\nSTATUS={why}")

    def status(self, text: str) -> None:
        _send(f"STATUS={text}")
