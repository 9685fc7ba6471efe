"""Claiming a task and holding it: one SQL claim, a lease renewed while the task runs, compare-and-set ends.

A task is claimable when it is queued (and past its back-off), or running with a lease that ran out (its
worker died); and when it is the oldest unfinished task of its target, so one VM never has two tasks
running and its tasks run in the order they were queued. Highest priority first, then the oldest.

On PostgreSQL the candidate row is read `FOR UPDATE SKIP LOCKED`: workers on several machines take
different tasks without waiting on each other. SQLite ignores row locks (one process with worker threads
is the supported set-up there); everywhere, the claim itself is an UPDATE that only succeeds if the row
still says what was read (state and lease owner), so two claimants can never both win.

Every later write of the worker (renew, progress, finish) carries `lease_owner = <this claim's token>` in
its WHERE: a worker that stalled past its lease finds its row taken and writes nothing.

The statements here are Core, on the table, not ORM objects: they run for every task, and building,
loading and flushing ORM objects was most of a task's cost in the interpreter. They take a Connection or a
Session alike.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import BindParameter

from appliance.db.base import utcnow
from appliance.db.models import TargetKind, Task, TaskState, TaskType

_LIVE = (TaskState.QUEUED, TaskState.RUNNING)
TASKS = cast(Table, Task.__table__)
Db = Connection | Session


@dataclass(frozen=True)
class Claim:
    task_id: int
    type: TaskType
    token: str  # the lease owner written on the row: "<worker>/<random>", unique per claim
    attempts: int
    recovered: bool  # taken over from a worker whose lease ran out
    # The row as claimed (returned by the claim's UPDATE, so starting the task reads nothing more).
    target_kind: TargetKind = TargetKind.VM
    target_id: int = 0
    args: dict[str, Any] = field(default_factory=dict, compare=False)
    created_by: str | None = None


def is_postgresql(db: Db) -> bool:
    return (db.dialect if isinstance(db, Connection) else db.get_bind().dialect).name == "postgresql"


def _is(column: Any, *states: TaskState) -> Any:
    """`column` in `states`, the states written into the SQL text rather than sent as parameters: psycopg
    prepares a statement run often and PostgreSQL may then plan it once for any parameter values, a plan
    that cannot use the partial indexes on live tasks (their predicate names the states). With the queue
    thousands deep that generic plan sorted every live task on each claim (32 ms a claim under the load)."""
    values = [literal(s.value, literal_execute=True) for s in states]
    return column == values[0] if len(values) == 1 else column.in_(values)


def claimable(now: datetime | BindParameter[datetime], types: frozenset[TaskType] | None = None) -> Select[Any]:
    """The SELECT of claimable tasks, best first (not yet limited or locked)."""
    older = aliased(Task)
    blocked = exists().where(
        older.target_kind == Task.target_kind,
        older.target_id == Task.target_id,
        _is(older.state, *_LIVE),
        older.id < Task.id,
    )
    ready = or_(
        and_(_is(Task.state, TaskState.QUEUED), or_(Task.not_before.is_(None), Task.not_before <= now)),
        and_(_is(Task.state, TaskState.RUNNING), Task.lease_expires_at < now),
    )
    # The partial indexes' own predicate, said once more so the planner can prove they apply.
    query = select(Task.id, Task.state, Task.lease_owner, Task.type, Task.attempts).where(
        _is(Task.state, *_LIVE), ready, ~blocked
    )
    if types is not None:
        query = query.where(Task.type.in_(sorted(types)))
    return query.order_by(Task.priority.desc(), Task.created_at, Task.id)


@functools.lru_cache(maxsize=16)
def _claim_query(types: frozenset[TaskType] | None, postgresql: bool) -> Select[Any]:
    """Built once per worker kind: building the statement was a sixth of a claim's time in the interpreter."""
    query = claimable(bindparam("now", type_=Task.not_before.type), types).limit(1)
    return query.with_for_update(skip_locked=True, of=Task) if postgresql else query


def claim(db: Db, worker: str, lease: timedelta, types: frozenset[TaskType] | None = None) -> Claim | None:
    """Claim the best claimable task for `worker`, or None. The caller commits."""
    now = utcnow()
    row = db.execute(_claim_query(types, is_postgresql(db)), {"now": now}).first()
    if row is None:
        return None
    task_id, state, owner, task_type, attempts = row
    token = f"{worker}/{uuid.uuid4().hex[:12]}"
    params = {"p_id": task_id, "p_state": state, "p_owner": owner, "p_token": token, "p_expires": now + lease,
              "p_now": now}  # fmt: skip
    won = db.execute(_take_query(owner is None), params).first()
    if won is None:
        return None
    return Claim(task_id, TaskType(task_type), token, attempts + 1, state is TaskState.RUNNING,
                 TargetKind(won.target_kind), won.target_id, dict(won.args or {}), won.created_by)  # fmt: skip


