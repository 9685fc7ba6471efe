"""Faults the fleet must ride out, each checked on the database and on libvirt afterwards: the appliance
killed and restarted with nodes up and guests running, a node's libvirtd restarted, and PostgreSQL
restarted while the task engine works through a queue.

The rack is this module's own (its own PostgreSQL cluster, `drover serve`, two lab libvirtds and one task
engine process): these tests stop what the shared rack's users rely on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from sqlalchemy import func, select

from appliance import tasking
from appliance.db.engine import session_scope
from appliance.db.models import Event, Host, HostState, TargetKind, Task, TaskState, TaskType, Vm, VmState
from tests.lab.accel import Accel
from tests.lab.guest import BOOT_MARKER, TICK, GuestImage, wait_for_text
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts, NodeFactory
from tests.lab.postgres import PostgresProcess, running_postgres
from tests.lab.taskrack import TaskRack, open_rack, wait_until

pytestmark = pytest.mark.lab

NAMES = ("fault1.example.test", "fault2.example.test")


class FaultRack:
    def __init__(self, rack: TaskRack, postgres: PostgresProcess) -> None:
        self.rack, self.postgres = rack, postgres


@pytest.fixture(scope="module")
def faults(
    kdc: LabKdc,
    lab_hosts: LabHosts,
    libvirt_nodes: NodeFactory,
    guest_image: GuestImage,
    guest_accel: Accel,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FaultRack]:
    with running_postgres() as postgres:
        url = postgres.server.create_database("faults")
        settings = {"DROVER_DATABASE_URL": url}
        state = tmp_path_factory.mktemp("faultrack")
        with open_rack(kdc, lab_hosts, libvirt_nodes, guest_image, guest_accel, state, NAMES, settings) as rack:
            yield FaultRack(rack, postgres)
            for node in rack.nodes:
                node.stop()


def _ok(rack: TaskRack, *argv: str, timeout: float = 240) -> str:
    proc = rack.drover(*argv, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _ticks(log: Path) -> int:
    found = re.findall(rf"{TICK} (\d+)", log.read_text(errors="replace"))
    return int(found[-1]) if found else 0


def _domain_ids(rack: TaskRack) -> dict[str, tuple[int, int]]:
    """Each running guest's (libvirt domain id, qemu pid): both change if a guest is restarted."""
    out: dict[str, tuple[int, int]] = {}
    for node in rack.nodes:
        conn = libvirt.open(node.local_uri)
        try:
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                pidfile = node.root / "run" / "libvirt" / "qemu" / f"{dom.name()}.pid"
                out[dom.UUIDString()] = (dom.ID(), int(pidfile.read_text().strip()))
        finally:
            conn.close()
    return out


def _db_view(rack: TaskRack) -> dict[str, tuple[VmState, int | None]]:
    with session_scope(rack.db) as s:
        return {vm.uuid: (vm.state, vm.host_id) for vm in s.scalars(select(Vm)).all()}


def _hosts_available(rack: TaskRack) -> bool:
    with session_scope(rack.db) as s:
        rows = s.scalars(select(Host).where(Host.id.in_(rack.host_ids))).all()
        return all(h.state is HostState.AVAILABLE and h.libvirt_connected for h in rows)


@pytest.fixture(scope="module")
def guests(faults: FaultRack) -> list[str]:
    """One running guest on each node, counting on its serial console."""
    rack = faults.rack
    names = []
    for host, node in zip(NAMES, rack.nodes, strict=True):
        name = f"fault-{node.fqdn.split('.')[0]}"
        _ok(rack, *rack.guest_args(name), "--host", host, "--wait")
        _ok(rack, "vm", "start", name, "--wait")
        names.append(name)
    for name in names:
        vm = rack.vm(name)
        try:
            wait_for_text(rack.serial_log(vm.host_id, name), BOOT_MARKER, 240)
        except TimeoutError as exc:
            qemu_log = rack.node_of(vm.host_id).qemu_log_dir / f"{name}.log"
            tail = qemu_log.read_text(errors="replace")[-3000:] if qemu_log.is_file() else "(no qemu log)"
            raise AssertionError(f"{exc}\nqemu log:\n{tail}\nvm show:\n{_ok(rack, 'vm', 'show', name)}") from exc
    return names


def _still_counting(rack: TaskRack, names: list[str], before: dict[str, int]) -> None:
    for name in names:
        vm = rack.vm(name)
        log = rack.serial_log(vm.host_id, name)
        floor = before[name] + 1
        wait_until(f"{name} counting on", lambda: _ticks(log) > floor, 60)  # noqa: B023 (called at once)
        # A restarted guest would print its boot marker a second time.
        assert log.read_text(errors="replace").count(BOOT_MARKER) == 1, name


