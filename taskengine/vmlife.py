"""VM life actions: create (define), start, shutdown (ACPI), poweroff, suspend, resume, save, restore, delete
and update state, each idempotent against libvirt's real state so a retry or a take-over never repeats one.

A stateless node forgets its definitions when it reboots, so start always (re)defines the domain from the
database before starting it, on the VM's host or, if it has none (or its host takes no VMs), on the host
placement picks. Save is libvirt's managed save: the state file stays with the domain on its host, and
restore starts the domain from it.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import libvirt
from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session, joinedload

from appliance import cloudinit, placement
from appliance.db.models import (
    Host,
    HostState,
    PlacementPolicy,
    StorageState,
    StorageVolume,
    TaskType,
    Vm,
    VmDisk,
    VmState,
)
from appliance.errors import Conflict, DroverError, NotFound
from taskengine import domainxml, storage, storagetasks
from taskengine.actions import Reconciled, TaskContext, Verdict, action, reconciler

log = logging.getLogger(__name__)

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: VmState.STOPPED,
    libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: VmState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: VmState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: VmState.STOPPING,
    libvirt.VIR_DOMAIN_SHUTOFF: VmState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: VmState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: VmState.PAUSED,
}


def vm_of(s: Session, ctx: TaskContext) -> Vm:
    vm = s.get(Vm, ctx.task.target_id)
    if vm is None:
        raise NotFound(f"VM {ctx.task.target_id} no longer exists")
    return vm


def host_of(vm: Vm) -> Host:
    if vm.host is None:
        raise Conflict(f"VM {vm.name} is on no host", "start it (placement picks a host) or create it again")
    return vm.host


def lookup(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def settle(dom: libvirt.virDomain, timeout: float = 120) -> None:
    """Wait while libvirt still runs a job on the domain: a worker that died in the middle of a call left
    libvirtd finishing it, and deciding (or starting again) before it ends would race it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = dom.controlInfo()[0]
        except libvirt.libvirtError:
            return  # not running (no control state to report), or gone: nothing in progress to wait for
        if state == libvirt.VIR_DOMAIN_CONTROL_OK:
            return
        time.sleep(0.2)


def real_state(dom: libvirt.virDomain) -> VmState:
    state, _reason = dom.state()
    if state == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage():
        return VmState.SAVED
    return _STATES.get(state, VmState.STOPPED)


def define(ctx: TaskContext, s: Session, vm: Vm, host: Host) -> libvirt.virDomain:
    """Define (or redefine) `vm` on `host` from the database, and record it there."""
    conn = ctx.connect(host)
    caps = domainxml.caps_from_xml(conn.getCapabilities(), str(vm.arch), host.hypervisor_type)
    if not caps.domain_types:
        raise DroverError(f"host {host.hostname} cannot run {vm.arch} guests", "its libvirt lists no such guest")
    dom = conn.defineXML(domainxml.build(vm, caps))
    vm.host_id = host.id
    return dom


def _placed(ctx: TaskContext, s: Session, vm: Vm) -> Host:
    """The host for `vm`: the one asked for, its own if that still takes VMs, else placement's choice."""
    wanted = ctx.task.args.get("host_id")
    if wanted is not None:
        host = s.get(Host, int(wanted))
        if host is None:
            raise NotFound(f"host {wanted} does not exist")
        if not host.state.accepts_vms():
            raise Conflict(f"host {host.hostname} is {host.state} and takes no new VMs")
        return host
    if vm.host is not None and (vm.host.state is HostState.AVAILABLE or vm.placement_policy is PlacementPolicy.PINNED):
        return vm.host
    if vm.placement_policy is PlacementPolicy.PINNED:
        raise Conflict(f"VM {vm.name} is pinned but has no host", "create it with a host")
    return placement.choose(s, vm, cpu_overcommit=ctx.settings.cpu_overcommit if ctx.settings else 1.0)


def overlays(vm: Vm) -> list[StorageVolume]:
    """The VM's own copy-on-write overlays (made for it over a template's base image)."""
    return [d.volume for d in vm.disks if d.volume.backing_volume_id is not None]


