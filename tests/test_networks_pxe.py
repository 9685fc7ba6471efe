"""Logical networks on a real node: a PXE-booted node of the real image, from a real `drover serve`, gets a
bond of its two extra NICs carrying an untagged VM bridge and a storage VLAN with a static address, applied
by its node agent with systemd-networkd; the test's own L2 segment (tests/lab/segment.py) sees the node
answer on that VLAN and only there. Then an admin's change is followed, a change that cuts the management
link is rolled back and reported, and after a reboot (a stateless node forgets everything) the node gets its
set-up back from the appliance.

One node, two boots: the management NIC is qemu's user network (the appliance at 10.0.2.2), the two extra
NICs are taps on the segment.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from appliance.db.base import utcnow
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostState
from tests.lab.accel import Accel, detect
from tests.lab.appliance import LabAppliance, start_appliance
from tests.lab.image import NodeImage
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts
from tests.lab.pxe import PxeNode, boot, free_address, vouch_for
from tests.lab.qemu import HOST_FROM_GUEST, Guest
from tests.lab.segment import Segment

pytestmark = pytest.mark.lab

TIMEOUT = 2700
ADMIN = "pxe-vouch"  # vouch_for makes this admin
ROLLBACK_SECONDS = 25
PEER = "10.43.0.1"  # the segment's end of the storage VLAN: the ARP probes' sender


def _boot(node: PxeNode, seg: Segment, workdir: Path, boot_port: int, accel: Accel, tag: str) -> Guest:
    """pxe.boot() with two more NICs on the segment."""
    return boot(node, workdir, boot_port, accel, tag=tag, segment=seg, segment_nics=2)


def _wait(what: str, check: Callable[[], bool], timeout: float, guest: Guest | None) -> float:
    """Seconds until check() holds; `guest`: the node that must keep running meanwhile (None: none)."""
    start = time.monotonic()
    while not check():
        serial = guest.serial()[-5000:] if guest is not None else ""
        assert guest is None or guest.proc.poll() is None, f"qemu exited while waiting for {what}:\n{serial}"
        assert time.monotonic() - start < timeout, f"{what} not within {timeout}s:\n{serial}"
        time.sleep(0.5)
    return time.monotonic() - start


def _cli(served: LabAppliance, *argv: str) -> str:
    done = served.drover(*argv, principal=ADMIN)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _status(served: LabAppliance, fqdn: str) -> dict[str, object]:
    out: dict[str, object] = json.loads(_cli(served, "host", "network", fqdn, "--json"))
    return out


@pytest.mark.boot
@pytest.mark.timeout(TIMEOUT, func_only=True)
def test_pxe_node_applies_bond_vlan_bridge_rolls_back_and_gets_it_back_after_reboot(
    node_image: NodeImage, kdc: LabKdc, tmp_path: Path
) -> None:
    node = PxeNode.numbered(61, "example.test", free_address())
    hosts = LabHosts(tmp_path / "nss_hosts")
    hosts.add(node.fqdn, node.address)
    seg = Segment()
    try:
        served = start_appliance(
            kdc,
            tmp_path / "appliance",
            extra_env={
                **hosts.env,
                "DROVER_NODES_HEARTBEAT_SECONDS": "1",
                "DROVER_NODES_EXTRA_NAMES": f"127.0.0.1,{HOST_FROM_GUEST}",
                "DROVER_NODES_NETWORK_ROLLBACK_SECONDS": str(ROLLBACK_SECONDS),
                "DROVER_TASKENGINE_ENABLED": "false",
            },
        )
    except BaseException:
        seg.close()
        raise
    db = make_engine(served.database_url)
    accel = detect()
    guests: list[Guest] = []
    try:
        used = served.drover("boot", "use", str(node_image.dir))
        assert used.returncode == 0, used.stdout + used.stderr
        vouch_for(served, node, ADMIN)
        guest = _boot(node, seg, tmp_path, served.boot_port, accel, "")
        guests.append(guest)

        def reported() -> bool:
            with session_scope(db) as s:
                h = s.scalars(select(Host).where(Host.uuid == node.uuid)).first()
                return h is not None and h.network_state == "applied" and len(h.nics) == 3

        booted = _wait("the node enrolled and reporting its (empty) network set-up", reported, 900, guest)
        with session_scope(db) as s:
            h = s.scalars(select(Host).where(Host.uuid == node.uuid)).one()
            boot_nic = next(n.name for n in h.nics if n.is_boot)
            a, b = sorted(n.name for n in h.nics if not n.is_boot)
        print(f"booted and reporting in {booted:.0f}s; NICs: boot {boot_nic}, segment {a} {b}")

        # 1. A bond of the two segment NICs carrying an untagged VM bridge and a storage VLAN with an address.
        _cli(served, "network", "create", "vmnet", "--mtu", "1400")
        _cli(served, "network", "create", "store", "--vlan", "43", "--role", "storage", "--subnet", "10.43.0.0/24")
        t0 = time.monotonic()
        _cli(served, "host", "network", node.fqdn, "--set", "vmnet", "--nic", a, "--nic", b, "--bond-mode",
             "active-backup")  # fmt: skip
        _cli(served, "host", "network", node.fqdn, "--set", "store", "--nic", a, "--nic", b, "--bond-mode",
             "active-backup", "--address", "10.43.0.11")  # fmt: skip
        applied = _wait("in sync", lambda: bool(_status(served, node.fqdn)["in_sync"]), 180, guest)
        print(f"bond + VLAN + 2 bridges in sync {applied:.1f}s after the assignment ({time.monotonic() - t0:.1f}s)")
        text = _cli(served, "host", "network", node.fqdn)
        assert "in sync" in text and "not in sync" not in text, text
        with session_scope(db) as s:
            h = s.scalars(select(Host).where(Host.uuid == node.uuid)).one()
            links = h.network_observed["links"]
        bond = next(n for n, link in links.items() if link["kind"] == "bond")
        assert links[a]["master"] == bond and links[b]["master"] == bond, links
        assert links["br-vmnet"]["kind"] == "bridge" and links["br-vmnet"]["mtu"] == 1400, links
        assert "10.43.0.11/24" in links["br-store"]["addresses"], links
        vlan = next(n for n, link in links.items() if link["kind"] == "vlan")
        assert links[vlan]["vlan"] == 43 and links[vlan]["master"] == "br-store"
        # Seen from the segment: the node answers for 10.43.0.11 on VLAN 43, not on VLAN 44.
        assert seg.arp("10.43.0.11", 43, timeout=10, sender=PEER), "no ARP answer on VLAN 43"
        assert not seg.arp("10.43.0.11", 44, sender=PEER), "answered on VLAN 44"

        # 2. An admin's change is followed.
        _cli(served, "host", "network", node.fqdn, "--set", "store", "--nic", a, "--nic", b, "--address",
             "10.43.0.12")  # fmt: skip
        changed = _wait("the new address in sync", lambda: bool(_status(served, node.fqdn)["in_sync"]), 180, guest)
        assert seg.arp("10.43.0.12", 43, timeout=10, sender=PEER) and not seg.arp("10.43.0.11", 43, sender=PEER)
        print(f"address change followed in {changed:.1f}s")
        good = _status(served, node.fqdn)["generation"]

        # 3. A change that cuts the management link (a VLAN on the NIC the node reaches the appliance over,
        #    which takes the NIC's DHCP address away) is rolled back after the timeout, and said so.
        _cli(served, "network", "create", "cut", "--vlan", "99")
        t0 = time.monotonic()
        _cli(served, "host", "network", node.fqdn, "--set", "cut", "--nic", boot_nic)

        def rolled_back() -> bool:
            with session_scope(db) as s:
                h = s.scalars(select(Host).where(Host.uuid == node.uuid)).one()
                return h.network_state == "rolled_back"

        back = _wait("the rollback reported", rolled_back, ROLLBACK_SECONDS + 150, guest)
        status = _status(served, node.fqdn)
        assert not status["in_sync"] and "rolled_back" in str(status["differences"]), status
        text = _cli(served, "host", "network", node.fqdn)
        assert "not in sync" in text and "the previous set-up is back" in text, text
        print(f"management-cutting change rolled back and reported {back:.1f}s after it was made")
        # The node is still managed and still carries the good set-up: the admin removes the bad assignment.
        _cli(served, "host", "network", node.fqdn, "--remove", "cut")
        _wait("in sync again", lambda: bool(_status(served, node.fqdn)["in_sync"]), 120, guest)
        assert _status(served, node.fqdn)["generation"] == good
        assert seg.arp("10.43.0.12", 43, timeout=30, sender=PEER), "the storage VLAN did not survive the rollback"

        # 4. Reboot: the node forgets everything and gets its set-up back from the appliance.
        guest.kill()
        _wait("host unavailable", lambda: _state(db, node.uuid) is HostState.UNAVAILABLE, 60, None)
        off = utcnow()
        again = _boot(node, seg, tmp_path, served.boot_port, accel, "-reboot")
        guests.append(again)

        def back_in_sync() -> bool:
            with session_scope(db) as s:
                h = s.scalars(select(Host).where(Host.uuid == node.uuid)).one()
                # A report of this boot: the one from before the power cut stays in the row until identify.
                if h.network_state != "applied" or h.network_reported_at is None or h.network_reported_at < off:
                    return False
            return bool(_status(served, node.fqdn)["in_sync"])

        rebooted = _wait("the set-up back after the reboot", back_in_sync, 900, again)
        if not seg.arp("10.43.0.12", 43, timeout=30, sender=PEER):
            with session_scope(db) as s:
                observed = s.scalars(select(Host).where(Host.uuid == node.uuid)).one().network_observed
            raise AssertionError(
                f"no ARP answer on VLAN 43 after the reboot; the node reports {observed}\n"
                f"segment: {seg.ip('-d', 'link', 'show')}\n{again.serial()[-6000:]}"
            )
        print(f"rebooted: set-up back and in sync {rebooted:.0f}s after power-on")
    finally:
        for g in guests:
            g.kill()
        seg.close()
        db.dispose()
        served.stop()


def _state(db: Engine, uuid: str) -> HostState | None:
    with session_scope(db) as s:
        return s.scalars(select(Host.state).where(Host.uuid == uuid)).first()
