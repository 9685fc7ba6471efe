"""VM snapshots and clones as the API and CLI ask for them: checked, recorded, queued.

A snapshot is libvirt's internal snapshot (qcow2 disks; memory too when the VM runs), taken, reverted and
deleted on the VM's host by taskengine/snapshots.py. A clone is a new VM row with a full copy of each of the
source's disks in the same storage pool, made while the source is stopped (taskengine/clone.py).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import quotas, tasking
from appliance.db.models import (
    Snapshot,
    SnapshotState,
    StorageState,
    StorageType,
    StorageVolume,
    TargetKind,
    Task,
    TaskType,
    User,
    Vm,
    VmDisk,
    VmNic,
    VmState,
    VolumeFormat,
)
from appliance.errors import Conflict, NotFound, UsageError
from appliance.storage import check_name
from appliance.text import as_id
from appliance.vms import NAME as VM_NAME

MAX_DESCRIPTION = 1000


def find_snapshot(session: Session, vm: Vm, key: str) -> Snapshot:
    snap = session.scalars(select(Snapshot).where(Snapshot.vm_id == vm.id, Snapshot.name == key)).one_or_none()
    if snap is None and (row_id := as_id(key)) is not None:
        snap = session.get(Snapshot, row_id)
        if snap is not None and snap.vm_id != vm.id:
            snap = None
    if snap is None:
        raise NotFound(f"VM {vm.name} has no snapshot {key}", f"drover vm snapshot list {vm.name}")
    return snap


def _vm_idle(session: Session, vm: Vm, what: str) -> None:
    """Revert and delete act on the snapshot, not the VM: make sure no VM task runs beside them."""
    pending = tasking.pending_for(session, TargetKind.VM, vm.id)
    if pending:
        raise Conflict(f"cannot {what}: VM {vm.name} has task {pending[0].id} ({pending[0].type}) queued or running",
                       "wait for it (drover task wait) or cancel it")  # fmt: skip
    if vm.host_id is None:
        raise Conflict(f"cannot {what}: VM {vm.name} is on no host")


def _snapshot_idle(session: Session, snap: Snapshot) -> None:
    # The pending task is the mark (no state set at enqueue): a queued task may be canceled.
    pending = tasking.pending_for(session, TargetKind.SNAPSHOT, snap.id)
    if pending:
        raise Conflict(f"snapshot {snap.name} has task {pending[0].id} ({pending[0].type}) queued or running",
                       "wait for it (drover task wait) or cancel it")  # fmt: skip


def create_snapshot(session: Session, vm: Vm, name: str, description: str, by: str | None) -> tuple[Snapshot, Task]:
    check_name("snapshot", name)
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise UsageError(f"description: a string of at most {MAX_DESCRIPTION} characters")
    if session.scalars(select(Snapshot.id).where(Snapshot.vm_id == vm.id, Snapshot.name == name)).first():
        raise Conflict(f"VM {vm.name} already has a snapshot {name}", "pick another name")
    if vm.host_id is None:
        raise Conflict(f"VM {vm.name} is on no host: there is no domain to snapshot", "create or start it first")
    not_qcow2 = [d.target_dev for d in vm.disks if d.volume.format is not VolumeFormat.QCOW2]
    if not_qcow2:
        raise Conflict(f"VM {vm.name} has raw disks ({', '.join(not_qcow2)}): internal snapshots need qcow2",
                       "give the VM qcow2 volumes")  # fmt: skip
    snap = Snapshot(vm_id=vm.id, name=name, description=description, state=SnapshotState.CREATING)
    session.add(snap)
    session.flush()
    # Checked against the VM state table (stopped, running or paused, after what is queued) by enqueue.
    task = tasking.enqueue(session, TaskType.SNAPSHOT_CREATE, vm.id, {"snapshot_id": snap.id}, created_by=by)
    return snap, task


def revert_snapshot(session: Session, snap: Snapshot, by: str | None) -> Task:
    if snap.state is not SnapshotState.READY:
        raise Conflict(f"snapshot {snap.name} is {snap.state}", "only a ready snapshot can be reverted to")
    _vm_idle(session, snap.vm, f"revert VM {snap.vm.name}")
    if snap.vm.state not in (VmState.STOPPED, VmState.RUNNING, VmState.PAUSED):
        raise Conflict(
            f"cannot revert VM {snap.vm.name}: it is {snap.vm.state}", "it must be stopped, running or paused"
        )
    _snapshot_idle(session, snap)
    return tasking.enqueue(session, TaskType.SNAPSHOT_REVERT, snap.id, {}, created_by=by)


def delete_snapshot(session: Session, snap: Snapshot, by: str | None) -> Task:
    # A snapshot still `creating` whose task was canceled (none pending on the VM) can go: _vm_idle checks that.
    _vm_idle(session, snap.vm, f"delete a snapshot of VM {snap.vm.name}")
    _snapshot_idle(session, snap)
    return tasking.enqueue(session, TaskType.SNAPSHOT_DELETE, snap.id, {}, created_by=by)


def snapshot_summary(snap: Snapshot) -> dict[str, Any]:
    return {
        "id": snap.id,
        "vm": snap.vm.name,
        "name": snap.name,
        "description": snap.description,
        "state": str(snap.state),
        "parent": snap.parent.name if snap.parent is not None else None,
        "with_memory": snap.with_memory,
        "created_at": snap.created_at.isoformat(),
    }


def _mac() -> str:
    # 52:54:00 is the prefix qemu/KVM guests use; the rest random (the column is unique: a clash is retried).
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def clone_vm(session: Session, source: Vm, name: str, by: str | None) -> tuple[Vm, Task]:
    """Record the clone (pending) with pending copies of the source's disks, and queue the copy.

    The clone belongs to whoever asked for it, and counts against their quota in the pool as a new VM does."""
    if not isinstance(name, str) or not VM_NAME.match(name):
        raise UsageError("name: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if session.scalars(select(Vm.id).where(Vm.name == name)).first() is not None:
        raise Conflict(f"a VM called {name} already exists", "pick another name")
    owner = session.scalars(select(User).where(User.principal == by)).first() if by else None
    owner_id = owner.id if owner is not None else source.owner_id
    quotas.check_create(session, owner_id, source.hardware_pool_id, sum(d.volume.capacity_bytes for d in source.disks))
    for disk in source.disks:
        if disk.volume.state is not StorageState.AVAILABLE:
            raise Conflict(f"disk {disk.target_dev} of VM {source.name} is {disk.volume.state}")
        if disk.volume.storage_pool.type is StorageType.ISCSI:
            raise Conflict(f"disk {disk.target_dev} of VM {source.name} is an iSCSI LUN", "LUNs are not copied")
    clone = Vm(
        uuid=str(uuid.uuid4()),
        name=name,
        description=source.description,
        vcpus=source.vcpus,
        memory_mib=source.memory_mib,
        arch=source.arch,
        firmware=source.firmware,
        kernel_path=source.kernel_path,
        initrd_path=source.initrd_path,
        kernel_cmdline=source.kernel_cmdline,
        placement_policy=source.placement_policy,
        is_ha=source.is_ha,
        boot_device=source.boot_device,
        hardware_pool_id=source.hardware_pool_id,
        template_id=source.template_id,
        owner_id=owner_id,
        state=VmState.PENDING,
    )
    session.add(clone)
    session.flush()
    for disk in source.disks:
        src = disk.volume
        suffix = ".qcow2" if src.format is VolumeFormat.QCOW2 else ".img"
        vol_name = f"{name}-{disk.target_dev}{suffix}"
        if session.scalars(
            select(StorageVolume.id).where(
                StorageVolume.storage_pool_id == src.storage_pool_id, StorageVolume.name == vol_name
            )
        ).first():
            raise Conflict(f"volume {vol_name} already exists in storage pool {src.storage_pool.name}")
        vol = StorageVolume(storage_pool_id=src.storage_pool_id, name=vol_name, capacity_bytes=src.capacity_bytes,
                            format=src.format, state=StorageState.PENDING)  # fmt: skip
        session.add(vol)
        session.flush()
        session.add(VmDisk(vm_id=clone.id, storage_volume_id=vol.id, target_dev=disk.target_dev, bus=disk.bus,
                           boot_order=disk.boot_order, read_only=disk.read_only))  # fmt: skip
    for nic in source.nics:
        session.add(VmNic(vm_id=clone.id, mac=_mac(), network_id=nic.network_id, model=nic.model))
    session.flush()
    task = tasking.enqueue(session, TaskType.VM_CLONE, source.id, {"clone_id": clone.id}, created_by=by)
    return clone, task
