"""Quotas per user and hardware pool: checked when a VM is created (VMs, vCPUs, memory, storage) and when it
is started (vCPUs and memory of the owner's VMs that run, or will once their queued starts have run).

A refusal says which quota, the limit, what the request would make it and by how much it is over.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.db.models import HardwarePool, Quota, StorageVolume, Task, TaskState, TaskType, User, Vm, VmDisk
from appliance.errors import Conflict, NotFound, UsageError
from appliance.placement import HOLDS_RESOURCES


@dataclass(frozen=True)
class Usage:
    vms: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    disk_bytes: int = 0


def _quota(session: Session, owner_id: int | None, pool_id: int) -> Quota | None:
    if owner_id is None:
        return None
    return session.scalars(select(Quota).where(Quota.user_id == owner_id, Quota.hardware_pool_id == pool_id)).first()


def _refuse(session: Session, pool_id: int, checks: list[tuple[str, int | None, int, str]]) -> None:
    over = [(name, limit, want, unit) for name, limit, want, unit in checks if limit is not None and want > limit]
    if not over:
        return
    pool = session.scalar(select(HardwarePool.name).where(HardwarePool.id == pool_id)) or pool_id
    parts = [f"{name} {limit}{unit}: this would make {want}{unit}, {want - limit}{unit} over"
             for name, limit, want, unit in over]  # fmt: skip
    raise Conflict(f"over quota in hardware pool {pool}: " + "; ".join(parts),
                   "stop or delete VMs, or ask an admin to raise the quota")  # fmt: skip


def owned(session: Session, owner_id: int, pool_id: int) -> Usage:
    """What the owner's VMs in the pool hold: all of them (count, disks) and the running ones (vCPUs, memory)."""
    vms = session.scalar(select(func.count()).select_from(Vm).where(Vm.owner_id == owner_id,
                                                                    Vm.hardware_pool_id == pool_id)) or 0  # fmt: skip
    disk = session.scalar(
        select(func.coalesce(func.sum(StorageVolume.capacity_bytes), 0))
        .select_from(VmDisk).join(Vm, VmDisk.vm_id == Vm.id)
        .join(StorageVolume, VmDisk.storage_volume_id == StorageVolume.id)
        .where(Vm.owner_id == owner_id, Vm.hardware_pool_id == pool_id)
    ) or 0  # fmt: skip
    starting = select(Task.target_id).where(
        Task.type == TaskType.VM_START, Task.state.in_((TaskState.QUEUED, TaskState.RUNNING))
    )
    live = session.execute(
        select(func.coalesce(func.sum(Vm.vcpus), 0), func.coalesce(func.sum(Vm.memory_mib), 0)).where(
            Vm.owner_id == owner_id, Vm.hardware_pool_id == pool_id,
            Vm.state.in_(HOLDS_RESOURCES) | Vm.id.in_(starting),
        )
    ).one()  # fmt: skip
    return Usage(int(vms), int(live[0]), int(live[1]), int(disk))


def check_create(session: Session, owner_id: int | None, pool_id: int, disk_bytes: int) -> None:
    """A new VM for `owner_id` in the pool: VM count and storage (vCPUs and memory count once it starts)."""
    quota = _quota(session, owner_id, pool_id)
    if quota is None or owner_id is None:
        return
    used = owned(session, owner_id, pool_id)
    _refuse(session, pool_id, [
        ("max_vms", quota.max_vms, used.vms + 1, ""),
        ("max_disk_bytes", quota.max_disk_bytes, used.disk_bytes + disk_bytes, " bytes"),
    ])  # fmt: skip


def check_start(session: Session, vm: Vm) -> None:
    """Starting `vm`: its owner's running vCPUs and memory in the pool, with this VM's, within quota."""
    quota = _quota(session, vm.owner_id, vm.hardware_pool_id)
    if quota is None or vm.owner_id is None:
        return
    used = owned(session, vm.owner_id, vm.hardware_pool_id)
    _refuse(session, vm.hardware_pool_id, [
        ("max_vcpus", quota.max_vcpus, used.vcpus + vm.vcpus, ""),
        ("max_memory_mib", quota.max_memory_mib, used.memory_mib + vm.memory_mib, " MiB"),
    ])  # fmt: skip


def check_take(session: Session, owner_id: int, vm: Vm) -> None:
    """`vm` (a pool's free VM) handed to `owner_id`: one more VM, and its vCPUs and memory if it is up."""
    quota = _quota(session, owner_id, vm.hardware_pool_id)
    if quota is None:
        return
    used = owned(session, owner_id, vm.hardware_pool_id)
    live = vm.state in HOLDS_RESOURCES
    _refuse(session, vm.hardware_pool_id, [
        ("max_vms", quota.max_vms, used.vms + 1, ""),
        ("max_vcpus", quota.max_vcpus if live else None, used.vcpus + vm.vcpus, ""),
        ("max_memory_mib", quota.max_memory_mib if live else None, used.memory_mib + vm.memory_mib, " MiB"),
    ])  # fmt: skip


LIMITS = ("max_vms", "max_vcpus", "max_memory_mib", "max_disk_bytes")
# What each column holds (INTEGER, BIGINT): a larger limit is refused, not overflowed in the database.
LIMIT_MAX = {"max_vms": 2**31 - 1, "max_vcpus": 2**31 - 1, "max_memory_mib": 2**63 - 1, "max_disk_bytes": 2**63 - 1}


def set_quota(session: Session, principal: str, pool_key: str | int, limits: dict[str, int | None]) -> Quota:
    """Set (replace) `principal`'s quota in a hardware pool; a limit left out or None is unlimited."""
    unknown = sorted(set(limits) - set(LIMITS))
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown limit", f"limits: {', '.join(LIMITS)}")
    for key, value in limits.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise UsageError(f"{key}: must be a whole number >= 0, or null for unlimited")
        if value is not None and value > LIMIT_MAX[key]:
            raise UsageError(f"{key}: at most {LIMIT_MAX[key]}")
    user = session.scalars(select(User).where(User.principal == principal)).first()
    if user is None:
        raise NotFound(f"no user {principal}", "add the user first (`drover user add`)")
    pool = (session.get(HardwarePool, pool_key) if isinstance(pool_key, int)
            else session.scalars(select(HardwarePool).where(HardwarePool.name == pool_key)).first())  # fmt: skip
    if pool is None:
        raise NotFound(f"hardware pool {pool_key!r} does not exist")
    quota = _quota(session, user.id, pool.id)
    if quota is None:
        quota = Quota(user_id=user.id, hardware_pool_id=pool.id)
        session.add(quota)
    for key in LIMITS:
        setattr(quota, key, limits.get(key))
    session.flush()
    return quota


def describe(quota: Quota) -> dict[str, object]:
    return {"principal": quota.user.principal, "pool": quota.pool.name,
            **{key: getattr(quota, key) for key in LIMITS}}  # fmt: skip
