"""Host life cycle end to end: `drover host maintenance|activate|remove` and their REST calls against a real
`drover serve` (SPNEGO with lab tickets), its host browser on real lab libvirtds, and the lab KDC's kadmin.

The node side is played as in test_hostbrowser_lab.py: identify over HTTPS with a token from the CLI, then
a lab libvirtd on the key identify issued. Refusals are checked on a second server whose host browser is
off, so nothing else writes to its database while a test asserts that a refusal changed nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from appliance.client import Client
from appliance.db.base import Base
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Event, Host, HostState, Vm, VmState
from appliance.runner import run
from nodeagent import wire
from tests.lab.accel import Accel
from tests.lab.appliance import LabAppliance, start_appliance
from tests.lab.guest import GuestImage, domain_xml
from tests.lab.kdc import APPLIANCE_HOST, LabKdc
from tests.lab.libvirtd import LabHosts, LabNode, NodeFactory, client_env, virsh
from tests.lab.rack import Lab, rack
from tests.test_enrolment import facts

pytestmark = pytest.mark.lab

ADMIN = "lc-admin"
MONITOR = "lc-monitor"


@pytest.fixture(scope="module")
def lab(
    kdc: LabKdc, lab_hosts: LabHosts, libvirt_nodes: NodeFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    users = {ADMIN: "admin", MONITOR: "monitor"}
    with rack(kdc, lab_hosts, libvirt_nodes, tmp_path_factory.mktemp("lifecycle"), users) as lab:
        yield lab


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what} not within {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - start


def pinned_ca(served: LabAppliance) -> ssl.SSLContext:
    pem = httpx.get(f"http://127.0.0.1:{served.boot_port}/boot/ca.pem", timeout=5).text
    assert f"drover.ca=sha256:{hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()}" in served.log_text()
    return ssl.create_default_context(cadata=pem)


def identify(served: LabAppliance, dmi: str, fqdn: str, token: str) -> httpx.Response:
    with httpx.Client(base_url=served.node_url, verify=pinned_ca(served), trust_env=False) as node_http:
        return node_http.post("/node/v1/identify", content=wire.encode(wire.IdentifyRequest(token, facts(dmi, fqdn))))


def heartbeat(served: LabAppliance, dmi: str, agent_token: str) -> httpx.Response:
    with httpx.Client(base_url=served.node_url, verify=pinned_ca(served), trust_env=False) as node_http:
        return node_http.post("/node/v1/heartbeat", content=wire.encode(wire.Heartbeat(dmi, agent_token=agent_token)))


def mint(served: LabAppliance, *args: str) -> str:
    minted = served.drover("host", "token", *args, principal=ADMIN)
    assert minted.returncode == 0, minted.stderr
    return minted.stdout.splitlines()[0]


def row(db: Engine, dmi: str) -> Host | None:
    with session_scope(db) as s:
        return s.scalars(select(Host).where(Host.uuid == dmi)).one_or_none()


def state_of(db: Engine, dmi: str) -> tuple[HostState, bool] | None:
    host = row(db, dmi)
    return (host.state, host.libvirt_connected) if host is not None else None


def vm_state(db: Engine, name: str) -> VmState | None:
    with session_scope(db) as s:
        return s.scalars(select(Vm.state).where(Vm.name == name)).one_or_none()


def host_events(db: Engine, host_id: int, kind: str = "host.state") -> list[str]:
    with session_scope(db) as s:
        query = select(Event.message).where(Event.host_id == host_id, Event.kind == kind).order_by(Event.id)
        return list(s.scalars(query).all())


def enrol(lab: Lab, fqdn: str) -> tuple[str, LabNode, wire.IdentifyResponse]:
    """A node enrolled with a token and its libvirtd up: the host is available when this returns."""
    dmi = str(uuid.uuid4())
    r = identify(lab.served, dmi, fqdn, mint(lab.served, "--uuid", dmi))
    assert r.status_code == 200, r.text
    answer = wire.decode(wire.IdentifyResponse, r.content)
    node = lab.nodes.start(fqdn, settings=lab.nodes.plan(fqdn, port=lab.libvirt_port))
    wait_for(f"{fqdn} available", lambda: state_of(lab.db, dmi) == (HostState.AVAILABLE, True), 20)
    return dmi, node, answer


def drover_ok(lab: Lab, *argv: str) -> str:
    proc = lab.served.drover(*argv, principal=ADMIN)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def listed_state(lab: Lab, fqdn: str) -> str:
    rows = [line.split() for line in drover_ok(lab, "host", "list").splitlines()[1:]]
    (found,) = [r for r in rows if r[1] == fqdn]
    return found[2]


def test_maintenance_keeps_following_the_host_but_not_its_state(lab: Lab, tmp_path: Path) -> None:
    fqdn = "mnt1.example.test"
    dmi, node, _ = enrol(lab, fqdn)
    host = row(lab.db, dmi)
    assert host is not None
    out = drover_ok(lab, "host", "maintenance", "mnt1", "--reason", "replacing DIMM B2")
    assert out.strip() == (
        f"host {fqdn} (id {host.id}) is in maintenance; libvirt connected, its VMs are still followed"
    )
    assert state_of(lab.db, dmi) == (HostState.MAINTENANCE, True)
    assert listed_state(lab, fqdn) == "maintenance"
    shown = json.loads(drover_ok(lab, "host", "show", fqdn, "--json"))
    assert (shown["state"], shown["state_reason"], shown["libvirt_connected"]) == (
        "maintenance", "replacing DIMM B2", True)  # fmt: skip
    assert host_events(lab.db, host.id)[-1] == (
        f"available -> maintenance: replacing DIMM B2 (by {ADMIN}@{lab.kdc.realm.name})"
    )

    # The session stays: a domain defined on the node shows up; the link going away and coming back is
    # recorded, the state is not touched.
    env = client_env(lab.kdc, lab.hosts, "drover")
    name = f"mnt-{uuid.uuid4().hex[:8]}"
    (tmp_path / "d.xml").write_text(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>"
    )
    assert virsh(env, node.uri(), "define", str(tmp_path / "d.xml")).returncode == 0
    try:
        wait_for("domain seen in maintenance", lambda: vm_state(lab.db, name) is VmState.STOPPED, 5)
        node.stop_daemon()
        wait_for("link down recorded", lambda: state_of(lab.db, dmi) == (HostState.MAINTENANCE, False), 10)
        shown_text = drover_ok(lab, "host", "show", "mnt1")
        for line in (
            "state:             maintenance",
            "state_reason:      replacing DIMM B2",
            "libvirt:           not connected",
            f"vm:                {name} unreachable",
        ):
            assert any(got.startswith(line) for got in shown_text.splitlines()), shown_text
        assert listed_state(lab, fqdn) == "maintenance"
        # A reboot while it is down (identify with a token bound to it) keeps it in maintenance. (While its
        # libvirtd answers, an identify with its UUID is refused as a second machine: test_enrolment_e2e.)
        again = identify(lab.served, dmi, fqdn, mint(lab.served, "--uuid", dmi))
        assert again.status_code == 200, again.text
        assert state_of(lab.db, dmi) == (HostState.MAINTENANCE, False)
        node.restart()
        wait_for("link up recorded", lambda: state_of(lab.db, dmi) == (HostState.MAINTENANCE, True), 15)
        assert "libvirt:           connected" in drover_ok(lab, "host", "show", "mnt1").splitlines()
        assert vm_state(lab.db, name) is VmState.STOPPED
        assert host_events(lab.db, host.id)[-1].startswith("available -> maintenance")
        shown = json.loads(drover_ok(lab, "host", "show", str(host.id), "--json"))
        assert (shown["state"], shown["state_reason"]) == ("maintenance", "replacing DIMM B2")
    finally:
        virsh(env, node.uri(), "undefine", name)

    twice = lab.served.drover("host", "maintenance", fqdn, principal=ADMIN)
    assert twice.returncode == 5 and "already in maintenance since" in twice.stderr, twice.stderr
    assert "replacing DIMM B2" in twice.stderr and "drover host activate" in twice.stderr
    monitor = lab.served.drover("host", "maintenance", fqdn, principal=MONITOR)
    assert monitor.returncode == 9 and "may not put hosts into maintenance" in monitor.stderr


def test_activate_is_available_or_unavailable_as_libvirt_is(lab: Lab) -> None:
    fqdn = "act1.example.test"
    dmi, node, _ = enrol(lab, fqdn)
    host = row(lab.db, dmi)
    assert host is not None
    not_yet = lab.served.drover("host", "activate", fqdn, principal=ADMIN)
    assert not_yet.returncode == 5 and "not in maintenance (it is available)" in not_yet.stderr, not_yet.stderr
    drover_ok(lab, "host", "maintenance", "act1")
    out = drover_ok(lab, "host", "activate", "act1")
    assert out.strip() == f"host {fqdn} (id {host.id}) is available"
    assert state_of(lab.db, dmi) == (HostState.AVAILABLE, True) and listed_state(lab, fqdn) == "available"
    assert host_events(lab.db, host.id)[-1] == (
        f"maintenance -> available: activated; libvirt connected (by {ADMIN}@{lab.kdc.realm.name})"
    )
    assert "state_reason:      activated; libvirt connected" in drover_ok(lab, "host", "show", fqdn).splitlines()

    # In maintenance the node goes away; activated then, it is unavailable until the browser reaches it.
    drover_ok(lab, "host", "maintenance", str(host.id), "--reason", "power supply")
    node.stop_daemon()
    wait_for("link down recorded", lambda: state_of(lab.db, dmi) == (HostState.MAINTENANCE, False), 10)
    out = drover_ok(lab, "host", "activate", dmi)
    assert out.strip() == (
        f"host {fqdn} (id {host.id}) is unavailable: libvirt is not connected; "
        "it becomes available when the host browser reaches it"
    )
    assert state_of(lab.db, dmi) == (HostState.UNAVAILABLE, False) and listed_state(lab, fqdn) == "unavailable"
    node.restart()
    wait_for("available after the node is back", lambda: state_of(lab.db, dmi) == (HostState.AVAILABLE, True), 15)
    monitor = lab.served.drover("host", "activate", fqdn, principal=MONITOR)
    assert monitor.returncode == 9 and "may not activate hosts" in monitor.stderr


def tcp_clients(node: LabNode) -> int:
    """How many TCP (i.e. Kerberos) clients the node's libvirtd has, asked over its admin socket."""
    uri = f"libvirtd:///system?socket={node.root / 'sock' / 'libvirt-admin-sock'}"
    out = run(["virt-admin", "-c", uri, "client-list", "libvirtd"], env={"PATH": "/usr/bin:/bin"}).stdout
    return sum(1 for line in out.splitlines() if line.split()[1:2] == ["tcp"])


