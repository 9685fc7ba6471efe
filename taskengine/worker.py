"""The claim loop: worker threads that claim a task, move its VM through the state table, run its handler
under a renewed lease and record how it ended, exactly once.

- A task taken over from a dead worker (lease ran out) is first reconciled with libvirt by its type's
  reconciler (taskengine.actions): finished, failed or run again; a type without one fails.
- A transient libvirt error puts the task back in the queue with exponential back-off, a bounded number
  of times; any other error fails it at once, the VM back in the state it had, the error on both.
- Every transition writes an event; every write after the claim is guarded by the claim's token, so a
  worker that lost its lease writes nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import timedelta
from typing import Any

import libvirt
from sqlalchemy import Connection, Engine, bindparam, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from appliance import tasking, vmstate
from appliance.config import TaskEngineConfig
from appliance.db.base import utcnow
from appliance.db.engine import first_line, session_scope, transaction
from appliance.db.models import Event, Severity, TargetKind, Task, TaskState, TaskType, Vm, VmState
from appliance.errors import DroverError
from taskengine import actions, claims, ledger
from taskengine.claims import Claim
from taskengine.connections import Connections, is_transient

log = logging.getLogger(__name__)

BEFORE = "vm_state_before"  # key in task.args: the VM's state when the task first ran (failure returns there)
# Written at the start of every VM task; built once (see taskengine.claims).
_SET_ARGS = (update(claims.TASKS).where(claims.TASKS.c.id == bindparam("p_id"))
             .values(args=bindparam("p_args", type_=claims.TASKS.c.args.type)))  # fmt: skip


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def backoff(settings: TaskEngineConfig, attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: base, 2*base, 4*base, ... capped."""
    delay: float = settings.retry_base_ms / 1000 * 2 ** max(0, attempt - 1)
    return min(float(settings.retry_max_seconds), delay)


class _Lease:
    """One claim's lease while its task runs: renewed by the worker's renewer thread (or by the handler, through
    ctx.renew); `lost` is set when another worker turns out to hold the task."""

    def __init__(self, engine: Engine, claim: Claim, lease: timedelta, renewer: _Renewer) -> None:
        self.engine = engine
        self.claim = claim
        self.lease = lease
        self.lost = threading.Event()
        self.renewed = time.monotonic()  # the claim itself set the lease
        self._renewer = renewer

    def __enter__(self) -> _Lease:
        self._renewer.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._renewer.remove(self)

    def renew(self) -> None:
        try:
            with session_scope(self.engine) as s:
                ok = claims.renew(s, self.claim, self.lease)
        except DroverError as exc:
            log.warning("task %s: renewing the lease failed: %s", self.claim.task_id, exc)
            return  # the database may come back before the lease runs out
        if not ok:
            self.lost.set()
            raise actions.LeaseLost(f"task {self.claim.task_id}: lease lost; another worker has it")
        self.renewed = time.monotonic()


class _Renewer:
    """One thread per worker that renews the leases of all the tasks it runs, every third of a lease, in one
    statement: a thread per task cost a start and a join for every task, most of which end within a second."""

    def __init__(self, engine: Engine, lease: timedelta) -> None:
        self.engine = engine
        self.lease = lease
        self.interval = max(0.2, lease.total_seconds() / 3)
        self._held: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskengine-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def add(self, lease: _Lease) -> None:
        with self._lock:
            self._held[lease.claim.token] = lease

    def remove(self, lease: _Lease) -> None:
        with self._lock:
            self._held.pop(lease.claim.token, None)

    def _run(self) -> None:
        tick = min(1.0, self.interval / 2)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                due = [h for h in self._held.values() if now - h.renewed >= self.interval and not h.lost.is_set()]
            if due:
                self.renew(due)

    def renew(self, due: list[_Lease]) -> None:
        try:
            with session_scope(self.engine) as s:
                kept = claims.renew_all(s, [h.claim for h in due], self.lease)
        except DroverError as exc:
            log.warning("renewing %d task lease(s) failed: %s", len(due), exc)
            return  # the database may come back before the leases run out
        now = time.monotonic()
        for held in due:
            if held.claim.token in kept:
                held.renewed = now
            else:
                log.warning("task %s: lease lost while running", held.claim.task_id)
                held.lost.set()


