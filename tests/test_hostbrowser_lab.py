"""End to end on loopback: a real `drover serve` enrols a node over HTTPS, its host browser reaches the
node's real libvirtd over Kerberos, and the database follows what happens on the node.

The node side is played by the test (identify/heartbeat over HTTPS, like the agent) plus a lab libvirtd
started with the key identify issued; no boot is needed here.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select

from appliance.db.engine import session_scope
from appliance.db.models import Event, Host, HostState, Vm, VmState
from nodeagent import wire
from tests.lab.accel import Accel
from tests.lab.appliance import LabAppliance, admin_appliance
from tests.lab.guest import GuestImage, domain_xml
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts, LabNode, NodeFactory, client_env, virsh
from tests.test_enrolment import facts

pytestmark = pytest.mark.lab

CONNECT_TIMEOUT = 3  # [hostbrowser] connect_timeout_seconds of this module's appliance


@pytest.fixture(scope="module")
def served(kdc: LabKdc, lab_hosts: LabHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabAppliance]:
    # nss_wrapper in the server's environment: its host browser resolves lab node names as the CLI does.
    env = {**lab_hosts.env, "DROVER_HOSTBROWSER_CONNECT_TIMEOUT_SECONDS": str(CONNECT_TIMEOUT)}
    with admin_appliance(kdc, tmp_path_factory.mktemp("served"), env) as lab:
        yield lab


def pinned_ca(lab: LabAppliance) -> ssl.SSLContext:
    """Fetch /boot/ca.pem over plain HTTP and trust it only if it matches the fingerprint, as a node does."""
    pem = httpx.get(f"http://127.0.0.1:{lab.boot_port}/boot/ca.pem", timeout=5).text
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
    assert f"drover.ca=sha256:{digest}" in lab.log_text()  # what the server tells the PXE side to pin
    return ssl.create_default_context(cadata=pem)


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what} not within {timeout}s"
        time.sleep(0.02)
    return time.monotonic() - start


def host_state(db: Engine, host_uuid: str) -> HostState | None:
    with session_scope(db) as s:
        return s.scalars(select(Host.state).where(Host.uuid == host_uuid)).one_or_none()


def vm_state(db: Engine, name: str) -> VmState | None:
    with session_scope(db) as s:
        return s.scalars(select(Vm.state).where(Vm.name == name)).one_or_none()


def host_reason(db: Engine, host_uuid: str) -> str:
    with session_scope(db) as s:
        return s.scalars(select(Host.state_reason).where(Host.uuid == host_uuid)).one()


def host_events(db: Engine, host_uuid: str, kind: str) -> list[str]:
    with session_scope(db) as s:
        host_id = s.scalars(select(Host.id).where(Host.uuid == host_uuid)).one()
        return list(s.scalars(select(Event.message).where(Event.host_id == host_id, Event.kind == kind)))


def enrol(served: LabAppliance, db: Engine, libvirt_nodes: NodeFactory, fqdn: str) -> tuple[str, LabNode]:
    """Identify `fqdn` with a fresh token over pinned HTTPS, then start its lab libvirtd on the issued key."""
    host_uuid = str(uuid.uuid4())
    minted = served.drover("host", "token", "--uuid", host_uuid, principal="boss")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.splitlines()[0]
    sent = wire.encode(wire.IdentifyRequest(token, facts(host_uuid, fqdn)))
    with httpx.Client(base_url=served.node_url, verify=pinned_ca(served), trust_env=False) as node_http:
        r = node_http.post("/node/v1/identify", content=sent)
    assert r.status_code == 200, r.text
    node = libvirt_nodes.start(fqdn)
    with session_scope(db) as s:
        host = s.scalars(select(Host).where(Host.uuid == host_uuid)).one()
        host.libvirt_port = node.port  # as the lab places it; a real node listens on 16509
    return host_uuid, node


def test_enrol_connect_follow_events_lose_and_regain_the_node(
    served: LabAppliance,
    db: Engine,
    kdc: LabKdc,
    lab_hosts: LabHosts,
    libvirt_nodes: NodeFactory,
    guest_image: GuestImage,
    guest_accel: Accel,
    tmp_path: Path,
) -> None:
    host_uuid, fqdn = str(uuid.uuid4()), "hb1.example.test"
    minted = served.drover("host", "token", "--uuid", host_uuid, principal="boss")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.splitlines()[0]
    assert "drover.ca=sha256:" in minted.stdout
    with httpx.Client(base_url=served.node_url, verify=pinned_ca(served), trust_env=False) as node_http:
        sent = wire.encode(wire.IdentifyRequest(token, facts(host_uuid, fqdn)))
        r = node_http.post("/node/v1/identify", content=sent)
    assert r.status_code == 200, r.text
    answer = wire.decode(wire.IdentifyResponse, r.content)
    assert answer.credentials is not None and answer.credentials.principal.startswith(f"libvirt/{fqdn}@")
    # The lab libvirtd exports the principal's current key: the one identify just issued.
    node = libvirt_nodes.start(fqdn)
    with session_scope(db) as s:
        host = s.scalars(select(Host).where(Host.uuid == host_uuid)).one()
        host.libvirt_port = node.port  # as the lab places it; a real node listens on 16509
    wait_for("host available", lambda: host_state(db, host_uuid) is HostState.AVAILABLE, 15)

    env = client_env(kdc, lab_hosts, "drover")
    name = f"hb-{uuid.uuid4().hex[:8]}"
    xml = tmp_path / "domain.xml"
    xml.write_text(domain_xml(name, guest_image, tmp_path / "serial.log", domain_type=guest_accel.domain_type))
    uri = node.uri("qemu")
    try:
        assert virsh(env, uri, "define", str(xml)).returncode == 0
        lag = {"define": wait_for("defined VM", lambda: vm_state(db, name) is VmState.STOPPED, 1.0)}
        assert virsh(env, uri, "start", name, timeout=120).returncode == 0
        lag["start"] = wait_for("running VM", lambda: vm_state(db, name) is VmState.RUNNING, 1.0)
        assert virsh(env, uri, "destroy", name).returncode == 0
        lag["destroy"] = wait_for("stopped VM", lambda: vm_state(db, name) is VmState.STOPPED, 1.0)
        assert virsh(env, uri, "start", name, timeout=120).returncode == 0
        wait_for("running again", lambda: vm_state(db, name) is VmState.RUNNING, 1.0)

        node.stop_daemon()
        lost = wait_for("host unavailable", lambda: host_state(db, host_uuid) is HostState.UNAVAILABLE, 10)
        wait_for("VM unreachable", lambda: vm_state(db, name) is VmState.UNREACHABLE, 2)
        node.restart()
        back = wait_for("host available again", lambda: host_state(db, host_uuid) is HostState.AVAILABLE, 15)
        # The guest kept running under the stopped daemon; the re-sync finds it.
        wait_for("VM re-synced", lambda: vm_state(db, name) is VmState.RUNNING, 2)
        print(f"event lag {lag}, lost after {lost:.2f}s, back after {back:.2f}s")
        shown = served.drover("host", "show", fqdn, principal="boss")
        assert shown.returncode == 0, shown.stderr
        assert "state:             available" in shown.stdout
        assert f"vm:                {name} running" in shown.stdout
    finally:
        virsh(env, uri, "destroy", name)
        virsh(env, uri, "undefine", name)
    # Undefined on the node: the VM row stays (the log and ownership outlive it) but is on no host.
    wait_for("VM undefined", lambda: vm_state(db, name) is VmState.STOPPED, 1.0)
    # Without a ticket libvirtd refuses, whatever the appliance holds.
    refused = virsh(client_env(kdc, lab_hosts, None), uri, "list")
    assert refused.returncode != 0 and "No Kerberos credentials" in refused.stdout


def test_pending_host_is_approved_from_the_cli(served: LabAppliance, db: Engine) -> None:
    host_uuid, fqdn = str(uuid.uuid4()), "pending1.example.test"
    with httpx.Client(base_url=served.node_url, verify=pinned_ca(served), trust_env=False) as node_http:
        r = node_http.post("/node/v1/identify", content=wire.encode(wire.IdentifyRequest("", facts(host_uuid, fqdn))))
        assert r.status_code == 202, r.text
        agent_token = wire.decode(wire.IdentifyResponse, r.content).agent_token

        def beat() -> wire.HeartbeatResponse:
            sent = wire.encode(wire.Heartbeat(host_uuid, agent_token=agent_token))
            answer = node_http.post("/node/v1/heartbeat", content=sent)
            assert answer.status_code == 200, answer.text
            return wire.decode(wire.HeartbeatResponse, answer.content)

        assert beat().credentials is None
        listed = served.drover("host", "list", principal="boss")
        assert listed.returncode == 0, listed.stderr
        assert any(line.split()[1:4] == [fqdn, "pending", "no"] for line in listed.stdout.splitlines()[1:])
        nobody = served.drover("host", "approve", fqdn, principal="carol")
        assert nobody.returncode == 9 and "may not approve hosts" in nobody.stderr
        approved = served.drover("host", "approve", fqdn, principal="boss")
        assert approved.returncode == 0, approved.stderr
        again = served.drover("host", "approve", fqdn, principal="boss")
        assert again.returncode == 5 and "already approved" in again.stderr
        got = beat()
        assert got.status is wire.IdentifyStatus.ACCEPTED and got.credentials is not None
        assert beat().credentials is None
    missing = served.drover("host", "show", "nosuch.example.test", principal="boss")
    assert missing.returncode == 4 and "no host" in missing.stderr


def test_a_frozen_libvirtd_is_noticed_by_keepalive_and_resynced_when_it_thaws(
    served: LabAppliance,
    db: Engine,
    kdc: LabKdc,
    lab_hosts: LabHosts,
    libvirt_nodes: NodeFactory,
    guest_image: GuestImage,
    tmp_path: Path,
) -> None:
    """A silently dead peer: no FIN, no RST, the kernel still ACKs; only libvirt keepalive can tell."""
    host_uuid, node = enrol(served, db, libvirt_nodes, "frozen1.example.test")
    wait_for("host available", lambda: host_state(db, host_uuid) is HostState.AVAILABLE, 15)
    env = client_env(kdc, lab_hosts, "drover")
    name = f"fz-{uuid.uuid4().hex[:8]}"
    xml = tmp_path / "domain.xml"
    xml.write_text(domain_xml(name, guest_image, tmp_path / "serial.log"))
    uri = node.uri("qemu")
    try:
        assert virsh(env, uri, "define", str(xml)).returncode == 0
        wait_for("defined VM", lambda: vm_state(db, name) is VmState.STOPPED, 2)
        with node.frozen():
            lost = wait_for("host unavailable", lambda: host_state(db, host_uuid) is HostState.UNAVAILABLE, 10)
            wait_for("VM unreachable", lambda: vm_state(db, name) is VmState.UNREACHABLE, 2)
            # Still there as far as TCP goes: a new connection is accepted by the kernel even now.
            socket.create_connection((node.address, node.port), timeout=1).close()
        back = wait_for("host available again", lambda: host_state(db, host_uuid) is HostState.AVAILABLE, 15)
        wait_for("VM re-synced", lambda: vm_state(db, name) is VmState.STOPPED, 2)
        assert any("keepalive timed out" in m for m in host_events(db, host_uuid, "host.state"))
        print(f"frozen -> unavailable {lost:.2f}s; thawed -> available {back:.2f}s")
    finally:
        virsh(env, uri, "undefine", name)


def test_a_host_that_accepts_tcp_but_never_answers_holds_up_no_other_host(
    served: LabAppliance,
    db: Engine,
    kdc: LabKdc,
    lab_hosts: LabHosts,
    libvirt_nodes: NodeFactory,
    guest_image: GuestImage,
    tmp_path: Path,
) -> None:
    """Every reconnect to a frozen libvirtd hangs inside libvirt.open (TCP accepted, SASL never answered):
    it is abandoned after connect_timeout_seconds, and meanwhile other hosts connect and reconnect."""
    stuck_uuid, stuck = enrol(served, db, libvirt_nodes, "stuck1.example.test")
    wait_for("stuck host available", lambda: host_state(db, stuck_uuid) is HostState.AVAILABLE, 15)
    env = client_env(kdc, lab_hosts, "drover")
    name = f"busy-{uuid.uuid4().hex[:8]}"
    xml = tmp_path / "domain.xml"
    xml.write_text(domain_xml(name, guest_image, tmp_path / "serial.log"))
    other = None
    try:
        with stuck.frozen():
            wait_for("stuck host unavailable", lambda: host_state(db, stuck_uuid) is HostState.UNAVAILABLE, 10)
            # The next reconnect (after reconnect_seconds) hangs; it is given up after CONNECT_TIMEOUT.
            abandoned = wait_for(
                "abandoned connect reported",
                lambda: "did not answer" in host_reason(db, stuck_uuid),
                CONNECT_TIMEOUT + 8,
            )
            # Failed attempts update the reason; with no VMs to mark, they write no event each time.
            assert host_events(db, stuck_uuid, "vm.unreachable") == []
            other_uuid, other = enrol(served, db, libvirt_nodes, "busy1.example.test")
            first = wait_for("other host available", lambda: host_state(db, other_uuid) is HostState.AVAILABLE, 6)
            assert virsh(env, other.uri("qemu"), "define", str(xml)).returncode == 0
            seen = wait_for("domain defined on the other host", lambda: vm_state(db, name) is VmState.STOPPED, 1)
            # A reconnect of the other host while a connect to the stuck one still hangs.
            other.stop_daemon()
            wait_for("other host unavailable", lambda: host_state(db, other_uuid) is HostState.UNAVAILABLE, 10)
            other.restart()
            again = wait_for("other host back", lambda: host_state(db, other_uuid) is HostState.AVAILABLE, 6)
            assert host_state(db, stuck_uuid) is HostState.UNAVAILABLE
        thawed = wait_for(
            "stuck host available after thaw", lambda: host_state(db, stuck_uuid) is HostState.AVAILABLE, 15
        )
        print(
            f"abandoned after {abandoned:.2f}s; other: available {first:.2f}s, domain seen {seen:.2f}s, "
            f"reconnected {again:.2f}s; thawed host back {thawed:.2f}s"
        )
    finally:
        if other is not None:
            virsh(env, other.uri("qemu"), "undefine", name)
