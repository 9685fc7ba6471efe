"""What starting and ending a task writes, in Core SQL on the claim's connection: the VM's row locked and
moved to its new state, and the events, inserted together at the end of the transaction.

Every task goes through here twice; the ORM's identity map, unit of work and object loading were most of
what a task cost the interpreter (appliance.tasking keeps the ORM for the API's checks, which need
relationships). The rows and messages are the same ones appliance.tasking.task_event writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, insert, select, update

from appliance.db.base import utcnow
from appliance.db.models import Event, Host, Severity, TargetKind, TaskType, Vm, VmState
from appliance.db.models.events import announce
from appliance.tasking import task_subject, vm_row_query

VMS = cast(Table, Vm.__table__)
HOSTS = cast(Table, Host.__table__)
EVENTS = cast(Table, Event.__table__)
_INSERT = insert(EVENTS)  # built once: its cache key is then computed once, not per task


def lock_vm(conn: Connection, vm_id: int) -> Row[Any] | None:
    """The VM's row (appliance.tasking.vm_row_query), locked until commit; None if it is gone. SQLite has no
    row locks; there the claim's (or the end's) UPDATE already holds the database's write lock."""
    return conn.execute(vm_row_query(conn.dialect.name == "postgresql"), {"vm_id": vm_id}).first()


@dataclass
class Entries:
    """The events of one transaction, written by one INSERT when it is about to commit."""

    task_id: int
    task_type: TaskType
    rows: list[dict[str, Any]] = field(default_factory=list)

    def task(self, kind: str, message: str, *, vm_id: int | None = None, host_id: int | None = None,
             severity: Severity = Severity.INFO) -> None:  # fmt: skip
        self.rows.append({"kind": kind, "subject": task_subject(self.task_id, self.task_type), "message": message,
                          "severity": severity, "task_id": self.task_id, "vm_id": vm_id, "host_id": host_id,
                          "at": utcnow()})  # fmt: skip

    def write(self, conn: Connection) -> None:
        if self.rows:
            conn.execute(_INSERT, self.rows)
            announce(conn)


def moved(old: object, new: VmState, why: str) -> str:
    """The message of a VM's state event written by the task engine."""
    return f"{old} -> {new}: {why}"


def move_vm(conn: Connection, vm: Row[Any], state: VmState, why: str, entries: Entries,
            reason: str | None = None) -> None:  # fmt: skip
    """Move the VM to `state` with its event (no event if it is there already); `reason`, when given, is
    written as its state reason."""
    values: dict[str, Any] = {}
    if VmState(vm.state) is not state:
        values.update(state=state, state_changed_at=utcnow())
        entries.rows.append({"kind": "vm.state", "subject": vm.name, "message": moved(vm.state, state, why),
                             "severity": Severity.INFO, "vm_id": vm.id, "host_id": vm.host_id,
                             "task_id": entries.task_id, "at": utcnow()})  # fmt: skip
    if reason is not None and reason != vm.state_reason:
        values["state_reason"] = reason
    if values:
        conn.execute(update(VMS).where(VMS.c.id == vm.id).values(**values))


def target_ids(conn: Connection, kind: TargetKind, target_id: int) -> tuple[int | None, int | None]:
    """(vm_id, host_id) for a task's events: its target when that is a VM or a host that still exists."""
    if kind is TargetKind.VM:
        found = conn.execute(select(VMS.c.id).where(VMS.c.id == target_id)).scalar()
        return found, None
    if kind is TargetKind.HOST:
        found = conn.execute(select(HOSTS.c.id).where(HOSTS.c.id == target_id)).scalar()
        return None, found
    return None, None
