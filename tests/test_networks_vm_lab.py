"""VM NICs on logical networks, on the lab rack's two libvirtds: placement picks only a host carrying the VM's
network, the domain XML puts the NIC on the network's bridge (with its MTU) and the running guest's tap is a
port of that bridge; migration to a host without the network is refused; with a migration network defined,
the memory stream goes to the destination's address on it.

The rack's libvirtds share this machine's network namespace, so the bridge is made there: a bridge with no
address and no port but the guest's tap, under a name of this test's, deleted at the end. The rack's hosts
get a NIC row and assignments for the test and lose them again at the end.
"""

from __future__ import annotations

import json
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import libvirt
import pytest
from sqlalchemy import delete, select

from appliance.db.engine import session_scope
from appliance.db.models import HostNetwork, HostNic, TargetKind, Task, TaskType
from appliance.runner import run
from tests.lab.guest import BOOT_MARKER, wait_for_text
from tests.lab.taskrack import TaskRack

pytestmark = pytest.mark.lab


def _ok(rack: TaskRack, *argv: str, timeout: float = 240) -> str:
    proc = rack.drover(*argv, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def lab_nic(task_rack: TaskRack) -> Iterator[str]:
    """A NIC row on both rack hosts (the same name, as a rule would find it); removed afterwards."""
    name = f"lab{secrets.token_hex(2)}"
    with session_scope(task_rack.db) as s:
        for i, host_id in enumerate(task_rack.host_ids):
            s.add(HostNic(host_id=host_id, name=name, mac=f"52:54:00:7a:{secrets.token_hex(1)}:{i + 1:02x}"))
    try:
        yield name
    finally:
        with session_scope(task_rack.db) as s:
            s.execute(delete(HostNetwork).where(HostNetwork.host_id.in_(task_rack.host_ids)))
            s.execute(delete(HostNic).where(HostNic.name == name))


@pytest.fixture
def bridge() -> Iterator[str]:
    name = f"dvb{secrets.token_hex(3)}"
    run(["ip", "link", "add", name, "type", "bridge"])
    run(["ip", "link", "set", name, "up"])
    try:
        yield name
    finally:
        run(["ip", "link", "delete", name], check=False)


def test_vm_nic_on_the_bridge_placement_and_migration_network(task_rack: TaskRack, lab_nic: str, bridge: str) -> None:
    rack = task_rack
    net, mig = rack.unique("vmn"), rack.unique("mig")
    tn1, tn2 = rack.nodes[0].fqdn, rack.nodes[1].fqdn
    name = rack.unique("netvm")
    _ok(rack, "network", "create", net, "--bridge", bridge, "--mtu", "1400")
    try:
        _ok(rack, "host", "network", tn1, "--set", net, "--nic", lab_nic)
        # No --host: placement must take tn1, the only host carrying the network, whatever their loads.
        _ok(rack, *rack.guest_args(name), "--network", net, "--wait")
        vm = rack.vm(name)
        assert vm.host_id == rack.host_ids[0]
        _ok(rack, "vm", "start", name, "--wait")
        wait_for_text(rack.serial_log(vm.host_id, name), BOOT_MARKER, 120)
        conn = libvirt.open(rack.node_of(vm.host_id).local_uri)
        try:
            live = ET.fromstring(conn.lookupByUUIDString(vm.uuid).XMLDesc(0))
        finally:
            conn.close()
        iface = live.find("devices/interface")
        assert iface is not None and iface.get("type") == "bridge"
        assert iface.find("source").get("bridge") == bridge  # type: ignore[union-attr]
        assert iface.find("mtu").get("size") == "1400"  # type: ignore[union-attr]
        tap = iface.find("target").get("dev")  # type: ignore[union-attr]
        ports = json.loads(run(["ip", "-j", "link", "show", "master", bridge]).stdout)
        assert [p["ifname"] for p in ports] == [tap] and ports[0]["mtu"] == 1400

        # tn2 lacks the network: an explicit migration there is refused, and placement finds no host.
        refused = rack.drover("vm", "migrate", name, "--host", tn2, "--wait")
        assert refused.returncode != 0 and f"does not carry network {net}" in refused.stdout + refused.stderr
        assert rack.vm(name).host_id == rack.host_ids[0]

        # Both carry it, and a migration network gives each an address: the memory stream goes there.
        _ok(rack, "host", "network", tn2, "--set", net, "--nic", lab_nic)
        _ok(rack, "network", "create", mig, "--role", "migration", "--vlan", "77", "--subnet", "127.77.0.0/24")
        _ok(rack, "host", "network", tn1, "--set", mig, "--nic", lab_nic, "--address", "127.77.0.1")
        _ok(rack, "host", "network", tn2, "--set", mig, "--nic", lab_nic, "--address", "127.77.0.2")
        out = _ok(rack, "vm", "migrate", name, "--host", tn2, "--wait")
        assert "vm_migrate: finished" in out, out
        moved = rack.vm(name)
        assert moved.host_id == rack.host_ids[1]
        with session_scope(rack.db) as s:
            task = s.scalars(
                select(Task)
                .where(Task.target_kind == TargetKind.VM, Task.target_id == moved.id, Task.type == TaskType.VM_MIGRATE)
                .order_by(Task.id.desc())
            ).first()
            assert task is not None and task.args["migration_uri"] == "tcp://127.77.0.2"
            assert task.result is not None and task.result["via"] == "tcp://127.77.0.2", task.result
        ports = json.loads(run(["ip", "-j", "link", "show", "master", bridge]).stdout)
        assert len(ports) == 1  # the guest's tap, now made by tn2's qemu
    finally:
        rack.drover("vm", "poweroff", name, "--wait")  # whatever state the test left it in
        rack.drover("vm", "delete", name, "--wait")
        with session_scope(rack.db) as s:
            s.execute(delete(HostNetwork).where(HostNetwork.host_id.in_(rack.host_ids)))
        for n in (mig, net):
            rack.drover("network", "delete", n)
