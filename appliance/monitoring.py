"""The database side of monitoring: each host's collectd user and secret, and its current load.

The monitor (monitor/) reads the user table to verify signed and encrypted packets and writes each
host's load back here for placement; it does both through these functions only.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Integer, String, column, func, select, update, values
from sqlalchemy.orm import Session

from appliance.config import CollectdSecurity, Config
from appliance.db.base import utcnow
from appliance.db.models import Event, Host, HostState, Severity, Task, Vm
from nodeagent import wire


@dataclass(frozen=True)
class CollectdUser:
    user: str
    secret: str
    hostname: str  # the only host this user's value lists may name


@dataclass(frozen=True)
class Load:
    load_average: float | None = None
    cpu_busy_percent: float | None = None
    memory_used_mib: int | None = None
    vm_count: int | None = None


@dataclass(frozen=True)
class CollectdTarget:
    """Where nodes send: the receiver's address as a node reaches it, its port and security level."""

    server: str
    port: int
    level: CollectdSecurity


# collectd.conf spells the levels this way.
_COLLECTD_LEVEL = {CollectdSecurity.NONE: "None", CollectdSecurity.SIGN: "Sign", CollectdSecurity.ENCRYPT: "Encrypt"}


def target(cfg: Config, reached_as: str) -> CollectdTarget | None:
    """None when the monitor is off. The server is [monitor] node_address, else the name the node reached
    the node service by: the appliance as that node sees it (through NAT or a provisioning network)."""
    m = cfg.monitor
    if not m.enabled:
        return None
    return CollectdTarget(m.node_address or reached_as or cfg.hostname, m.port, m.security_level)


def issue_collectd_user(host: Host) -> CollectdUser:
    """A fresh secret (and the host's user name): called at each enrolment, so an old secret stops working."""
    host.collectd_user = f"drover-host-{host.id}"
    host.collectd_secret = secrets.token_urlsafe(32)
    return CollectdUser(host.collectd_user, host.collectd_secret, host.hostname)


def collectd_for(host: Host, where: CollectdTarget) -> wire.Collectd:
    """The collectd part of a node's credentials, with a secret issued now."""
    user = issue_collectd_user(host)
    return wire.Collectd(where.server, where.port, _COLLECTD_LEVEL[where.level], user.user, user.secret)


def collectd_users(session: Session) -> dict[str, CollectdUser]:
    rows = session.execute(
        select(Host.collectd_user, Host.collectd_secret, Host.hostname).where(
            Host.collectd_user.is_not(None), Host.collectd_secret.is_not(None), Host.approved_at.is_not(None)
        )
    ).all()
    return {user: CollectdUser(user, secret, hostname) for user, secret, hostname in rows}


def record_load(session: Session, loads: dict[str, Load], at: datetime | None = None) -> int:
    """Write the latest load of each host (by host name); returns how many host rows were updated.

    One UPDATE ... FROM (VALUES ...) for the whole batch: a statement per host kept up to a thousand host rows
    locked while the others ran, and every heartbeat of those hosts waited for it (63 ms on average at 1,000
    hosts). A value a host did not send keeps what the row had."""
    at = at or utcnow()
    rows = [(name, load.load_average, load.cpu_busy_percent, load.memory_used_mib, load.vm_count)
            for name, load in sorted(loads.items()) if any(v is not None for v in vars(load).values())]  # fmt: skip
    if not rows:
        return 0
    if session.get_bind().dialect.name != "postgresql":  # SQLite cannot name a VALUES list's columns
        return sum(_record_one(session, row, at) for row in rows)
    batch = values(
        column("hostname", String), column("load_average", Float), column("cpu_busy_percent", Float),
        column("memory_used_mib", Integer), column("vm_count", Integer), name="batch",
    ).data(rows)  # fmt: skip
    result = session.execute(
        update(Host)
        .where(Host.hostname == batch.c.hostname)
        .values(load_updated_at=at,
                **{name: func.coalesce(batch.c[name], getattr(Host, name)) for name in _LOAD_FIELDS})
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    return int(result.rowcount)  # type: ignore[attr-defined]


_LOAD_FIELDS = ("load_average", "cpu_busy_percent", "memory_used_mib", "vm_count")


def _record_one(session: Session, row: tuple[Any, ...], at: datetime) -> int:
    changed = {name: value for name, value in zip(_LOAD_FIELDS, row[1:], strict=True) if value is not None}
    result = session.execute(update(Host).where(Host.hostname == row[0]).values(load_updated_at=at, **changed))
    return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class HostNotice:
    """A collectd notification from a host: kept as an event of that host."""

    hostname: str
    severity: str  # failure | warning | okay (collectd's)
    source: str  # plugin[/instance][/type[-instance]]
    message: str


_NOTICE_SEVERITY = {"failure": Severity.ERROR, "warning": Severity.WARNING, "okay": Severity.INFO}


def record_notices(session: Session, notices: list[HostNotice]) -> int:
    """One `host.collectd` event per notice of a known host; returns how many were recorded."""
    names = {n.hostname for n in notices}
    by_name = {h.hostname: h for h in session.scalars(select(Host).where(Host.hostname.in_(names)))}
    recorded = 0
    for notice in notices:
        host = by_name.get(notice.hostname)
        if host is None:
            continue
        text = f"{notice.source}: {notice.message}" if notice.source else notice.message
        session.add(
            Event(kind="host.collectd", subject=host.hostname, message=text[:2000], host_id=host.id,
                  severity=_NOTICE_SEVERITY.get(notice.severity, Severity.INFO))
        )  # fmt: skip
        recorded += 1
    return recorded


def load_of(host: Host) -> dict[str, object]:
    return {
        "load_average": host.load_average,
        "cpu_busy_percent": host.cpu_busy_percent,
        "memory_used_mib": host.memory_used_mib,
        "vm_count": host.vm_count,
        "updated_at": host.load_updated_at.isoformat() if host.load_updated_at else None,
    }


def counts_by_state(session: Session) -> dict[str, dict[str, int]]:
    """Hosts, VMs and tasks by state, for /metrics."""
    out: dict[str, dict[str, int]] = {}
    for name, model in (("hosts", Host), ("vms", Vm), ("tasks", Task)):
        rows = session.execute(select(model.state, func.count()).group_by(model.state)).all()
        out[name] = {str(state): count for state, count in rows}
    # every host state present, zeros included, so a scraper sees a state empty out rather than vanish
    out["hosts"] = {str(s): 0 for s in HostState} | out["hosts"]
    return out