def test_a_killed_appliance_comes_back_to_the_same_fleet_and_restarts_no_guest(
    faults: FaultRack, guests: list[str]
) -> None:
    rack = faults.rack
    before_ids, before_db = _domain_ids(rack), _db_view(rack)
    ticks = {n: _ticks(rack.serial_log(rack.vm(n).host_id, n)) for n in guests}
    with session_scope(rack.db) as s:
        last_event = s.scalar(select(func.max(Event.id))) or 0
    # Work queued while nothing runs it: the worker is stopped, the appliance killed outright.
    rack.stop_workers()
    with session_scope(rack.db) as s:
        queued = [tasking.enqueue(s, TaskType.VM_UPDATE_STATE, rack.vm(n).id, {}, created_by="fault-test").id
                  for n in guests]  # fmt: skip
    rack.served.process.kill()
    rack.served.process.wait(10)
    time.sleep(2)  # the guests run on without their appliance
    rack.served.restart()
    wait_until("both hosts available again", lambda: _hosts_available(rack), 60)
    rack.start_worker(log_name="worker-after-restart.log")
    for task_id in queued:
        assert rack.wait_task(task_id, 120).state is TaskState.FINISHED
    # The same guests, the same qemu processes, the same rows: re-synced, nothing restarted or lost.
    assert _domain_ids(rack) == before_ids
    assert _db_view(rack) == before_db
    _still_counting(rack, guests, ticks)
    with session_scope(rack.db) as s:
        flaps = s.scalars(select(Event.message).where(Event.id > last_event, Event.kind == "vm.state")).all()
    assert not [m for m in flaps if "-> stopped" in m or "-> unreachable" in m], flaps


def test_a_restarted_libvirtd_is_reconnected_and_its_guests_left_alone(faults: FaultRack, guests: list[str]) -> None:
    rack = faults.rack
    node, host_id = rack.nodes[0], rack.host_ids[0]
    before_ids = _domain_ids(rack)
    ticks = {n: _ticks(rack.serial_log(rack.vm(n).host_id, n)) for n in guests}
    with session_scope(rack.db) as s:
        last_event = s.scalar(select(func.max(Event.id))) or 0
    node.restart()
    wait_until("the host reconnected", lambda: _hosts_available(rack), 60)
    with session_scope(rack.db) as s:
        host = s.get(Host, host_id)
        assert host is not None and host.state is HostState.AVAILABLE
        reconnects = s.scalars(select(Event.message).where(
            Event.id > last_event, Event.kind == "host.state", Event.host_id == host_id)).all()  # fmt: skip
    assert _domain_ids(rack) == before_ids
    assert all(rack.vm(n).state is VmState.RUNNING for n in guests)
    _still_counting(rack, guests, ticks)
    # The browser saw the connection go and come back (or never lost it, when the restart beat keepalive).
    assert all("available" in m or "unavailable" in m for m in reconnects), reconnects
    # The task engine reaches the restarted libvirtd too.
    with session_scope(rack.db) as s:
        task = tasking.enqueue(s, TaskType.VM_UPDATE_STATE, rack.vm(guests[0]).id, {}, created_by="fault-test")
    rack.ensure_worker()
    assert rack.wait_task(task.id, 120).state is TaskState.FINISHED


def test_postgresql_restarted_under_load_loses_no_task_and_runs_none_twice(
    faults: FaultRack, guests: list[str]
) -> None:
    rack = faults.rack
    rack.ensure_worker()
    with session_scope(rack.db) as s:
        first = (s.scalar(select(func.max(Task.id))) or 0) + 1
        vm_ids = [rack.vm(n).id for n in guests]
        for i in range(120):  # update-state: cheap, a libvirt call each, one VM at a time per VM
            tasking.enqueue(s, TaskType.VM_UPDATE_STATE, vm_ids[i % 2], {}, created_by="pg-restart")

    def ended() -> int:
        with session_scope(rack.db) as s:
            return int(s.scalar(select(func.count()).select_from(Task).where(
                Task.id >= first, Task.state.in_((TaskState.FINISHED, TaskState.FAILED)))) or 0)  # fmt: skip

    wait_until("the queue under way", lambda: ended() >= 10, 120)
    faults.postgres.stop()
    time.sleep(3)  # workers, the host browser and the API all lose their connections
    faults.postgres.start()
    wait_until("every task ended", lambda: ended() == 120, 300)
    with session_scope(rack.db) as s:
        tasks = s.scalars(select(Task).where(Task.id >= first, Task.target_kind == TargetKind.VM)).all()
        assert [t.state for t in tasks] == [TaskState.FINISHED] * 120, [(t.id, t.state, t.message) for t in tasks]
        # Each ran to its end once: one "finished" event per task, no task claimed by two workers at once.
        finished = s.scalars(select(Event.task_id).where(Event.task_id >= first, Event.kind == "task.finished")).all()
    assert sorted(t or 0 for t in finished) == sorted(t.id for t in tasks)
    wait_until("hosts available after the database came back", lambda: _hosts_available(rack), 60)
    assert all(rack.vm(n).state is VmState.RUNNING for n in guests)
    # The API answers again (its pool reconnects on the next request).
    proc = rack.drover("vm", "list")
    assert proc.returncode == 0 and all(n in proc.stdout for n in guests), proc.stdout + proc.stderr
