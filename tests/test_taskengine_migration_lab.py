"""Live migration through the queue between two lab libvirtds with distinct host UUIDs: peer to peer over
Kerberos, the running guest keeps counting, the VM row follows; a throttled migration is aborted on request;
a pinned VM is refused; clear host moves every running VM off.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
from sqlalchemy import delete

from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import Host, HostState, HypervisorType, TaskState, VmState
from appliance.hosts import default_pool
from appliance.kerberos.realm import APPLIANCE_CLIENT
from tests.lab.guest import BOOT_MARKER, TICK, wait_for_text
from tests.lab.libvirtd import NodeFactory
from tests.lab.taskrack import TaskRack, wait_until

pytestmark = pytest.mark.lab


def _ok(rack: TaskRack, *argv: str, timeout: float = 240) -> str:
    proc = rack.drover(*argv, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _last_tick(text: str) -> int:
    found = re.findall(rf"{TICK} (\d+)", text)
    return int(found[-1]) if found else 0


def _running_guest(rack: TaskRack, name: str, host: str) -> int:
    _ok(rack, *rack.guest_args(name), "--host", host, "--wait")
    _ok(rack, "vm", "start", name, "--wait")
    vm = rack.vm(name)
    serial = rack.serial_log(vm.host_id, name)
    wait_for_text(serial, BOOT_MARKER, 120)
    wait_for_text(serial, f"{TICK} 3", 60)
    return vm.host_id or 0


def test_live_migration_keeps_the_guest_counting_and_the_row_follows(task_rack: TaskRack) -> None:
    rack = task_rack
    name = rack.unique("mig")
    src_id = _running_guest(rack, name, rack.nodes[0].fqdn)
    dst_id = rack.host_ids[1]
    before = _last_tick(rack.serial_log(src_id, name).read_text())
    out = _ok(rack, "vm", "migrate", name, "--host", rack.nodes[1].fqdn, "--wait")
    assert "vm_migrate: finished" in out and '"mode": "p2p"' in out
    vm = rack.vm(name)
    assert (vm.host_id, vm.state) == (dst_id, VmState.RUNNING)
    dest_serial = rack.serial_log(dst_id, name)
    # The destination's console picks up where the source's left off: same guest, no reboot.
    deadline = time.monotonic() + 60
    while _last_tick(dest_serial.read_text() if dest_serial.is_file() else "") <= before + 1:
        assert time.monotonic() < deadline, "the guest did not keep counting on the destination"
        time.sleep(0.2)
    text = dest_serial.read_text()
    assert BOOT_MARKER not in text
    assert _last_tick(text) > before
    # Back again with placement choosing (the only other host is the source).
    _ok(rack, "vm", "migrate", name, "--wait")
    assert rack.vm(name).host_id == src_id
    _ok(rack, "vm", "poweroff", name, "--wait")
    _ok(rack, "vm", "delete", name, "--wait")


def test_a_running_migration_is_aborted_and_the_vm_stays(task_rack: TaskRack) -> None:
    rack = task_rack
    name = rack.unique("abort")
    src_id = _running_guest(rack, name, rack.nodes[0].fqdn)
    queued = _ok(rack, "vm", "migrate", name, "--host", rack.nodes[1].fqdn, "--bandwidth", "1")
    task_id = int(queued.split()[1])
    deadline = time.monotonic() + 60
    while True:  # wait until the transfer really runs (progress reported), then abort it
        shown = _ok(rack, "task", "show", str(task_id))
        if "MiB sent" in shown:
            break
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    assert "abort asked for" in _ok(rack, "task", "cancel", str(task_id))
    task = rack.wait_task(task_id, 120)
    assert task.state is TaskState.FAILED and "aborted" in (task.error or "")
    vm = rack.vm(name)
    assert (vm.host_id, vm.state) == (src_id, VmState.RUNNING)
    assert "migrate failed" in vm.state_reason
    _ok(rack, "vm", "poweroff", name, "--wait")
    _ok(rack, "vm", "delete", name, "--wait")


def test_pinned_vm_is_never_migrated(task_rack: TaskRack) -> None:
    rack = task_rack
    name = rack.unique("pin")
    _ok(rack, *rack.guest_args(name), "--host", rack.nodes[0].fqdn, "--pinned", "--wait")
    _ok(rack, "vm", "start", name, "--wait")
    refused = rack.drover("vm", "migrate", name)
    assert refused.returncode == 5 and f"VM {name} is pinned to {rack.nodes[0].fqdn}" in refused.stderr
    _ok(rack, "vm", "poweroff", name, "--wait")
    _ok(rack, "vm", "delete", name, "--wait")


def test_clear_host_moves_every_running_vm_off(task_rack: TaskRack) -> None:
    rack = task_rack
    names = [rack.unique("clr"), rack.unique("clr")]
    for name in names:
        _running_guest(rack, name, rack.nodes[1].fqdn)
    out = _ok(rack, "host", "clear", rack.nodes[1].fqdn, "--wait", timeout=300)
    assert "host_clear: finished" in out
    for name in names:
        vm = rack.vm(name)
        assert (vm.host_id, vm.state) == (rack.host_ids[0], VmState.RUNNING)
        _ok(rack, "vm", "poweroff", name, "--wait")
        _ok(rack, "vm", "delete", name, "--wait")


def test_cluster_balance_dry_run_then_queued(task_rack: TaskRack) -> None:
    rack = task_rack
    names = [rack.unique("bal"), rack.unique("bal")]
    for name in names:  # nothing to boot: qemu runs with an empty disk list, cheap for the machine
        _ok(rack, "vm", "create", name, "--memory", "256", "--host", rack.nodes[0].fqdn, "--wait")
        _ok(rack, "vm", "start", name, "--wait")
    dry = _ok(rack, "cluster", "balance", "--dry-run")
    assert dry.count("would move") == 1 and f"{rack.nodes[0].fqdn} -> {rack.nodes[1].fqdn}" in dry, dry
    assert {rack.vm(n).host_id for n in names} == {rack.host_ids[0]}  # a dry run queues nothing
    queued = _ok(rack, "cluster", "balance")
    task_id = int(queued.split("(task ")[1].split(")")[0])
    assert rack.wait_task(task_id).state is TaskState.FINISHED
    assert {rack.vm(n).host_id for n in names} == set(rack.host_ids)
    assert "balanced" in _ok(rack, "cluster", "balance", "--dry-run")
    for name in names:
        _ok(rack, "vm", "poweroff", name, "--wait")
        _ok(rack, "vm", "delete", name, "--wait")


def test_a_destination_refusing_peers_gets_a_managed_migration(
    task_rack: TaskRack, libvirt_nodes: NodeFactory
) -> None:
    rack = task_rack
    fqdn = f"tnp{uuid.uuid4().hex[:4]}.example.test"
    # Allows the appliance only, as a node whose libvirtd was not told about its peers.
    node = libvirt_nodes.start(fqdn, settings=libvirt_nodes.plan(fqdn, (APPLIANCE_CLIENT,), port=rack.lab.libvirt_port))
    with session_scope(rack.db) as s:
        host = Host(uuid=node.settings.host_uuid, hostname=fqdn, approved_at=utcnow(), credentials_issued_at=utcnow(),
                    memory_mib=2048, cpu_count=4, hypervisor_type=HypervisorType.QEMU,
                    hardware_pool_id=default_pool(s).id)  # fmt: skip
        s.add(host)
        s.flush()
        host_id = host.id

    def up() -> bool:
        with session_scope(rack.db) as s:
            return s.get(Host, host_id).state is HostState.AVAILABLE  # type: ignore[union-attr]

    wait_until("the peerless host available", up, 60)
    name = rack.unique("managed")
    _ok(rack, "vm", "create", name, "--memory", "64", "--host", rack.nodes[0].fqdn, "--wait")
    _ok(rack, "vm", "start", name, "--wait")
    out = _ok(rack, "vm", "migrate", name, "--host", fqdn, "--wait")
    assert '"mode": "managed"' in out
    assert (rack.vm(name).host_id, rack.vm(name).state) == (host_id, VmState.RUNNING)
    _ok(rack, "vm", "poweroff", name, "--wait")
    _ok(rack, "vm", "delete", name, "--wait")
    node.stop()
    with session_scope(rack.db) as s:
        s.execute(delete(Host).where(Host.id == host_id))
