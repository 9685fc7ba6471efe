"""The task engine against real lab libvirtds over qemu+tcp + GSSAPI: a tiny TCG guest's whole life through
the queue (its serial console proves it booted, counted and powered off on ACPI), and the refusals.
"""

from __future__ import annotations

import libvirt
import pytest
from sqlalchemy import select

from appliance.db.engine import session_scope
from appliance.db.models import Event, TaskState, Vm, VmState
from tests.lab.guest import BOOT_MARKER, POWEROFF, TICK, wait_for_text
from tests.lab.taskrack import TaskRack

pytestmark = pytest.mark.lab


def _domain_state(rack: TaskRack, host_id: int | None, uuid: str) -> int | None:
    conn = libvirt.open(rack.node_of(host_id).local_uri)
    try:
        dom = conn.lookupByUUIDString(uuid)
        return int(dom.state()[0])
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


def _ok(rack: TaskRack, *argv: str, timeout: float = 240) -> str:
    proc = rack.drover(*argv, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_guest_lives_its_whole_life_through_the_queue(task_rack: TaskRack) -> None:
    rack = task_rack
    name = rack.unique("life")
    out = _ok(rack, *rack.guest_args(name), "--wait")
    assert "vm_create: finished" in out
    vm = rack.vm(name)
    assert vm.state is VmState.STOPPED and vm.host_id in rack.host_ids
    assert _domain_state(rack, vm.host_id, vm.uuid) == libvirt.VIR_DOMAIN_SHUTOFF

    out = _ok(rack, "vm", "start", name, "--wait")
    assert "vm_start: finished" in out
    vm = rack.vm(name)
    assert vm.state is VmState.RUNNING
    serial = rack.serial_log(vm.host_id, name)
    wait_for_text(serial, BOOT_MARKER, 120)
    wait_for_text(serial, f"{TICK} 2", 60)

    _ok(rack, "vm", "suspend", name, "--wait")
    assert rack.vm(name).state is VmState.PAUSED
    assert _domain_state(rack, vm.host_id, vm.uuid) == libvirt.VIR_DOMAIN_PAUSED
    _ok(rack, "vm", "resume", name, "--wait")
    assert rack.vm(name).state is VmState.RUNNING

    _ok(rack, "vm", "save", name, "--wait")
    assert rack.vm(name).state is VmState.SAVED
    assert _domain_state(rack, vm.host_id, vm.uuid) == libvirt.VIR_DOMAIN_SHUTOFF
    ticks_before = serial.read_text().count(TICK)
    _ok(rack, "vm", "restore", name, "--wait")
    assert rack.vm(name).state is VmState.RUNNING
    # Restored, not rebooted: the counter goes on, no second boot marker.
    wait_for_text(serial, f"{TICK} {ticks_before + 2}", 60)
    assert serial.read_text().count(BOOT_MARKER) == 1

    _ok(rack, "vm", "update-state", name, "--wait")
    assert rack.vm(name).state is VmState.RUNNING

    out = _ok(rack, "vm", "shutdown", name, "--wait")
    assert "vm_shutdown: finished" in out
    assert POWEROFF in serial.read_text()
    assert rack.vm(name).state is VmState.STOPPED
    assert _domain_state(rack, vm.host_id, vm.uuid) == libvirt.VIR_DOMAIN_SHUTOFF

    _ok(rack, "vm", "start", name, "--wait")
    _ok(rack, "vm", "poweroff", name, "--wait")
    assert rack.vm(name).state is VmState.STOPPED
    _ok(rack, "vm", "delete", name, "--wait")
    assert _domain_state(rack, vm.host_id, vm.uuid) is None
    with session_scope(rack.db) as s:
        assert s.scalars(select(Vm).where(Vm.name == name)).first() is None
        kinds = set(s.scalars(select(Event.kind).where(Event.subject.like("task %"))))
    assert {"task.queued", "task.running", "task.finished"} <= kinds


def test_refusals_are_clear_and_change_nothing(task_rack: TaskRack) -> None:
    rack = task_rack
    name = rack.unique("refuse")
    _ok(rack, *rack.guest_args(name), "--wait")
    resume = rack.drover("vm", "resume", name)
    assert resume.returncode == 5, resume.stdout + resume.stderr
    assert f"cannot resume VM {name}: it is stopped" in resume.stderr
    unknown = rack.drover("vm", "start", "no-such-vm")
    assert unknown.returncode == 4 and "does not exist" in unknown.stderr
    bad = rack.drover("vm", "create", "bad name!")
    assert bad.returncode == 2 and "name:" in bad.stderr
    # start then (queued) poweroff is accepted: the check projects over what is queued.
    started = rack.drover("vm", "start", name)
    off = rack.drover("vm", "poweroff", name)
    assert started.returncode == 0 and off.returncode == 0, started.stderr + off.stderr
    task_id = int(off.stdout.split()[1])
    assert rack.wait_task(task_id).state is TaskState.FINISHED
    assert rack.vm(name).state is VmState.STOPPED
    _ok(rack, "vm", "delete", name, "--wait")
