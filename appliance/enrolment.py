"""What identify and heartbeat do to the database: tokens, claims, approval, the agent token, credentials.

Rules (the trust model is in the README: a PXE client cannot prove who it is):
- An enrolled host whose libvirt session is up is alive: an identify with its DMI UUID, its FQDN or one
  of its MACs comes from a second machine and is refused, with a warning event. Nothing changes.
- identify with a token: the token must be valid for this node (single use, unexpired, bound UUID/MAC);
  re-enrolling an enrolled host (its stateless reboot) needs a token bound to that host's UUID. The
  host is recorded, approved and gets credentials (a new key) at once. A refused token changes nothing.
- identify without a token: a new or pending host gets a *claim* (facts, source address, its own agent
  token) and waits as `pending`; an enrolled host is refused. A second machine's claim never replaces
  the first one: with two live claims the admin must say which one to approve.
- a host in maintenance stays in maintenance through identify (a reboot); only `activate` ends it.
- heartbeat: must carry the agent token of the host's approved agent or of one of its claims; an
  approved host whose credentials are not yet handed out (an admin approved it while pending) gets them, once.
Nothing an unauthenticated client sends creates a Kerberos principal: credentials are issued only
after a valid token or an admin's approval.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Select, bindparam, delete, select
from sqlalchemy.orm import Session, joinedload

from appliance import hosts, monitoring, networks, power
from appliance.db import tokens
from appliance.db.base import utcnow
from appliance.db.models import EnrolmentWindow, Event, Host, HostClaim, HostNetwork, HostNic, HostState, Severity
from appliance.errors import AuthError, Conflict, IdentityConflict, NotFound
from appliance.monitoring import CollectdTarget
from appliance.text import shown
from nodeagent import wire

log = logging.getLogger(__name__)

# Makes the node's credentials; called inside the transaction, so a kadmin failure rolls everything back.
Issuer = Callable[[str], wire.Credentials]

CLAIM_LIVE_BEATS = 3  # a claim unheard of for this many heartbeat intervals is a machine that went away


@dataclass(frozen=True)
class Identified:
    response: wire.IdentifyResponse
    created: bool


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_agent_token() -> tuple[str, str]:
    token = secrets.token_urlsafe(32)
    return token, _hash(token)


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
    source: str = "",
    collectd: CollectdTarget | None = None,
    rollback_seconds: int = networks.ROLLBACK_SECONDS,
) -> Identified:
    facts = request.facts
    existing = hosts.by_uuid(session, facts.uuid)
    if existing is not None:
        existing = hosts.lock(session, existing.id)  # decided on the committed row: see hosts.lock
    enrolled = existing is not None and existing.approved_at is not None
    if existing is not None and enrolled and existing.libvirt_connected:
        raise IdentityConflict(
            f"host {existing.hostname} ({existing.uuid}) is enrolled and its libvirtd answers the appliance: "
            "a second machine claims its DMI UUID",
            "if the enrolled machine was replaced, power it off (or `drover host remove` it) first",
            host_id=existing.id,
            subject=existing.hostname,
        )
    check_unique(session, facts)
    if request.token:
        # Consumed before the host row is touched: a refusal raises, and the caller's rollback
        # leaves hosts, NICs, events and the token exactly as they were.
        token = tokens.consume(session, request.token, host_uuid=facts.uuid, mac=facts.boot_mac or None)
        if enrolled and token.host_uuid != facts.uuid:
            log.warning("token %s is not bound to enrolled host %s: refused", token.selector, facts.uuid)
            raise tokens.TokenRefused(tokens.Refusal.WRONG_HOST)
        host, created, nics = hosts.record(session, facts)
        token.used_by_host_id = host.id
        host.approved_at, host.approved_by = utcnow(), f"token {token.selector}"
        credentials = _with_collectd(issue(hosts.fqdn_of(facts)), host, collectd)
        host.credentials_issued_at = utcnow()
        agent_token, host.agent_token_hash = _new_agent_token()
        session.execute(delete(HostClaim).where(HostClaim.host_id == host.id))
        hosts.event(session, host, "host.identified",
                    f"accepted with token {token.selector} from {source or '?'}; NICs {nics.describe()}")  # fmt: skip
        window = session.get(EnrolmentWindow, token.window_id) if token.window_id is not None else None
        if window is not None:
            power.inherit(session, host, window)  # provisioned from cold: the BMC it was powered on through
        status, message = wire.IdentifyStatus.ACCEPTED, "enrolled"
    else:
        if existing is not None and enrolled:
            raise Conflict(
                f"host {facts.uuid} is already enrolled; identifying again needs an enrolment token",
                "boot it with a fresh token (`drover host token`), or from the boot service",
            )
        if existing is None:
            host, created, nics = hosts.record(session, facts)
        else:
            host, created, nics = existing, False, hosts.NicChanges()  # the first claim's facts stay on the row
        credentials = None
        agent_token, claim = _claim(session, host, facts, source)
        rivals = [c for c in live_claims(session, host, heartbeat_seconds) if c.id != claim.id]
        if rivals:
            hosts.event(
                session,
                host,
                "host.claim_conflict",
                f"{len(rivals) + 1} machines claim pending host {host.hostname}: {describe_claim(claim)}; "
                + "; ".join(describe_claim(c) for c in rivals)
                + " — approve one with `drover host approve HOST --claim ID`",
                Severity.WARNING,
            )
        else:
            hosts.event(session, host, "host.pending",
                        f"identified without a token ({describe_claim(claim)}); NICs {nics.describe()}",
                        Severity.WARNING)  # fmt: skip
        status, message = wire.IdentifyStatus.PENDING, "recorded; waiting for an admin: drover host approve"
    session.flush()
    if host.state is not HostState.MAINTENANCE:
        hosts.set_state(session, host, HostState.PENDING, "identified")
    # else: a host rebooted during its maintenance (the usual reason for one) stays there until activated.
    host.last_heartbeat_at = utcnow()
    session.flush()
    log.info("identify %s (%s) from %s: %s, NICs %s", host.hostname, host.uuid, source, status, nics.describe())
    if credentials is not None:
        # A booted node has forgotten its links: what it reported before this boot is no longer true.
        host.network_generation = host.network_state = None
        host.network_message, host.network_observed = "", {}
    response = wire.IdentifyResponse(
        status=status,
        host_id=host.id,
        heartbeat_seconds=heartbeat_seconds,
        credentials=credentials,
        message=message,
        agent_token=agent_token,
        # A stateless node forgot its links at boot: an enrolled one gets them back with its credentials.
        network=networks.desired(session, host, rollback_seconds) if credentials is not None else None,
    )
    return Identified(response, created)


def check_unique(session: Session, facts: wire.Facts) -> None:
    """Refuse facts naming an FQDN or a MAC that belongs to another enrolled host (IdentityConflict)."""
    name = hosts.fqdn_of(facts)
    other = session.scalars(
        select(Host).where(Host.hostname == name, Host.approved_at.is_not(None), Host.uuid != facts.uuid)
    ).first()
    if other is not None:
        raise IdentityConflict(
            f"host name {name} belongs to enrolled host {other.id} ({other.uuid}); machine {facts.uuid} claims it",
            "names are unique among enrolled hosts: if that machine was replaced, `drover host remove` it first",
            host_id=other.id,
            subject=name,
        )
    macs = sorted({nic.mac for nic in facts.nics} | ({facts.boot_mac} if facts.boot_mac else set()))
    if not macs:
        return
    clash = session.execute(
        select(HostNic.mac, Host)
        .join(Host, HostNic.host_id == Host.id)
        .where(HostNic.mac.in_(macs), Host.approved_at.is_not(None), Host.uuid != facts.uuid)
    ).first()
    if clash is not None:
        mac, owner = clash
        raise IdentityConflict(
            f"MAC {mac} belongs to enrolled host {owner.hostname} ({owner.uuid}); machine {facts.uuid} claims it",
            "MACs are unique among enrolled hosts: if the NIC moved, `drover host remove` the old host first",
            host_id=owner.id,
            subject=owner.hostname,
        )


def record_conflict(session: Session, exc: IdentityConflict, source: str) -> None:
    """The warning an admin must see: written in its own transaction, since the refused one rolled back."""
    session.add(
        Event(
            kind="host.identity_conflict",
            subject=exc.subject,
            message=f"identify from {source or '?'} refused: {exc.message}",
            host_id=exc.host_id,
            severity=Severity.WARNING,
        )
    )


def _claim(session: Session, host: Host, facts: wire.Facts, source: str) -> tuple[str, HostClaim]:
    now = utcnow()
    token, token_hash = _new_agent_token()
    claim = HostClaim(
        host_id=host.id,
        agent_token_hash=token_hash,
        source=source[:64],
        hostname=hosts.fqdn_of(facts),
        boot_mac=facts.boot_mac,
        facts=wire.to_dict(facts),
        last_seen_at=now,
        created_at=now,
    )
    session.add(claim)
    session.flush()
    return token, claim


def live_claims(session: Session, host: Host, heartbeat_seconds: int) -> list[HostClaim]:
    since = utcnow() - timedelta(seconds=heartbeat_seconds * CLAIM_LIVE_BEATS)
    return list(
        session.scalars(
            select(HostClaim).where(HostClaim.host_id == host.id, HostClaim.last_seen_at > since).order_by(HostClaim.id)
        )
    )


def describe_claim(claim: HostClaim) -> str:
    return (f"claim {claim.id} from {shown(claim.source) or '?'}, boot MAC {claim.boot_mac or '?'}, "
            f"name {shown(claim.hostname)}")  # fmt: skip


@functools.cache
def _beating_host() -> Select[tuple[Host]]:
    """The host a heartbeat names, with its network assignments (the answer's set-up reads them; a lazy load
    was a fifth of a heartbeat's time). Built once: its cache key was a tenth of a heartbeat's time."""
    return (select(Host).where(Host.uuid == bindparam("uuid"))
            .options(joinedload(Host.networks).joinedload(HostNetwork.network)))  # fmt: skip


def heartbeat(
    session: Session,
    beat: wire.Heartbeat,
    issue: Issuer,
    heartbeat_seconds: int,
    collectd: CollectdTarget | None = None,
    rollback_seconds: int = networks.ROLLBACK_SECONDS,
) -> tuple[wire.HeartbeatResponse, Host | None]:
    """The answer to a heartbeat, and the host row when the answer is ACCEPTED (for the caller's follow-ups)."""
    host = session.scalars(_beating_host(), {"uuid": beat.uuid.lower()}).unique().one_or_none()
    expected = host.agent_token_hash if host is not None else None
    presented = _hash(beat.agent_token)
    # Compared even for unknown hosts, so timing does not tell which UUIDs exist.
    ok = hmac.compare_digest(presented, expected or "0" * 64) and bool(beat.agent_token)
    if host is not None and not ok and beat.agent_token:
        claim = session.scalars(
            select(HostClaim).where(HostClaim.host_id == host.id, HostClaim.agent_token_hash == presented)
        ).one_or_none()
        if claim is not None:  # a pending machine, one of possibly several claiming this host
            claim.last_seen_at = utcnow()
            return wire.HeartbeatResponse(status=wire.IdentifyStatus.PENDING, heartbeat_seconds=heartbeat_seconds), None
    if host is None or not ok:
        raise AuthError("unknown host or agent token", "identify again")
    host.last_heartbeat_at = utcnow()
    credentials = None
    if host.approved_at is not None and host.credentials_issued_at is None:
        credentials = _with_collectd(issue(host.hostname), host, collectd)
        host.credentials_issued_at = utcnow()
        hosts.event(session, host, "host.credentials", f"credentials handed out after approval by {host.approved_by}")
    approved = host.approved_at is not None
    status = wire.IdentifyStatus.ACCEPTED if approved else wire.IdentifyStatus.PENDING
    restart = approved and host.libvirtd_restart_asked_at is not None
    if restart:
        # Fencing's soft step (appliance.fencer): said once; the fencer waits for libvirtd to come back.
        host.libvirtd_restart_asked_at = None
        hosts.event(session, host, "fence.soft", "asked its node agent to restart libvirtd (in a heartbeat answer)",
                    Severity.WARNING)  # fmt: skip
    if beat.network is not None and networks.record_report(host, beat.network):
        severity = Severity.INFO if beat.network.state is wire.NetworkApply.APPLIED else Severity.WARNING
        hosts.event(session, host, "host.network_state",
                    f"network set-up {beat.network.generation} {beat.network.state}"
                    + (f": {beat.network.message}" if beat.network.message else ""), severity)  # fmt: skip
    setup = networks.desired(session, host, rollback_seconds) if approved else None
    answer = wire.HeartbeatResponse(status=status, heartbeat_seconds=heartbeat_seconds, credentials=credentials,
                                    restart_libvirtd=restart, network=setup)  # fmt: skip
    return answer, (host if approved else None)


def record_libvirt_port(session: Session, host: Host, port: int, default_port: int) -> bool:
    """The port an authenticated heartbeat says the host's libvirtd listens on, stored when it differs (the
    browser then connects there); True when it changed. 0: the agent did not say."""
    old = host.libvirt_port or default_port
    if not port or (port == old and host.libvirt_port is not None):
        return False
    host.libvirt_port = port
    if port != old:
        hosts.event(session, host, "host.libvirt_port", f"libvirtd on port {port} (was {old}), as its heartbeat says")
    return port != old


def approve(session: Session, host: Host, by: str, heartbeat_seconds: int, claim_id: int | None = None) -> None:
    """Approve a pending host, as one of its claims says it is: that machine's next heartbeat collects credentials.

    With more than one live claim (two machines say they are this host) the admin must name the claim.
    """
    if host.approved_at is not None:
        raise Conflict(f"host {host.hostname} is already approved (by {host.approved_by})")
    claims = list(session.scalars(select(HostClaim).where(HostClaim.host_id == host.id).order_by(HostClaim.id)))
    if claim_id is not None:
        chosen = next((c for c in claims if c.id == claim_id), None)
        if chosen is None:
            raise NotFound(f"host {host.hostname} has no claim {claim_id}", "`drover host show` lists its claims")
    else:
        live = live_claims(session, host, heartbeat_seconds)
        if len(live) > 1:
            raise Conflict(
                f"{len(live)} machines claim host {host.hostname}: " + "; ".join(describe_claim(c) for c in live),
                "check which one is yours (`drover host show`), then `drover host approve HOST --claim ID`",
            )
        chosen = live[0] if live else (claims[-1] if claims else None)
    if chosen is not None:
        facts = wire.from_dict(wire.Facts, chosen.facts)
        check_unique(session, facts)
        hosts.record(session, facts)
        host.agent_token_hash = chosen.agent_token_hash
        session.execute(delete(HostClaim).where(HostClaim.host_id == host.id))
    else:
        taken = session.scalars(
            select(Host).where(Host.hostname == host.hostname, Host.approved_at.is_not(None), Host.id != host.id)
        ).first()
        if taken is not None:
            raise Conflict(f"host name {host.hostname} belongs to enrolled host {taken.id}", "remove one of them")
    host.approved_at, host.approved_by = utcnow(), by
    host.credentials_issued_at = None
    which = f" as {describe_claim(chosen)}" if chosen is not None else ""
    hosts.event(session, host, "host.approved", f"approved by {by}{which}")
    log.info("host %s approved by %s%s", host.hostname, by, which)