# The UPDATEs run for every task are built once, with bound parameters: building a statement and its cache
# key anew each time cost a tenth of a task's time in the interpreter.


def _at(name: str) -> BindParameter[datetime]:
    return bindparam(name, type_=Task.started_at.type)


@functools.cache
def _take_query(unowned: bool) -> Any:
    """The claim's compare-and-set: only if the row still has the state and lease owner that were read."""
    c = TASKS.c
    return (
        update(TASKS)
        .where(c.id == bindparam("p_id"), c.state == bindparam("p_state"),
               c.lease_owner.is_(None) if unowned else c.lease_owner == bindparam("p_owner"))
        .values(state=TaskState.RUNNING, lease_owner=bindparam("p_token"), lease_expires_at=_at("p_expires"),
                attempts=c.attempts + 1, not_before=None, started_at=func.coalesce(c.started_at, _at("p_now")))
        .returning(c.target_kind, c.target_id, c.args, c.created_by)
    )  # fmt: skip


@functools.cache
def _end_query(state: TaskState) -> Any:
    c = TASKS.c
    values: dict[str, Any] = {
        "state": state,
        # A result of None is JSON's null, as the ORM writes it on the other ways a task ends.
        "result": bindparam("p_result", type_=c.result.type),
        "error": bindparam("p_error", type_=c.error.type),
        "finished_at": _at("p_now"),
        "lease_expires_at": None,
    }
    if state is TaskState.FINISHED:
        values["progress"] = 1.0
    guard = (c.id == bindparam("p_id"), c.lease_owner == bindparam("p_token"), c.state == TaskState.RUNNING)
    return update(TASKS).where(*guard).values(**values).returning(c.args)


def _guard(claim: Claim) -> tuple[Any, ...]:
    c = TASKS.c
    return (c.id == claim.task_id, c.lease_owner == claim.token, c.state == TaskState.RUNNING)


def renew(db: Db, claim: Claim, lease: timedelta) -> bool:
    """Push the lease on; False if the task is no longer ours (taken over, or ended)."""
    done = db.execute(update(TASKS).where(*_guard(claim)).values(lease_expires_at=utcnow() + lease))
    return cast(CursorResult[Any], done).rowcount == 1


def renew_all(db: Db, held: list[Claim], lease: timedelta) -> set[str]:
    """Push on the leases of several claims in one statement; the tokens still held (the others were lost)."""
    if not held:
        return set()
    c = TASKS.c
    rows = db.execute(
        update(TASKS)
        # A token names one claim of one task; the ids let the primary key find the rows.
        .where(c.id.in_([h.task_id for h in held]), c.lease_owner.in_([h.token for h in held]),
               c.state == TaskState.RUNNING)
        .values(lease_expires_at=utcnow() + lease)
        .returning(c.lease_owner)
    ).all()  # fmt: skip
    return {owner for (owner,) in rows}


def end(db: Db, claim: Claim, state: TaskState, result: dict[str, Any] | None, error: str | None) -> Row[Any] | None:
    """End the task (finished or failed) if this claim still holds it, in one compare-and-set: its args
    as they are now, or None when the lease was lost (nothing written). The row stays locked until commit."""
    query = _end_query(state)
    return db.execute(query, {"p_id": claim.task_id, "p_token": claim.token, "p_result": result, "p_error": error,
                              "p_now": utcnow()}).first()  # fmt: skip


def held(session: Session, claim: Claim) -> Task | None:
    """The task row, locked for this transaction, if this claim still holds it; else None.

    PostgreSQL: SELECT ... FOR UPDATE guarded by the lease owner. SQLite ignores row locks, so there a no-op
    UPDATE guarded the same way takes its write lock. Either way nobody can take the task over between this
    check and the commit.
    """
    if is_postgresql(session):
        return session.scalars(
            select(Task).where(*_guard(claim)).with_for_update().execution_options(populate_existing=True)
        ).one_or_none()
    locked = session.execute(update(TASKS).where(*_guard(claim)).values(lease_owner=TASKS.c.lease_owner))
    if cast(CursorResult[Any], locked).rowcount != 1:
        return None
    return session.get(Task, claim.task_id, populate_existing=True)
