"""VM pools: `size` identical VMs made from one template in a hardware pool, handed out one by one to users.

A free VM has no owner; a user with vm_control in the pool's hardware pool takes one and owns it from then
on (it stays counted in the pool, as in oVirt). The pool keeps `prestarted` of its free VMs running (or
starting), so a taken VM is usually up at once; each take queues the next start. The API, the CLI (through
the API) and the UI call these; each checks the caller's privilege first and changes nothing on a refusal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import permissions, quotas, storage, tasking, vms
from appliance.db.models import (
    Event,
    HardwarePool,
    Severity,
    TargetKind,
    TaskState,
    TaskType,
    User,
    Vm,
    VmPool,
    VmState,
)
from appliance.errors import Conflict, NotFound, UsageError
from appliance.permissions import Privilege

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")  # VM names are <pool>-<n>: leave room for the number
MAX_SIZE = 200
# A free VM in one of these can be handed out; one still being made or failed cannot.
_TAKEABLE = (VmState.RUNNING, VmState.STOPPED, VmState.STARTING)


@dataclass(frozen=True)
class PoolSpec:
    name: str
    template: str  # name or id
    hardware_pool: str | int | None  # name or id; None: the default pool
    size: int
    prestarted: int
    description: str = ""

    @classmethod
    def from_request(cls, body: dict[str, Any]) -> PoolSpec:
        known = {"name", "template", "pool", "size", "prestarted", "description"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise UsageError(f"{unknown[0]}: unknown field", f"fields: {', '.join(sorted(known))}")
        name = body.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise UsageError("name: 1-40 letters, digits, '.', '_' or '-', starting with a letter or digit")
        template = body.get("template")
        if not isinstance(template, str | int) or isinstance(template, bool) or template == "":
            raise UsageError("template: a template name or id")
        pool = body.get("pool")
        if pool is not None and (not isinstance(pool, str | int) or isinstance(pool, bool)):
            raise UsageError("pool: a hardware pool name or id")
        size = _count(body, "size", 1, MAX_SIZE, None)
        prestarted = _count(body, "prestarted", 0, size, 0)
        description = body.get("description", "")
        if not isinstance(description, str) or len(description) > 1000:
            raise UsageError("description: at most 1000 characters")
        return cls(name, str(template), pool, size, prestarted, description)


def _count(body: dict[str, Any], key: str, low: int, high: int, default: int | None) -> int:
    value = body.get(key, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UsageError(f"{key}: must be a whole number from {low} to {high}")
    return value


def find(session: Session, key: str) -> VmPool:
    key = key.strip()
    row = session.get(VmPool, int(key)) if key.isdigit() else None
    if row is None:
        row = session.scalars(select(VmPool).where(VmPool.name == key)).first()
    if row is None:
        raise NotFound(f"VM pool {key!r} does not exist", "see `drover vmpool list`")
    return row


def _hardware_pool(session: Session, key: str | int | None) -> HardwarePool:
    if key is None:
        return storage.hardware_pool(session, None)
    return storage.hardware_pool(session, str(key))


def create(session: Session, spec: PoolSpec, principal: str) -> tuple[VmPool, list[int]]:
    """The pool row, its `size` VMs (pending, each with its create task) and the first `prestarted` starts.

    Returns the pool and the ids of the tasks queued. The VMs have no owner: a user takes them later.
    """
    hw = _hardware_pool(session, spec.hardware_pool)
    permissions.require(session, principal, Privilege.MODIFY, hw.id, f"create VM pools in hardware pool {hw.name}")
    template = storage.find_template(session, spec.template)
    if session.scalars(select(VmPool.id).where(VmPool.name == spec.name)).first() is not None:
        raise Conflict(f"a VM pool called {spec.name} already exists", "pick another name")
    names = [f"{spec.name}-{n}" for n in range(1, spec.size + 1)]
    taken = session.scalars(select(Vm.name).where(Vm.name.in_(names))).all()
    if taken:
        raise Conflict(f"VM {taken[0]} already exists", "the pool's VMs are called <pool>-1, <pool>-2, ...")
    pool = VmPool(name=spec.name, description=spec.description, size=spec.size, prestarted=spec.prestarted,
                  template_id=template.id, hardware_pool_id=hw.id)  # fmt: skip
    session.add(pool)
    session.flush()
    tasks: list[int] = []
    for n, name in enumerate(names):
        created = vms.create(session, {"name": name, "template": template.id, "pool": hw.id}, principal)
        created.vm.owner_id = None  # nobody's until taken: the creator's quota is not the user's
        created.vm.vm_pool_id = pool.id
        tasks.append(created.task.id)
        if n < spec.prestarted:
            # A start may follow a queued create (the state table projects it to stopped).
            tasks.append(tasking.enqueue(session, TaskType.VM_START, created.vm.id, {}, created_by=principal).id)
    _event(session, pool, "vmpool.created", f"VM pool {pool.name} created by {principal}: {spec.size} VMs of "
           f"template {template.name}, {spec.prestarted} kept running")  # fmt: skip
    session.flush()
    return pool, tasks


def delete(session: Session, pool: VmPool, principal: str) -> list[int]:
    """Queue the delete of every free VM; refused while a user still holds one of its VMs."""
    permissions.require(session, principal, Privilege.MODIFY, pool.hardware_pool_id, f"delete VM pool {pool.name}")
    held = [vm.name for vm in pool.vms if vm.owner_id is not None]
    if held:
        raise Conflict(f"VM pool {pool.name} has VMs in use: {', '.join(sorted(held)[:5])}",
                       "their users keep them; delete those VMs first")  # fmt: skip
    tasks = []
    for vm in sorted(pool.vms, key=lambda v: v.id):
        if vm.state in (VmState.RUNNING, VmState.PAUSED, VmState.STARTING):
            tasks.append(tasking.enqueue(session, TaskType.VM_POWEROFF, vm.id, {}, created_by=principal).id)
        tasks.append(tasking.enqueue(session, TaskType.VM_DELETE, vm.id, {}, created_by=principal).id)
        vm.vm_pool_id = None
    _event(session, pool, "vmpool.deleted", f"VM pool {pool.name} deleted by {principal}")
    session.delete(pool)
    session.flush()
    return tasks


def free_vms(session: Session, pool: VmPool) -> list[Vm]:
    """The pool's VMs nobody holds, running ones first (those are handed out first)."""
    rows = session.scalars(select(Vm).where(Vm.vm_pool_id == pool.id, Vm.owner_id.is_(None)).order_by(Vm.id)).all()
    order = {VmState.RUNNING: 0, VmState.STARTING: 1, VmState.STOPPED: 2}
    return sorted(rows, key=lambda v: (order.get(v.state, 9), v.id))