def test_remove_forgets_the_host_drops_its_session_and_a_new_boot_enrols_it_anew(
    lab: Lab, guest_image: GuestImage, guest_accel: Accel, tmp_path: Path
) -> None:
    fqdn = "rm1.example.test"
    dmi, node, first = enrol(lab, fqdn)
    old = row(lab.db, dmi)
    assert old is not None
    principal = f"libvirt/{fqdn}@{lab.kdc.realm.name}"
    assert lab.kdc.realm.kadmin().exists(principal) and tcp_clients(node) == 1

    env = client_env(lab.kdc, lab.hosts, "drover")
    name = f"rm-{uuid.uuid4().hex[:8]}"
    (tmp_path / "d.xml").write_text(domain_xml(name, guest_image, tmp_path / "serial.log",
                                               domain_type=guest_accel.domain_type))  # fmt: skip
    assert virsh(env, node.uri(), "define", str(tmp_path / "d.xml")).returncode == 0
    try:
        assert virsh(env, node.uri(), "start", name, timeout=120).returncode == 0
        wait_for("VM running", lambda: vm_state(lab.db, name) is VmState.RUNNING, 10)

        # A running VM refuses the removal: nothing changes, the session stays.
        refused = lab.served.drover("host", "remove", "rm1", principal=ADMIN)
        assert refused.returncode == 5, refused.stderr
        assert f"1 VM(s) that are or may be running: {name} (running)" in refused.stderr
        assert "--force" in refused.stderr
        assert row(lab.db, dmi) is not None and lab.kdc.realm.kadmin().exists(principal) and tcp_clients(node) == 1
        monitor = lab.served.drover("host", "remove", "rm1", "--force", principal=MONITOR)
        assert monitor.returncode == 9 and "may not remove hosts" in monitor.stderr

        t0 = time.monotonic()
        out = drover_ok(lab, "host", "remove", "rm1", "--force").splitlines()
        assert out == [
            f"removed host {fqdn} (id {old.id}, {dmi})",
            f"principal: {principal} deleted",
            "enrolment tokens invalidated: 0",
            f"VMs now on no host: {name} (running)",
        ]
        dropped = wait_for("session dropped", lambda: tcp_clients(node) == 0, 5)
        print(f"remove -> libvirt session closed {time.monotonic() - t0:.2f}s ({dropped:.2f}s after the CLI)")
        assert row(lab.db, dmi) is None and not lab.kdc.realm.kadmin().exists(principal)
        assert vm_state(lab.db, name) is VmState.UNREACHABLE
        with session_scope(lab.db) as s:
            gone = s.scalars(select(Event.message).where(Event.kind == "host.removed", Event.subject == fqdn)).one()
        assert f"removed by {ADMIN}@{lab.kdc.realm.name}" in gone and f"VMs left on no host: {name}" in gone
        missing = lab.served.drover("host", "show", fqdn, principal=ADMIN)
        assert missing.returncode == 4 and "no host" in missing.stderr

        # Its agent token is gone with it; without a token the node is a new pending host.
        assert heartbeat(lab.served, dmi, first.agent_token).status_code == 401
        pending = identify(lab.served, dmi, fqdn, "")
        assert pending.status_code == 202, pending.text
        again = row(lab.db, dmi)
        assert again is not None and again.approved_at is None and again.created_at > old.created_at
        assert listed_state(lab, fqdn) == "pending"

        # A new boot with a token enrols it: a fresh principal and key; the browser finds the VM again.
        back = identify(lab.served, dmi, fqdn, mint(lab.served, "--uuid", dmi))
        assert back.status_code == 200, back.text
        creds = wire.decode(wire.IdentifyResponse, back.content).credentials
        assert creds is not None and lab.kdc.realm.kadmin().exists(principal)
        (node.root / "libvirtd.keytab").write_bytes(base64.b64decode(creds.keytab_b64))
        node.restart()
        wait_for("enrolled anew and available", lambda: state_of(lab.db, dmi) == (HostState.AVAILABLE, True), 20)
        wait_for("VM found on it again", lambda: vm_state(lab.db, name) is VmState.RUNNING, 10)
    finally:
        virsh(env, node.uri(), "destroy", name)
        virsh(env, node.uri(), "undefine", name)


