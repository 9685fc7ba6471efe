"""What wakes the host browser before its own timers: a real `drover serve` whose browser scans the database
and retries lost hosts only once a minute, so anything faster than that was the heartbeat's doing.

Nodes are lab libvirtds over Kerberos, enrolled over pinned HTTPS as in tests/test_hostbrowser_lab.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select

from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostState, VmState
from nodeagent import wire
from tests.lab.appliance import LabAppliance, start_appliance
from tests.lab.guest import GuestImage, domain_xml
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts, LabNode, NodeFactory, client_env, virsh
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
    lab = start_appliance(kdc, tmp_path_factory.mktemp("wake"), extra_env=env)
    assert lab.drover("user", "add", "boss", "--role", "admin").returncode == 0
    yield lab
    lab.stop()


@pytest.fixture(scope="module")
def db(served: LabAppliance) -> Iterator[Engine]:
    engine = make_engine(served.database_url)
    yield engine
    engine.dispose()


class EnrolledNode:
    """A node enrolled with a token: its lab libvirtd, and the agent token its heartbeats carry."""

    def __init__(self, served: LabAppliance, db: Engine, libvirt_nodes: NodeFactory, fqdn: str) -> None:
        self.served = served
        self.uuid = str(uuid.uuid4())
        minted = served.drover("host", "token", "--uuid", self.uuid, principal="boss")
        assert minted.returncode == 0, minted.stderr
        sent = wire.encode(wire.IdentifyRequest(minted.stdout.splitlines()[0], facts(self.uuid, fqdn)))
        self.http = httpx.Client(base_url=served.node_url, verify=pinned_ca(served), trust_env=False)
        r = self.http.post("/node/v1/identify", content=sent)
        assert r.status_code == 200, r.text
        self.agent_token = wire.decode(wire.IdentifyResponse, r.content).agent_token
        self.node: LabNode = libvirt_nodes.start(fqdn)
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
