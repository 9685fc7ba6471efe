"""Logical networks on the lab rack's real `drover serve`: the CLI and API create, show, attach and assign,
refuse bad input with the reason (nothing changed), check permissions, and say what a host should carry.

The hosts assigned here are rows of this module's own (pending, never placed on): the rack's shared hosts
keep their NICs and networks as they were.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import func, select

from appliance import networks
from appliance.client import Client
from appliance.db.engine import session_scope
from appliance.db.models import Cluster, Host, HostNetwork, HostNic, Network
from appliance.errors import Conflict, Forbidden, NotFound, UsageError
from appliance.hosts import default_pool
from nodeagent import wire
from tests.lab.kdc import APPLIANCE_HOST, LabKdc
from tests.lab.taskrack import TaskRack

pytestmark = pytest.mark.lab

AsUser = Callable[[str], Client]
_MACS = itertools.count(1)


@pytest.fixture
def client_as(task_rack: TaskRack, kdc: LabKdc, monkeypatch: pytest.MonkeyPatch) -> Iterator[AsUser]:
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
    clients: list[Client] = []

    def make(name: str) -> Client:
        client = Client(task_rack.served.local_url, service_host=APPLIANCE_HOST, ccache=kdc.ticket(name)["KRB5CCNAME"])
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


def _host(rack: TaskRack, nics: tuple[str, ...] = ("eth0", "eth1", "eth2", "eth3")) -> str:
    """A pending host row of this module's with these NICs; its name."""
    name = f"{rack.unique('nethost')}.example.test"
    with session_scope(rack.db) as s:
        host = Host(uuid=str(uuid.uuid4()), hostname=name, hardware_pool_id=default_pool(s).id)
        for nic in nics:
            n = next(_MACS)
            host.nics.append(HostNic(name=nic, mac=f"52:54:00:ee:{uuid.uuid4().hex[:2]}:{n % 256:02x}"))
        s.add(host)
    return name


def _state(rack: TaskRack) -> tuple[int, int, int]:
    with session_scope(rack.db) as s:
        return (
            int(s.scalar(select(func.count()).select_from(Network)) or 0),
            int(s.scalar(select(func.count()).select_from(HostNetwork)) or 0),
            len(s.scalars(select(Network.vlan)).all()),
        )


def _ok(rack: TaskRack, *argv: str) -> str:
    done = rack.drover(*argv)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("argv", "code", "reason"),
    [
        (("--vlan", "5000"), 2, "is not a VLAN id"),
        (("--vlan", "0"), 2, "is not a VLAN id"),
        (("--mtu", "20"), 2, "is not an MTU"),
        (("--role", "storage"), 2, "needs a subnet"),
        (("--subnet", "10.9.0.0/24", "--gateway", "10.8.0.1"), 2, "not inside the subnet"),
        (("--subnet", "10.9.0.1/24"), 2, "not a network in CIDR form"),
        (("--bridge", "a-bridge-name-too-long"), 2, "is not an interface name"),
    ],
)
def test_bad_network_is_refused_with_the_reason(
    task_rack: TaskRack, argv: tuple[str, ...], code: int, reason: str
) -> None:
    before = _state(task_rack)
    done = task_rack.drover("network", "create", task_rack.unique("bad"), *argv)
    assert done.returncode == code, done.stdout + done.stderr
    assert reason in done.stderr
    assert _state(task_rack) == before