def _make_overlays(ctx: TaskContext, s: Session, vm: Vm) -> list[str]:
    """Create the VM's overlays not yet made, on a host of their pool (idempotent: one already there is read)."""
    made = []
    for vol in overlays(vm):
        if vol.state is StorageState.AVAILABLE:
            continue
        host = storagetasks.pool_hosts(s, vol.storage_pool)[0]
        facts = storage.create_volume(ctx.connect(host), vol.storage_pool, vol, vol.backing)
        storagetasks.apply_facts(vol, facts)
        made.append(vol.name)
    return made


def owned(vm: Vm) -> list[StorageVolume]:
    """Volumes made for this VM alone and deleted with it: its overlays and its cloud-init seed."""
    seed = cloudinit.seed_volume(vm)
    return overlays(vm) + ([seed.volume] if seed is not None else [])


def _upload_seed(ctx: TaskContext) -> str | None:
    """Upload the VM's cloud-init seed if it is not in its pool yet (idempotent, like the overlays): done by
    the create task before the domain is defined, so no start can ever run before its seed is in place."""
    with ctx.session() as s:
        vm = vm_of(s, ctx)
        disk = cloudinit.seed_volume(vm)
        if disk is None or disk.volume.state is StorageState.AVAILABLE:
            return None
        source = ctx.task.args.get(cloudinit.SEED_ARG)
        if not source or not Path(source).is_file():
            raise DroverError(f"the cloud-init seed of VM {vm.name} is not in the appliance's upload directory",
                              "delete the VM and create it again")  # fmt: skip
        vol, pool = disk.volume, disk.volume.storage_pool
        host = storagetasks.pool_hosts(s, pool)[0]
        s.expunge_all()  # the stream is sent with no transaction open: the lease must be renewable meanwhile
    facts = storage.upload_volume(ctx.connect(host), pool, vol, Path(source), ctx.progress)
    with ctx.session() as s:
        row = s.get(StorageVolume, vol.id)
        if row is None:
            raise NotFound(f"the cloud-init seed volume of VM {ctx.task.target_id} is gone")
        storagetasks.apply_facts(row, facts)
    return vol.name


@action(TaskType.VM_CREATE)
def create(ctx: TaskContext) -> dict[str, Any]:
    source = ctx.task.args.get(cloudinit.SEED_ARG)
    try:
        seed = _upload_seed(ctx)
        with ctx.session() as s:
            vm = vm_of(s, ctx)
            host = _placed(ctx, s, vm)
            made = _make_overlays(ctx, s, vm)
            define(ctx, s, vm, host)
            result = {"host": host.hostname, "host_id": host.id, **({"overlays": made} if made else {}),
                      **({"seed": seed} if seed else {})}  # fmt: skip
    except Exception as exc:
        if source and storagetasks.final_failure(ctx, exc):
            Path(source).unlink(missing_ok=True)  # the VM failed for good: nothing will upload it any more
        raise
    if source:
        Path(source).unlink(missing_ok=True)  # in its pool now, and recorded so
    return result


@reconciler(TaskType.VM_CREATE)
def _create_done(ctx: TaskContext) -> Reconciled:
    with ctx.session() as s:
        vm = vm_of(s, ctx)
        if vm.host is not None and lookup(ctx.connect(vm.host), vm.uuid) is not None:
            source = ctx.task.args.get(cloudinit.SEED_ARG)
            if source:  # defined, so its seed was uploaded before: the worker died before removing the copy
                Path(source).unlink(missing_ok=True)
            return Reconciled(Verdict.FINISHED, {"host": vm.host.hostname, "host_id": vm.host.id})
    return Reconciled(Verdict.RERUN)


