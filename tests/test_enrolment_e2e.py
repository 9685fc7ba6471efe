"""Enrolment end to end without a PXE boot: the REAL node agent (Debian's python3, a child process) enrols
with a REAL `drover serve`, and the host browser reaches a REAL lab libvirtd that runs on the libvirtd.conf,
SASL config and keytab the agent wrote (the keytab the appliance issued through kadmin).

What stands in for the boot (tests/lab/agent_node.py): the kernel command line is a file, sysfs/procfs
facts are a small tree of data files, and libvirtd is (re)started by `--restart=command`: a tiny client
that asks this test process to start or restart the lab libvirtd (no systemd as PID 1 here). Everything
else is the real code path:
`drover host token` -> /boot/ca.pem pinned by the CLI's fingerprint -> HTTPS identify -> kadmin keytab ->
libvirtd with SASL GSSAPI -> host browser over Kerberos -> `drover host list|show|approve`.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from appliance.db.engine import session_scope
from appliance.db.models import EnrolmentToken, Event, Host, HostNic, HostState, Vm, VmState
from nodeagent import wire
from tests.lab.accel import Accel
from tests.lab.agent_node import FakeNode, host_row, host_state, mint, wait_for
from tests.lab.guest import GuestImage, domain_xml
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts, NodeFactory, client_env, virsh
from tests.lab.nodeagent_peer import read_state, stop
from tests.lab.rack import Lab, rack

pytestmark = pytest.mark.lab

ADMIN = "e2e-boss"


@pytest.fixture(scope="module")
def lab(
    kdc: LabKdc, lab_hosts: LabHosts, libvirt_nodes: NodeFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    state = tmp_path_factory.mktemp("e2e-appliance")
    with rack(kdc, lab_hosts, libvirt_nodes, state, {ADMIN: "admin"}, {"DROVER_NODES_HEARTBEAT_SECONDS": "1"}) as lab:
        yield lab


def vm_state(db: Engine, name: str) -> VmState | None:
    with session_scope(db) as s:
        return s.scalars(select(Vm.state).where(Vm.name == name)).one_or_none()


def nic_macs(db: Engine, dmi_uuid: str) -> dict[str, tuple[str, bool]]:
    with session_scope(db) as s:
        rows = s.execute(
            select(HostNic.mac, HostNic.name, HostNic.is_boot).join(Host).where(Host.uuid == dmi_uuid)
        ).all()
    return {mac: (name, boot) for mac, name, boot in rows}


def available_events(db: Engine, host_id: int) -> int:
    """How often the host browser has (re)connected to this host: `-> available` state events."""
    with session_scope(db) as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(Event)
                .where(Event.host_id == host_id, Event.kind == "host.state", Event.message.contains("-> available"))
            )
            or 0
        )


def last_beat(db: Engine, host_id: int) -> datetime:
    with session_scope(db) as session:
        host = session.get(Host, host_id)
        assert host is not None and host.last_heartbeat_at is not None
        return host.last_heartbeat_at


def conflict_events(db: Engine, host_id: int) -> int:
    with session_scope(db) as s:
        return s.scalar(
            select(func.count()).select_from(Event).where(
                Event.host_id == host_id, Event.kind == "host.identity_conflict"
            )
        ) or 0


def snapshot(db: Engine) -> tuple[object, ...]:
    """What a refused node must not change: hosts, their NICs, approvals, agent tokens, enrolment tokens.
    (Host states and events are left out: the host browser keeps updating earlier tests' hosts.)"""
    with session_scope(db) as s:
        nics = tuple(s.execute(select(HostNic.host_id, HostNic.mac, HostNic.name).order_by(HostNic.mac)).all())
        used = tuple(s.execute(select(EnrolmentToken.id, EnrolmentToken.used_at, EnrolmentToken.used_by_host_id)).all())
        rows = tuple(
            s.execute(
                select(Host.id, Host.uuid, Host.hostname, Host.approved_at, Host.agent_token_hash).order_by(Host.id)
            )
        )
    return (nics, used, rows)


def listed(lab: Lab, fqdn: str) -> list[str]:
    out = lab.served.drover("host", "list", principal=ADMIN)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    (row,) = [r for r in rows if r[1] == fqdn]
    return row


def shown(lab: Lab, fqdn: str) -> str:
    out = lab.served.drover("host", "show", fqdn, principal=ADMIN)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_agent_enrols_host_browser_follows_its_libvirtd_and_a_reboot_keeps_the_host(
    lab: Lab,
    make_node: Callable[[str, str], FakeNode],
    guest_image: GuestImage,
    guest_accel: Accel,
    tmp_path: Path,
) -> None:
    fqdn, dmi_uuid = "node7.example.test", str(uuid.uuid4())
    node = make_node(fqdn, dmi_uuid)
    node.facts_tree({"ens3": "52:54:00:e2:e0:07", "ens4": "52:54:00:e2:e0:08"})
    token, ca = mint(lab, ADMIN)
    node.cmdline(lab.served, token, ca, "01-52-54-00-e2-e0-07")
    t0 = time.monotonic()
    agent = node.start_agent()
    try:
        took = wait_for("host available", lambda: host_state(lab.db, dmi_uuid) is HostState.AVAILABLE, 30, node.log)
        print(f"agent start -> host available: {took:.2f}s")
        row = host_row(lab.db, dmi_uuid)
        assert row is not None
        host_id = row[0]
        # The agent wrote the keytab the appliance issued, 0600, and libvirtd runs on exactly these files.
        assert node.keytab.stat().st_mode & 0o777 == 0o600
        assert node.restarter.node is not None and node.restarter.restarts == 1
        s = read_state(node.state)
        assert s["state"] == "running" and s["host_id"] == host_id and s["principal"].startswith(f"libvirt/{fqdn}@")
        libvirtd_conf_text = (node.conf / "etc/libvirt/libvirtd.conf").read_text()
        assert (
            'auth_tcp = "sasl"' in libvirtd_conf_text
            and 'sasl_allowed_username_list = ["drover"]' in libvirtd_conf_text
        )

        assert listed(lab, fqdn) == [str(host_id), fqdn, "available", "yes", "2", "4000", "MiB", dmi_uuid]
        show = shown(lab, fqdn)
        for line in (
            "cpu_model:         E2E Test CPU",
            "virtualization:    vmx",
            f"libvirt_uri:       qemu+tcp://{fqdn}:{lab.libvirt_port}/system",
            "nic:               ens3 52:54:00:e2:e0:07 1000 Mb/s (boot)",
            "nic:               ens4 52:54:00:e2:e0:08 1000 Mb/s",
            "disk:              vda 20 GiB E2E disk",
        ):
            assert line in show, show

        # A VM defined and started on the node with virsh (the appliance's principal): the DB follows.
        lab_node = node.restarter.node
        env = client_env(lab.kdc, lab.hosts, "drover")
        name = f"e2e-{uuid.uuid4().hex[:8]}"
        xml = tmp_path / "domain.xml"
        xml.write_text(domain_xml(name, guest_image, tmp_path / "serial.log", domain_type=guest_accel.domain_type))
        uri = lab_node.uri("qemu")
        assert virsh(env, uri, "define", str(xml)).returncode == 0
        started = virsh(env, uri, "start", name, timeout=120)
        assert started.returncode == 0, started.stdout
        wait_for("VM running in the DB", lambda: vm_state(lab.db, name) is VmState.RUNNING, 10)
        assert f"vm:                {name} running" in shown(lab, fqdn)

        # libvirtd goes away: unavailable within 10 s, its VMs unreachable; back: the same row, re-synced.
        lab_node.stop_daemon()
        lost = wait_for("host unavailable", lambda: host_state(lab.db, dmi_uuid) is HostState.UNAVAILABLE, 10)
        wait_for("VM unreachable", lambda: vm_state(lab.db, name) is VmState.UNREACHABLE, 5)
        assert listed(lab, fqdn)[2] == "unavailable"
        lab_node.restart()
        back = wait_for("host available again", lambda: host_state(lab.db, dmi_uuid) is HostState.AVAILABLE, 30)
        wait_for("VM re-synced", lambda: vm_state(lab.db, name) is VmState.RUNNING, 10)
        assert host_row(lab.db, dmi_uuid) == (host_id, HostState.AVAILABLE)
        print(f"libvirtd stopped -> unavailable {lost:.2f}s; restarted -> available {back:.2f}s")
    finally:
        stop(agent)

    # The agent alone restarts (killed, same boot, same kernel line): it resumes this boot's enrolment from
    # /run instead of identifying with its spent token: no identify, no conflict, no libvirtd restart (its
    # guests untouched), heartbeats under the same agent token, the host available throughout.
    session_file = node.state.with_name("session.json")
    assert session_file.stat().st_mode & 0o777 == 0o600
    before, conflicts, restarts = snapshot(lab.db), conflict_events(lab.db, host_id), node.restarter.restarts
    beat_before = last_beat(lab.db, host_id)
    agent = node.start_agent()
    try:
        wait_for("resumed and heartbeating",
                 lambda: read_state(node.state).get("state") == "running" and read_state(node.state)["heartbeats"] >= 1,
                 30, node.log)  # fmt: skip
        agent.kill()
        agent.wait(5)
        agent = node.start_agent()  # a SIGKILL leaves the same /run behind: resumed again
        wait_for("resumed after a SIGKILL",
                 lambda: read_state(node.state).get("state") == "running" and read_state(node.state)["heartbeats"] >= 1,
                 30, node.log)  # fmt: skip
    finally:
        stop(agent)
    assert "resuming this boot's enrolment" in node.log.read_text()
    assert snapshot(lab.db) == before and conflict_events(lab.db, host_id) == conflicts
    assert node.restarter.restarts == restarts and host_state(lab.db, dmi_uuid) is HostState.AVAILABLE
    assert last_beat(lab.db, host_id) > beat_before

    # A new token on the kernel line while the appliance's libvirt session to the node is up (what a second
    # machine claiming this DMI UUID would bring): the identify is refused (no takeover), a warning event
    # says so, nothing changes and the running libvirtd keeps its key.
    old_keytab = node.keytab.read_bytes()
    token2, _ = mint(lab, ADMIN, "--uuid", dmi_uuid, "--mac", "52:54:00:e2:e0:07")
    before = snapshot(lab.db)
    node.cmdline(lab.served, token2, ca, "01-52-54-00-e2-e0-07")
    node.state.unlink()
    agent = node.start_agent()
    try:
        wait_for("identify refused", lambda: "409" in read_state(node.state).get("last_error", ""), 30, node.log)
    finally:
        stop(agent)
    assert snapshot(lab.db) == before and node.keytab.read_bytes() == old_keytab
    assert host_state(lab.db, dmi_uuid) is HostState.AVAILABLE
    assert conflict_events(lab.db, host_id) >= 1

    # A real (stateless) reboot: libvirtd goes down with the machine and comes back with an empty keytab;
    # the host token bound to this machine re-enrols it: same host id, NICs reconciled by MAC (one
    # replaced), a fresh keytab (new key version) which the running libvirtd reads at the next login.
    lab_node = node.restarter.node
    assert lab_node is not None
    lab_node.stop_daemon()
    wait_for("host unavailable", lambda: host_state(lab.db, dmi_uuid) is HostState.UNAVAILABLE, 10)
    node.keytab.write_bytes(b"\x05\x02")  # an empty keytab, as the image boots with
    lab_node.restart()
    seen = available_events(lab.db, host_id)
    node.facts_tree({"ens3": "52:54:00:e2:e0:07", "ens5": "52:54:00:e2:e0:09"})
    node.state.unlink()
    t1 = time.monotonic()
    agent = node.start_agent()
    try:
        wait_for("agent running again", lambda: read_state(node.state).get("state") == "running", 30, node.log)
        assert read_state(node.state)["host_id"] == host_id
        assert node.keytab.read_bytes() not in (old_keytab, b"\x05\x02") and node.restarter.restarts == 1
        wait_for("host available after the reboot", lambda: host_state(lab.db, dmi_uuid) is HostState.AVAILABLE, 30)
        fresh = virsh(client_env(lab.kdc, lab.hosts, "drover"), uri, "list", "--all", "--name")
        assert fresh.returncode == 0 and name in fresh.stdout, fresh.stdout
        assert available_events(lab.db, host_id) == seen + 1
        rebooted = time.monotonic() - t1
        assert nic_macs(lab.db, dmi_uuid) == {
            "52:54:00:e2:e0:07": ("ens3", True),
            "52:54:00:e2:e0:09": ("ens5", False),
        }
        row_after = listed(lab, fqdn)
        assert row_after[:3] == [str(host_id), fqdn, "available"]
        total = time.monotonic() - t0
        print(f"reboot: agent start -> available again {rebooted:.2f}s; {total:.1f}s since the first start")
    finally:
        stop(agent)
        env = client_env(lab.kdc, lab.hosts, "drover")
        virsh(env, lab_node.uri("qemu"), "destroy", name)
        virsh(env, lab_node.uri("qemu"), "undefine", name)


def test_pending_agent_gets_its_keytab_after_cli_approval(lab: Lab, make_node: Callable[[str, str], FakeNode]) -> None:
    fqdn, dmi_uuid = "node8.example.test", str(uuid.uuid4())
    node = make_node(fqdn, dmi_uuid)
    node.facts_tree({"ens3": "52:54:00:e2:e0:18"})
    _, ca = mint(lab, ADMIN)
    node.cmdline(lab.served, "", ca, "01-52-54-00-e2-e0-18")
    agent = node.start_agent()
    try:
        wait_for("pending host", lambda: host_state(lab.db, dmi_uuid) is HostState.PENDING, 40, node.log)
        wait_for("agent heartbeating", lambda: read_state(node.state).get("heartbeats", 0) >= 2, 20, node.log)
        assert read_state(node.state)["state"] == "pending"
        assert not node.keytab.exists() and node.restarter.node is None
        assert listed(lab, fqdn)[1:4] == [fqdn, "pending", "no"]
        approved = lab.served.drover("host", "approve", fqdn, principal=ADMIN)
        assert approved.returncode == 0, approved.stderr
        t0 = time.monotonic()
        wait_for("keytab from the next heartbeat", node.keytab.exists, 20, node.log)
        assert node.keytab.stat().st_mode & 0o777 == 0o600
        took = wait_for("approved host available", lambda: host_state(lab.db, dmi_uuid) is HostState.AVAILABLE, 40)
        print(f"approve -> keytab {time.monotonic() - t0 - took:.2f}s; -> available {time.monotonic() - t0:.2f}s")
        assert read_state(node.state)["state"] == "running"
    finally:
        stop(agent)


def test_wrong_ca_pin_and_reused_token_leave_the_database_unchanged(
    lab: Lab, make_node: Callable[[str, str], FakeNode]
) -> None:
    token, ca = mint(lab, ADMIN)
    wrong = make_node("node9.example.test", str(uuid.uuid4()))
    wrong.facts_tree({"ens3": "52:54:00:e2:e0:29"})
    wrong.cmdline(lab.served, token, "sha256:" + "ab" * 32, "01-52-54-00-e2-e0-29")
    before = snapshot(lab.db)
    agent = wrong.start_agent()
    try:
        wait_for("refused", lambda: read_state(wrong.state).get("state") == "refused", 40, wrong.log)
        time.sleep(1.0)  # more refused rounds
    finally:
        stop(agent)
    assert "fingerprint mismatch" in read_state(wrong.state)["last_error"]
    assert snapshot(lab.db) == before and not wrong.keytab.exists()

    # The token is still unused: a first node takes it; a second one with the same token gets a 401.
    first = make_node("node10.example.test", str(uuid.uuid4()))
    first.facts_tree({"ens3": "52:54:00:e2:e0:3a"})
    first.cmdline(lab.served, token, ca, "01-52-54-00-e2-e0-3a")
    agent = first.start_agent()
    try:
        wait_for("first node enrolled", first.keytab.exists, 40, first.log)
    finally:
        stop(agent)
    reused = make_node("node11.example.test", str(uuid.uuid4()))
    reused.facts_tree({"ens3": "52:54:00:e2:e0:4b"})
    reused.cmdline(lab.served, token, ca, "01-52-54-00-e2-e0-4b")
    before = snapshot(lab.db)
    agent = reused.start_agent()
    try:
        wait_for("identify refused", lambda: read_state(reused.state).get("errors", 0) >= 2, 40, reused.log)
    finally:
        stop(agent)
    assert "401" in read_state(reused.state)["last_error"], read_state(reused.state)
    assert snapshot(lab.db) == before and not reused.keytab.exists()
    assert host_state(lab.db, reused.dmi_uuid) is None


def test_a_failed_libvirtd_restart_is_retried_until_the_host_is_available(
    lab: Lab, make_node: Callable[[str, str], FakeNode]
) -> None:
    fqdn, dmi_uuid = "node12.example.test", str(uuid.uuid4())
    node = make_node(fqdn, dmi_uuid)
    node.restarter.fail_next = 2
    node.facts_tree({"ens3": "52:54:00:e2:e0:5c"})
    token, ca = mint(lab, ADMIN)
    node.cmdline(lab.served, token, ca, "01-52-54-00-e2-e0-5c")
    agent = node.start_agent()
    try:
        took = wait_for("host available", lambda: host_state(lab.db, dmi_uuid) is HostState.AVAILABLE, 45, node.log)
        print(f"two failed restarts, then available after {took:.2f}s")
    finally:
        stop(agent)
    assert node.restarter.fail_next == 0 and node.restarter.restarts == 1
    assert len(node.restarter.requests) == 3  # all three of the agent's requests reached this node's server
    assert node.log.read_text().count("restarting libvirtd failed") == 2


def test_libvirtd_set_up_from_the_kernel_line_takes_the_keytab_without_a_restart(
    lab: Lab, make_node: Callable[[str, str], FakeNode]
) -> None:
    """drover.libvirt_allow (the boot service puts it on every node's kernel line): the agent configures
    libvirtd with an empty keytab and starts it before it even has an address; the keytab identify brings
    is read at the appliance's first authentication. libvirtd starts once, and never again."""
    fqdn, dmi_uuid = "node13.example.test", str(uuid.uuid4())
    node = make_node(fqdn, dmi_uuid)
    node.facts_tree({"ens3": "52:54:00:e2:e0:5d"})
    token, ca = mint(lab, ADMIN)
    node.cmdline(lab.served, token, ca, "01-52-54-00-e2-e0-5d", extra="drover.libvirt_allow=drover")
    keytab = node.conf / "etc/libvirt/krb5.tab"
    agent = node.start_agent()
    try:
        wait_for("libvirtd started before enrolment", lambda: node.restarter.restarts == 1, 30, node.log)
        took = wait_for("host available", lambda: host_state(lab.db, dmi_uuid) is HostState.AVAILABLE, 30, node.log)
        print(f"libvirtd prepared from the kernel line; available {took:.2f}s later")
    finally:
        stop(agent)
    assert node.restarter.restarts == 1  # the start before enrolment; the keytab needed no restart
    assert len(keytab.read_bytes()) > 2  # the real keytab replaced the empty one
    text = node.log.read_text()
    assert text.index("from the kernel command line") < text.index("identified as host")


# --- attacks on enrolment (issue 8): each one against the real `drover serve`, with a real enrolled node ---


def kvno(lab: Lab, principal: str) -> int:
    """The key version of `principal` in the lab KDC, or 0 when it does not exist."""
    out = lab.kdc.realm.kadmin().query(f"getprinc {principal}")
    found = re.search(r"vno (\d+)", out)
    return int(found.group(1)) if found else 0


def principals(lab: Lab) -> list[str]:
    return sorted(lab.kdc.realm.kadmin().principals())


def node_client(lab: Lab) -> httpx.Client:
    """An HTTPS client of the node API, pinned to the appliance's CA, as an attacker on the network has it."""
    ca = httpx.get(f"http://127.0.0.1:{lab.served.boot_port}/boot/ca.pem", trust_env=False, timeout=10)
    return httpx.Client(
        base_url=lab.served.node_url, verify=ssl.create_default_context(cadata=ca.text), trust_env=False, timeout=30
    )


def forged_identify(client: httpx.Client, token: str, dmi_uuid: str, fqdn: str, mac: str) -> httpx.Response:
    facts = wire.Facts(
        uuid=dmi_uuid, hostname=fqdn.split(".", maxsplit=1)[0], fqdn=fqdn, arch="x86_64", kernel="6.1.0",
        memory_bytes=1 << 30, cpu=wire.Cpu("Forged CPU", 1, 1, 1, ()),
        nics=(wire.Nic("eth0", mac, 1000, (), True),), boot_mac=mac,
    )  # fmt: skip
    return client.post("/node/v1/identify", content=wire.encode(wire.IdentifyRequest(token, facts)))


def test_no_second_machine_takes_an_enrolled_hosts_uuid_name_or_mac(
    lab: Lab, make_node: Callable[[str, str], FakeNode]
) -> None:
    fqdn, dmi_uuid, mac = "node14.example.test", str(uuid.uuid4()), "52:54:00:e2:e0:6e"
    node = make_node(fqdn, dmi_uuid)
    node.facts_tree({"ens3": mac})
    token, ca = mint(lab, ADMIN)
    node.cmdline(lab.served, token, ca, "01-" + mac.replace(":", "-"))
    agent = node.start_agent()
    try:
        wait_for("host available", lambda: host_state(lab.db, dmi_uuid) is HostState.AVAILABLE, 30, node.log)
        row = host_row(lab.db, dmi_uuid)
        assert row is not None
        host_id = row[0]
        principal = f"libvirt/{fqdn}@{lab.kdc.realm.name}"
        version, known = kvno(lab, principal), principals(lab)
        beats = read_state(node.state)["heartbeats"]
        # Tokens as the boot service hands them out: bound to the host for its reboot (anyone asking with its
        # MAC gets one), unbound ones as an enrolment window gives them (test_boot_service covers the service).
        stolen = mint(lab, ADMIN, "--uuid", dmi_uuid, "--mac", mac)[0]
        window1, window2 = mint(lab, ADMIN)[0], mint(lab, ADMIN)[0]
        before = snapshot(lab.db)
        with node_client(lab) as client:
            # 1. Its reboot token and its DMI UUID: refused while its libvirtd answers the appliance.
            r = forged_identify(client, stolen, dmi_uuid, "attacker.example.test", "52:54:00:aa:00:01")
            assert r.status_code == 409 and "a second machine claims its DMI UUID" in r.json()["error"], r.text
            # 2. A new UUID with a window token, claiming its name (case and trailing dot folded).
            r = forged_identify(client, window1, str(uuid.uuid4()), fqdn.upper() + ".", "52:54:00:aa:00:02")
            assert r.status_code == 409 and f"host name {fqdn} belongs to enrolled host" in r.json()["error"], r.text
            # 3. A new UUID with a window token, claiming its boot MAC.
            r = forged_identify(client, window2, str(uuid.uuid4()), "attacker3.example.test", mac)
            assert r.status_code == 409 and f"MAC {mac} belongs to enrolled host" in r.json()["error"], r.text
        wait_for("more heartbeats", lambda: read_state(node.state)["heartbeats"] >= beats + 2, 10, node.log)
        # Nothing changed: rows, NICs, tokens used, the principal's key, the set of principals.
        assert snapshot(lab.db) == before
        assert kvno(lab, principal) == version and principals(lab) == known
        assert host_state(lab.db, dmi_uuid) is HostState.AVAILABLE
        assert conflict_events(lab.db, host_id) == 3
        # A machine nobody vouched for: pending, and no principal is made for what it claims.
        with node_client(lab) as client:
            r = forged_identify(client, "", str(uuid.uuid4()), "attacker4.example.test", "52:54:00:aa:00:04")
            assert r.status_code == 202, r.text
        assert principals(lab) == known
        # The real node still authenticates with its key.
        listing = virsh(client_env(lab.kdc, lab.hosts, "drover"), node.restarter.node.uri("qemu"), "list")  # type: ignore[union-attr]
        assert listing.returncode == 0, listing.stdout
    finally:
        stop(agent)


def test_two_machines_claiming_a_pending_host_need_the_admin_to_choose(
    lab: Lab, make_node: Callable[[str, str], FakeNode]
) -> None:
    """Without tokens: the real node claims first, a forger claims the same DMI UUID later. Neither claim
    replaces the other; approval names the claim; only that machine's agent collects the keytab."""
    fqdn, dmi_uuid, mac = "node15.example.test", str(uuid.uuid4()), "52:54:00:e2:e0:7f"
    node = make_node(fqdn, dmi_uuid)
    node.facts_tree({"ens3": mac})
    _, ca = mint(lab, ADMIN)
    node.cmdline(lab.served, "", ca, "01-" + mac.replace(":", "-"))
    agent = node.start_agent()
    try:
        wait_for("pending host", lambda: host_state(lab.db, dmi_uuid) is HostState.PENDING, 40, node.log)
        wait_for("agent heartbeating", lambda: read_state(node.state).get("heartbeats", 0) >= 1, 20, node.log)
        with node_client(lab) as client:
            r = forged_identify(client, "", dmi_uuid, "evil.example.test", "52:54:00:aa:00:05")
            assert r.status_code == 202, r.text
            forged = wire.decode(wire.IdentifyResponse, r.content)
            assert forged.status is wire.IdentifyStatus.PENDING and forged.credentials is None

            def forger_beat() -> httpx.Response:
                beat = wire.Heartbeat(dmi_uuid, agent_token=forged.agent_token)
                return client.post("/node/v1/heartbeat", content=wire.encode(beat))

            assert forger_beat().status_code == 200
            # The row keeps the first claim's facts; `host show` lists both claims with where they came from.
            assert listed(lab, fqdn)[1:4] == [fqdn, "pending", "no"]
            show = shown(lab, fqdn)
            claims = re.findall(r"^claim: +(\d+) from (\S+): (\S+)", show, re.M)
            assert [c[2] for c in claims] == [fqdn, "evil.example.test"], show
            # The forger keeps beating, as a live second machine would (a claim unheard of for 3 heartbeat
            # intervals counts as gone, and a CLI call can take longer than that on a loaded machine).
            beating = threading.Event()

            def keep_beating() -> None:
                with node_client(lab) as own:
                    while not beating.wait(0.5):
                        own.post("/node/v1/heartbeat",
                                 content=wire.encode(wire.Heartbeat(dmi_uuid, agent_token=forged.agent_token)))

            forger = threading.Thread(target=keep_beating, daemon=True)
            forger.start()
            try:
                refused = lab.served.drover("host", "approve", fqdn, principal=ADMIN)
            finally:
                beating.set()
                forger.join(10)
            assert refused.returncode == 5 and "2 machines claim host" in refused.stderr, refused.stderr
            assert not node.keytab.exists()
            approved = lab.served.drover("host", "approve", fqdn, "--claim", claims[0][0], principal=ADMIN)
            assert approved.returncode == 0, approved.stderr
            wait_for("keytab to the real node", node.keytab.exists, 20, node.log)
            assert forger_beat().status_code == 401  # the other claim is gone with the approval
        wait_for("approved host available", lambda: host_state(lab.db, dmi_uuid) is HostState.AVAILABLE, 40)
        with session_scope(lab.db) as s:
            host = s.scalars(select(Host).where(Host.uuid == dmi_uuid)).one()
            assert host.hostname == fqdn and [n.mac for n in host.nics] == [mac]
            kinds = set(s.scalars(select(Event.kind).where(Event.host_id == host.id)))
            assert {"host.pending", "host.claim_conflict", "host.approved"} <= kinds
    finally:
        stop(agent)
