"""What wakes the host browser before its own timers: a real `drover serve` whose browser scans the database
and retries lost hosts only once a minute, so anything faster than that was a heartbeat's or an mDNS
announcement's doing.

Nodes are lab libvirtds over Kerberos, enrolled over pinned HTTPS as in tests/test_hostbrowser_lab.py. The
announcements are the node agent's own (nodeagent/announce.py under the node's python3 and its distro
zeroconf), multicast on 127.0.0.1, where the appliance browses because its node service listens there.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select

from appliance.db.engine import session_scope
from appliance.db.models import Host, HostState, VmState
from nodeagent import wire
from tests.lab.appliance import ROOT, LabAppliance, admin_appliance
from tests.lab.guest import GuestImage, domain_xml
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts, LabNode, NodeFactory, client_env, virsh
from tests.lab.nodeagent_peer import SYSTEM_PYTHON
from tests.test_enrolment import facts
from tests.test_hostbrowser_lab import host_state, pinned_ca, vm_state, wait_for

pytestmark = pytest.mark.lab

SLOW = 60  # [hostbrowser] scan_seconds and reconnect_seconds of this module's appliance


@pytest.fixture(scope="module")
def served(kdc: LabKdc, lab_hosts: LabHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabAppliance]:
    env = {
        **lab_hosts.env,
        "DROVER_HOSTBROWSER_SCAN_SECONDS": str(SLOW),
        "DROVER_HOSTBROWSER_RECONNECT_SECONDS": str(SLOW),
    }
    with admin_appliance(kdc, tmp_path_factory.mktemp("wake"), env) as lab:
        yield lab


class EnrolledNode:
    """A node enrolled with a token: its lab libvirtd, and the agent token its heartbeats carry."""

    def __init__(
        self, served: LabAppliance, db: Engine, libvirt_nodes: NodeFactory, fqdn: str, port_in_db: bool = True
    ) -> None:
        self.served = served
        self.fqdn = fqdn
        self.uuid = str(uuid.uuid4())
        minted = served.drover("host", "token", "--uuid", self.uuid, principal="boss")
        assert minted.returncode == 0, minted.stderr
        sent = wire.encode(wire.IdentifyRequest(minted.stdout.splitlines()[0], facts(self.uuid, fqdn)))
        self.http = httpx.Client(base_url=served.node_url, verify=pinned_ca(served), trust_env=False)
        r = self.http.post("/node/v1/identify", content=sent)
        assert r.status_code == 200, r.text
        self.agent_token = wire.decode(wire.IdentifyResponse, r.content).agent_token
        self.node: LabNode = libvirt_nodes.start(fqdn)
        if not port_in_db:
            return  # the appliance tries [nodes] libvirt_port, where nothing listens
        with session_scope(db) as s:
            host = s.scalars(select(Host).where(Host.uuid == self.uuid)).one()
            host.libvirt_port = self.node.port  # as the lab places it; a real node listens on 16509

    def beat(self) -> None:
        sent = wire.encode(wire.Heartbeat(self.uuid, libvirt_ready=True, agent_token=self.agent_token))
        r = self.http.post("/node/v1/heartbeat", content=sent)
        assert r.status_code == 200, r.text

    def close(self) -> None:
        self.http.close()


def test_a_heartbeat_connects_a_new_host_and_reconnects_a_lost_one_now(
    served: LabAppliance,
    db: Engine,
    kdc: LabKdc,
    lab_hosts: LabHosts,
    libvirt_nodes: NodeFactory,
    guest_image: GuestImage,
    tmp_path: Path,
) -> None:
    enrolled = EnrolledNode(served, db, libvirt_nodes, "beat1.example.test")
    node = enrolled.node
    env = client_env(kdc, lab_hosts, "drover")
    name = f"beat-{uuid.uuid4().hex[:8]}"
    xml = tmp_path / "domain.xml"
    xml.write_text(domain_xml(name, guest_image, tmp_path / "serial.log"))
    try:
        # Enrolled after the browser's first scan: the next one is a minute away, the heartbeat is now.
        t0 = time.monotonic()
        enrolled.beat()
        wait_for("host available", lambda: host_state(db, enrolled.uuid) is HostState.AVAILABLE, 5)
        first = time.monotonic() - t0

        node.stop_daemon()
        wait_for("host unavailable", lambda: host_state(db, enrolled.uuid) is HostState.UNAVAILABLE, 10)
        node.restart()
        # Changed while the appliance was away: the re-sync must find it.
        assert virsh(env, node.uri("qemu"), "define", str(xml)).returncode == 0
        time.sleep(2)  # the browser's own retry is a minute away: without a heartbeat nothing happens
        assert host_state(db, enrolled.uuid) is HostState.UNAVAILABLE
        t0 = time.monotonic()
        enrolled.beat()
        wait_for("host available again", lambda: host_state(db, enrolled.uuid) is HostState.AVAILABLE, 5)
        back = time.monotonic() - t0
        wait_for("VM defined meanwhile re-synced", lambda: vm_state(db, name) is VmState.STOPPED, 2)
        assert back < SLOW / 10
        print(f"heartbeat -> available: new host {first:.2f}s, lost host back {back:.2f}s (retry every {SLOW}s)")
    finally:
        virsh(env, node.uri("qemu"), "undefine", name)
        enrolled.close()


# The node agent's announcer, driven line by line: "announce HOST FQDN UUID ADDRESS PORT", "withdraw HOST".
_ANNOUNCER = """
import sys
from nodeagent.announce import Announcer
announcers = {}
for line in sys.stdin:
    cmd, host, *rest = line.split()
    a = announcers.setdefault(host, Announcer(interfaces=["127.0.0.1"]))
    if cmd == "announce":
        fqdn, uuid, address, port = rest
        a.announce(host, fqdn, uuid, [address], int(port))
    else:
        a.withdraw()
    print("ok", flush=True)
