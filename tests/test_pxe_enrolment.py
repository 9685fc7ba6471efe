"""The final proof of enrolment: the node image, PXE-booted in qemu from a REAL `drover serve`, enrols itself.

Nothing stands in for the node (tests/lab/pxe.py): the guest PXE-boots through the appliance's boot
service (a per-MAC iPXE script with a one-time token), the image's agent identifies over HTTPS, gets
its keytab and has systemd start libvirtd for Kerberos on TCP, and the appliance's host browser
reaches that libvirtd as drover@REALM. Then the test itself talks to the node's libvirt over Kerberos,
kills the node, and boots it again: the same host row comes back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostNic, HostState, Vm, VmState
from appliance.kerberos.realm import APPLIANCE_CLIENT
from tests.lab.accel import detect
from tests.lab.appliance import LabAppliance, start_appliance
from tests.lab.image import NodeImage
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts, client_env, virsh
from tests.lab.pxe import BootClock, PxeNode, boot, free_address, vouch_for
from tests.lab.qemu import HOST_FROM_GUEST, Guest

pytestmark = pytest.mark.lab

TIMEOUT = 600  # two TCG boots on a loaded 2-core machine

# A domain the test defines on the node through its Kerberos-only libvirt (never started: that
# would be TCG inside TCG). Its appearance in the DB proves the appliance follows the node's domains.
DOMAIN_UUID = "6d1b3c8e-2f4a-4b7d-9c05-1e2f3a4b5c6d"
DOMAIN_XML = f"""<domain type='qemu'>
  <name>pxe-probe</name><uuid>{DOMAIN_UUID}</uuid>
  <memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>
