"""Host records from a node's facts: one row per DMI UUID, NICs reconciled by MAC, disks by name."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.interfaces import ORMOption

from appliance.db.base import utcnow
from appliance.db.models import Arch, Event, HardwarePool, Host, HostDisk, HostNic, HostState, HypervisorType, Severity
from appliance.errors import NotFound
from appliance.text import as_id
from nodeagent import wire

log = logging.getLogger(__name__)

DEFAULT_POOL = "default"


@dataclass
class NicChanges:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)

    def describe(self) -> str:
        parts = [f"{what} {', '.join(macs)}" for what, macs in self._parts() if macs]
        return "; ".join(parts) or "unchanged"

    def _parts(self) -> list[tuple[str, list[str]]]:
        return [("added", self.added), ("removed", self.removed), ("updated", self.updated)]


def default_pool(session: Session) -> HardwarePool:
    """The root pool new hosts land in until an admin moves them."""
    pool = session.scalars(
        select(HardwarePool).where(HardwarePool.parent_id.is_(None), HardwarePool.name == DEFAULT_POOL)
    ).one_or_none()
    if pool is None:
        pool = HardwarePool(name=DEFAULT_POOL, description="where newly identified hosts are placed")
        session.add(pool)
        session.flush()
    return pool


def by_uuid(session: Session, uuid: str, *options: ORMOption) -> Host | None:
    return session.scalars(select(Host).where(Host.uuid == uuid.lower()).options(*options)).unique().one_or_none()


def find(session: Session, key: str) -> Host:
    """A host by id, DMI UUID, FQDN or short host name (as the CLI and API accept it), or NotFound.

    A name must match exactly one host: two rows may share a name (a replaced machine), and a short
    name may be the start of several FQDNs; then only the id or UUID says which one is meant.
    """
    host = None
    if (row_id := as_id(key)) is not None:
        host = session.get(Host, row_id)
    if host is None:
        host = by_uuid(session, key)
    name = key.lower().rstrip(".")
    if host is None and name:
        matches = session.scalars(select(Host).where(Host.hostname == name)).all()
        if not matches and "." not in name:
            matches = session.scalars(select(Host).where(Host.hostname.startswith(f"{name}.", autoescape=True))).all()
        if len(matches) == 1:
            host = matches[0]
        elif matches:
            ids = ", ".join(str(h.id) for h in sorted(matches, key=lambda h: h.id))
            raise NotFound(f"{key!r} names {len(matches)} hosts (ids {ids})", "give the id or the DMI UUID")
    if host is None:
        raise NotFound(f"no host {key!r}", "see `drover host list` (id, UUID or host name)")
    return host


def _arch(value: str) -> Arch:
    try:
        return Arch(value)
    except ValueError:
        return Arch.X86_64


def record(session: Session, facts: wire.Facts) -> tuple[Host, bool, NicChanges]:
    """Create or update the host with `facts.uuid`; return it, whether it is new, and its NIC changes."""
    host = by_uuid(session, facts.uuid)
    created = host is None
    if host is None:
        host = Host(uuid=facts.uuid, hostname=fqdn_of(facts), hardware_pool_id=default_pool(session).id)
        session.add(host)
    cpu = facts.cpu
    host.hostname = fqdn_of(facts)
    host.cpu_model = cpu.model
    host.cpu_count = max(cpu.count, 1)
    host.cpu_cores = max(cpu.cores, 1)
    host.cpu_sockets = max(cpu.sockets, 1)
    host.cpu_flags = sorted(set(cpu.flags))
    host.memory_mib = facts.memory_bytes // (1024 * 1024)
    host.arch = _arch(facts.arch)
    # Without vmx/svm libvirt can only run TCG guests; placement must know it.
    host.hypervisor_type = HypervisorType.KVM if cpu.virtualization else HypervisorType.QEMU
    session.flush()
    changes = _reconcile_nics(session, host, facts)
    _reconcile_disks(host, facts)
    session.flush()
    return host, created, changes


def fqdn_of(facts: wire.Facts) -> str:
    return wire.fold_hostname(facts.fqdn or facts.hostname)


def _reconcile_nics(session: Session, host: Host, facts: wire.Facts) -> NicChanges:
    changes = NicChanges()
    boot_mac = facts.boot_mac.lower() if facts.boot_mac else ""
    wanted = {nic.mac: nic for nic in facts.nics}
    have = {nic.mac: nic for nic in host.nics}
    for mac, old in have.items():
        if mac not in wanted:
            host.nics.remove(old)
            changes.removed.append(mac)
    session.flush()  # removed rows go first: a renamed NIC may take a freed name
    for mac, nic in wanted.items():
        is_boot = nic.boot or mac == boot_mac
        row = have.get(mac)
        if row is None:
            # A MAC is unique across hosts: a NIC moved from another (dead) machine leaves that record.
            stale = session.scalars(select(HostNic).where(HostNic.mac == mac)).one_or_none()
            if stale is not None:
                session.delete(stale)
                session.flush()
            host.nics.append(
                HostNic(name=nic.name, mac=mac, speed_mbps=nic.speed_mbps or None, addresses=list(nic.addresses),
                        is_boot=is_boot)
            )  # fmt: skip
            changes.added.append(mac)
            continue
        new = (nic.name, nic.speed_mbps or None, list(nic.addresses), is_boot)
        if (row.name, row.speed_mbps, row.addresses, row.is_boot) != new:
            row.name, row.speed_mbps, row.addresses, row.is_boot = new
            changes.updated.append(mac)
    return changes


def _reconcile_disks(host: Host, facts: wire.Facts) -> None:
    wanted = {disk.name: disk for disk in facts.disks}
    for old in list(host.disks):
        if old.name not in wanted:
            host.disks.remove(old)
    have = {d.name: d for d in host.disks}
    for name, disk in wanted.items():
        row = have.get(name)
        if row is None:
            row = HostDisk(name=name)
            host.disks.append(row)
        row.model, row.serial, row.size_bytes = disk.model, disk.serial, disk.size_bytes


def lock(session: Session, host_id: int) -> Host | None:
    """The host re-read while this transaction holds its row's write lock; None if it is gone.

    Whoever decides a host's state from what the row says (the host browser's writer, maintenance,
    activate, remove) locks it first, so two deciders never both act on the same old value: an
    activation that saw libvirt down cannot overwrite the browser's "connected" a moment later.
    A no-op UPDATE is the one lock both engines honour: PostgreSQL locks the row, SQLite takes the
    database's write lock (it ignores FOR UPDATE). Locked once per transaction.
    """
    transaction = session.get_transaction()
    held = session.info.get("locked_hosts")
    if held is None or held[0] is not transaction:
        held = session.info["locked_hosts"] = (transaction, set())
    locked: set[int] = held[1]
    if host_id not in locked:
        session.execute(
            update(Host).where(Host.id == host_id).values(state=Host.state).execution_options(synchronize_session=False)
        )
        locked.add(host_id)
        return session.get(Host, host_id, populate_existing=True)
    return session.get(Host, host_id)


def set_state(session: Session, host: Host, state: HostState, why: str = "", by: str = "") -> bool:
    """Move the host to `state` with an event, keeping `why` as its state reason; False when it already was there."""
    if host.state is state:
        return False
    old = host.state
    host.state = state
    host.state_changed_at = utcnow()
    host.state_reason = why
    severity = Severity.WARNING if state is HostState.UNAVAILABLE else Severity.INFO
    message = f"{old} -> {state}" + (f": {why}" if why else "") + (f" (by {by})" if by else "")
    event(session, host, "host.state", message, severity)
    log.info("host %s: %s -> %s %s%s", host.hostname, old, state, why, f" (by {by})" if by else "")
    return True


def event(session: Session, host: Host, kind: str, message: str, severity: Severity = Severity.INFO) -> None:
    session.add(Event(kind=kind, subject=host.hostname, message=message, host_id=host.id, severity=severity))


def summary(host: Host, default_port: int) -> dict[str, object]:
    """A host as the API returns it."""
    return {
        "id": host.id,
        "uuid": host.uuid,
        "hostname": host.hostname,
        "state": str(host.state),
        "state_reason": host.state_reason,
        "state_changed_at": host.state_changed_at.isoformat(),
        "libvirt_connected": host.libvirt_connected,
        "approved": host.approved_at is not None,
        "approved_by": host.approved_by,
        "libvirt_uri": f"qemu+tcp://{host.hostname}:{host.libvirt_port or default_port}/system",
        "cpu_model": host.cpu_model,
        "cpu_count": host.cpu_count,
        "cpu_cores": host.cpu_cores,
        "cpu_sockets": host.cpu_sockets,
        "virtualization": next((f for f in ("vmx", "svm") if f in host.cpu_flags), ""),
        "memory_mib": host.memory_mib,
        "hypervisor_type": str(host.hypervisor_type),
        "last_heartbeat_at": host.last_heartbeat_at.isoformat() if host.last_heartbeat_at else None,
        "power_management": host.power_address is not None,
        "fence_state": str(host.fence_state),
        "created_at": host.created_at.isoformat(),
    }


def detail(host: Host, default_port: int) -> dict[str, object]:
    return {
        **summary(host, default_port),
        "cpu_flags": host.cpu_flags,
        "nics": [
            {"name": n.name, "mac": n.mac, "speed_mbps": n.speed_mbps, "addresses": n.addresses, "boot": n.is_boot}
            for n in sorted(host.nics, key=lambda n: n.name)
        ],
        "disks": [
            {"name": d.name, "model": d.model, "serial": d.serial, "size_bytes": d.size_bytes}
            for d in sorted(host.disks, key=lambda d: d.name)
        ],
        "vms": [
            {"name": v.name, "uuid": v.uuid, "state": str(v.state)} for v in sorted(host.vms, key=lambda v: v.name)
        ],
        "claims": [
            {
                "id": c.id,
                "source": c.source,
                "hostname": c.hostname,
                "boot_mac": c.boot_mac,
                "created_at": c.created_at.isoformat(),
                "last_seen_at": c.last_seen_at.isoformat(),
            }
            for c in host.claims
        ],
    }
