"""The task queue: what a user asked for, which worker holds it (a lease) and how it ended."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Float, Index, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from appliance.db.base import Base, CreatedMixin, IdMixin, enum_column
from appliance.errors import Conflict


class TargetKind(enum.StrEnum):
    VM = "vm"
    HOST = "host"
    STORAGE_POOL = "storage_pool"
    STORAGE_VOLUME = "storage_volume"
    SNAPSHOT = "snapshot"


class TaskType(enum.StrEnum):
    VM_CREATE = "vm_create"
    VM_START = "vm_start"
    VM_SHUTDOWN = "vm_shutdown"  # ACPI: the guest decides
    VM_POWEROFF = "vm_poweroff"  # pull the plug
    VM_SUSPEND = "vm_suspend"
    VM_RESUME = "vm_resume"
    VM_SAVE = "vm_save"
    VM_RESTORE = "vm_restore"
    VM_MIGRATE = "vm_migrate"
    VM_CLONE = "vm_clone"
    VM_DELETE = "vm_delete"  # undefine on its host and forget the row
    VM_UPDATE_STATE = "vm_update_state"  # re-read the domain from libvirt
    STORAGE_POOL_CREATE = "storage_pool_create"
    STORAGE_POOL_REFRESH = "storage_pool_refresh"
    STORAGE_POOL_DELETE = "storage_pool_delete"
    VOLUME_CREATE = "volume_create"
    VOLUME_REFRESH = "volume_refresh"
    VOLUME_DELETE = "volume_delete"
    HOST_CLEAR = "host_clear"  # forget a dead host's VMs so they can start elsewhere
    SNAPSHOT_CREATE = "snapshot_create"
    SNAPSHOT_REVERT = "snapshot_revert"
    SNAPSHOT_DELETE = "snapshot_delete"

    @property
    def target_kind(self) -> TargetKind:
        # Snapshot create acts on a VM; revert and delete on an existing snapshot.
        if self is TaskType.SNAPSHOT_CREATE or self.value.startswith("vm_"):
            return TargetKind.VM
        if self.value.startswith("storage_pool_"):
            return TargetKind.STORAGE_POOL
        if self.value.startswith("volume_"):
            return TargetKind.STORAGE_VOLUME
        if self.value.startswith("snapshot_"):
            return TargetKind.SNAPSHOT
        return TargetKind.HOST


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"

    def is_terminal(self) -> bool:
        return self in (TaskState.FINISHED, TaskState.FAILED, TaskState.CANCELED)


# RUNNING -> QUEUED is the lease take-over: a worker died holding the task, another may run it again.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset({TaskState.RUNNING, TaskState.CANCELED}),
    TaskState.RUNNING: frozenset({TaskState.FINISHED, TaskState.FAILED, TaskState.CANCELED, TaskState.QUEUED}),
    TaskState.FINISHED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELED: frozenset(),
}


def can_transition(old: TaskState, new: TaskState) -> bool:
    return new in TRANSITIONS[old]


def check_transition(old: TaskState, new: TaskState) -> None:
    """Raise Conflict unless a task may go from `old` to `new`."""
    if not can_transition(old, new):
        allowed = ", ".join(sorted(TRANSITIONS[old])) or "none, it is finished"
        raise Conflict(f"task cannot go from {old} to {new}", f"allowed from {old}: {allowed}")


LIVE_SQL = "state IN ('queued', 'running')"


class Task(IdMixin, CreatedMixin, Base):
    __tablename__ = "tasks"
    __table_args__ = (
        # The claim query: queued tasks, and running ones whose lease ran out.
        Index("ix_tasks_state_lease", "state", "lease_expires_at"),
        Index("ix_tasks_target", "target_kind", "target_id"),
        # The claim walks live tasks in its order and stops at the first one it may take: without these two,
        # each claim sorted the whole backlog and hash-joined it with itself (147 ms at 27,000 queued on
        # PostgreSQL, the slower the longer the queue; 0.2 ms with them). PostgreSQL only: SQLite serves one
        # process and a short queue, and cannot say a reflected index is DESC.
        Index("ix_tasks_live_order", text("priority DESC"), "created_at", "id",
              postgresql_where=text(LIVE_SQL)).ddl_if(dialect="postgresql"),
        Index("ix_tasks_live_target", "target_kind", "target_id", "id",
              postgresql_where=text(LIVE_SQL), sqlite_where=text(LIVE_SQL)),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    )

    type: Mapped[TaskType] = mapped_column(enum_column(TaskType, "task_type"))
    target_kind: Mapped[TargetKind] = mapped_column(enum_column(TargetKind, "target_kind"))
    # Not a foreign key: the target may be deleted by the very task (or a later one) and the record stays.
    target_id: Mapped[int]
    state: Mapped[TaskState] = mapped_column(enum_column(TaskState, "task_state"), default=TaskState.QUEUED)
    lease_owner: Mapped[str | None]  # worker id, e.g. host:pid
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    created_by: Mapped[str | None]  # principal; None for tasks the appliance makes itself
    # Higher runs first; among equals the older task.
    priority: Mapped[int] = mapped_column(default=0)
    # A transient failure puts the task back in the queue with a back-off: not claimed before this.
    not_before: Mapped[datetime | None]
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1, as the handler reports it
    message: Mapped[str] = mapped_column(Text, default="")  # the handler's latest progress line
    # A user asked to abort it while running (a migration); the handler polls this.
    abort_requested: Mapped[bool] = mapped_column(default=False)

    def move_to(self, new: TaskState) -> None:
        check_transition(self.state, new)
        self.state = new