@action(TaskType.VM_START)
def start(ctx: TaskContext) -> dict[str, Any]:
    with ctx.session() as s:
        vm = vm_of(s, ctx)
        # The placement is committed before anything runs there: a worker killed after create() leaves a task
        # whose re-run and reconciliation look on this host, and never start a second copy on another.
        vm.host_id = _placed(ctx, s, vm).id
    with ctx.session() as s:
        vm = vm_of(s, ctx)
        host = host_of(vm)
        conn = ctx.connect(host)
        dom = lookup(conn, vm.uuid)
        if dom is not None and dom.isActive():
            vm.host_id = host.id
            return {"host": host.hostname, "already": "running"}
        dom = define(ctx, s, vm, host)
        dom.create()
        return {"host": host.hostname, "host_id": host.id}


def _state_is(ctx: TaskContext, *wanted: VmState) -> Reconciled:
    with ctx.session() as s:
        vm = vm_of(s, ctx)
        if vm.host is None:
            return Reconciled(Verdict.RERUN)
        dom = lookup(ctx.connect(vm.host), vm.uuid)
        if dom is not None:
            settle(dom)
        state = real_state(dom) if dom is not None else None
        if state in wanted:
            return Reconciled(Verdict.FINISHED, {"reconciled": str(state)})
    return Reconciled(Verdict.RERUN)


@reconciler(TaskType.VM_START)
def _start_done(ctx: TaskContext) -> Reconciled:
    return _state_is(ctx, VmState.RUNNING)


def _domain(ctx: TaskContext, s: Session) -> tuple[Vm, libvirt.virDomain]:
    vm = vm_of(s, ctx)
    dom = lookup(ctx.connect(host_of(vm)), vm.uuid)
    if dom is None:
        raise Conflict(f"VM {vm.name} is not defined on {host_of(vm).hostname}", "update its state, or start it")
    return vm, dom


@action(TaskType.VM_SHUTDOWN)
def shutdown(ctx: TaskContext) -> dict[str, Any]:
    """Press the ACPI power button and wait for the guest to power off (it may refuse: then the task fails)."""
    with ctx.session() as s:
        vm, dom = _domain(ctx, s)
        name = vm.name
    if dom.isActive():
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
    timeout = float(ctx.task.args.get("timeout", ctx.settings.shutdown_timeout_seconds if ctx.settings else 120))
    started = time.monotonic()
    while dom.isActive():
        waited = time.monotonic() - started
        if waited > timeout:
            raise DroverError(f"VM {name} did not power off within {timeout:.0f}s of the ACPI request",
                              "the guest ignores ACPI; use poweroff")  # fmt: skip
        ctx.progress(waited / timeout, f"waiting for the guest to power off ({waited:.0f}s)")
        time.sleep(0.5)
    return {"after_s": round(time.monotonic() - started, 1)}


@reconciler(TaskType.VM_SHUTDOWN)
def _shutdown_done(ctx: TaskContext) -> Reconciled:
    return _state_is(ctx, VmState.STOPPED)


@action(TaskType.VM_POWEROFF)
def poweroff(ctx: TaskContext) -> dict[str, Any]:
    with ctx.session() as s:
        _vm, dom = _domain(ctx, s)
    if dom.isActive():
        dom.destroy()
    return {}


@reconciler(TaskType.VM_POWEROFF)
def _poweroff_done(ctx: TaskContext) -> Reconciled:
    return _state_is(ctx, VmState.STOPPED)


@action(TaskType.VM_SUSPEND)
def suspend(ctx: TaskContext) -> dict[str, Any]:
    with ctx.session() as s:
        _vm, dom = _domain(ctx, s)
    if real_state(dom) is not VmState.PAUSED:
        dom.suspend()
    return {}


@reconciler(TaskType.VM_SUSPEND)
def _suspend_done(ctx: TaskContext) -> Reconciled:
    return _state_is(ctx, VmState.PAUSED)


@action(TaskType.VM_RESUME)
def resume(ctx: TaskContext) -> dict[str, Any]:
    with ctx.session() as s:
        _vm, dom = _domain(ctx, s)
    if real_state(dom) is VmState.PAUSED:
        dom.resume()
    return {}


@reconciler(TaskType.VM_RESUME)
def _resume_done(ctx: TaskContext) -> Reconciled:
    return _state_is(ctx, VmState.RUNNING)