def test_networks_assignments_and_refusals(task_rack: TaskRack) -> None:
    rack = task_rack
    vmnet, tagged, store = rack.unique("vmnet"), rack.unique("tag"), rack.unique("store")
    assert "untagged" in _ok(rack, "network", "create", vmnet, "--mtu", "1400")
    assert "VLAN 42" in _ok(rack, "network", "create", tagged, "--vlan", "42")
    _ok(rack, "network", "create", store, "--vlan", "43", "--role", "storage", "--subnet", "10.43.0.0/24",
        "--gateway", "10.43.0.1")  # fmt: skip
    dup = rack.drover("network", "create", vmnet)
    assert dup.returncode == 5 and "exists already" in dup.stderr
    listed = json.loads(_ok(rack, "network", "list", "--json"))
    mine = {n["name"]: n for n in listed if n["name"] in (vmnet, tagged, store)}
    assert mine[vmnet]["mtu"] == 1400 and mine[vmnet]["vlan"] is None and mine[vmnet]["bridge"].startswith("br-")
    assert mine[store]["role"] == "storage" and mine[store]["boot_protocol"] == "static"

    host = _host(rack)
    out = _ok(rack, "host", "network", host, "--set", vmnet, "--nic", "eth1")
    assert vmnet in out and "not in sync" in out and "has not reported" in out
    _ok(rack, "host", "network", host, "--set", tagged, "--nic", "eth1")  # a VLAN beside the untagged one
    before = _state(rack)
    for argv, code, reason in [
        (("--set", tagged, "--nic", "eth9"), 2, "has no NIC 'eth9'"),
        (("--set", rack.unique("nonet"), "--nic", "eth1"), 4, "no network"),
        (("--set", store, "--nic", "eth1", "--nic", "eth2", "--address", "10.43.0.7"), 5, "in one bond or none"),
        (("--set", store, "--nic", "eth2"), 2, "needs a static address"),
        (("--set", store, "--nic", "eth2", "--address", "10.44.0.5/24"), 2, "not in network"),
        (("--set", store, "--nic", "eth2", "--address", "10.43.0.1"), 2, "is the network's gateway"),
        (("--set", vmnet, "--nic", "eth2", "--address", "10.43.0.9"), 2, "not static"),
        (("--set", tagged, "--nic", "eth2", "--bond-mode", "802.3ad"), 2, "a bond needs two NICs"),
        (("--nic", "eth2"), 2, "go with --set"),
    ]:
        done = rack.drover("host", "network", host, *argv)
        assert done.returncode == code, (argv, done.stdout, done.stderr)
        assert reason in done.stderr, (argv, done.stderr)
        assert _state(rack) == before, argv
    # Two untagged networks on one NIC: refused, whichever comes second.
    other = rack.unique("vm2")
    _ok(rack, "network", "create", other)
    before = _state(rack)
    done = rack.drover("host", "network", host, "--set", other, "--nic", "eth1")
    assert done.returncode == 5 and "untagged already" in done.stderr, done.stderr
    assert _state(rack) == before

    # A bond carrying the storage VLAN, with the host's static address on it.
    out = _ok(rack, "host", "network", host, "--set", store, "--nic", "eth2", "--nic", "eth3", "--bond-mode",
              "active-backup", "--address", "10.43.0.5")  # fmt: skip
    shown = json.loads(_ok(rack, "host", "network", host, "--json"))
    nets = {n["network"]: n for n in shown["networks"]}
    assert nets[store]["nics"] == ["eth2", "eth3"] and nets[store]["bond_mode"] == "active-backup"
    assert nets[store]["address"] == "10.43.0.5/24"
    assert not shown["in_sync"]
    # The same address for another host is taken.
    second = _host(rack)
    done = rack.drover("host", "network", second, "--set", store, "--nic", "eth1", "--address", "10.43.0.5")
    assert done.returncode == 5 and "10.43.0.5 is" in done.stderr

    # A rule: the NIC named eth0 on every host carries `other`; the host gets it without an assignment.
    _ok(rack, "network", "rule", other, "--nic-name", "eth0")
    shown = json.loads(_ok(rack, "host", "network", second, "--json"))
    assert [(n["network"], n["nics"], n["source"]) for n in shown["networks"]] == [(other, ["eth0"], "rule")]

    # What the node will be asked for, and the comparison with what it reports.
    with session_scope(rack.db) as s:
        h = s.scalars(select(Host).where(Host.hostname == host)).one()
        setup = networks.desired(s, h)
        ports = {p.name: p for p in setup.networks}
        assert ports[store].bond == networks.bond_name(("eth2", "eth3")) and ports[store].vlan == 43
        assert ports[other].nics == ("eth0",)
        bridge = ports[store].bridge
        links = [wire.NetworkLink(bridge, "bridge", addresses=("10.43.0.5/24",), up=True)]
        networks.record_report(h, wire.NetworkReport(setup.generation, wire.NetworkApply.APPLIED, "", tuple(links)))
        diff = networks.differences(setup, h)
        assert f"{store}: no bond {ports[store].bond}" in diff
        assert any(d.startswith(f"{vmnet}: no bridge") for d in diff)
        h.network_state = None  # as it was: never reported

    # Attach to a cluster: hosts outside it no longer get the network.
    cluster = rack.unique("cl")
    with session_scope(rack.db) as s:
        s.add(Cluster(name=cluster, hardware_pool_id=default_pool(s).id))
    _ok(rack, "network", "attach", other, "--cluster", cluster)
    shown = json.loads(_ok(rack, "host", "network", second, "--json"))
    assert shown["networks"] == [] and shown["in_sync"]
    done = rack.drover("host", "network", second, "--set", other, "--nic", "eth1")
    assert done.returncode == 5 and "attached to cluster" in done.stderr
    _ok(rack, "network", "attach", other, "--cluster", cluster, "--detach")

    # Deleting: a network goes; its assignments with it.
    _ok(rack, "host", "network", host, "--remove", tagged)
    _ok(rack, "network", "delete", tagged)
    assert rack.drover("network", "show", tagged).returncode == 4
    for name in (vmnet, store, other):
        _ok(rack, "network", "delete", name)


