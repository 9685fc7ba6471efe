"""Putting tasks in the queue and taking them out of it: the checks made at enqueue time, cancel and abort.

What a task may do is decided here, before anything reaches a host: the target must exist, and an action
on a VM must fit the state the VM will have once the tasks already queued for it have run (vmstate). The
VM's row is locked first, so two requests for one VM are checked one after the other. Every change writes
an event. The task engine (taskengine/) runs what this queues; the API and the CLI call only this.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import Row, Select, Table, bindparam, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from appliance import quotas, vmstate
from appliance.db.base import utcnow
from appliance.db.models import (
    Event,
    Host,
    PlacementPolicy,
    Severity,
    Snapshot,
    StoragePool,
    StorageVolume,
    TargetKind,
    Task,
    TaskState,
    TaskType,
    Vm,
    VmState,
)
from appliance.errors import Conflict, NotFound, UsageError

log = logging.getLogger(__name__)

# Task types a running instance may be aborted of (the handler polls Task.abort_requested).
ABORTABLE = frozenset({TaskType.VM_MIGRATE, TaskType.HOST_CLEAR})
_LIVE = (TaskState.QUEUED, TaskState.RUNNING)

_TARGETS: dict[TargetKind, type[Vm] | type[Host] | type[StoragePool] | type[StorageVolume] | type[Snapshot]] = {
    TargetKind.VM: Vm,
    TargetKind.HOST: Host,
    TargetKind.STORAGE_POOL: StoragePool,
    TargetKind.STORAGE_VOLUME: StorageVolume,
    TargetKind.SNAPSHOT: Snapshot,
}

# Called (no arguments) after a transaction that queued a task commits: a task engine in this process
# claims it now instead of at its next poll.
_wakers: list[Callable[[], None]] = []
_wakers_lock = threading.Lock()


def on_enqueue(waker: Callable[[], None]) -> None:
    with _wakers_lock:
        _wakers.append(waker)


def off_enqueue(waker: Callable[[], None]) -> None:
    with _wakers_lock:
        if waker in _wakers:
            _wakers.remove(waker)


def _wake(_session: Session) -> None:
    with _wakers_lock:
        wakers = list(_wakers)
    for waker in wakers:
        waker()


def _write_lock_sqlite(session: Session, vm_id: int) -> None:
    """SQLite ignores row locks: a no-op UPDATE of the VM's row takes the database's write lock instead."""
    session.execute(
        update(Vm).where(Vm.id == vm_id).values(state=Vm.state).execution_options(synchronize_session=False)
    )


def lock_vm(session: Session, vm_id: int) -> Vm | None:
    """The VM re-read under its row's write lock; None if gone. PostgreSQL: SELECT ... FOR UPDATE (one
    statement); SQLite: the write lock first."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalars(
            select(Vm).where(Vm.id == vm_id).with_for_update().execution_options(populate_existing=True)
        ).one_or_none()
    _write_lock_sqlite(session, vm_id)
    return session.get(Vm, vm_id, populate_existing=True)


@functools.cache
def vm_row_query(postgresql: bool) -> Select[Any]:
    """The VM's row as plain columns (id, name, state, state_reason, placement_policy, host_id), FOR UPDATE on
    PostgreSQL; parameter `vm_id`. Built once: enqueue and the task engine read it for every task."""
    c = cast(Table, Vm.__table__).c
    query = select(c.id, c.name, c.state, c.state_reason, c.placement_policy, c.host_id)
    query = query.where(c.id == bindparam("vm_id"))
    return query.with_for_update() if postgresql else query


def _lock_vm_row(session: Session, vm_id: int) -> Row[Any] | None:
    """What an enqueue checks of its VM, the row locked as in lock_vm; plain columns rather than the VM
    object, which was a fifth of an enqueue's cost."""
    postgresql = session.get_bind().dialect.name == "postgresql"
    if not postgresql:
        _write_lock_sqlite(session, vm_id)
    return session.execute(vm_row_query(postgresql), {"vm_id": vm_id}).first()


