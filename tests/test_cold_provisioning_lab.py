"""Provisioning a host from cold, as an admin does it, all through the CLI: a machine that has never booted (no
host record) is powered on through its BMC, PXE-boots the real node image from a real `drover serve`, enrols in
the window opened for it, and comes up as an available host that keeps the BMC settings it was powered on with.

What is real: the node is a libvirt domain (tests/lab/pxedomain.py) in a lab libvirtd, PXE-booting the node
image exactly as tests/lab/pxe.py's qemu command does; its BMC is virtualbmc (PyPI) answering IPMI over LAN on
loopback and driving that domain through libvirt; drover talks to it with ipmitool. Nothing is simulated but
the network between them (qemu's user network: DHCP + TFTP, the node's libvirtd port forwarded to a loopback
address of its own).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
from sqlalchemy import Engine, select

from appliance.db.engine import make_engine, session_scope
from appliance.db.models import EnrolmentWindow, Event, Host, HostNic, HostState
from tests.lab.accel import Accel
from tests.lab.appliance import LabAppliance, start_appliance
from tests.lab.image import NodeImage
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts, LabNode, NodeFactory
from tests.lab.pxe import PxeNode, phase
from tests.lab.pxedomain import domain_name, domain_xml, serial_log
from tests.lab.qemu import HOST_FROM_GUEST
from tests.lab.vbmc import LabBmc, LabBmcs

pytestmark = pytest.mark.lab

BOOT_TIMEOUT = 600  # one TCG PXE boot on a loaded 2-core machine: usually 1-3 minutes
ADMIN = "cold-boss"


def wait_until(what: str, check: Callable[[], bool], timeout: float, why: Callable[[], str]) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f}s\n{why()}")
        time.sleep(0.5)
    return time.monotonic() - start


def host_row(db: Engine, dmi_uuid: str) -> Host | None:
    with session_scope(db) as s:
        host = s.scalars(select(Host).where(Host.uuid == dmi_uuid)).one_or_none()
        if host is not None:
            s.expunge(host)
        return host


def windows(db: Engine) -> list[EnrolmentWindow]:
    with session_scope(db) as s:
        rows = list(s.scalars(select(EnrolmentWindow).order_by(EnrolmentWindow.id)))
        for w in rows:
            s.expunge(w)
        return rows


def domain_active(plane: LabNode, name: str) -> bool:
    conn = libvirt.open(plane.local_uri)
    try:
        return bool(conn.lookupByName(name).isActive())
    finally:
        conn.close()


class Cold:
    """The lab for one cold provisioning: a power plane libvirtd holding the node's domain, its BMC, the appliance."""

    def __init__(self, node: PxeNode, plane: LabNode, bmc: LabBmc, bmcs: LabBmcs, served: LabAppliance,
                 workdir: Path) -> None:  # fmt: skip
        self.node, self.plane, self.bmc, self.bmcs, self.served, self.workdir = node, plane, bmc, bmcs, served, workdir
        self.db = make_engine(served.database_url)

    def drover(self, *argv: str) -> tuple[int, str, str]:
        out = self.served.drover(*argv, principal=ADMIN, timeout=120)
        return out.returncode, out.stdout, out.stderr

    def diagnostics(self) -> str:
        serial = serial_log(self.node, self.workdir)
        text = serial.read_text(errors="replace") if serial.is_file() else "(no serial output)"
        qemu_log = self.plane.root / "log" / "qemu" / f"{domain_name(self.node)}.log"
        qemu = qemu_log.read_text(errors="replace")[-2000:] if qemu_log.is_file() else ""
        return (f"--- serial ({phase(text).label}):\n{text[-4000:]}\n--- qemu:\n{qemu}\n"
                f"--- appliance:\n{self.served.log_text()[-4000:]}")  # fmt: skip


