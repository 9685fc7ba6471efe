"""Task states: the transition rules (pure), and a task row's JSON and lease fields on both engines."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import TargetKind, Task, TaskState, TaskType, can_transition, check_transition
from appliance.errors import Conflict


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (TaskState.QUEUED, TaskState.RUNNING),
        (TaskState.QUEUED, TaskState.CANCELED),
        (TaskState.RUNNING, TaskState.FINISHED),
        (TaskState.RUNNING, TaskState.FAILED),
        (TaskState.RUNNING, TaskState.QUEUED),  # lease expired, another worker takes it over
    ],
)
def test_allowed(old: TaskState, new: TaskState) -> None:
    assert can_transition(old, new)
    check_transition(old, new)


@pytest.mark.parametrize("terminal", [TaskState.FINISHED, TaskState.FAILED, TaskState.CANCELED])
def test_terminal_states_are_final(terminal: TaskState) -> None:
    assert terminal.is_terminal()
    for new in TaskState:
        assert not can_transition(terminal, new)
    with pytest.raises(Conflict, match=f"from {terminal} to queued"):
        check_transition(terminal, TaskState.QUEUED)


def test_queued_cannot_finish_without_running() -> None:
    assert not can_transition(TaskState.QUEUED, TaskState.FINISHED)


def test_every_task_type_has_a_target_kind() -> None:
    kinds = {t: t.target_kind for t in TaskType}
    assert kinds[TaskType.VM_MIGRATE] is TargetKind.VM
    assert kinds[TaskType.SNAPSHOT_CREATE] is TargetKind.VM
    assert kinds[TaskType.SNAPSHOT_REVERT] is TargetKind.SNAPSHOT
    assert kinds[TaskType.STORAGE_POOL_REFRESH] is TargetKind.STORAGE_POOL
    assert kinds[TaskType.VOLUME_CREATE] is TargetKind.STORAGE_VOLUME
    assert kinds[TaskType.HOST_CLEAR] is TargetKind.HOST


def test_task_row(db_engine: Engine) -> None:
    lease = utcnow() + timedelta(seconds=30)
    with session_scope(db_engine) as session:
        task = Task(
            type=TaskType.VM_MIGRATE,
            target_kind=TaskType.VM_MIGRATE.target_kind,
            target_id=7,
            args={"to_host": 3, "live": True, "tags": ["a", "b"]},
            created_by="alice@DROVER.TEST",
        )
        session.add(task)
        session.flush()
        assert task.state is TaskState.QUEUED
        task.move_to(TaskState.RUNNING)
        task.lease_owner, task.lease_expires_at, task.attempts = "appliance:123", lease, 1
    with session_scope(db_engine) as session:
        task = session.scalars(select(Task).where(Task.state == TaskState.RUNNING)).one()
        assert task.args == {"to_host": 3, "live": True, "tags": ["a", "b"]}
        assert task.lease_expires_at == lease
        with pytest.raises(Conflict):
            task.move_to(TaskState.RUNNING)
        task.move_to(TaskState.FINISHED)
        task.result = {"host": 3}
    with session_scope(db_engine) as session:
        assert session.scalars(select(Task.result)).one() == {"host": 3}