def take(session: Session, pool: VmPool, principal: str) -> tuple[Vm, list[int]]:
    """Hand a free VM of the pool to `principal` (within their quota); the tasks queued to refill the running ones."""
    permissions.require(session, principal, Privilege.VM_CONTROL, pool.hardware_pool_id,
                        f"take a VM from pool {pool.name}")  # fmt: skip
    user = session.scalars(select(User).where(User.principal == principal)).first()
    if user is None:
        raise NotFound(f"no user {principal}")
    candidates = [vm for vm in free_vms(session, pool) if vm.state in _TAKEABLE]
    if not candidates:
        raise Conflict(f"VM pool {pool.name} has no free VM left ({pool.size} VMs, all taken or not made yet)",
                       "try again later, or ask an admin to make the pool larger")  # fmt: skip
    # Lock the row and re-check that it is still free: two users taking at once never get the same VM.
    vm = tasking.lock_vm(session, candidates[0].id)
    if vm is None or vm.owner_id is not None:
        raise Conflict(f"VM pool {pool.name}: another user took that VM just now", "try again")
    quotas.check_take(session, user.id, vm)
    vm.owner_id = user.id
    session.flush()
    _event(session, pool, "vmpool.taken", f"{principal} took VM {vm.name} from pool {pool.name}", vm)
    return vm, refill(session, pool, principal)


def refill(session: Session, pool: VmPool, principal: str) -> list[int]:
    """Queue starts of free stopped VMs until `prestarted` free ones run or are starting; the task ids."""
    free = free_vms(session, pool)
    starting = {t.target_id for vm in free for t in tasking.pending_for(session, TargetKind.VM, vm.id)
                if t.type is TaskType.VM_START and t.state in (TaskState.QUEUED, TaskState.RUNNING)}  # fmt: skip
    up = sum(1 for vm in free if vm.state in (VmState.RUNNING, VmState.STARTING) or vm.id in starting)
    tasks = []
    for vm in free:
        if up >= pool.prestarted:
            break
        if vm.state is VmState.STOPPED and vm.id not in starting:
            tasks.append(tasking.enqueue(session, TaskType.VM_START, vm.id, {}, created_by=principal).id)
            up += 1
    return tasks


def takeable(session: Session, principal: str) -> list[VmPool]:
    """The pools `principal` may take a VM from (vm_control in the pool's hardware pool)."""
    rows = session.scalars(select(VmPool).order_by(VmPool.name)).all()
    return [p for p in rows if permissions.allowed(session, principal, Privilege.VM_CONTROL, p.hardware_pool_id)]


def visible(session: Session, principal: str) -> list[VmPool]:
    rows = session.scalars(select(VmPool).order_by(VmPool.name)).all()
    return [p for p in rows if permissions.allowed(session, principal, Privilege.VIEW, p.hardware_pool_id)]


def summary(session: Session, pool: VmPool) -> dict[str, Any]:
    free = [vm for vm in free_vms(session, pool) if vm.state in _TAKEABLE]  # made and not failed: takeable now
    return {
        "id": pool.id,
        "name": pool.name,
        "description": pool.description,
        "template": pool.template.name,
        "hardware_pool": pool.pool.name,
        "size": pool.size,
        "prestarted": pool.prestarted,
        "vms": len(pool.vms),
        "free": len(free),
        "free_running": sum(1 for vm in free if vm.state is VmState.RUNNING),
    }


def _event(session: Session, pool: VmPool, kind: str, message: str, vm: Vm | None = None) -> None:
    session.add(Event(kind=kind, subject=f"VM pool {pool.name}", message=message, severity=Severity.INFO,
                      vm_id=vm.id if vm is not None else None))  # fmt: skip