def test_network_permissions(task_rack: TaskRack, client_as: AsUser) -> None:
    rack = task_rack
    for argv in (("netwatch", "--role", "monitor"), ("netop", "--role", "user", "--pool", "default")):
        added = rack.drover("user", "add", *argv)
        assert added.returncode == 0, added.stderr
    boss = client_as("boss")
    name = rack.unique("permnet")
    created = boss.post("/api/v1/networks", {"name": name, "vlan": 7})
    assert created["vlan"] == 7
    host = _host(rack)
    watcher, operator, stranger = client_as("netwatch"), client_as("netop"), client_as("nobody-at-all")
    assert any(n["name"] == name for n in watcher.get("/api/v1/networks")["networks"])
    with pytest.raises(Forbidden, match="may not create networks"):
        watcher.post("/api/v1/networks", {"name": rack.unique("nope")})
    with pytest.raises(Forbidden, match="may not assign networks on"):
        operator.request("PUT", f"/api/v1/hosts/{host}/networks/{name}", body={"nics": ["eth1"]})
    with pytest.raises(Forbidden):
        stranger.get("/api/v1/networks")
    with pytest.raises(UsageError, match="unknown field"):
        boss.request("PUT", f"/api/v1/hosts/{host}/networks/{name}", body={"nics": ["eth1"], "colour": "red"})
    with pytest.raises(NotFound):
        boss.request("PUT", f"/api/v1/hosts/no-such-host/networks/{name}", body={"nics": ["eth1"]})
    out = boss.request("PUT", f"/api/v1/hosts/{host}/networks/{name}", body={"nics": ["eth1"]})
    assert out["networks"][0]["network"] == name
    with pytest.raises(Conflict, match="on VLAN 7 already"):
        other = boss.post("/api/v1/networks", {"name": rack.unique("seven"), "vlan": 7})
        try:
            boss.request("PUT", f"/api/v1/hosts/{host}/networks/{other['name']}", body={"nics": ["eth1"]})
        finally:
            boss.request("DELETE", f"/api/v1/networks/{other['name']}")
    boss.request("DELETE", f"/api/v1/networks/{name}")
