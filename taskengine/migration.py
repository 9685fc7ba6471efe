"""Live migration and clear host.

Migrate: peer to peer (the source libvirtd drives it) and live, moving the definition with it
(PERSIST_DEST | UNDEFINE_SOURCE). Progress comes from libvirt's job info. The convergence policy is in the
spirit of oVirt's "minimal downtime": the allowed downtime starts low and is raised a step each time the
remaining data stops shrinking for a while; past the maximum the migration is aborted. At most
[taskengine] migrations_per_host run at once on a host (source or destination); more wait in the queue.
A user's abort (`drover task cancel`) aborts the libvirt job.

Clear host migrates every running VM off a host (one migrate task each) and waits for them: it is what
maintenance of a host with running VMs does.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import libvirt
from sqlalchemy import select

from appliance import hosts as host_rows
from appliance import networks, placement, tasking
from appliance.db.models import Host, PlacementPolicy, Task, TaskState, TaskType, Vm, VmState
from appliance.errors import Conflict, DroverError, NotFound
from taskengine.actions import Deferred, Reconciled, TaskAborted, TaskContext, Verdict, action, reconciler
from taskengine.vmlife import lookup, real_state, vm_of

log = logging.getLogger(__name__)

FLAGS = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE


class Step(enum.StrEnum):
    WAIT = "wait"
    RAISE = "raise"  # allow more downtime now
    ABORT = "abort"  # at the maximum and still stalled


@dataclass
class Convergence:
    """The "minimal downtime" policy: start low, raise the allowed downtime a step each time the remaining
    data has not shrunk for `stall_s`, and give up once it stalls again at the maximum."""

    downtime_ms: int
    step_ms: int
    max_ms: int
    stall_s: float
    best: int | None = None
    best_at: float = 0.0

    def observe(self, remaining: int, now: float) -> Step:
        if self.best is None or remaining < self.best:
            self.best, self.best_at = remaining, now
            return Step.WAIT
        if now - self.best_at < self.stall_s:
            return Step.WAIT
        self.best_at = now
        if self.downtime_ms + self.step_ms <= self.max_ms:
            self.downtime_ms += self.step_ms
            return Step.RAISE
        return Step.ABORT


def _running_migrations(s: Any, host_ids: set[int], me: int) -> int:
    rows = s.scalars(select(Task).where(Task.type == TaskType.VM_MIGRATE, Task.state == TaskState.RUNNING,
                                        Task.id != me)).all()  # fmt: skip
    return sum(1 for t in rows if {t.args.get("source_host_id"), t.args.get("dest_host_id")} & host_ids)


def _plan(ctx: TaskContext) -> tuple[str, Host, Host, str | None]:
    """Pick (or check) the destination, take a migration slot on both hosts, and record both on the task."""
    limit = ctx.settings.migrations_per_host if ctx.settings else 2
    with ctx.session() as s:
        vm = vm_of(s, ctx)
        if vm.placement_policy is PlacementPolicy.PINNED:
            raise Conflict(f"VM {vm.name} is pinned to its host", "change its placement policy to migrate it")
        source = vm.host
        if source is None:
            raise Conflict(f"VM {vm.name} is on no host")
        wanted = ctx.task.args.get("host_id")
        if wanted is not None:
            dest = s.get(Host, int(wanted))
            if dest is None:
                raise NotFound(f"host {wanted} does not exist")
            if dest.id == source.id:
                raise Conflict(f"VM {vm.name} is already on {dest.hostname}")
            if not dest.state.accepts_vms():
                raise Conflict(f"host {dest.hostname} is {dest.state} and takes no VMs")
            lacking = sorted(n.network.name for n in vm.nics if n.network is not None
                             and n.network.id not in networks.carried_ids(s, [dest])[dest.id])  # fmt: skip
            if lacking:
                raise Conflict(f"host {dest.hostname} does not carry network {lacking[0]}", "assign it there first")
        else:
            dest = placement.choose(s, vm, exclude=[source.id],
                                    cpu_overcommit=ctx.settings.cpu_overcommit if ctx.settings else 1.0)
        # Both host rows locked (in id order, as everyone locks them): the slot count cannot race.
        for host_id in sorted({source.id, dest.id}):
            host_rows.lock(s, host_id)
        busy = _running_migrations(s, {source.id, dest.id}, ctx.task.id)
        if busy >= limit:
            raise Deferred(f"{busy} migrations already run on {source.hostname} or {dest.hostname} "
                           f"(at most {limit} per host)", seconds=1.0)  # fmt: skip
        # With a migration network, the memory stream goes to the destination's address there; libvirt's own
        # connection still goes to its management name.
        data_uri = networks.migration_uri(s, dest)
        task = s.get(Task, ctx.task.id)
        if task is not None:
            task.args = {**task.args, "source_host_id": source.id, "dest_host_id": dest.id,
                         **({"migration_uri": data_uri} if data_uri else {})}  # fmt: skip
            # When the transfer really began (a deferred task was queued long before): what shows that
            # migrations of one host ran one after the other.
            tasking.task_event(s, task, "task.migrating", f"{vm.name}: {source.hostname} -> {dest.hostname}, "
                               f"{busy + 1} of at most {limit} migrations on these hosts")  # fmt: skip
        s.expunge(source)
        s.expunge(dest)
        return vm.uuid, source, dest, data_uri


# What libvirt says when the source's peer-to-peer connection to the destination never opened.
_P2P_OPEN_FAILED = (libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_AUTH_CANCELLED, libvirt.VIR_ERR_NO_CONNECT)


def _p2p_unreachable(exc: libvirt.libvirtError) -> bool:
    if exc.get_error_code() in _P2P_OPEN_FAILED:
        return True
    # Name resolution and connect() failures of the RPC client ("Unable to resolve address", "unable to connect").
    return bool(exc.get_error_domain() == libvirt.VIR_FROM_RPC and exc.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR)


def _only_on(dom: libvirt.virDomain, dconn: libvirt.virConnect, uuid: str) -> bool:
    """The VM runs on the source and the destination has no domain of it: a failed attempt left nothing."""
    try:
        return bool(dom.isActive()) and lookup(dconn, uuid) is None
    except libvirt.libvirtError:
        return False


@action(TaskType.VM_MIGRATE)
def migrate(ctx: TaskContext) -> dict[str, Any]:
    uuid, source, dest, data_uri = _plan(ctx)
    settings = ctx.settings
    sconn = ctx.connect(source)
    dom = lookup(sconn, uuid)
    if dom is None or not dom.isActive():
        raise Conflict(f"the VM is not running on {source.hostname}", "update its state")
    dconn = ctx.connect(dest)
    dest_uri = f"qemu+tcp://{dest.hostname}:{dest.libvirt_port or _port(ctx, sconn)}/system"
    p2p = settings.migration_p2p if settings else True
    params: dict[str, Any] = {}
    if ctx.task.args.get("bandwidth_mib"):
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(ctx.task.args["bandwidth_mib"])
    if data_uri:
        # The destination's qemu listens there too, not on its qemu.conf migration_address.
        params[libvirt.VIR_MIGRATE_PARAM_URI] = data_uri
        params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = data_uri.split("://", 1)[1].strip("[]")
    outcome: dict[str, BaseException | None] = {}
    mode = {"used": "p2p" if p2p else "managed"}

    def run() -> None:
        try:
            if p2p:
                try:
                    dom.migrateToURI3(dest_uri, params, FLAGS | libvirt.VIR_MIGRATE_PEER2PEER)
                except libvirt.libvirtError as exc:
                    # The source's libvirtd could not open its own connection to the destination: it is not
                    # let in (a node whose libvirtd allows only the appliance) or cannot reach it by that
                    # name (nodes that do not resolve each other). The appliance drives the migration with its
                    # own two connections instead, only while the VM provably still runs on the source alone.
                    if not _p2p_unreachable(exc) or not _only_on(dom, dconn, uuid):
                        raise
                    log.warning("task %s: peer-to-peer refused (%s); managed migration instead", ctx.task.id,
                                exc.get_error_message())  # fmt: skip
                    mode["used"] = "managed"
                    dom.migrate3(dconn, params, FLAGS)
            else:
                dom.migrate3(dconn, params, FLAGS)
            outcome["error"] = None
        except BaseException as exc:
            outcome["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, name=f"migrate-{ctx.task.id}", daemon=True)
    thread.start()
    policy = Convergence(
        settings.downtime_start_ms if settings else 100,
        settings.downtime_step_ms if settings else 100,
        settings.downtime_max_ms if settings else 1000,
        settings.stall_seconds if settings else 5,
    )
    set_downtime = False
    aborting = ""
    while thread.is_alive():
        thread.join(0.25)
        if not thread.is_alive():
            break
        try:
            stats = dom.jobStats()
        except libvirt.libvirtError:
            continue
        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            continue
        if not set_downtime:
            _try(dom.migrateSetMaxDowntime, policy.downtime_ms)
            set_downtime = True
        total = int(stats.get("data_total", 0))
        remaining = int(stats.get("data_remaining", 0))
        processed = int(stats.get("data_processed", 0))
        if aborting:
            continue
        line = f"{processed >> 20} MiB sent, {remaining >> 20} MiB left, downtime {policy.downtime_ms} ms"
        ctx.progress(processed / total if total else 0.0, line)
        if ctx.abort_requested():
            aborting = "aborted by a user"
            _try(dom.abortJob)
            continue
        step = policy.observe(remaining, time.monotonic())
        if step is Step.RAISE:
            _try(dom.migrateSetMaxDowntime, policy.downtime_ms)
            log.info("task %s: migration stalled, allowed downtime now %d ms", ctx.task.id, policy.downtime_ms)
            _event(ctx, "task.downtime", f"stalled at {remaining >> 20} MiB left: allowed downtime raised to "
                   f"{policy.downtime_ms} ms")  # fmt: skip
        elif step is Step.ABORT:
            aborting = (f"did not converge: still {remaining >> 20} MiB left after {policy.stall_s:g}s at the "
                        f"maximum downtime of {policy.downtime_ms} ms")  # fmt: skip
            _event(ctx, "task.downtime", f"stalled at the maximum downtime ({policy.downtime_ms} ms): aborting")
            _try(dom.abortJob)
    error = outcome.get("error")
    if aborting or error is not None:
        with ctx.session() as s:  # whatever was reported meanwhile, a failed migration leaves it on its source
            vm = vm_of(s, ctx)
            vm.host_id = source.id
    if aborting:
        if aborting.startswith("aborted"):
            raise TaskAborted(f"migration to {dest.hostname} {aborting}; the VM stays on {source.hostname}")
        raise DroverError(f"migration to {dest.hostname} {aborting}; the VM stays on {source.hostname}")
    if error is not None:
        raise error
    total_ms = (time.monotonic() - started) * 1000
    ddom = lookup(dconn, uuid)
    downtime_ms: int | None = None
    if ddom is not None:
        try:
            done = ddom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            downtime_ms = int(done["downtime"]) if "downtime" in done else None
        except libvirt.libvirtError:
            pass
    with ctx.session() as s:
        vm = vm_of(s, ctx)
        vm.host_id = dest.id
    return {"from": source.hostname, "to": dest.hostname, "host_id": dest.id, "total_ms": round(total_ms),
            "downtime_ms": downtime_ms, "max_downtime_ms": policy.downtime_ms, "mode": mode["used"],
            **({"via": data_uri} if data_uri else {})}  # fmt: skip  # where the memory stream went


def _event(ctx: TaskContext, kind: str, message: str) -> None:
    with ctx.session() as s:
        task = s.get(Task, ctx.task.id)
        if task is not None:
            tasking.task_event(s, task, kind, message)


def _port(ctx: TaskContext, conn: libvirt.virConnect) -> int:
    uri = conn.getURI()
    tail = uri.split("://", 1)[1].split("/", 1)[0]
    return int(tail.rsplit(":", 1)[1]) if ":" in tail else 16509


def _try(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except libvirt.libvirtError as exc:
        log.info("%s: %s", getattr(fn, "__name__", fn), exc)


@reconciler(TaskType.VM_MIGRATE)
def _migrate_done(ctx: TaskContext) -> Reconciled:
    """Where is the VM now? Running on the destination: done; still on the source: run again."""
    with ctx.session() as s:
        vm = vm_of(s, ctx)
        task = s.get(Task, ctx.task.id)
        dest_id = task.args.get("dest_host_id") if task is not None else None
        dest = s.get(Host, int(dest_id)) if dest_id is not None else None
        if dest is not None:
            ddom = lookup(ctx.connect(dest), vm.uuid)
            if ddom is not None and real_state(ddom) in (VmState.RUNNING, VmState.PAUSED):
                vm.host_id = dest.id
                return Reconciled(Verdict.FINISHED, {"to": dest.hostname, "host_id": dest.id, "reconciled": True})
        if vm.host is not None:
            sdom = lookup(ctx.connect(vm.host), vm.uuid)
            if sdom is not None and sdom.isActive():
                return Reconciled(Verdict.RERUN)
    return Reconciled(Verdict.FAILED, error="the VM runs neither on its source nor on its destination")


@action(TaskType.HOST_CLEAR)
def clear_host(ctx: TaskContext) -> dict[str, Any]:
    """Queue a migration for every running VM on the host (none already queued), then wait for them all."""
    with ctx.session() as s:
        host = s.get(Host, ctx.task.target_id)
        if host is None:
            raise NotFound(f"host {ctx.task.target_id} does not exist")
        name = host.hostname
        task = s.get(Task, ctx.task.id)
        children: list[int] = list(task.args.get("children", [])) if task is not None else []
        if not children:
            vms = s.scalars(select(Vm).where(Vm.host_id == host.id, Vm.state.in_((VmState.RUNNING, VmState.PAUSED)))
                            .order_by(Vm.id)).all()  # fmt: skip
            for vm in vms:
                if vm.placement_policy is PlacementPolicy.PINNED:
                    continue
                child = tasking.enqueue(s, TaskType.VM_MIGRATE, vm.id, {"parent": ctx.task.id},
                                        created_by=ctx.task.created_by, priority=1)  # fmt: skip
                children.append(child.id)
            if task is not None:
                task.args = {**task.args, "children": children}
    while True:
        with ctx.session() as s:
            rows = s.scalars(select(Task).where(Task.id.in_(children))).all() if children else []
            ended = [t for t in rows if t.state.is_terminal()]
            if ctx.abort_requested():
                for t in rows:
                    if t.state is TaskState.QUEUED:
                        tasking.cancel(s, t.id, "clear host aborted")
            failed = [f"task {t.id}: {t.error}" for t in ended if t.state is not TaskState.FINISHED]
        if len(ended) == len(children):
            break
        ctx.progress(len(ended) / max(1, len(children)), f"{len(ended)} of {len(children)} VMs moved off {name}")
        time.sleep(0.5)
    if failed:
        raise DroverError(f"{len(failed)} of {len(children)} VMs could not leave {name}: " + "; ".join(failed))
    return {"migrated": len(children), "tasks": children}


@reconciler(TaskType.HOST_CLEAR)
def _clear_again(ctx: TaskContext) -> Reconciled:
    return Reconciled(Verdict.RERUN)  # it only queues (once: children are recorded) and waits