"""


def wait_for(what: str, check: Callable[[], bool], timeout: float, guest: Guest, served: LabAppliance) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(
                f"{what} not within {timeout:.0f}s\n--- serial:\n{guest.serial()[-4000:]}\n"
                f"--- appliance:\n{served.log_text()[-4000:]}"
            )
        if guest.proc.poll() is not None and not what.startswith("host unavailable"):
            raise AssertionError(f"qemu exited ({guest.proc.returncode}) waiting for {what}:\n{guest.serial()[-4000:]}")
        time.sleep(0.2)
    return time.monotonic() - start


def host_row(db: Engine, dmi_uuid: str) -> Host | None:
    with session_scope(db) as s:
        host = s.scalars(select(Host).where(Host.uuid == dmi_uuid)).one_or_none()
        if host is not None:
            s.expunge(host)
        return host


def state_of(db: Engine, dmi_uuid: str) -> HostState | None:
    host = host_row(db, dmi_uuid)
    return host.state if host is not None else None


def vm_row(db: Engine, vm_uuid: str) -> tuple[int | None, VmState] | None:
    with session_scope(db) as s:
        row = s.execute(select(Vm.host_id, Vm.state).where(Vm.uuid == vm_uuid)).one_or_none()
    return (row[0], row[1]) if row is not None else None


def boot_nics(db: Engine, dmi_uuid: str) -> dict[str, bool]:
    with session_scope(db) as s:
        rows = s.execute(select(HostNic.mac, HostNic.is_boot).join(Host).where(Host.uuid == dmi_uuid)).all()
    return {mac: boot for mac, boot in rows}


@pytest.mark.boot
@pytest.mark.timeout(TIMEOUT, func_only=True)
def test_pxe_booted_node_enrols_itself(node_image: NodeImage, kdc: LabKdc, tmp_path: Path) -> None:
    # Not node1: enrolling re-keys libvirt/<fqdn> in the session's KDC, and the session's lab node is node1.
    node = PxeNode.numbered(51, "example.test", free_address())
    hosts = LabHosts(tmp_path / "nss_hosts")
    hosts.add(node.fqdn, node.address)
    served = start_appliance(
        kdc,
        tmp_path / "appliance",
        extra_env={
            **hosts.env,
            "DROVER_NODES_HEARTBEAT_SECONDS": "1",
            # The guest reaches the appliance at 10.0.2.2: its certificate must name that address too.
            "DROVER_NODES_EXTRA_NAMES": f"127.0.0.1,{HOST_FROM_GUEST}",
        },
    )
    db = make_engine(served.database_url)
    guests: list[Guest] = []
    try:
        used = served.drover("boot", "use", str(node_image.dir))
        assert used.returncode == 0, used.stdout + used.stderr
        # The admin vouches for this one machine: a window of one, for its MAC (no other machine gets a token).
        vouch_for(served, node, "pxe-boss")
        accel = detect()

        # 1. First boot: the host appears available with its real facts. Both clocks come from the
        #    same polling loop: qemu start -> login prompt, and -> host available.
        guest = boot(node, tmp_path, served.boot_port, accel)
        guests.append(guest)
        clock = BootClock(guest, lambda: state_of(db, node.uuid) is HostState.AVAILABLE)
        wait_for("host available and login prompt", clock.tick, 400, guest, served)
        host = host_row(db, node.uuid)
        assert host is not None
        assert host.hostname == node.fqdn  # from DHCP: the image has no hostname of its own
        assert host.cpu_count == 1 and 900 <= host.memory_mib <= 1024, (host.cpu_count, host.memory_mib)
        assert host.approved_at is not None and host.credentials_issued_at is not None
        assert boot_nics(db, node.uuid) == {node.mac: True}
        print(
            f"PXE boot -> available {clock.enrolled:.0f}s, -> login prompt {clock.login:.0f}s "
            f"(ratio {clock.ratio:.2f}, {guest.accel}); host {host.id} {host.hostname}"
        )

        # 2. The node's libvirt answers Kerberos only, and the appliance follows its domains.
        uri = node.uri
        no_ticket = virsh(client_env(kdc, hosts, None), uri, "list", "--all")
        assert no_ticket.returncode != 0, no_ticket.stdout
        with_ticket = client_env(kdc, hosts, APPLIANCE_CLIENT)
        xml = tmp_path / "probe.xml"
        xml.write_text(DOMAIN_XML)
        defined = virsh(with_ticket, uri, "define", str(xml))
        assert defined.returncode == 0, defined.stdout
        listed = virsh(with_ticket, uri, "list", "--all", "--name")
        assert "pxe-probe" in listed.stdout, listed.stdout
        wait_for(
            "the defined domain in the DB",
            lambda: vm_row(db, DOMAIN_UUID) == (host.id, VmState.STOPPED),
            10,
            guest,
            served,
        )

        # 3. Power cut: unavailable within 10 s, its VMs unreachable.
        guest.proc.kill()
        lost = wait_for("host unavailable", lambda: state_of(db, node.uuid) is HostState.UNAVAILABLE, 10, guest, served)
        assert vm_row(db, DOMAIN_UUID) == (host.id, VmState.UNREACHABLE)
        print(f"qemu killed -> unavailable {lost:.2f}s")

        # 4. Power on again: the window is used up, but an enrolled host's reboot gets a token bound to it
        #    (a new key, the same host row, keyed by DMI UUID); the domain lived in the node's RAM, so the
        #    re-sync says it is gone.
        windows = served.drover("host", "enrol", "--list", principal="pxe-boss")
        assert "1/1 host(s)" in windows.stdout, windows.stdout
        again = boot(node, tmp_path, served.boot_port, accel, tag="-reboot")
        guests.append(again)
        back = wait_for(
            "the same host available again",
            lambda: state_of(db, node.uuid) is HostState.AVAILABLE,
            400,
            again,
            served,
        )
        rebooted = host_row(db, node.uuid)
        assert rebooted is not None and rebooted.id == host.id and rebooted.hostname == host.hostname
        assert boot_nics(db, node.uuid) == {node.mac: True}
        assert vm_row(db, DOMAIN_UUID) == (None, VmState.STOPPED)
        with session_scope(db) as s:
            assert s.scalar(select(Host.id).where(Host.hostname == node.fqdn).order_by(Host.id.desc())) == host.id
        print(f"rebooted -> available again {back:.0f}s, same host row {host.id}")
    finally:
        for g in guests:
            g.kill()
        db.dispose()
        served.stop()
