"""Enqueue-time checks against the VM state table (projected over queued tasks), cancel and abort."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, func, select

from appliance import tasking, vmstate
from appliance.db.engine import session_scope
from appliance.db.models import Event, HardwarePool, Host, PlacementPolicy, Task, TaskState, TaskType, Vm, VmState
from appliance.errors import Conflict, NotFound


def _vm(engine: Engine, state: VmState = VmState.STOPPED) -> int:
    with session_scope(engine) as s:
        pool = HardwarePool(name=f"p-{uuid.uuid4().hex[:6]}")
        s.add(pool)
        s.flush()
        vm = Vm(uuid=str(uuid.uuid4()), name="web1", vcpus=1, memory_mib=64, hardware_pool_id=pool.id, state=state)
        s.add(vm)
        s.flush()
        return vm.id


def _count(engine: Engine, model: type[Task] | type[Event]) -> int:
    with session_scope(engine) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_table_covers_every_vm_action() -> None:
    for task_type in TaskType:
        if task_type.value.startswith("vm_"):
            assert task_type in vmstate.TABLE, task_type
    start = vmstate.transition(TaskType.VM_START)
    assert (start.sources, start.transitional, start.success) == (
        frozenset({VmState.STOPPED}),
        VmState.STARTING,
        VmState.RUNNING,
    )
    assert vmstate.transition(TaskType.VM_SAVE).after(VmState.RUNNING) is VmState.SAVED
    assert vmstate.transition(TaskType.VM_MIGRATE).after(VmState.PAUSED) is VmState.PAUSED


def test_start_after_a_queued_shutdown_is_accepted(db_engine: Engine) -> None:
    vm_id = _vm(db_engine, VmState.RUNNING)
    with session_scope(db_engine) as s:
        first = tasking.enqueue(s, TaskType.VM_SHUTDOWN, vm_id, {}, created_by="alice@R")
        second = tasking.enqueue(s, TaskType.VM_START, vm_id, {}, created_by="alice@R", priority=3)
        assert (first.state, second.state, second.priority) == (TaskState.QUEUED, TaskState.QUEUED, 3)
    with session_scope(db_engine) as s:
        kinds = s.scalars(select(Event.kind).where(Event.vm_id == vm_id)).all()
        assert kinds == ["task.queued", "task.queued"]


def test_resume_of_a_stopped_vm_is_refused_and_nothing_written(db_engine: Engine) -> None:
    vm_id = _vm(db_engine, VmState.STOPPED)
    before = (_count(db_engine, Task), _count(db_engine, Event))
    with pytest.raises(Conflict) as err, session_scope(db_engine) as s:
        tasking.enqueue(s, TaskType.VM_RESUME, vm_id, {}, created_by="alice@R")
    assert err.value.http_status == 409
    assert "cannot resume VM web1: it is stopped" in err.value.message
    assert "paused" in err.value.hint
    assert (_count(db_engine, Task), _count(db_engine, Event)) == before


def test_refusal_names_the_queued_task(db_engine: Engine) -> None:
    vm_id = _vm(db_engine, VmState.RUNNING)
    with session_scope(db_engine) as s:
        shut = tasking.enqueue(s, TaskType.VM_SHUTDOWN, vm_id, {}, created_by=None)
    with pytest.raises(Conflict, match=f"it will be stopped once task {shut.id}"), session_scope(db_engine) as s:
        tasking.enqueue(s, TaskType.VM_SUSPEND, vm_id, {}, created_by=None)
    with session_scope(db_engine) as s:
        tasking.enqueue(s, TaskType.VM_DELETE, vm_id, {}, created_by=None)
    with pytest.raises(Conflict, match="will be deleted"), session_scope(db_engine) as s:
        tasking.enqueue(s, TaskType.VM_START, vm_id, {}, created_by=None)


def test_unknown_vm_is_not_found(db_engine: Engine) -> None:
    with pytest.raises(NotFound, match="VM 999 does not exist"), session_scope(db_engine) as s:
        tasking.enqueue(s, TaskType.VM_START, 999, {}, created_by=None)


def test_cancel_queued_then_not_again(db_engine: Engine) -> None:
    vm_id = _vm(db_engine)
    with session_scope(db_engine) as s:
        task_id = tasking.enqueue(s, TaskType.VM_START, vm_id, {}, created_by=None).id
    with session_scope(db_engine) as s:
        task = tasking.cancel(s, task_id, "bob@R")
        assert task.state is TaskState.CANCELED and task.error == "canceled by bob@R"
    with pytest.raises(Conflict, match="already ended"), session_scope(db_engine) as s:
        tasking.cancel(s, task_id, "bob@R")
    # A canceled start no longer counts: the VM is stopped again as far as the queue is concerned.
    with session_scope(db_engine) as s:
        tasking.enqueue(s, TaskType.VM_START, vm_id, {}, created_by=None)


def test_stranded_tasks_follow_the_table_from_the_real_state() -> None:
    queued = [(2, TaskType.VM_SUSPEND), (3, TaskType.VM_RESUME), (4, TaskType.VM_SHUTDOWN), (5, TaskType.VM_START),
              (6, TaskType.VM_UPDATE_STATE), (7, TaskType.VM_DELETE)]  # fmt: skip
    # After a failed start the VM is stopped: suspend, resume and shutdown cannot run; start (from stopped)
    # can, and once it has, the VM will be running, so delete (from stopped) cannot follow it.
    assert vmstate.stranded(VmState.STOPPED, queued) == [
        (2, TaskType.VM_SUSPEND, VmState.STOPPED), (3, TaskType.VM_RESUME, VmState.STOPPED),
        (4, TaskType.VM_SHUTDOWN, VmState.STOPPED), (7, TaskType.VM_DELETE, VmState.RUNNING)]  # fmt: skip
    # Had the VM been running, the whole queue fits but the delete (the start leaves it running).
    assert [t for t, _, _ in vmstate.stranded(VmState.RUNNING, queued)] == [7]


def test_a_pinned_vm_is_never_queued_for_migration_and_its_host_is_named(db_engine: Engine) -> None:
    vm_id = _vm(db_engine, VmState.RUNNING)
    with session_scope(db_engine) as s:
        vm = s.get_one(Vm, vm_id)
        host = Host(uuid=str(uuid.uuid4()), hostname="pin.example.test", hardware_pool_id=vm.hardware_pool_id)
        s.add(host)
        s.flush()
        vm.host_id, vm.placement_policy = host.id, PlacementPolicy.PINNED
    before = (_count(db_engine, Task), _count(db_engine, Event))
    with pytest.raises(Conflict, match=r"web1 is pinned to pin\.example\.test"), session_scope(db_engine) as s:
        tasking.enqueue(s, TaskType.VM_MIGRATE, vm_id, {}, created_by="alice@R")
    assert (_count(db_engine, Task), _count(db_engine, Event)) == before


def test_the_queued_event_names_its_vm_or_host_and_the_task(db_engine: Engine) -> None:
    vm_id = _vm(db_engine, VmState.STOPPED)
    with session_scope(db_engine) as s:
        host = Host(
            uuid=str(uuid.uuid4()), hostname="ev.example.test", hardware_pool_id=s.get_one(Vm, vm_id).hardware_pool_id
        )
        s.add(host)
        s.flush()
        on_vm = tasking.enqueue(s, TaskType.VM_START, vm_id, {}, created_by=None).id
        on_host = tasking.enqueue(s, TaskType.HOST_CLEAR, host.id, {}, created_by="bob@R").id
    with session_scope(db_engine) as s:
        rows = s.execute(select(Event.task_id, Event.subject, Event.vm_id, Event.host_id, Event.message).where(
            Event.kind == "task.queued").order_by(Event.id)).all()  # fmt: skip
    assert [tuple(r) for r in rows] == [
        (on_vm, f"task {on_vm} vm_start", vm_id, None, "vm_start on VM web1 queued by the appliance"),
        (on_host, f"task {on_host} host_clear", None, host.id, f"host_clear on host {host.id} queued by bob@R"),
    ]