class _Statistics:
    """PostgreSQL plans the claim from its statistics of the task table; a burst of tasks since the last
    ANALYZE leaves it planning for an empty queue, a plan that walks every live task for each one (0.15 ms
    a claim became 470 ms with 1,700 queued). Autovacuum catches up within a minute or so (migration 0017);
    a claim that took longer than SLOW refreshes them now, at most once every EVERY seconds."""

    SLOW = 0.05
    EVERY = 30.0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.enabled = engine.dialect.name == "postgresql"
        self._last = -self.EVERY
        self._lock = threading.Lock()

    def claimed(self, seconds: float) -> None:
        if not self.enabled or seconds < self.SLOW:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.EVERY:
                return
            self._last = now
        try:
            with self.engine.connect() as conn:
                conn.execute(text("ANALYZE tasks"))
                conn.commit()
        except SQLAlchemyError as exc:
            log.warning("a claim took %.0f ms; refreshing the task table's statistics failed, not tried again: %s",
                        seconds * 1000, first_line(exc))  # fmt: skip
            self.enabled = False  # not the table's owner: autovacuum is left to it
            return
        log.info("a claim took %.0f ms: refreshed the task table's statistics", seconds * 1000)


class Worker:
    """N claim loops in threads of this process, sharing one engine and one set of libvirt connections."""

    def __init__(self, engine: Engine, settings: TaskEngineConfig, default_port: int, *, name: str = "") -> None:
        self.engine = engine
        self.settings = settings
        self.name = name or worker_name()
        self.lease = timedelta(seconds=settings.lease_seconds)
        self.connections = Connections(default_port, (settings.keepalive_interval, settings.keepalive_count))
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._renewer = _Renewer(engine, self.lease)
        self._statistics = _Statistics(engine)
        self.handlers = actions.load()
        self._types = frozenset(self.handlers)  # the claim statement is built once per set of types
        self.ran = 0  # tasks this process ended (finished or failed), for status and tests

    # -- the loop -----------------------------------------------------------------------------------------

    def start(self, threads: int | None = None) -> None:
        tasking.on_enqueue(self.wake)
        self._renewer.start()
        for n in range(max(1, threads or self.settings.workers)):
            t = threading.Thread(target=self._loop, name=f"taskengine-{n + 1}", daemon=True)
            self._threads.append(t)
            t.start()
        log.info("task engine %s: %d worker threads, lease %ss", self.name, len(self._threads),
                 self.settings.lease_seconds)  # fmt: skip

    @property
    def threads(self) -> int:
        return len(self._threads)

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30) -> None:
        tasking.off_enqueue(self.wake)
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        self._renewer.stop()
        self.connections.close()

    def _loop(self) -> None:
        poll = self.settings.poll_ms / 1000
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # a daemon logs and carries on
                log.exception("task engine loop")
                worked = False
            if not worked:
                self._wake.wait(poll)
                self._wake.clear()

    def run_once(self) -> bool:
        """Claim one task and run it to its end; False if there was nothing to claim."""
        try:
            with transaction(self.engine) as conn:
                began = time.monotonic()
                claim = claims.claim(conn, self.name, self.lease, self._types)
                took = time.monotonic() - began
                # The claim's UPDATE holds the row until this transaction ends: its event and its VM's move
                # to the transitional state commit with it (one transaction per task start, not two).
                info = self._begin(conn, claim) if claim is not None else None
        except DroverError as exc:
            log.error("claiming a task failed: %s", exc)
            return False
        self._statistics.claimed(took)  # out of the claim's transaction: it holds the task's row
        if claim is None:
            return False
        if info is not None:
            self.execute(claim, info)
        return True

    # -- one task -----------------------------------------------------------------------------------------

    def execute(self, claim: Claim, info: actions.TaskInfo) -> None:
        with _Lease(self.engine, claim, self.lease, self._renewer) as lease:
            try:
                ctx = self._context(info, claim, lease)
                if claim.recovered or claim.attempts > 1:
                    verdict = self._reconcile(ctx, claim)
                    if verdict.verdict is actions.Verdict.FINISHED:
                        self._finish(claim, verdict.result, None)
                        return
                    if verdict.verdict is actions.Verdict.FAILED:
                        self._fail(claim, verdict.error or "failed after a lost lease")
                        return
                result = self.handlers[claim.type](ctx)
                if lease.lost.is_set():
                    raise actions.LeaseLost("lease lost while running")
                self._finish(claim, result, result.get("vm_state") if result else None)
            except actions.LeaseLost as exc:
                log.warning("task %s: %s; leaving it to its new owner", claim.task_id, exc)
            except actions.Deferred as exc:
                self._requeue(claim, exc.seconds, str(exc), count=False)
            except Exception as exc:
                self._failed(claim, exc)

    def _failed(self, claim: Claim, exc: BaseException) -> None:
        if is_transient(exc) and claim.attempts < self.settings.retries:
            delay = backoff(self.settings, claim.attempts)
            self._requeue(claim, delay, f"transient error, retry in {delay:.1f}s: {_text(exc)}", count=True)
            return
        if isinstance(exc, DroverError | libvirt.libvirtError):
            text = _text(exc)
            if is_transient(exc):
                text = f"{text} (gave up after {claim.attempts} attempts)"
        else:
            log.error("task %s: unexpected error", claim.task_id, exc_info=exc)
            text = f"internal error: {type(exc).__name__}: {exc}"
        self._fail(claim, text)

    def _context(self, info: actions.TaskInfo, claim: Claim, lease: _Lease) -> actions.TaskContext:
        def scope() -> Any:
            return session_scope(self.engine)

        def report(fraction: float, message: str) -> None:
            with session_scope(self.engine) as s:
                done = s.execute(
                    update(Task).where(Task.id == claim.task_id, Task.lease_owner == claim.token)
                    .values(progress=fraction, message=message[:2000], lease_expires_at=utcnow() + self.lease)
                    .execution_options(synchronize_session=False)
                ).rowcount  # type: ignore[attr-defined]  # fmt: skip
            if done != 1:
                lease.lost.set()
                raise actions.LeaseLost(f"task {claim.task_id}: lease lost")

        def aborted() -> bool:
            with session_scope(self.engine) as s:
                task = s.get(Task, claim.task_id)
                return bool(task is not None and task.abort_requested)

        return actions.TaskContext(info, scope, self.connections.get, report, lease.renew, aborted, self.settings)

    def _reconcile(self, ctx: actions.TaskContext, claim: Claim) -> actions.Reconciled:
        fn = actions.RECONCILERS.get(claim.type)
        if fn is None:
            if claim.recovered:
                return actions.Reconciled(actions.Verdict.FAILED, error=(
                    "its worker died while running it, and whether it took effect cannot be checked for "
                    f"{claim.type}: failed rather than risk doing it twice"))  # fmt: skip
            return actions.Reconciled(actions.Verdict.RERUN)
        verdict = fn(ctx)
        with session_scope(self.engine) as s:
            self._event(s, claim.task_id, "task.reconciled", f"checked with libvirt: {verdict.verdict}"
                        + (f" ({verdict.error})" if verdict.error else ""))  # fmt: skip
        return verdict

    def _begin(self, conn: Connection, claim: Claim) -> actions.TaskInfo | None:
        """In the claim's transaction: its event, the VM moved to the action's transitional state (first
        attempt) and a snapshot of the task; None if the task ended here (its VM is gone)."""
        entries = ledger.Entries(claim.task_id, claim.type)
        running = f"claimed by {claim.token} (attempt {claim.attempts})" + (
            ": taken over after a lost lease" if claim.recovered else "")  # fmt: skip
        args = claim.args
        if claim.target_kind is TargetKind.VM and claim.type in vmstate.TABLE:
            vm = ledger.lock_vm(conn, claim.target_id)
            entries.task("task.running", running, vm_id=vm.id if vm is not None else None)
            if vm is None and claim.type is not TaskType.VM_DELETE:
                gone = f"VM {claim.target_id} no longer exists"
                claims.end(conn, claim, TaskState.FAILED, None, gone)
                entries.task("task.failed", f"failed: {gone}", severity=Severity.ERROR)
                entries.write(conn)
                self.ran += 1
                return None
            if vm is not None and BEFORE not in args:
                args = {**args, BEFORE: str(vm.state)}
                conn.execute(_SET_ARGS, {"p_id": claim.task_id, "p_args": args})
                transitional = vmstate.TABLE[claim.type].transitional
                if transitional is not None:
                    ledger.move_vm(conn, vm, transitional, f"task {claim.task_id} {claim.type}", entries)
        else:
            vm_id, host_id = ledger.target_ids(conn, claim.target_kind, claim.target_id)
            entries.task("task.running", running, vm_id=vm_id, host_id=host_id)
        entries.write(conn)
        return actions.TaskInfo(claim.task_id, claim.type, claim.target_id, dict(args), claim.attempts,
                                claim.created_by)  # fmt: skip

    def _finish(self, claim: Claim, result: dict[str, Any] | None, vm_state: object) -> None:
        with transaction(self.engine) as conn:
            ended = claims.end(conn, claim, TaskState.FINISHED, result, None)
            if ended is None:
                raise actions.LeaseLost("lease lost before the result was written")
            entries = ledger.Entries(claim.task_id, claim.type)
            if claim.target_kind is TargetKind.VM and claim.type in vmstate.TABLE:
                vm = ledger.lock_vm(conn, claim.target_id)
                vm_id, host_id = (vm.id if vm is not None else None), None
                if vm is not None:
                    before = VmState((ended.args or {}).get(BEFORE, str(vm.state)))
                    target = VmState(str(vm_state)) if vm_state else vmstate.TABLE[claim.type].after(before)
                    ledger.move_vm(conn, vm, target, f"task {claim.task_id} {claim.type} finished", entries, "")
            else:
                vm_id, host_id = ledger.target_ids(conn, claim.target_kind, claim.target_id)
            entries.task("task.finished", "finished", vm_id=vm_id, host_id=host_id)
            entries.write(conn)
        self.ran += 1
        log.info("task %s (%s) finished", claim.task_id, claim.type)

    def _fail(self, claim: Claim, error: str) -> None:
        with session_scope(self.engine) as s:
            task = claims.held(s, claim)
            if task is None:
                log.warning("task %s failed (%s) but its lease was lost meanwhile", claim.task_id, error)
                return
            if task.target_kind is TargetKind.VM and task.type in vmstate.TABLE:
                vm = tasking.lock_vm(s, task.target_id)
                if vm is not None:
                    entry = vmstate.TABLE[task.type]
                    before = VmState(task.args.get(BEFORE, str(vm.state)))
                    back = entry.failure or before
                    set_vm_state(s, vm, back, f"task {task.id} {task.type} failed: {error}", task.id)
                    vm.state_reason = f"{task.type} failed: {error}"
                    tasking.cancel_stranded(s, vm, task)
            self._end(s, task, TaskState.FAILED, None, error)
        log.warning("task %s (%s) failed: %s", claim.task_id, claim.type, error)

    def _requeue(self, claim: Claim, seconds: float, why: str, *, count: bool) -> None:
        with session_scope(self.engine) as s:
            task = claims.held(s, claim)
            if task is None:
                return
            task.move_to(TaskState.QUEUED)
            task.lease_owner = None
            task.lease_expires_at = None
            task.not_before = utcnow() + timedelta(seconds=seconds)
            task.message = why[:2000]
            if not count:
                task.attempts = max(0, task.attempts - 1)
            self._event(s, task.id, "task.retry" if count else "task.deferred", why,
                        Severity.WARNING if count else Severity.INFO)  # fmt: skip
        log.info("task %s back in the queue for %.1fs: %s", claim.task_id, seconds, why)

    def _end(self, s: Session, task: Task, state: TaskState, result: dict[str, Any] | None, error: str | None) -> None:
        task.move_to(state)
        task.result = result
        task.error = error
        task.finished_at = utcnow()
        task.lease_expires_at = None
        if state is TaskState.FINISHED:
            task.progress = 1.0
        self.ran += 1
        text = "finished" if state is TaskState.FINISHED else f"failed: {error}"
        tasking.task_event(s, task, f"task.{state}", text,
                           Severity.INFO if state is TaskState.FINISHED else Severity.ERROR)  # fmt: skip

    def _event(self, s: Session, task_id: int, kind: str, message: str, severity: Severity = Severity.INFO) -> None:
        task = s.get(Task, task_id)
        if task is not None:
            tasking.task_event(s, task, kind, message, severity)


def set_vm_state(s: Session, vm: Vm, state: VmState, why: str, task_id: int | None = None) -> None:
    """Move the VM row to `state` with an event (none if it already is there)."""
    if vm.state is state:
        return
    s.add(Event(kind="vm.state", subject=vm.name, message=ledger.moved(vm.state, state, why), vm_id=vm.id,
                host_id=vm.host_id, task_id=task_id))  # fmt: skip
    vm.state = state
    vm.state_changed_at = utcnow()


def _text(exc: BaseException) -> str:
    if isinstance(exc, libvirt.libvirtError):
        return f"libvirt: {exc.get_error_message() or exc}"
    return str(exc)
