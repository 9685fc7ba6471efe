"""Host life cycle an admin drives: maintenance, activate, remove.

States: `pending -> available <-> unavailable` follow the host browser's libvirt session; `maintenance`
is the admin's. In maintenance the session stays open and the host's VM rows stay true, but the
browser's up/down no longer changes the state (it records `libvirt_connected` instead), and a reboot
(identify) keeps it there. Each verb locks the host row first (hosts.lock) and raises before it
changes anything, so a refusal leaves the database as it was.

Removing forgets the machine: its row (NICs and disks with it), its Kerberos principal, its agent
token and any unused enrolment token bound to it. A removed node that boots again is a new host,
enrolled by the usual rules (a valid token: approved; none: pending).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from appliance import credentials, hosts, storage, tasking
from appliance.db.base import utcnow
from appliance.db.models import (
    EnrolmentToken,
    Event,
    Host,
    HostState,
    Severity,
    TargetKind,
    Task,
    TaskState,
    TaskType,
    VmState,
)
from appliance.errors import Conflict, NotFound, UsageError
from appliance.kerberos.realm import Realm

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
    # Running VMs leave: a clear host task migrates each to a host placement picks (none is this one now).
    if any(vm.state in (VmState.RUNNING, VmState.PAUSED) for vm in host.vms):
        tasking.enqueue(session, TaskType.HOST_CLEAR, host.id, {"reason": "maintenance"}, created_by=by)
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
        storage.give_pools(session, host)
    else:
        why = "activated; libvirt not connected: available once the host browser reaches it"
        hosts.set_state(session, host, HostState.UNAVAILABLE, why, by)
    return host


# VMs that are running, or may be: a host that stopped answering leaves its guests `unreachable`.
_MAY_RUN = frozenset(s for s in VmState if s.is_on_host()) | {VmState.UNREACHABLE}


@dataclass(frozen=True)
class Removed:
    id: int
    hostname: str
    uuid: str
    principal: str  # the principal deleted, "" if none was
    principal_note: str  # why it was kept or why there was none ("" when deleted)
    tokens_invalidated: int
    vms_detached: list[str] = field(default_factory=list)  # "name (state)", now on no host
    tasks_canceled: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "hostname": self.hostname,
            "uuid": self.uuid,
            "principal_deleted": self.principal or None,
            "principal_note": self.principal_note,
            "tokens_invalidated": self.tokens_invalidated,
            "vms_detached": self.vms_detached,
            "tasks_canceled": self.tasks_canceled,
        }


def _principal(session: Session, host: Host, realm: Realm) -> tuple[str, str]:
    """The principal to delete with this host, or "" and why none is."""
    if host.credentials_issued_at is None:
        return "", "never issued: the host did not collect credentials"
    try:
        principal = credentials.service_principal(host.hostname, realm.name)
    except UsageError:
        return "", f"none: {host.hostname!r} is not a valid principal host name"
    # Two rows may share a name (a replaced machine): the other one's keytab is the same principal.
    sharing = session.scalar(
        select(func.count()).select_from(Host).where(
            Host.hostname == host.hostname, Host.id != host.id, Host.credentials_issued_at.is_not(None)
        )
    )  # fmt: skip
    if sharing:
        return "", f"kept {principal}: another host record with the name {host.hostname} uses it"
    return principal, ""


def remove(session: Session, host: Host, by: str, realm: Realm, *, force: bool = False) -> Removed:
    """Delete the host and what identifies it; refuse while VMs run (or may run) on it unless `force`.

    With `force` those VMs keep their rows, on no host, `unreachable`: whether they still run on the
    machine is unknown, and if it comes back (enrolled anew) the browser's re-sync finds them by UUID.
    The principal goes last, inside the transaction: a kadmin failure rolls everything back, and a
    failed commit after it leaves a host whose keytab is dead (remove it again to finish).
    """
    host = _locked(session, host)
    vms = sorted(host.vms, key=lambda v: v.name)
    running = [vm for vm in vms if vm.state in _MAY_RUN]
    if running and not force:
        names = ", ".join(f"{vm.name} ({vm.state})" for vm in running)
        raise Conflict(
            f"host {host.hostname} has {len(running)} VM(s) that are or may be running: {names}",
            "stop or migrate them first, or remove with --force (their rows stay, on no host, unreachable)",
        )
    principal, note = _principal(session, host, realm)
    now = utcnow()
    detached = [f"{vm.name} ({vm.state})" for vm in vms]
    for vm in vms:
        if vm.state in _MAY_RUN and vm.state is not VmState.UNREACHABLE:
            session.add(Event(kind="vm.state", subject=vm.name, message=f"{vm.state} -> unreachable: host "
                              f"{host.hostname} removed by {by}", vm_id=vm.id, severity=Severity.WARNING))  # fmt: skip
            vm.state, vm.state_changed_at = VmState.UNREACHABLE, now
        vm.host = None
    macs = [nic.mac for nic in host.nics]
    bound = EnrolmentToken.host_uuid == host.uuid
    tokens = session.execute(
        update(EnrolmentToken)
        .where(EnrolmentToken.used_at.is_(None), EnrolmentToken.expires_at > now,
               or_(bound, EnrolmentToken.mac.in_(macs)) if macs else bound)
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]  # fmt: skip
    # Ids are not a foreign key on tasks; SQLite may give a later host this id.
    tasks = session.execute(
        update(Task)
        .where(Task.target_kind == TargetKind.HOST, Task.target_id == host.id, Task.state == TaskState.QUEUED)
        .values(state=TaskState.CANCELED, finished_at=now, error=f"host {host.hostname} removed")
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]  # fmt: skip
    removed = Removed(host.id, host.hostname, host.uuid, principal, note, tokens, detached, tasks)
    parts = [f"host {host.hostname} ({host.uuid}, id {host.id}, {host.state}) removed by {by}",
             f"principal {principal} deleted" if principal else f"principal {note}",
             f"{tokens} unused enrolment token(s) invalidated"]  # fmt: skip
    if detached:
        parts.append(f"VMs left on no host: {', '.join(detached)}")
    if tasks:
        parts.append(f"{tasks} queued task(s) canceled")
    # host_id None: the log outlives the row (its older events keep their text, their host_id is nulled).
    session.add(Event(kind="host.removed", subject=host.hostname, message="; ".join(parts),
                      severity=Severity.WARNING if running else Severity.INFO))  # fmt: skip
    session.delete(host)
    session.flush()
    if principal:
        realm.kadmin().delete(principal)
    log.info("%s", "; ".join(parts))
    return removed
