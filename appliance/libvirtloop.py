"""libvirt's default event loop, run in one daemon thread per process: keepalive and domain events need it.

Shared by the host browser and the task engine when both run in `drover serve`: libvirt allows one loop per process.
"""

from __future__ import annotations

import logging
import threading

import libvirt

log = logging.getLogger(__name__)

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _run() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:  # a daemon logs and carries on: the loop must never die
            log.exception("libvirt event loop iteration failed")


def ensure_running() -> None:
    """Register the default implementation (before any connection is opened) and start its thread once."""
    global _thread  # noqa: PLW0603 - one loop per process is libvirt's own rule
    with _lock:
        if _thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        # libvirt prints every error to stderr unless a handler is set; we log what we handle.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _thread = threading.Thread(target=_run, name="libvirt-events", daemon=True)
        _thread.start()