@action(TaskType.VM_SAVE)
def save(ctx: TaskContext) -> dict[str, Any]:
    with ctx.session() as s:
        _vm, dom = _domain(ctx, s)
    if dom.isActive():
        dom.managedSave(0)
    return {}


@reconciler(TaskType.VM_SAVE)
def _save_done(ctx: TaskContext) -> Reconciled:
    return _state_is(ctx, VmState.SAVED)


@action(TaskType.VM_RESTORE)
def restore(ctx: TaskContext) -> dict[str, Any]:
    with ctx.session() as s:
        vm, dom = _domain(ctx, s)
        if not dom.isActive():
            if not dom.hasManagedSaveImage():
                raise Conflict(f"VM {vm.name} has no saved state on {host_of(vm).hostname}", "start it instead")
            dom.create()  # starts from the managed save image, which libvirt then removes
    return {}


@reconciler(TaskType.VM_RESTORE)
def _restore_done(ctx: TaskContext) -> Reconciled:
    return _state_is(ctx, VmState.RUNNING)


@action(TaskType.VM_DELETE)
def delete(ctx: TaskContext) -> dict[str, Any]:
    """Undefine the domain (and its saved state) on its host, then delete the row; disks are kept."""
    with ctx.session() as s:
        vm = s.get(Vm, ctx.task.target_id)
        if vm is None:
            return {"already": "deleted"}
        name = vm.name
        if vm.host is not None:
            dom = lookup(ctx.connect(vm.host), vm.uuid)
            if dom is not None:
                if dom.isActive():
                    raise Conflict(f"VM {name} is running on {vm.host.hostname}", "power it off first")
                # libvirt refuses to undefine a domain that still has snapshot metadata.
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                )
        # Its overlays and seed go with it (never the template's base they sit on): from the storage, then the rows.
        gone = []
        for vol in owned(vm):
            if s.scalars(select(VmDisk.id).where(VmDisk.storage_volume_id == vol.id, VmDisk.vm_id != vm.id)).first():
                continue  # attached to another VM as well: not this VM's alone
            host = storagetasks.pool_hosts(s, vol.storage_pool)[0]
            storage.delete_volume(ctx.connect(host), vol.storage_pool, vol.name)
            gone.append(vol)
        s.delete(vm)
        s.flush()
        for vol in gone:
            s.delete(vol)
    return {"deleted": name, **({"overlays_deleted": [v.name for v in gone]} if gone else {})}


@reconciler(TaskType.VM_DELETE)
def _delete_again(ctx: TaskContext) -> Reconciled:
    return Reconciled(Verdict.RERUN)  # undefining what is gone and deleting a deleted row are no-ops


@functools.cache
def _vm_and_host() -> Select[tuple[Vm]]:
    """A VM with its host in one statement, built once (the most frequent task reads it)."""
    return select(Vm).where(Vm.id == bindparam("vm_id")).options(joinedload(Vm.host))


@action(TaskType.VM_UPDATE_STATE)
def update_state(ctx: TaskContext) -> dict[str, Any]:
    """Re-read the domain: its state as libvirt says (stopped if its host has no such domain)."""
    with ctx.session() as s:
        vm = s.scalars(_vm_and_host(), {"vm_id": ctx.task.target_id}).unique().one_or_none()
        if vm is None:
            raise NotFound(f"VM {ctx.task.target_id} no longer exists")
        if vm.host is None:
            return {"vm_state": str(VmState.STOPPED if vm.state is not VmState.PENDING else VmState.PENDING)}
        dom = lookup(ctx.connect(vm.host), vm.uuid)
        if dom is None:
            return {"vm_state": str(VmState.PENDING if vm.state is VmState.PENDING else VmState.STOPPED)}
        return {"vm_state": str(real_state(dom))}


@reconciler(TaskType.VM_UPDATE_STATE)
def _update_again(ctx: TaskContext) -> Reconciled:
    return Reconciled(Verdict.RERUN)