# --- refusals over REST, on a server nothing else writes to -------------------------------------------


@dataclass(frozen=True)
class Quiet:
    served: LabAppliance
    db: Engine
    admin: Client
    monitor: Client


@pytest.fixture(scope="module")
def quiet(kdc: LabKdc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quiet]:
    served = start_appliance(kdc, tmp_path_factory.mktemp("quiet"), extra_env={"DROVER_HOSTBROWSER_ENABLED": "false"})
    assert served.drover("user", "add", ADMIN, "--role", "admin").returncode == 0
    assert served.drover("user", "add", MONITOR, "--role", "monitor").returncode == 0
    engine = make_engine(served.database_url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KRB5_CONFIG", str(kdc.krb5_conf))  # the client's own GSSAPI calls, in this process

        def client(name: str) -> Client:
            return Client(served.local_url, service_host=APPLIANCE_HOST, ccache=kdc.ticket(name)["KRB5CCNAME"])

        with client(ADMIN) as admin, client(MONITOR) as monitor:
            yield Quiet(served, engine, admin, monitor)
    engine.dispose()
    served.stop()


def everything(db: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: what a refusal must leave exactly as it was."""
    with session_scope(db) as s:
        return {
            t.name: [tuple(r) for r in s.execute(select(t).order_by(*t.primary_key.columns)).all()]
            for t in Base.metadata.sorted_tables
            if t.name != "leases"  # the running fencer's lease, renewed every few seconds whatever is asked
        }


def quiet_host(q: Quiet, fqdn: str, *, approved: bool = True, state: HostState = HostState.AVAILABLE) -> int:
    """A host row as identify + approval would leave it (no libvirt here: the browser is off)."""
    dmi = str(uuid.uuid4())
    r = identify(q.served, dmi, fqdn, mint(q.served, "--uuid", dmi) if approved else "")
    assert r.status_code == (200 if approved else 202), r.text
    with session_scope(q.db) as s:
        host = s.scalars(select(Host).where(Host.uuid == dmi)).one()
        host.state = state
        return host.id


def refused(q: Quiet, call: Callable[[], httpx.Response], status: int, words: str) -> None:
    before = everything(q.db)
    response = call()
    assert response.status_code == status, response.text
    assert words in response.json()["error"], response.json()
    assert everything(q.db) == before


def test_maintenance_refusals_over_rest_change_nothing(quiet: Quiet) -> None:
    ok = quiet_host(quiet, "rq1.example.test")
    pending = quiet_host(quiet, "rq2.example.test", approved=False, state=HostState.PENDING)
    admin, url = quiet.admin._http, "/api/v1/hosts/{}/maintenance"
    refused(quiet, lambda: admin.post(url.format("nosuch.example.test")), 404, "no host")
    refused(quiet, lambda: admin.post(url.format(pending)), 409, "pending approval")
    for body, words in (
        (b"{not json", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"reason": 5}', "reason: must be a string"),
        (b'{"why": "x"}', "why: unknown field"),
        (json.dumps({"reason": "x" * 1001}).encode(), "at most 1000"),
    ):
        refused(quiet, partial(admin.post, url.format(ok), content=body), 400, words)
    refused(quiet, lambda: quiet.monitor._http.post(url.format(ok)), 403, "may not put hosts into maintenance")
    refused(quiet, lambda: httpx.post(f"{quiet.served.local_url}{url.format(ok)}"), 401, "")
    # And the one that is allowed, with an empty body or {}: then a second one is a conflict.
    assert quiet.admin.post(url.format(ok))["state"] == "maintenance"
    refused(quiet, lambda: admin.post(url.format("rq1"), json={}), 409, "already in maintenance")


def test_activate_refusals_over_rest_change_nothing(quiet: Quiet) -> None:
    ok = quiet_host(quiet, "ra1.example.test")
    quiet_host(quiet, "ra2.example.test", approved=False, state=HostState.PENDING)
    admin, url = quiet.admin._http, "/api/v1/hosts/{}/activate"
    refused(quiet, lambda: admin.post(url.format("nosuch")), 404, "no host")
    refused(quiet, lambda: admin.post(url.format(ok)), 409, "not in maintenance (it is available)")
    refused(quiet, lambda: admin.post(url.format("ra2")), 409, "not in maintenance (it is pending)")
    assert quiet.admin.post(f"/api/v1/hosts/{ok}/maintenance", {"reason": "r"})["state"] == "maintenance"
    for body, words in ((b"{", "not valid JSON"), (b'{"force": true}', "force: unknown field"), (b"3", "JSON object")):
        refused(quiet, partial(admin.post, url.format(ok), content=body), 400, words)
    refused(quiet, lambda: quiet.monitor._http.post(url.format(ok)), 403, "may not activate hosts")
    refused(quiet, lambda: httpx.post(f"{quiet.served.local_url}{url.format(ok)}"), 401, "")
    # No libvirt on this server: the activated host is unavailable.
    assert quiet.admin.post(url.format("ra1.example.test"))["state"] == "unavailable"


def test_remove_refusals_over_rest_change_nothing(quiet: Quiet, kdc: LabKdc) -> None:
    busy = quiet_host(quiet, "rr1.example.test")
    principal = f"libvirt/rr1.example.test@{kdc.realm.name}"
    with session_scope(quiet.db) as s:
        host = s.get(Host, busy)
        assert host is not None
        s.add(Vm(uuid=str(uuid.uuid4()), name="busy-vm", vcpus=1, memory_mib=64, state=VmState.PAUSED, host_id=busy,
                 hardware_pool_id=host.hardware_pool_id))  # fmt: skip
    admin, url = quiet.admin._http, f"/api/v1/hosts/{busy}"
    refused(quiet, lambda: admin.delete("/api/v1/hosts/nosuch.example.test"), 404, "no host")
    refused(quiet, lambda: admin.delete(url), 409, "1 VM(s) that are or may be running: busy-vm (paused)")
    refused(quiet, lambda: admin.delete(url, params={"force": "maybe"}), 400, "force: 'maybe' is not true or false")
    refused(quiet, lambda: admin.delete(url, params={"forec": "true"}), 400, "forec: unknown query parameter")
    refused(quiet, lambda: admin.request("DELETE", url, content=b'{"force": true}'), 400, "force: unknown field")
    refused(quiet, lambda: quiet.monitor._http.delete(url, params={"force": "true"}), 403, "may not remove hosts")
    refused(quiet, lambda: httpx.delete(f"{quiet.served.local_url}{url}?force=true"), 401, "")
    assert kdc.realm.kadmin().exists(principal)
    # Forced: the host is gone, its principal too, the VM stays on no host.
    answer = quiet.admin.request("DELETE", "/api/v1/hosts/rr1", params={"force": "yes"})
    assert (answer["id"], answer["principal_deleted"], answer["vms_detached"]) == (
        busy, principal, ["busy-vm (paused)"])  # fmt: skip
    assert not kdc.realm.kadmin().exists(principal)
    with session_scope(quiet.db) as s:
        assert s.get(Host, busy) is None
        assert s.execute(select(Vm.host_id, Vm.state).where(Vm.name == "busy-vm")).one() == (None, VmState.UNREACHABLE)
    refused(quiet, lambda: admin.delete(url, params={"force": "true"}), 404, "no host")
