"""The lab's libvirtd nodes: Kerberos-only TCP access for `drover`, refusals, and a guest that boots.

Every client here is a subprocess with a real ticket (or none) and nss_wrapper name resolution,
connecting to node1.example.test by name exactly as the appliance will.
"""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.lab.accel import Accel, detect
from tests.lab.guest import BOOT_MARKER, TICK, GuestImage, domain_xml, wait_for_text
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts, LabNode, NodeFactory, client_env, client_python, virsh

pytestmark = pytest.mark.lab

# Opens argv[1] with the Python API and prints one JSON line: what the connection is, or why it failed.
OPEN = """
import json, sys, libvirt
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # keep libvirt's own stderr line out of the JSON
try:
    conn = libvirt.open(sys.argv[1])
except libvirt.libvirtError as exc:
    print(json.dumps({"ok": False, "code": exc.get_error_code(), "message": str(exc)}))
else:
    print(json.dumps({"ok": True, "hostname": conn.getHostname(), "type": conn.getType(), "uri": conn.getURI()}))
    conn.close()
"""

# Defines and starts the domain in the XML file argv[2] on argv[1], prints its state as JSON.
DEFINE_AND_START = """
import json, sys, libvirt
conn = libvirt.open(sys.argv[1])
dom = conn.defineXML(open(sys.argv[2]).read())
dom.create()
state, _ = dom.state()
print(json.dumps({"running": state == libvirt.VIR_DOMAIN_RUNNING}))
"""

DESTROY_AND_UNDEFINE = """
import json, sys, libvirt
conn = libvirt.open(sys.argv[1])
dom = conn.lookupByName(sys.argv[2])
dom.destroy()
dom.undefine()
print(json.dumps({"left": [d.name() for d in conn.listAllDomains()]}))
"""

VIR_ERR_AUTH_FAILED = 45  # libvirt.VIR_ERR_AUTH_FAILED, without importing libvirt into the test process


def _open(env: dict[str, str], uri: str) -> dict[str, Any]:
    proc = client_python(env, OPEN, uri)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, proc.stdout
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def test_virsh_with_a_ticket_reaches_both_drivers(kdc: LabKdc, lab_hosts: LabHosts, libvirt_node: LabNode) -> None:
    env = client_env(kdc, lab_hosts, "drover")
    for driver in ("test", "qemu"):
        proc = virsh(env, libvirt_node.uri(driver), "hostname")
        assert proc.returncode == 0, proc.stdout
        # The qemu driver answers with the namespace's hostname: the node really is node1 inside.
        assert proc.stdout.strip() == libvirt_node.fqdn


def test_python_api_with_a_ticket(kdc: LabKdc, lab_hosts: LabHosts, libvirt_node: LabNode) -> None:
    env = client_env(kdc, lab_hosts, "drover")
    test = _open(env, libvirt_node.uri("test"))
    assert test["ok"] and test["type"] == "TEST", test
    qemu = _open(env, libvirt_node.uri("qemu"))
    assert qemu == {"ok": True, "hostname": libvirt_node.fqdn, "type": "QEMU", "uri": libvirt_node.uri("qemu")}


def test_without_a_ticket_is_refused(kdc: LabKdc, lab_hosts: LabHosts, libvirt_node: LabNode) -> None:
    result = _open(client_env(kdc, lab_hosts, None), libvirt_node.uri("qemu"))
    assert not result["ok"]
    assert result["code"] == VIR_ERR_AUTH_FAILED
    assert "No Kerberos credentials" in result["message"]
    proc = virsh(client_env(kdc, lab_hosts, None), libvirt_node.uri("test"), "hostname")
    assert proc.returncode != 0 and "No Kerberos credentials" in proc.stdout


def test_a_principal_outside_the_allowed_list_is_refused(
    kdc: LabKdc, lab_hosts: LabHosts, libvirt_node: LabNode
) -> None:
    # A valid ticket from the same realm: GSSAPI succeeds, libvirtd's ACL says no.
    result = _open(client_env(kdc, lab_hosts, "mallory"), libvirt_node.uri("test"))
    assert not result["ok"]
    assert result["code"] == VIR_ERR_AUTH_FAILED
    assert "SASL client identity 'mallory' not allowed by ACL" in libvirt_node.log_text()


def test_factory_nodes_have_their_own_names_lists_and_uuids(
    kdc: LabKdc, lab_hosts: LabHosts, libvirt_nodes: NodeFactory, libvirt_node: LabNode
) -> None:
    node = libvirt_nodes.start("node2.example.test", allowed_users=("ops",))
    assert node.address != libvirt_node.address and node.settings.host_uuid != libvirt_node.settings.host_uuid
    ops = _open(client_env(kdc, lab_hosts, "ops"), node.uri("test"))
    assert ops["ok"] and ops["hostname"] == "node2.example.test", ops
    drover = _open(client_env(kdc, lab_hosts, "drover"), node.uri("test"))
    assert not drover["ok"] and drover["code"] == VIR_ERR_AUTH_FAILED
    # stop() is the factory's teardown too: the port closes and nothing of the node keeps running.
    node.stop()
    with pytest.raises(OSError):
        socket.create_connection((node.address, node.port), timeout=1).close()


def test_accel_detection_decides_and_sticks(guest_accel: Accel) -> None:
    assert guest_accel in (Accel.KVM, Accel.TCG)
    assert detect() is guest_accel  # cached: no second probe


def test_a_guest_boots_on_the_node_over_kerberos(
    kdc: LabKdc,
    lab_hosts: LabHosts,
    libvirt_node: LabNode,
    guest_image: GuestImage,
    guest_accel: Accel,
    tmp_path: Path,
) -> None:
    env = client_env(kdc, lab_hosts, "drover")
    name = f"lab-{uuid.uuid4().hex[:8]}"
    serial = tmp_path / "serial.log"
    xml = tmp_path / "domain.xml"
    xml.write_text(domain_xml(name, guest_image, serial, domain_type=guest_accel.domain_type))
    started = client_python(env, DEFINE_AND_START, libvirt_node.uri("qemu"), str(xml), timeout=120)
    assert started.returncode == 0, started.stdout + libvirt_node.log_text()[-2000:]
    assert json.loads(started.stdout.strip().splitlines()[-1])["running"]
    try:
        output = wait_for_text(serial, f"{TICK} 1", timeout=45)
        assert BOOT_MARKER in output
        pids = libvirt_node.guest_pids()
        assert len(pids) == 1
        # A restarted libvirtd (new namespace, same dirs) takes its running guest back.
        libvirt_node.restart()
        assert libvirt_node.guest_pids() == pids
        listed = virsh(env, libvirt_node.uri("qemu"), "domstate", name)
        assert listed.stdout.strip() == "running", listed.stdout
        wait_for_text(serial, f"{TICK} 3", timeout=30)
    finally:
        gone = client_python(env, DESTROY_AND_UNDEFINE, libvirt_node.uri("qemu"), name)
    assert gone.returncode == 0, gone.stdout
    assert json.loads(gone.stdout.strip().splitlines()[-1]) == {"left": []}
    assert libvirt_node.guest_pids() == []
