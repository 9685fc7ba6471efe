"""What a fence means for the database: a host known to be off releases its VMs, and its HA VMs restart elsewhere.

Only two things make a host fenced: its BMC confirming power off (appliance.fencer) or an admin confirming
the host was rebooted (`drover host confirm-rebooted`, recorded with who). Until then its VMs stay
`unreachable` on it, never restarted: a host that is cut off but alive may still run them, and a VM
running twice corrupts its disks.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import hosts, leadership, tasking
from appliance.db.base import utcnow
from appliance.db.models import Event, FenceAttempt, FenceState, Host, HostState, Severity, TaskType, Vm, VmState
from appliance.errors import Conflict, DroverError

log = logging.getLogger(__name__)

# HA restarts go before ordinary tasks of the same priority band: a user's queued work waits for them.
HA_TASK_PRIORITY = 100


def set_fence(session: Session, host: Host, state: FenceState, note: str) -> None:
    host.fence_state = state
    host.fence_changed_at = utcnow()
    host.fence_note = note


def release(session: Session, host: Host, by: str, how: str) -> list[int]:
    """Mark `host` fenced, take its VMs off it (stopped) and queue a start for each HA VM that was live there,
    highest ha_priority first; placement picks the host at run time. Returns the tasks queued."""
    set_fence(session, host, FenceState.FENCED, how)
    host.fenced_by = by
    host.libvirtd_restart_asked_at = None
    vms = session.scalars(select(Vm).where(Vm.host_id == host.id).order_by(Vm.id)).all()
    hosts.event(session, host, "fence.done", f"{how}; {len(vms)} VMs released", Severity.WARNING)
    log.warning("host %s fenced (%s): %d VMs released", host.hostname, how, len(vms))
    restart: list[Vm] = []
    for vm in vms:
        was = vm.state
        vm.host_id = None
        if was is not VmState.STOPPED:
            session.add(Event(kind="vm.state", subject=vm.name, message=f"{was} -> stopped: its host {host.hostname} "
                              f"was fenced ({how})", vm_id=vm.id, host_id=host.id))  # fmt: skip
        vm.state, vm.state_changed_at = VmState.STOPPED, utcnow()
        vm.state_reason = f"host {host.hostname} fenced: {how}"
        # Live when its host was lost (the host browser kept what it was); unreachable since before that was kept:
        # taken as live, an HA VM is better started once too often than left down.
        if was is VmState.UNREACHABLE:
            live = vm.lost_state.is_on_host() if vm.lost_state is not None else True
        else:
            live = was.is_on_host()
        vm.lost_state = None
        if vm.is_ha and live:
            restart.append(vm)
    session.flush()
    queued: list[int] = []
    for vm in sorted(restart, key=lambda v: (-v.ha_priority, v.id)):
        try:
            task = tasking.enqueue(session, TaskType.VM_START, vm.id, {"ha": True, "fenced_host": host.hostname},
                                   created_by=None, priority=HA_TASK_PRIORITY + vm.ha_priority)  # fmt: skip
        except DroverError as exc:
            session.add(Event(kind="ha.restart", subject=vm.name, severity=Severity.ERROR, vm_id=vm.id,
                              message=f"not restarted after {host.hostname} was fenced: {exc.message}"))  # fmt: skip
            continue
        queued.append(task.id)
        session.add(Event(kind="ha.restart", subject=vm.name, vm_id=vm.id, task_id=task.id, severity=Severity.WARNING,
                          message=f"restart queued (task {task.id}, priority {vm.ha_priority}) after {host.hostname} "
                          "was fenced"))  # fmt: skip
    return queued


def confirm_rebooted(session: Session, host: Host, by: str) -> list[int]:
    """An admin vouches that the host was rebooted (or is off): the same release a BMC's confirmation gives."""
    host = hosts.lock(session, host.id) or host
    if host.state is HostState.AVAILABLE and host.libvirt_connected:
        raise Conflict(f"host {host.hostname} answers over libvirt: its VMs are known, there is nothing to confirm",
                       "confirm only a host that is unavailable and that you know was rebooted or is off")  # fmt: skip
    if host.state is HostState.PENDING:
        raise Conflict(f"host {host.hostname} is pending approval: it runs no VMs of ours")
    if host.fence_state is FenceState.FENCED:
        raise Conflict(f"host {host.hostname} is already fenced ({host.fence_note})")
    return release(session, host, by, f"{by} confirmed the host was rebooted")


def clear(session: Session, host: Host, why: str) -> None:
    """The host answers again: whatever fencing was under way ends (a fenced one came back from its reboot)."""
    old = host.fence_state
    set_fence(session, host, FenceState.NONE, why)
    host.fence_attempts = 0
    host.libvirtd_restart_asked_at = None
    hosts.event(session, host, "fence.cleared", f"{old} -> none: {why}")


def status(session: Session, limit: int = 20) -> dict[str, object]:
    """Who fences (the lease), hosts with a fence under way, and the latest power commands sent to BMCs."""
    leader = leadership.current(session)
    busy = session.scalars(select(Host).where(Host.fence_state != FenceState.NONE).order_by(Host.hostname)).all()
    rows = session.execute(select(FenceAttempt, Host.hostname).join(Host, FenceAttempt.host_id == Host.id)
                           .order_by(FenceAttempt.id.desc()).limit(limit)).all()  # fmt: skip
    hosts_under_way = [{"host": h.hostname, "fence_state": str(h.fence_state), "episode": h.fence_episode,
                        "note": h.fence_note, "fenced_by": h.fenced_by} for h in busy]  # fmt: skip
    attempts = [{"id": a.id, "host": name, "episode": a.episode, "action": str(a.action), "number": a.number,
                 "holder": a.holder, "term": a.term, "sent_at": a.sent_at.isoformat(), "result": str(a.result),
                 "finished_by": a.finished_by, "note": a.note} for a, name in rows]  # fmt: skip
    return {"leader": leader.as_dict() if leader is not None else None, "hosts": hosts_under_way, "attempts": attempts}
