"""The final proof of enrolment: the node image, PXE-booted in qemu from a REAL `drover serve`, enrols itself.

Nothing stands in for the node: qemu's user network gives the guest DHCP and a one-line TFTP boot.ipxe that
chains to the appliance's boot service (/boot/boot.ipxe -> /boot/ipxe?mac=... with a one-time token), the
kernel, initrd and squashfs come from /boot/images/, and the image's drover-agent.service identifies over
HTTPS, installs the keytab and restarts libvirtd through systemd's D-Bus API. The appliance's host browser
then reaches that libvirtd over Kerberos through a qemu hostfwd on a loopback address of its own
(the node's name maps to it in the appliance's nss_wrapper hosts file).
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostNic, HostState
from tests.lab.accel import detect
from tests.lab.appliance import start_appliance
from tests.lab.image import NodeImage
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts
from tests.lab.qemu import HOST_FROM_GUEST, Guest, start_guest

MARKER = r"DROVER-BOOT (?P<facts>[^\r\n]*uptime=\S+)"  # the image's boot marker (test_image_boot.py)

pytestmark = pytest.mark.lab

TIMEOUT = 400
MAC = "52:54:00:12:34:56"  # qemu's default for the first NIC
NODE = "node1"


def wait_for(what: str, check: Callable[[], bool], timeout: float, guest: Guest, log: Path) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(
                f"{what} not within {timeout:.0f}s\n--- serial:\n{guest.serial()[-4000:]}\n"
                f"--- appliance:\n{log.read_text(errors='replace')[-4000:]}"
            )
        assert guest.proc.poll() is None or what.startswith("host unavailable"), guest.serial()[-4000:]
        time.sleep(0.2)
    return time.monotonic() - start


def host(db: Engine, dmi_uuid: str) -> tuple[int, str, HostState] | None:
    with session_scope(db) as s:
        row = s.execute(select(Host.id, Host.hostname, Host.state).where(Host.uuid == dmi_uuid)).one_or_none()
    return (row[0], row[1], row[2]) if row is not None else None


def boot_nics(db: Engine, dmi_uuid: str) -> dict[str, bool]:
    with session_scope(db) as s:
        rows = s.execute(select(HostNic.mac, HostNic.is_boot).join(Host).where(Host.uuid == dmi_uuid)).all()
    return {mac: boot for mac, boot in rows}


@pytest.mark.boot
@pytest.mark.timeout(TIMEOUT, func_only=True)
def test_pxe_booted_node_enrols_itself(node_image: NodeImage, kdc: LabKdc, tmp_path: Path) -> None:
    address = f"127.0.0.{random.randint(100, 250)}"  # the node's libvirtd, as the appliance reaches it
    hosts = LabHosts(tmp_path / "nss_hosts")
    # The node names itself from DHCP (qemu's hostname=/domainname=) or keeps the image's own name.
    for name in (f"{NODE}.example.test", NODE, "drover-node"):
        hosts.add(name, address)
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

        def boot(name: str, dmi_uuid: str) -> Guest:
            tftp = tmp_path / "tftp"
            tftp.mkdir(exist_ok=True)
            (tftp / "boot.ipxe").write_text(
                f"#!ipxe\ndhcp\nchain http://{HOST_FROM_GUEST}:{served.boot_port}/boot/boot.ipxe\n"
            )
            guest = start_guest(
                name,
                tmp_path,
                accel=detect(),
                tftp_dir=tftp,
                extra_qemu=(
                    "-uuid", dmi_uuid,
                    "-set", f"netdev.n0.hostname={NODE}",
                    "-set", "netdev.n0.domainname=example.test",
                    "-set", f"netdev.n0.hostfwd=tcp:{address}:16509-:16509",
                ),
            )  # fmt: skip
            guests.append(guest)
            return guest

        dmi_uuid = str(uuid.uuid4())
        guest = boot("pxe-enrol", dmi_uuid)
        # Both clocks from the same polling loop: qemu start -> host available, and -> the boot marker.
        seen: dict[str, float] = {}

        def enrolled() -> bool:
            now = time.monotonic() - guest.started
            if "marker" not in seen and re.search(MARKER, guest.serial()):
                seen["marker"] = now
            if "available" not in seen and (row := host(db, dmi_uuid)) is not None and row[2] is HostState.AVAILABLE:
                seen["available"] = now
            return len(seen) == 2

        wait_for("host available and boot marker", enrolled, TIMEOUT - 60, guest, served.log)
        to_available, to_marker = seen["available"], seen["marker"]
        row = host(db, dmi_uuid)
        assert row is not None
        host_id, hostname, _ = row
        assert boot_nics(db, dmi_uuid).get(MAC) is True, boot_nics(db, dmi_uuid)
        print(
            f"PXE boot -> available {to_available:.0f}s, -> boot marker {to_marker:.0f}s "
            f"(ratio {to_available / to_marker:.2f}, {guest.accel}); host {host_id} {hostname}"
        )

        guest.proc.kill()
        lost = wait_for(
            "host unavailable",
            lambda: host(db, dmi_uuid) == (host_id, hostname, HostState.UNAVAILABLE),
            10,
            guest,
            served.log,
        )
        print(f"qemu killed -> unavailable {lost:.2f}s")
    finally:
        for g in guests:
            g.kill()
        db.dispose()
        served.stop()