@pytest.fixture
def cold(
    kdc: LabKdc, libvirt_nodes: NodeFactory, node_image: NodeImage, tmp_path: Path, guest_accel: Accel
) -> Iterator[Cold]:
    # Its own number and address range (pxe tests use 100-199): the node's libvirtd port is forwarded there.
    node = PxeNode.numbered(52, "example.test", f"127.0.0.{random.randint(200, 250)}")
    names = LabHosts(tmp_path / "nss_hosts")
    names.add(node.fqdn, node.address)
    plane = libvirt_nodes.start("coldplane.example.test")
    bmcs = LabBmcs(tmp_path / "vbmc")
    served: LabAppliance | None = None
    try:
        conn = libvirt.open(plane.local_uri)
        try:
            conn.defineXML(domain_xml(node, tmp_path, 0, guest_accel))  # boot port fixed below, once serve runs
        finally:
            conn.close()
        bmcs.start()
        bmc = bmcs.add(domain_name(node), plane.local_uri)
        served = start_appliance(kdc, tmp_path / "appliance", extra_env={
            **names.env,
            "DROVER_NODES_HEARTBEAT_SECONDS": "1",
            # The guest reaches the appliance at 10.0.2.2: its certificate must name that address too.
            "DROVER_NODES_EXTRA_NAMES": f"127.0.0.1,{HOST_FROM_GUEST}",
        })  # fmt: skip
        # The domain's TFTP root chains to this appliance's boot port (only known now): redefine it.
        conn = libvirt.open(plane.local_uri)
        try:
            conn.defineXML(domain_xml(node, tmp_path, served.boot_port, guest_accel))
        finally:
            conn.close()
        assert served.drover("user", "add", ADMIN, "--role", "admin").returncode == 0
        used = served.drover("boot", "use", str(node_image.dir))
        assert used.returncode == 0, used.stdout + used.stderr
        lab = Cold(node, plane, bmc, bmcs, served, tmp_path)
        yield lab
        lab.db.dispose()
    finally:
        if served is not None:
            served.stop()
        bmcs.stop()
        plane.stop()  # its guest with it
        if plane in libvirt_nodes.nodes:
            libvirt_nodes.nodes.remove(plane)


