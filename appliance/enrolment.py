"""What identify and heartbeat do to the database: tokens, approval, the per-boot agent token, credentials.

Rules:
- identify with a token: the token must be valid for this node (single use, unexpired, bound UUID/MAC);
  the host is recorded, approved and gets credentials at once. A refused token changes nothing.
- identify without a token: a new or still-pending host is recorded `pending` with no credentials; an
  already enrolled host is refused (its DMI UUID is not a secret; re-enrolling needs a token).
- a host in maintenance stays in maintenance through identify (a reboot); only `activate` ends it.
- heartbeat: must carry this boot's agent token; an approved host whose credentials are not yet
  handed out (an admin approved it while pending) gets them, once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from appliance import hosts, monitoring
from appliance.db import tokens
from appliance.db.base import utcnow
from appliance.db.models import Host, HostState, Severity
from appliance.errors import AuthError, Conflict
from appliance.monitoring import CollectdTarget
from nodeagent import wire

log = logging.getLogger(__name__)

# Makes the node's credentials; called inside the transaction, so a kadmin failure rolls everything back.
Issuer = Callable[[str], wire.Credentials]


@dataclass(frozen=True)
class Identified:
    response: wire.IdentifyResponse
    created: bool


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_agent_token(host: Host) -> str:
    token = secrets.token_urlsafe(32)
    host.agent_token_hash = _hash(token)
    return token


def _with_collectd(credentials: wire.Credentials, host: Host, collectd: CollectdTarget | None) -> wire.Credentials:
    """Credentials always come with a new collectd secret (when the monitor runs): the old one stops working."""
    if collectd is None:
        return credentials
    return dataclasses.replace(credentials, collectd=monitoring.collectd_for(host, collectd))


def identify(
    session: Session,
    request: wire.IdentifyRequest,
    issue: Issuer,
    heartbeat_seconds: int,
    collectd: CollectdTarget | None = None,
) -> Identified:
    facts = request.facts
    existing = hosts.by_uuid(session, facts.uuid)
    if request.token:
        # Consumed before the host row is touched: a refusal raises, and the caller's rollback
        # leaves hosts, NICs, events and the token exactly as they were.
        token = tokens.consume(session, request.token, host_uuid=facts.uuid, mac=facts.boot_mac or None)
        host, created, nics = hosts.record(session, facts)
        token.used_by_host_id = host.id
        host.approved_at, host.approved_by = utcnow(), f"token {token.selector}"
        credentials = _with_collectd(issue(hosts.fqdn_of(facts)), host, collectd)
        host.credentials_issued_at = utcnow()
        agent_token = _new_agent_token(host)
        hosts.event(session, host, "host.identified", f"accepted with token {token.selector}; NICs {nics.describe()}")
        status, message = wire.IdentifyStatus.ACCEPTED, "enrolled"
    else:
        if existing is not None and existing.approved_at is not None:
            raise Conflict(
                f"host {facts.uuid} is already enrolled; identifying again needs an enrolment token",
                "boot it with a fresh token (`drover host token`)",
            )
        host, created, nics = hosts.record(session, facts)
        credentials = None
        agent_token = _new_agent_token(host)
        hosts.event(
            session, host, "host.pending", f"identified without a token; NICs {nics.describe()}", Severity.WARNING
        )
        status, message = wire.IdentifyStatus.PENDING, "recorded; waiting for an admin: drover host approve"
    session.flush()
    hosts.lock(session, host.id)  # the state as committed now, not as read before: see hosts.lock
    live = credentials is not None and host.state is HostState.AVAILABLE and host.libvirt_connected
    if host.state is not HostState.MAINTENANCE and not live:
        hosts.set_state(session, host, HostState.PENDING, "identified")
    # else: a host rebooted during its maintenance (the usual reason for one) stays there until activated;
    # and an agent that identifies again while the host browser's session to its libvirtd is up (the agent
    # restarted, not the node) leaves the host available: libvirtd reads the new keytab at the next login.
    host.last_heartbeat_at = utcnow()
    session.flush()
    log.info("identify %s (%s): %s, NICs %s", host.hostname, host.uuid, status, nics.describe())
    response = wire.IdentifyResponse(
        status=status,
        host_id=host.id,
        heartbeat_seconds=heartbeat_seconds,
        credentials=credentials,
        message=message,
        agent_token=agent_token,
    )
    return Identified(response, created)


def heartbeat(
    session: Session,
    beat: wire.Heartbeat,
    issue: Issuer,
    heartbeat_seconds: int,
    collectd: CollectdTarget | None = None,
) -> wire.HeartbeatResponse:
    host = hosts.by_uuid(session, beat.uuid)
    expected = host.agent_token_hash if host is not None else None
    # Compared even for unknown hosts, so timing does not tell which UUIDs exist.
    ok = hmac.compare_digest(_hash(beat.agent_token), expected or "0" * 64)
    if host is None or not ok or not beat.agent_token:
        raise AuthError("unknown host or agent token", "identify again")
    host.last_heartbeat_at = utcnow()
    credentials = None
    if host.approved_at is not None and host.credentials_issued_at is None:
        credentials = _with_collectd(issue(host.hostname), host, collectd)
        host.credentials_issued_at = utcnow()
        hosts.event(session, host, "host.credentials", f"credentials handed out after approval by {host.approved_by}")
    approved = host.approved_at is not None
    status = wire.IdentifyStatus.ACCEPTED if approved else wire.IdentifyStatus.PENDING
    return wire.HeartbeatResponse(status=status, heartbeat_seconds=heartbeat_seconds, credentials=credentials)


def approve(session: Session, host: Host, by: str) -> None:
    """Approve a pending host: its next heartbeat collects credentials."""
    if host.approved_at is not None:
        raise Conflict(f"host {host.hostname} is already approved (by {host.approved_by})")
    host.approved_at, host.approved_by = utcnow(), by
    host.credentials_issued_at = None
    hosts.event(session, host, "host.approved", f"approved by {by}")
    log.info("host %s approved by %s", host.hostname, by)
