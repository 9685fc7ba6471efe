"""Claims and crashes: worker processes SIGKILLed at random points while they drive real guests (afterwards
every task ended exactly once and the database agrees with libvirt), and two worker processes on PostgreSQL
sharing 1,000 tasks (none run twice, none left).
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter

import libvirt
import pytest
from sqlalchemy import func, select

from appliance import tasking
from appliance.db import migrate
from appliance.db.base import utcnow
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Event, HardwarePool, Host, HostState, TargetKind, Task, TaskState, TaskType, Vm, VmState
from tests.lab.taskrack import TaskRack, wait_until

pytestmark = pytest.mark.lab

KILLS = 100  # SIGKILLs of the worker process at seeded random points

_REAL = {
    libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: VmState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: VmState.STOPPED,
}


def _real_state(rack: TaskRack, vm: Vm) -> VmState | None:
    conn = libvirt.open(rack.node_of(vm.host_id).local_uri)
    try:
        state = conn.lookupByUUIDString(vm.uuid).state()[0]
        return _REAL.get(state)
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


def test_sigkill_at_random_points_every_task_ends_once_and_db_agrees_with_libvirt(task_rack: TaskRack) -> None:
    rack = task_rack
    rack.stop_workers()  # this test owns the workers: killed and restarted
    names = [rack.unique("kill") for _ in range(3)]
    with session_scope(rack.db) as s:
        # Task ids only grow; VM ids may be reused after earlier tests deleted theirs (SQLite).
        first_task = (s.scalar(select(func.max(Task.id))) or 0) + 1
    for name in names:
        created = rack.drover(*rack.guest_args(name, 64))
        assert created.returncode == 0, created.stderr
    cycle = [TaskType.VM_START, TaskType.VM_SUSPEND, TaskType.VM_RESUME, TaskType.VM_POWEROFF]
    with session_scope(rack.db) as s:
        vm_ids = [s.scalars(select(Vm.id).where(Vm.name == n)).one() for n in names]

    def feed() -> None:
        """One more start/suspend/resume/poweroff round for every VM: the queue never runs dry while killing."""
        with session_scope(rack.db) as s:
            for task_type in cycle:
                for vm_id in vm_ids:
                    tasking.enqueue(s, task_type, vm_id, {}, created_by="crash-test")

    def ours() -> list[int]:
        with session_scope(rack.db) as s:
            return [t.id for t in s.scalars(select(Task).where(
                Task.id >= first_task, Task.target_kind == TargetKind.VM, Task.target_id.in_(vm_ids)))]  # fmt: skip

    def left() -> int:
        with session_scope(rack.db) as s:
            return s.scalar(select(func.count()).select_from(Task).where(
                Task.id.in_(ours()), Task.state.in_((TaskState.QUEUED, TaskState.RUNNING)))) or 0  # fmt: skip

    def holds_one(pid: int) -> bool:
        """The worker process `pid` has started up and claimed one of our tasks (its lease owner is host:pid)."""
        with session_scope(rack.db) as s:
            return bool(s.scalar(select(func.count()).select_from(Task).where(
                Task.id.in_(ours()), Task.state == TaskState.RUNNING, Task.lease_owner.like(f"%:{pid}"))))  # fmt: skip

    for _ in range(3):
        feed()
    assert len(ours()) == 3 + 3 * len(cycle) * 3  # 3 creates + the cycles
    rng = random.Random(20261130)
    kills = 0
    # Three worker processes at a time; every 0.3-1.5 s one is SIGKILLed — one holding a task when there is
    # one, so kills land inside the work — and replaced. A process lives a few kills long: long enough to
    # start up and claim (Python's start-up is most of a worker's life here), short enough for 100 kills
    # to take a few minutes.
    alive = [rack.start_worker(workers=2, log_name=f"worker-kill-{k}.log") for k in range(3)]
    deadline = time.monotonic() + 600
    while kills < KILLS or left():
        assert time.monotonic() < deadline, f"{left()} tasks not ended after {kills} kills"
        if kills < KILLS:
            if left() < 2 * len(cycle):
                feed()
            time.sleep(rng.uniform(0.3, 1.5))
            holding = [p for p in alive if holds_one(p.pid)]
            victim = rng.choice(holding or alive)
            rack.kill_worker(victim)
            kills += 1
            alive[alive.index(victim)] = rack.start_worker(workers=2, log_name=f"worker-kill-{kills % 6}.log")
        else:
            time.sleep(0.5)
    ours_now = ours()
    with session_scope(rack.db) as s:
        starts = Counter(t.target_id for t in s.scalars(select(Task).where(
            Task.id.in_(ours_now), Task.type == TaskType.VM_START)))  # fmt: skip
    with session_scope(rack.db) as s:
        tasks = s.scalars(select(Task).where(Task.id.in_(ours_now))).all()
        ends = Counter(s.scalars(select(Event.task_id).where(
            Event.task_id.in_(ours_now), Event.kind.in_(("task.finished", "task.failed"))))).values()  # fmt: skip
        recovered = s.scalar(select(func.count()).select_from(Event).where(
            Event.task_id.in_(ours_now), Event.kind == "task.reconciled")) or 0  # fmt: skip
        states = Counter(t.state for t in tasks)
        failed = [(t.id, t.type, t.error) for t in tasks if t.state is TaskState.FAILED]
    assert set(ends) == {1} and len(list(ends)) == len(ours_now), _ended_wrongly(rack, ours_now)
    assert states[TaskState.FINISHED] + states[TaskState.FAILED] == len(ours_now)
    # Killed mid-task, a task is reconciled with libvirt and finished, not failed: nothing here fails.
    assert not failed, "\n".join(f"{i} {t}: {e}" for i, t, e in failed)
    assert recovered >= 1, "no kill landed inside a task: the test proved nothing"
    for name in names:
        vm = rack.vm(name)
        assert vm.state is VmState.STOPPED
        assert _real_state(rack, vm) is VmState.STOPPED
        # No side effect twice: qemu ran exactly once per start task (each run heads the log with "starting up"
        # and ends it with "shutting down, reason=..."). A run libvirt rolled back itself (reason=failed: a
        # start that failed inside libvirtd, e.g. qemu slow to open its monitor on the loaded machine) left
        # nothing running and is not a start; any other extra run is.
        node = rack.node_of(vm.host_id)
        log = (node.qemu_log_dir / f"{name}.log").read_text(errors="replace")
        assert _qemu_runs(log) == starts[vm.id], _doubled(rack, vm.id, name, log, node.log_text())
    print(f"{kills} SIGKILLs, {len(ours_now)} tasks, {recovered} reconciled after a lost lease")
    rack.stop_workers()
    rack.start_worker(log_name="worker-main-2.log")
    for name in names:
        assert rack.drover("vm", "delete", name, "--wait").returncode == 0


def test_two_workers_on_postgresql_share_1000_tasks_none_twice_none_left(
    task_rack: TaskRack, postgres_url: str
) -> None:
    rack = task_rack
    migrate.upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        with session_scope(engine) as s:
            pool = HardwarePool(name="default")
            s.add(pool)
            s.flush()
            hosts = []
            for node in rack.nodes:
                host = Host(uuid=str(uuid.uuid4()), hostname=node.fqdn, state=HostState.AVAILABLE,
                            approved_at=utcnow(), memory_mib=2048, cpu_count=4, hardware_pool_id=pool.id)  # fmt: skip
                s.add(host)
                hosts.append(host)
            s.flush()
            vms = [Vm(uuid=str(uuid.uuid4()), name=f"pg{n}", vcpus=1, memory_mib=64, hardware_pool_id=pool.id,
                      host_id=hosts[n % 2].id, state=VmState.STOPPED) for n in range(250)]  # fmt: skip
            s.add_all(vms)
        # Both processes up before the queue fills: one alone drains 1,000 tasks before a second has started.
        workers = [rack.start_worker(workers=4, database_url=postgres_url, log_name=f"pg-worker-{n}.log")
                   for n in range(2)]  # fmt: skip
        logs = [rack.workdir / f"pg-worker-{n}.log" for n in range(2)]
        wait_until("both task engines claiming", lambda: all(
            log.is_file() and "worker threads" in log.read_text() for log in logs), 60)  # fmt: skip
        with session_scope(engine) as s:
            # 4 update-state tasks per VM: each asks the VM's node over Kerberos whether the domain exists.
            for _ in range(4):
                for vm in s.scalars(select(Vm).order_by(Vm.id)).all():
                    tasking.enqueue(s, TaskType.VM_UPDATE_STATE, vm.id, {}, created_by="pg-test")

        def done() -> bool:
            with session_scope(engine) as s:
                return not s.scalar(select(func.count()).select_from(Task).where(
                    Task.state.in_((TaskState.QUEUED, TaskState.RUNNING))))  # fmt: skip

        wait_until("1,000 tasks ended", done, 600)
        for proc in workers:
            rack.kill_worker(proc)
        rack.workers = [p for p in rack.workers if p not in workers]
        with session_scope(engine) as s:
            tasks = s.scalars(select(Task)).all()
            claims = Counter(s.scalars(select(Event.task_id).where(Event.kind == "task.running")))
            ends = Counter(s.scalars(select(Event.task_id).where(Event.kind.in_(("task.finished", "task.failed")))))
        assert len(tasks) == 1000
        assert all(t.state is TaskState.FINISHED for t in tasks), Counter(t.state for t in tasks)
        assert all(t.attempts == 1 for t in tasks)
        assert set(claims.values()) == {1} and len(claims) == 1000, "a task was claimed twice"
        assert set(ends.values()) == {1} and len(ends) == 1000
        # Both processes took part (the lease owner names the process).
        owners = Counter((t.lease_owner or "").split("/")[0] for t in tasks)
        assert len(owners) == 2 and min(owners.values()) > 100, owners
    finally:
        engine.dispose()


def _qemu_runs(log: str) -> int:
    """qemu runs in a libvirt qemu log that libvirt did not roll back as a failed start."""
    runs = log.split("starting up")[1:]
    return sum(1 for run in runs if "shutting down, reason=failed" not in run)


def _doubled(rack: TaskRack, vm_id: int, name: str, qemu_log: str, libvirtd_log: str) -> str:
    """What a count of qemu starts that differs from the start tasks needs to be understood (it happened once
    in many runs): how each qemu run ended, libvirtd's warnings about the domain, and the VM's task events."""
    with session_scope(rack.db) as s:
        events = s.execute(select(Event.at, Event.task_id, Event.kind, Event.message).where(
            Event.vm_id == vm_id).order_by(Event.id)).all()  # fmt: skip
    ours = [line for line in libvirtd_log.splitlines() if name in line]
    return "\n".join([f"{name}: qemu starts differ from its start tasks", "-- its qemu log:", qemu_log[-6000:],
                      "-- libvirtd about it:", *ours[-40:], "-- its events:",
                      *(f"{at:%H:%M:%S.%f} task {t} {k}: {m}" for at, t, k, m in events)])  # fmt: skip


def _ended_wrongly(rack: TaskRack, task_ids: list[int]) -> str:
    """Each task that has not exactly one end event: its state, error and events (a canceled task has none:
    it was canceled because one before it failed, and that failure is the thing to read)."""
    with session_scope(rack.db) as s:
        ends = Counter(s.scalars(select(Event.task_id).where(
            Event.task_id.in_(task_ids), Event.kind.in_(("task.finished", "task.failed")))))  # fmt: skip
        wrong = [t for t in s.scalars(select(Task).where(Task.id.in_(task_ids))) if ends[t.id] != 1]
        failed = [t for t in s.scalars(select(Task).where(Task.id.in_(task_ids), Task.state == TaskState.FAILED))]
        lines = [f"{len(wrong)} of {len(task_ids)} tasks did not end exactly once"]
        for task in [*wrong, *failed]:
            lines.append(f"task {task.id} {task.type} on VM {task.target_id}: {task.state}, {ends[task.id]} end "
                         f"event(s), attempts {task.attempts}, error {task.error!r}")  # fmt: skip
            lines += [
                f"  {at:%H:%M:%S.%f} {kind}: {message}"
                for at, kind, message in s.execute(
                    select(Event.at, Event.kind, Event.message).where(Event.task_id == task.id).order_by(Event.id)
                )
            ]
    return "\n".join(lines)
