"""Task handlers for VM snapshots: create, revert, delete, on the VM's host, as libvirt internal snapshots.

Each first asks libvirt what is there (a snapshot of that name? still there?), so a re-run after a lost
lease finishes the rows without taking, reverting or deleting twice; hence RERUN as the reconciler.
libvirt keeps the snapshot's metadata with the domain on its host: a stateless node that rebooted has
the qcow2's internal snapshots but no longer the metadata, and revert then fails with that reason.
"""

from __future__ import annotations

import contextlib
from typing import Any

import libvirt
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from appliance.db.models import Snapshot, SnapshotState, TaskType, Vm
from appliance.errors import Conflict, DroverError, NotFound
from taskengine.actions import Reconciled, TaskContext, Verdict, action, reconciler
from taskengine.connections import is_transient
from taskengine.storagetasks import final_failure
from taskengine.storagexml import snapshot_xml
from taskengine.vmlife import lookup, real_state
from taskengine.worker import set_vm_state


class SnapshotError(DroverError):
    exit_code = 3
    http_status = 502


def _domain(ctx: TaskContext, vm: Vm) -> libvirt.virDomain:
    if vm.host is None:
        raise Conflict(f"VM {vm.name} is on no host")
    dom = lookup(ctx.connect(vm.host), vm.uuid)
    if dom is None:
        raise Conflict(f"VM {vm.name} is not defined on {vm.host.hostname}", "start it, or update its state")
    return dom


def _find(dom: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot | None:
    try:
        return dom.snapshotLookupByName(name, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            return None
        raise


def _fail_text(what: str, exc: libvirt.libvirtError) -> SnapshotError:
    return SnapshotError(f"{what}: {exc.get_error_message() or exc}")



def _snapshot(s: Session, snapshot_id: int) -> Snapshot:
    snap = s.get(Snapshot, snapshot_id)
    if snap is None:
        raise NotFound(f"snapshot {snapshot_id} no longer exists")
    return snap


@action(TaskType.SNAPSHOT_CREATE)
def create(ctx: TaskContext) -> dict[str, Any]:
    snapshot_id = int(ctx.task.args["snapshot_id"])
    try:
        with ctx.session() as s:
            snap = _snapshot(s, snapshot_id)
            vm = snap.vm
            dom = _domain(ctx, vm)
            found = _find(dom, snap.name)
            if found is None:
                try:
                    found = dom.snapshotCreateXML(snapshot_xml(snap.name, snap.description), 0)
                except libvirt.libvirtError as exc:
                    if is_transient(exc):
                        raise
                    raise _fail_text(f"snapshot {snap.name} of VM {vm.name}", exc) from None
            try:
                parent_name: str | None = found.getParent(0).getName()
            except libvirt.libvirtError:
                parent_name = None  # a root snapshot
            parent = None
            if parent_name is not None:
                parent = s.scalars(
                    select(Snapshot).where(Snapshot.vm_id == vm.id, Snapshot.name == parent_name)
                ).first()
            snap.parent_id = parent.id if parent is not None else None
            state = found.getXMLDesc(0)
            snap.with_memory = "<memory snapshot='internal'" in state
            snap.state = SnapshotState.READY
            return {"snapshot": snap.name, "parent": parent_name, "with_memory": snap.with_memory}
    except Exception as exc:
        if final_failure(ctx, exc):
            with ctx.session() as s, contextlib.suppress(NotFound):
                s.delete(_snapshot(s, snapshot_id))
        raise


@action(TaskType.SNAPSHOT_REVERT)
def revert(ctx: TaskContext) -> dict[str, Any]:
    try:
        with ctx.session() as s:
            snap = _snapshot(s, ctx.task.target_id)
            vm = snap.vm
            dom = _domain(ctx, vm)
            found = _find(dom, snap.name)
            if found is None:
                raise Conflict(f"libvirt on {vm.host.hostname if vm.host else '?'} does not know snapshot {snap.name} "
                               f"of VM {vm.name}", "its host may have rebooted since it was taken")  # fmt: skip
            try:
                # FORCE: a running VM reverts to a snapshot taken while it was stopped (libvirt stops it).
                dom.revertToSnapshot(found, libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE)
            except libvirt.libvirtError as exc:
                if is_transient(exc):
                    raise
                raise _fail_text(f"reverting VM {vm.name} to {snap.name}", exc) from None
            now = real_state(dom)
            set_vm_state(s, vm, now, f"reverted to snapshot {snap.name}", ctx.task.id)
            snap.state = SnapshotState.READY
            return {"snapshot": snap.name, "vm_state": str(now)}
    except Exception as exc:
        if final_failure(ctx, exc):
            _back_to_ready(ctx)
        raise


def _back_to_ready(ctx: TaskContext) -> None:
    with ctx.session() as s:
        s.execute(update(Snapshot).where(Snapshot.id == ctx.task.target_id).values(state=SnapshotState.READY))


@action(TaskType.SNAPSHOT_DELETE)
def delete(ctx: TaskContext) -> dict[str, Any]:
    try:
        with ctx.session() as s:
            snap = _snapshot(s, ctx.task.target_id)
            vm = snap.vm
            dom = _domain(ctx, vm)
            found = _find(dom, snap.name)
            if found is not None:
                try:
                    found.delete(0)
                except libvirt.libvirtError as exc:
                    if is_transient(exc):
                        raise
                    raise _fail_text(f"deleting snapshot {snap.name} of VM {vm.name}", exc) from None
            # libvirt hangs the children on the deleted one's parent: so does the database.
            s.execute(update(Snapshot).where(Snapshot.parent_id == snap.id).values(parent_id=snap.parent_id))
            name = snap.name
            s.delete(snap)
            return {"snapshot": name, "deleted": found is not None}
    except Exception as exc:
        if final_failure(ctx, exc):
            _back_to_ready(ctx)
        raise


def _rerun(_ctx: TaskContext) -> Reconciled:
    return Reconciled(Verdict.RERUN)


for _type in (TaskType.SNAPSHOT_CREATE, TaskType.SNAPSHOT_REVERT, TaskType.SNAPSHOT_DELETE):
    reconciler(_type)(_rerun)
