"""Task handler for cloning a VM: copy each disk of the (stopped) source into the clone's volume, then define
the clone on the source's host, so it ends stopped and ready to start.

Copies go through libvirt (createXMLFrom: qemu-img convert on file pools) on a host that sees the pool. A copy
a dead worker left half-made is made again from scratch (taskengine.storage.clone_volume), a volume already
available is kept: RERUN is the reconciler. A clone that cannot be finished is removed whole: its copies
from the storage, its rows from the database.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from appliance.db.models import StorageState, StorageVolume, TaskType, Vm, VmState
from appliance.errors import NotFound
from taskengine import storage
from taskengine.actions import Reconciled, TaskContext, Verdict, action, reconciler
from taskengine.storagetasks import apply_facts, final_failure, pool_hosts
from taskengine.vmlife import define
from taskengine.worker import set_vm_state

log = logging.getLogger(__name__)



@action(TaskType.VM_CLONE)
def clone(ctx: TaskContext) -> dict[str, Any]:
    clone_id = int(ctx.task.args["clone_id"])
    try:
        return _clone(ctx, clone_id)
    except Exception as exc:
        if final_failure(ctx, exc):
            _remove_clone(ctx, clone_id)
        raise


def _clone(ctx: TaskContext, clone_id: int) -> dict[str, Any]:
    # The copies may take minutes: plan them in one transaction, copy with none open (progress writes its own
    # rows meanwhile), record each copy in a short one, then define the clone.
    with ctx.session() as s:
        source = s.get(Vm, ctx.task.target_id)
        copy = s.get(Vm, clone_id)
        if source is None or copy is None:
            raise NotFound("the VM to clone or its clone no longer exists")
        by_dev = {d.target_dev: d.volume for d in source.disks}
        plan = []
        for disk in sorted(copy.disks, key=lambda d: d.target_dev):
            vol = disk.volume
            if vol.state is StorageState.AVAILABLE:
                continue  # copied by an earlier run of this task
            pool = vol.storage_pool
            plan.append((vol, by_dev[disk.target_dev], pool, pool_hosts(s, pool)[0]))
        total = len(copy.disks)
        s.expunge_all()
    copied = []
    for n, (vol, src, pool, host) in enumerate(plan):
        ctx.progress(n / max(1, total), f"copying {src.name} to {vol.name} on {host.hostname}")
        facts = storage.clone_volume(ctx.connect(host), pool, src, vol)
        with ctx.session() as s:
            row = s.get(StorageVolume, vol.id)
            if row is None:
                raise NotFound(f"volume {vol.name} of the clone no longer exists")
            apply_facts(row, facts)
        copied.append(vol.name)
    with ctx.session() as s:
        source = s.get(Vm, ctx.task.target_id)
        copy = s.get(Vm, clone_id)
        if source is None or copy is None:
            raise NotFound("the VM to clone or its clone no longer exists")
        home = source.host
        if home is not None:
            define(ctx, s, copy, home)
            set_vm_state(s, copy, VmState.STOPPED, f"cloned from {source.name} by task {ctx.task.id}", ctx.task.id)
        return {"clone": copy.name, "clone_id": copy.id, "copied": copied,
                "host": home.hostname if home is not None else None}  # fmt: skip


def _remove_clone(ctx: TaskContext, clone_id: int) -> None:
    with ctx.session() as s:
        copy = s.get(Vm, clone_id)
        if copy is None:
            return
        volumes = [d.volume for d in copy.disks]
        for vol in volumes:
            with contextlib.suppress(Exception):
                storage.delete_volume(ctx.connect(pool_hosts(s, vol.storage_pool)[0]), vol.storage_pool, vol.name)
        s.delete(copy)
        s.flush()
        for vol in volumes:
            s.delete(vol)
    log.info("clone %s removed after its task failed", clone_id)


@reconciler(TaskType.VM_CLONE)
def _rerun(_ctx: TaskContext) -> Reconciled:
    return Reconciled(Verdict.RERUN)