def _live_on(kind: TargetKind, target_id: int) -> tuple[Any, ...]:
    return Task.target_kind == kind, Task.target_id == target_id, Task.state.in_(_LIVE)


def pending_types(session: Session, kind: TargetKind, target_id: int) -> list[tuple[int, TaskType]]:
    """(id, type) of the tasks not yet ended on one target, in the order they will run: what an enqueue checks
    against. Two columns, not Task objects: with a queue dozens deep per VM, loading whole rows for each new
    task was most of what an enqueue cost."""
    rows = session.execute(select(Task.id, Task.type, Task.state).where(*_live_on(kind, target_id))).all()
    return [(task_id, task_type) for task_id, task_type, state in sorted(rows, key=_run_order)]


def _run_order(row: Any) -> tuple[bool, int]:
    return row.state is not TaskState.RUNNING, row.id


def pending_for(session: Session, kind: TargetKind, target_id: int) -> list[Task]:
    """Tasks not yet ended on one target, in the order they will run (running first, then by id)."""
    rows = session.scalars(select(Task).where(*_live_on(kind, target_id))).all()
    return sorted(rows, key=_run_order)


def task_subject(task_id: int, task_type: TaskType) -> str:
    """How an event names the task it is about."""
    return f"task {task_id} {task_type}"


def task_event(session: Session, task: Task, kind: str, message: str, severity: Severity = Severity.INFO) -> None:
    """An event about a task, tied to its VM or host when that is its target."""
    vm_id = task.target_id if task.target_kind is TargetKind.VM else None
    host_id = task.target_id if task.target_kind is TargetKind.HOST else None
    if vm_id is not None and session.get(Vm, vm_id) is None:
        vm_id = None
    if host_id is not None and session.get(Host, host_id) is None:
        host_id = None
    session.add(
        Event(
            kind=kind,
            subject=task_subject(task.id, task.type),
            message=message,
            severity=severity,
            task_id=task.id,
            vm_id=vm_id,
            host_id=host_id,
        )
    )


def enqueue(
    session: Session,
    type: TaskType,
    target_id: int,
    args: dict[str, Any],
    *,
    created_by: str | None,
    priority: int = 0,
) -> Task:
    """Queue `type` on `target_id` after the checks; Conflict (409) with the reason when it cannot follow
    what is queued, NotFound (404) when the target does not exist. Nothing is written on refusal."""
    if not isinstance(args, dict):
        raise UsageError("task arguments must be a JSON object")
    kind = type.target_kind
    model = _TARGETS[kind]
    vm_id = host_id = None
    if kind is TargetKind.VM:
        vm = _lock_vm_row(session, target_id)
        if vm is None:
            raise NotFound(f"VM {target_id} does not exist", "see `drover vm list`")
        if type in vmstate.TABLE:
            pending = pending_types(session, kind, target_id)
            vmstate.check(type, vm.name, VmState(vm.state), pending)
        if type is TaskType.VM_MIGRATE and vm.placement_policy is PlacementPolicy.PINNED:
            host = session.get(Host, vm.host_id) if vm.host_id is not None else None
            raise Conflict(f"VM {vm.name} is pinned to {host.hostname if host else 'no host'}: it is never migrated",
                           "set its placement policy to least_loaded to move it")  # fmt: skip
        if type is TaskType.VM_START:
            quotas.check_start(session, session.get_one(Vm, target_id))
        subject, vm_id = f"VM {vm.name}", vm.id
    else:
        target = session.get(model, target_id)
        if target is None:
            raise NotFound(f"{kind.value.replace('_', ' ')} {target_id} does not exist")
        subject = f"{kind.value.replace('_', ' ')} {target_id}"
        host_id = target_id if kind is TargetKind.HOST else None
    task = Task(type=type, target_kind=kind, target_id=target_id, args=dict(args), created_by=created_by,
                priority=priority, state=TaskState.QUEUED)  # fmt: skip
    session.add(task)
    session.flush()
    # The target is locked or was just read: its ids go on the event without task_event's look-ups.
    by = created_by or "the appliance"
    session.add(Event(kind="task.queued", subject=task_subject(task.id, type), task_id=task.id, vm_id=vm_id,
                      host_id=host_id, message=f"{type} on {subject} queued by {by}"))  # fmt: skip
    if not sa_event.contains(session, "after_commit", _wake):
        sa_event.listen(session, "after_commit", _wake, once=True)
    log.info("task %s queued: %s on %s by %s", task.id, type, subject, by)
    return task


