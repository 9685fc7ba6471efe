"""UEFI boot paths beside the BIOS ones: node.iso as a CD and PXE, both under OVMF (TCG here).

The ISO test waits for the same boot marker as the BIOS USB-stick boot (tests/test_image_boot.py);
the PXE test has a real `drover serve` hand an OVMF node its script and waits for the host to be
available, as the BIOS enrolment test does (tests/test_pxe_enrolment.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.db.engine import make_engine
from appliance.db.models import HostState
from tests.lab.accel import detect
from tests.lab.appliance import start_appliance
from tests.lab.image import NodeImage
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts
from tests.lab.pxe import BootClock, PxeNode, boot, free_address, vouch_for
from tests.lab.qemu import HOST_FROM_GUEST, Guest, start_guest
from tests.test_image_boot import MARKER, assert_root_in_ram, facts
from tests.test_pxe_enrolment import boot_nics, host_row, state_of, wait_for

BOOT_TIMEOUT = 600  # OVMF under TCG on a loaded 2-core machine: firmware alone takes a while

pytestmark = pytest.mark.boot


@pytest.mark.timeout(BOOT_TIMEOUT, func_only=True)
def test_uefi_cd_boot_into_ram(node_image: NodeImage, tmp_path: Path, guests: list[Guest]) -> None:
    accel = detect()
    guest = start_guest("uefi-cd", tmp_path, accel=accel, cdrom=node_image.path("node.iso"), uefi=True)
    guests.append(guest)
    found, seconds = guest.wait_for(MARKER, BOOT_TIMEOUT - 30)
    seen = facts(found.group("facts"))
    print(f"UEFI CD boot to marker: {seconds:.0f}s ({accel}), {seen}")
    assert_root_in_ram(seen)
    assert seen["disks"] == "sr0", seen  # the CD is there, but nothing is mounted from it
    serial = guest.serial()
    assert "BdsDxe" in serial, serial[:2000]  # OVMF's boot manager chose the CD
    assert "efi: EFI v" in serial, serial[-4000:]  # the kernel was started by UEFI firmware, through grub's EFI image
    # No appliance on an ISO's kernel line: the agent falls through to mDNS discovery, which must not crash it.
    assert "Traceback" not in serial, serial[serial.find("Traceback") - 500 :][:3000]


@pytest.mark.lab
@pytest.mark.timeout(BOOT_TIMEOUT + 60, func_only=True)
def test_uefi_pxe_booted_node_enrols_itself(node_image: NodeImage, kdc: LabKdc, tmp_path: Path) -> None:
    # Its own node number: enrolling re-keys libvirt/<fqdn> in the session's KDC (51 is the BIOS test's).
    node = PxeNode.numbered(52, "example.test", free_address())
    hosts = LabHosts(tmp_path / "nss_hosts")
    hosts.add(node.fqdn, node.address)
    served = start_appliance(
        kdc,
        tmp_path / "appliance",
        extra_env={
            **hosts.env,
            "DROVER_NODES_HEARTBEAT_SECONDS": "1",
            "DROVER_NODES_EXTRA_NAMES": f"127.0.0.1,{HOST_FROM_GUEST}",
        },
    )
    db = make_engine(served.database_url)
    guest: Guest | None = None
    try:
        used = served.drover("boot", "use", str(node_image.dir))
        assert used.returncode == 0, used.stdout + used.stderr
        vouch_for(served, node, "uefi-boss")
        guest = boot(node, tmp_path, served.boot_port, detect(), uefi=True)
        clock = BootClock(guest, lambda: state_of(db, node.uuid) is HostState.AVAILABLE)
        wait_for("host available and login prompt", clock.tick, BOOT_TIMEOUT - 60, guest, served)
        host = host_row(db, node.uuid)
        assert host is not None and host.hostname == node.fqdn
        assert host.approved_at is not None and host.credentials_issued_at is not None
        assert boot_nics(db, node.uuid) == {node.mac: True}
        serial = guest.serial()
        assert "EFI" in serial and "iPXE" in serial, serial[:3000]  # OVMF, then the NIC's EFI iPXE
        assert "efi: EFI v" in serial, serial[-4000:]  # the kernel was started by UEFI, not SeaBIOS
        print(
            f"UEFI PXE boot -> available {clock.enrolled:.0f}s, -> login prompt {clock.login:.0f}s "
            f"({guest.accel}); host {host.id} {host.hostname}"
        )
    finally:
        if guest is not None:
            guest.kill()
        db.dispose()
        served.stop()