@pytest.mark.boot
@pytest.mark.timeout(BOOT_TIMEOUT + 300, func_only=True)  # the fixtures may build the node image first
def test_a_machine_is_provisioned_from_cold_through_its_bmc(cold: Cold) -> None:
    node, bmc = cold.node, cold.bmc
    name = domain_name(node)
    pw = cold.workdir / "bmc.pw"
    pw.write_text(cold.bmc.password + "\n")
    bmc_args = ["--bmc-address", bmc.address, "--bmc-port", str(bmc.port), "--bmc-user", bmc.user,
                "--bmc-password-file", str(pw)]  # fmt: skip
    assert not domain_active(cold.plane, name)

    # Refusals first, each with a one-line reason and nothing written: a BMC belongs to one machine.
    for argv, code, why in (
        (["--window", "15m", "--power-on", "--mac", node.mac], 2, "needs the machine's BMC"),
        (["--window", "15m", "--mac", node.mac, "--bmc-address", bmc.address], 2, "go together"),
        (["--window", "15m", *bmc_args], 2, "exactly one MAC"),
        (["--window", "15m", "--mac", node.mac, "--mac", "52:54:00:d0:ff:01", "--count", "2", *bmc_args], 2,
         "exactly one MAC"),
        (["--window", "15m", "--mac", node.mac, "--bmc-address", "not a host!", "--bmc-user", "admin",
          "--bmc-password-file", str(pw)], 2, "address"),
    ):  # fmt: skip
        rc, out, err = cold.drover("host", "enrol", *argv)
        assert rc == code and why in err, (argv, rc, out, err)
    assert windows(cold.db) == []
    # A window without a BMC cannot power anything on.
    rc, out, err = cold.drover("host", "enrol", "--window", "1m", "--mac", node.mac)
    assert rc == 0, out + err
    plain = windows(cold.db)[0].id
    rc, out, err = cold.drover("host", "enrol", "--power", "on", str(plain))
    assert rc == 5 and "no BMC settings" in err, (rc, out, err)
    rc, out, err = cold.drover("host", "enrol", "--power", "cycle", str(plain))
    assert rc == 2 and "one of on, off, status" in err, (rc, out, err)
    rc, out, err = cold.drover("host", "enrol", "--power", "on", "999999")
    assert rc == 4 and "no enrolment window 999999" in err, (rc, out, err)
    rc, out, err = cold.drover("host", "enrol", "--close", str(plain))
    assert rc == 0, out + err
    assert not domain_active(cold.plane, name)

    # The admin's one command: a window for this MAC with its BMC, and power on through that BMC.
    t0 = time.monotonic()
    rc, out, err = cold.drover("host", "enrol", "--window", "15m", "--mac", node.mac, *bmc_args, "--power-on")
    assert rc == 0, out + err
    assert f"BMC {bmc.address}:{bmc.port} as {bmc.user}" in out and "reports power on" in out, out
    assert bmc.password not in out + err
    # The BMC really started the domain (libvirt says so), and the window keeps the password sealed only.
    assert domain_active(cold.plane, name)
    window = windows(cold.db)[-1]
    assert window.power_secret and bmc.password not in window.power_secret
    rc, out, err = cold.drover("host", "enrol", "--list")
    assert rc == 0 and f"{node.mac} (BMC {bmc.address}:{bmc.port} as {bmc.user})" in out, out + err
    assert bmc.password not in out
    rc, out, err = cold.drover("host", "enrol", "--power", "status", str(window.id))
    assert rc == 0 and f"the BMC of {node.mac} reports power on" in out, out + err

    # PXE -> the node identifies inside the window -> available, with no admin step in between.
    enrolled = wait_until("host available", lambda: (h := host_row(cold.db, node.uuid)) is not None
                          and h.state is HostState.AVAILABLE, BOOT_TIMEOUT, cold.diagnostics)  # fmt: skip
    host = host_row(cold.db, node.uuid)
    assert host is not None and host.hostname == node.fqdn
    assert host.approved_by is not None and host.approved_by.startswith("token ")
    with session_scope(cold.db) as s:
        assert s.scalars(select(HostNic.mac).where(HostNic.host_id == host.id, HostNic.is_boot)).all() == [node.mac]
        inherited = s.scalars(select(Event.message).where(Event.host_id == host.id, Event.kind == "host.power")).all()
    assert any(f"from enrolment window {window.id}" in m for m in inherited), inherited
    # The host inherited the BMC: same settings, same sealed secret, the password still nowhere in clear.
    assert (host.power_address, host.power_port, host.power_user) == (bmc.address, bmc.port, bmc.user)
    assert host.power_secret == window.power_secret
    print(f"power on -> host available {time.monotonic() - t0:.0f}s ({enrolled:.0f}s of waiting), "
          f"{phase(serial_log(node, cold.workdir).read_text(errors='replace')).label} on the console")  # fmt: skip

    rc, out, err = cold.drover("host", "power", "status", node.fqdn)
    assert rc == 0 and "power on" in out, out + err

    # Power off through drover: the BMC destroys the domain, the host goes unavailable.
    t1 = time.monotonic()
    rc, out, err = cold.drover("host", "power", "off", node.fqdn)
    assert rc == 0 and "power off done" in out and "reports power off" in out, out + err
    assert not domain_active(cold.plane, name)
    lost = wait_until("host unavailable", lambda: (h := host_row(cold.db, node.uuid)) is not None
                      and h.state is HostState.UNAVAILABLE, 60, cold.diagnostics)  # fmt: skip
    rc, out, err = cold.drover("host", "power", "status", node.fqdn)
    assert rc == 0 and "power off" in out, out + err
    print(f"power off -> unavailable {time.monotonic() - t1:.1f}s ({lost:.1f}s after the BMC confirmed)")