def get(session: Session, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"task {task_id} does not exist", "see `drover task list`")
    return task


def cancel(session: Session, task_id: int, by: str | None) -> Task:
    """Cancel a queued task; ask a running migration (or clear host) to abort. Conflict otherwise."""
    task = session.get(Task, task_id, with_for_update=True)
    if task is None:
        raise NotFound(f"task {task_id} does not exist", "see `drover task list`")
    who = by or "the appliance"
    if task.state is TaskState.QUEUED:
        task.move_to(TaskState.CANCELED)
        task.finished_at = utcnow()
        task.error = f"canceled by {who}"
        task_event(session, task, "task.canceled", f"canceled by {who} before it ran")
        return task
    if task.state is TaskState.RUNNING:
        if task.type not in ABORTABLE:
            raise Conflict(
                f"task {task.id} ({task.type}) is running and cannot be stopped half-way",
                "only a queued task is canceled; a running migration or clear host is aborted",
            )
        if task.abort_requested:
            raise Conflict(f"task {task.id}: an abort was already asked for", "`drover task wait` follows it")
        task.abort_requested = True
        task_event(session, task, "task.abort", f"abort asked for by {who}", Severity.WARNING)
        return task
    raise Conflict(f"task {task.id} has already ended ({task.state})", "only queued or running tasks are canceled")


def cancel_stranded(session: Session, vm: Vm, failed: Task) -> list[Task]:
    """After `failed` failed and `vm` went back to the state it really has: cancel the VM's queued tasks
    that can no longer run from there (a suspend queued behind a start that failed), with the reason; those
    that still fit stay queued and run."""
    queued = [t for t in pending_for(session, TargetKind.VM, vm.id) if t.state is TaskState.QUEUED]
    by_id = {t.id: t for t in queued}
    out = []
    for task_id, task_type, state in vmstate.stranded(vm.state, [(t.id, t.type) for t in queued]):
        task = by_id[task_id]
        why = (f"canceled: task {failed.id} ({failed.type}) failed, so VM {vm.name} is {state} and cannot "
               f"{vmstate.action_name(task_type)}")  # fmt: skip
        task.move_to(TaskState.CANCELED)
        task.finished_at = utcnow()
        task.error = why
        task_event(session, task, "task.canceled", why, Severity.WARNING)
        log.info("task %s %s", task.id, why)
        out.append(task)
    return out


def summary(task: Task) -> dict[str, Any]:
    """A task as the API returns it."""
    return {
        "id": task.id,
        "type": str(task.type),
        "target_kind": str(task.target_kind),
        "target_id": task.target_id,
        "state": str(task.state),
        "priority": task.priority,
        "progress": task.progress,
        "message": task.message,
        "attempts": task.attempts,
        "args": task.args,
        "result": task.result,
        "error": task.error,
        "abort_requested": task.abort_requested,
        "created_by": task.created_by,
        "created_at": task.created_at.isoformat(),
        "started_at": task.started_at.isoformat() if task.started_at else None,
        "finished_at": task.finished_at.isoformat() if task.finished_at else None,
        "lease_owner": task.lease_owner,
    }