for a in announcers.values():
    a.withdraw()
"""


class Announcer:
    def __init__(self) -> None:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", _ANNOUNCER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def send(self, *words: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok", f"announcer failed: {words}"

    def announce(self, fqdn: str, host_uuid: str, address: str, port: int) -> None:
        self.send("announce", fqdn.split(".", maxsplit=1)[0], fqdn, host_uuid, address, str(port))

    def reannounce(self, fqdn: str, host_uuid: str, address: str, port: int) -> None:
        """What the agent does after each libvirtd restart: withdraw, announce again."""
        self.send("withdraw", fqdn.split(".", maxsplit=1)[0])
        self.announce(fqdn, host_uuid, address, port)

    def close(self) -> None:
        try:
            self.proc.communicate(timeout=10)  # stdin closed: it withdraws everything and exits
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def announcer() -> Iterator[Announcer]:
    a = Announcer()
    yield a
    a.close()


def libvirt_port(db: Engine, host_uuid: str) -> int | None:
    with session_scope(db) as s:
        return s.scalars(select(Host.libvirt_port).where(Host.uuid == host_uuid)).one()


def test_an_announcement_connects_a_known_host_now_on_its_port_and_an_unknown_one_changes_nothing(
    served: LabAppliance, db: Engine, libvirt_nodes: NodeFactory, announcer: Announcer
) -> None:
    enrolled = EnrolledNode(served, db, libvirt_nodes, "mdns1.example.test", port_in_db=False)
    node = enrolled.node
    try:
        assert libvirt_port(db, enrolled.uuid) is None and host_state(db, enrolled.uuid) is HostState.PENDING
        t0 = time.monotonic()
        announcer.announce(enrolled.fqdn, enrolled.uuid, node.address, node.port)
        wait_for("announced host available", lambda: host_state(db, enrolled.uuid) is HostState.AVAILABLE, 10)
        first = time.monotonic() - t0
        assert libvirt_port(db, enrolled.uuid) == node.port

        # libvirtd restarted: the agent announces again, and the browser need not wait its minute.
        node.stop_daemon()
        wait_for("host unavailable", lambda: host_state(db, enrolled.uuid) is HostState.UNAVAILABLE, 10)
        node.restart()
        t0 = time.monotonic()
        announcer.reannounce(enrolled.fqdn, enrolled.uuid, node.address, node.port)
        wait_for("host back", lambda: host_state(db, enrolled.uuid) is HostState.AVAILABLE, 10)
        back = time.monotonic() - t0
        assert back < SLOW / 4

        # A name no approved host has: logged once, however often it is announced; no row appears.
        stranger = f"stranger-{uuid.uuid4().hex[:6]}.example.test"
        line = f"ignoring announcements of {stranger}"
        announcer.announce(stranger, str(uuid.uuid4()), "127.0.0.1", 16509)
        wait_for("stranger logged", lambda: line in served.log_text(), 10)
        announcer.reannounce(stranger, str(uuid.uuid4()), "127.0.0.1", 16510)
        # Handled in order: once the known host's next announcement is handled, so was the stranger's.
        handled = served.log_text().count(f"{enrolled.fqdn} announced its libvirtd")
        announcer.reannounce(enrolled.fqdn, enrolled.uuid, node.address, node.port)
        wait_for(
            "known host's announcement handled",
            lambda: served.log_text().count(f"{enrolled.fqdn} announced its libvirtd") > handled,
            10,
        )
        assert served.log_text().count(line) == 1
        with session_scope(db) as s:
            assert s.scalars(select(Host).where(Host.hostname == stranger)).all() == []
        print(f"announcement -> available: new host {first:.2f}s, restarted libvirtd {back:.2f}s")
    finally:
        enrolled.close()
