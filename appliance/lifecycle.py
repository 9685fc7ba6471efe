"""Host life cycle an admin drives: maintenance, activate, remove.

States: `pending -> available <-> unavailable` follow the host browser's libvirt session; `maintenance`
is the admin's. In maintenance the session stays open and the host's VM rows stay true, but the
browser's up/down no longer changes the state (it records `libvirt_connected` instead), and a reboot
(identify) keeps it there. Each verb locks the host row first (hosts.lock) and raises before it
changes anything, so a refusal leaves the database as it was.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from appliance import hosts
from appliance.db.models import Host, HostState
from appliance.errors import Conflict, NotFound, UsageError

log = logging.getLogger(__name__)

MAX_REASON = 1000  # characters: a sentence or two for the next admin, not a log


def check_reason(reason: object) -> str:
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise UsageError(f"reason: must be a string of at most {MAX_REASON} characters")
    if any(ord(c) < 32 and c not in "\t\n" for c in reason):
        raise UsageError("reason: control characters are not allowed")
    return reason.strip()


def _locked(session: Session, host: Host) -> Host:
    locked = hosts.lock(session, host.id)
    if locked is None:
        raise NotFound(f"host {host.hostname} was removed meanwhile", "see `drover host list`")
    return locked


def maintenance(session: Session, host: Host, by: str, reason: str = "") -> Host:
    """Put an approved host into maintenance: no new VMs; the host browser keeps following it."""
    host = _locked(session, host)
    if host.approved_at is None:
        raise Conflict(
            f"host {host.hostname} is pending approval; only an approved host goes into maintenance",
            "approve it first (`drover host approve`), or remove it",
        )
    if host.state is HostState.MAINTENANCE:
        why = f": {host.state_reason}" if host.state_reason else ""
        raise Conflict(
            f"host {host.hostname} is already in maintenance since {host.state_changed_at:%Y-%m-%d %H:%M} UTC{why}",
            "`drover host activate` ends it",
        )
    hosts.set_state(session, host, HostState.MAINTENANCE, check_reason(reason), by)
    log.info("host %s in maintenance (by %s, libvirt %s)", host.hostname, by,
             "connected" if host.libvirt_connected else "not connected")  # fmt: skip
    return host


def activate(session: Session, host: Host, by: str) -> Host:
    """End maintenance: available if the host browser's libvirt session is up, else unavailable.

    `libvirt_connected` is what the browser's writer last recorded, read under the row lock the writer
    takes too: a session that comes up or goes down right now is applied after this commit and moves
    the host on from the state chosen here, as it would any other time.
    """
    host = _locked(session, host)
    if host.state is not HostState.MAINTENANCE:
        raise Conflict(
            f"host {host.hostname} is not in maintenance (it is {host.state})",
            "only a host in maintenance is activated; `drover host maintenance` puts it there",
        )
    if host.libvirt_connected:
        hosts.set_state(session, host, HostState.AVAILABLE, "activated; libvirt connected", by)
    else:
        why = "activated; libvirt not connected: available once the host browser reaches it"
        hosts.set_state(session, host, HostState.UNAVAILABLE, why, by)
    return host
