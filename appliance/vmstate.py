"""The VM state table: for each action on a VM, the states it starts from, its transitional state and where
it ends on success and on failure. The one place this is written down; enqueue checks requests against it
and the task engine moves the VM row by it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from appliance.db.models import TaskType, VmState
from appliance.errors import Conflict

S = VmState


@dataclass(frozen=True)
class Transition:
    sources: frozenset[VmState]
    # While the task runs; None: the VM keeps the state it had (a suspend is quick and has no own state).
    transitional: VmState | None
    # None: the state it had when the task started (a migration ends where it began, on another host).
    success: VmState | None
    # None: the state it had when the task started. Failure always returns there unless said otherwise.
    failure: VmState | None = None

    def after(self, before: VmState) -> VmState:
        """The state the VM will have once this action has succeeded, from `before`."""
        return self.success if self.success is not None else before


_ANY = frozenset(VmState)
_LIVE = frozenset({S.RUNNING, S.PAUSED})

TABLE: dict[TaskType, Transition] = {
    TaskType.VM_CREATE: Transition(frozenset({S.PENDING, S.FAILED}), S.CREATING, S.STOPPED, S.FAILED),
    TaskType.VM_START: Transition(frozenset({S.STOPPED}), S.STARTING, S.RUNNING),
    TaskType.VM_SHUTDOWN: Transition(frozenset({S.RUNNING}), S.STOPPING, S.STOPPED),
    TaskType.VM_POWEROFF: Transition(
        frozenset({S.RUNNING, S.PAUSED, S.STOPPING, S.CRASHED, S.STARTING}), S.STOPPING, S.STOPPED
    ),
    TaskType.VM_SUSPEND: Transition(frozenset({S.RUNNING}), None, S.PAUSED),
    TaskType.VM_RESUME: Transition(frozenset({S.PAUSED}), None, S.RUNNING),
    TaskType.VM_SAVE: Transition(_LIVE, S.SAVING, S.SAVED),
    TaskType.VM_RESTORE: Transition(frozenset({S.SAVED}), S.RESTORING, S.RUNNING),
    TaskType.VM_MIGRATE: Transition(_LIVE, S.MIGRATING, None),
    TaskType.VM_DELETE: Transition(frozenset({S.PENDING, S.STOPPED, S.FAILED, S.SAVED, S.CRASHED}), None, S.STOPPED),
    # Re-reading libvirt is allowed from anything; its outcome is whatever libvirt says.
    TaskType.VM_UPDATE_STATE: Transition(_ANY, None, None),
    TaskType.VM_CLONE: Transition(frozenset({S.STOPPED}), None, None),
    TaskType.SNAPSHOT_CREATE: Transition(frozenset({S.STOPPED, S.RUNNING, S.PAUSED}), None, None),
}


def transition(task_type: TaskType) -> Transition:
    found = TABLE.get(task_type)
    if found is None:
        raise KeyError(f"{task_type} is not an action on a VM")
    return found


def project(current: VmState, pending: Iterable[TaskType]) -> VmState:
    """The state a VM in `current` will have once `pending` (oldest first) have all succeeded."""
    state = current
    for task_type in pending:
        entry = TABLE.get(task_type)
        if entry is not None:
            state = entry.after(state)
    return state


def stranded(current: VmState, queued: list[tuple[int, TaskType]]) -> list[tuple[int, TaskType, VmState]]:
    """The queued tasks (oldest first) that can no longer run once the VM is in `current` — each with the
    state it would find — after an earlier task failed; the ones that still fit move the projection on."""
    state = current
    out: list[tuple[int, TaskType, VmState]] = []
    for task_id, task_type in queued:
        entry = TABLE.get(task_type)
        if entry is None:
            continue
        if state in entry.sources:
            state = entry.after(state)
        else:
            out.append((task_id, task_type, state))
    return out


def action_name(task_type: TaskType) -> str:
    return task_type.value.removeprefix("vm_").replace("_", " ")


def check(task_type: TaskType, vm_name: str, current: VmState, pending: list[tuple[int, TaskType]]) -> VmState:
    """Raise Conflict (409) unless `task_type` may follow the tasks already queued; the projected state if so."""
    entry = transition(task_type)
    for task_id, queued in pending:
        if queued is TaskType.VM_DELETE:
            raise Conflict(f"VM {vm_name} will be deleted by task {task_id}", "nothing can follow a delete")
    projected = project(current, [t for _, t in pending])
    if projected in entry.sources:
        return projected
    action = action_name(task_type)
    allowed = ", ".join(sorted(entry.sources))
    if pending:
        last_id, last_type = pending[-1]
        where = f"it will be {projected} once task {last_id} ({last_type}) and those before it have run"
    else:
        where = f"it is {projected}"
    raise Conflict(f"cannot {action} VM {vm_name}: {where}", f"{action} needs the VM to be one of: {allowed}")
