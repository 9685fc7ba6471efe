"""The task engine's edges on the lab rack: malformed requests, permissions per hardware pool, quotas at
create and start, a libvirt error and a host that goes away mid-task — each a readable failure that leaves
nothing half-done, with the queue flowing on.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from sqlalchemy import delete, func, select

from appliance.client import Client
from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import (
    HardwarePool,
    Host,
    HostState,
    HypervisorType,
    Quota,
    StoragePool,
    StorageState,
    StorageType,
    StorageVolume,
    Task,
    TaskState,
    User,
    Vm,
    VmState,
)
from appliance.errors import Conflict, Forbidden, UsageError
from appliance.hosts import default_pool
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import NodeFactory
from tests.lab.taskrack import AsUser, TaskRack, wait_until

pytestmark = pytest.mark.lab



def _counts(rack: TaskRack) -> tuple[int, int]:
    with session_scope(rack.db) as s:
        return (int(s.scalar(select(func.count()).select_from(Vm)) or 0),
                int(s.scalar(select(func.count()).select_from(Task)) or 0))  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'{"name": "x", "colour": "red"}', b'{"name": "bad name!"}',
     b'{"name": "ok1", "vcpus": 0}', b'{"name": "ok2", "memory_mib": "lots"}',
     b'{"name": "ok3", "disks": [{"volume": 99999}]}',
     b'{"name": "ok4", "placement_policy": "pinned"}', b'{"name": "ok5", "host": "no-such-host"}'],
)  # fmt: skip
def test_malformed_create_is_4xx_and_changes_nothing(task_rack: TaskRack, client_as: AsUser, body: bytes) -> None:
    boss = client_as("boss")
    before = _counts(task_rack)
    r = boss._http.post("/api/v1/vms", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]
    assert _counts(task_rack) == before


def test_malformed_actions_and_task_queries(task_rack: TaskRack, client_as: AsUser) -> None:
    boss = client_as("boss")
    assert boss._http.post("/api/v1/vms/nope/start").status_code == 404
    assert boss._http.post("/api/v1/vms/nope/explode").status_code == 404
    assert boss._http.get("/api/v1/tasks", params={"state": "sleeping"}).status_code == 400
    assert boss._http.get("/api/v1/tasks/abc").status_code == 400
    assert boss._http.get("/api/v1/tasks/999999").status_code == 404
    assert boss._http.post("/api/v1/cluster/balance", json={"dry_run": "yes"}).status_code == 400


def test_permissions_follow_the_hardware_pool(task_rack: TaskRack, kdc: LabKdc, client_as: AsUser) -> None:
    rack = task_rack
    for argv in (("watcher", "--role", "monitor"), ("operator", "--role", "user", "--pool", "default")):
        added = rack.drover("user", "add", *argv)
        assert added.returncode == 0, added.stderr
    boss: Client = client_as("boss")
    name = rack.unique("perm")
    created = boss.post("/api/v1/vms", {"name": name, "memory_mib": 64})
    rack.wait_task(created["task"]["id"])
    watcher: Client = client_as("watcher")
    assert any(v["name"] == name for v in watcher.get("/api/v1/vms")["vms"])
    with pytest.raises(Forbidden, match="may not start VM"):
        watcher.post(f"/api/v1/vms/{name}/start")
    operator: Client = client_as("operator")
    with pytest.raises(Forbidden, match="may not create VMs in hardware pool default"):
        watcher.post("/api/v1/vms", {"name": rack.unique("nope"), "memory_mib": 64})
    with pytest.raises(Forbidden, match="may not migrate"):
        operator.post(f"/api/v1/vms/{name}/migrate")
    # vm_control is enough to suspend (refused only for its state: the privilege check passed).
    with pytest.raises(Conflict, match="cannot suspend"):
        operator.post(f"/api/v1/vms/{name}/suspend")
    nobody: Client = client_as("stranger")
    assert nobody.get("/api/v1/vms")["vms"] == []
    rack.wait_task(boss.post(f"/api/v1/vms/{name}/delete")["id"])


def test_a_plain_user_creates_vms_within_quota(task_rack: TaskRack, kdc: LabKdc, client_as: AsUser) -> None:
    """The user role in a hardware pool carries vm_create there: a plain user makes VMs within their quota,
    is refused past it (nothing written), deletes their own VM, and may not attach volumes or delete others'."""
    rack = task_rack
    added = rack.drover("user", "add", "maker", "--role", "user", "--pool", "default")
    assert added.returncode == 0, added.stderr
    quota = rack.drover("user", "quota", "maker", "--pool", "default", "--vms", "1")
    assert quota.returncode == 0, quota.stderr
    principal = f"maker@{kdc.realm.name}"
    maker: Client = client_as("maker")
    boss: Client = client_as("boss")
    theirs = rack.unique("boss")
    rack.wait_task(boss.post("/api/v1/vms", {"name": theirs, "memory_mib": 64})["task"]["id"])
    mine = rack.unique("mine")
    volume_id, pool_id = _volume_row(rack)
    try:
        created = maker.post("/api/v1/vms", {"name": mine, "memory_mib": 64})
        assert created["vm"]["owner"] == principal
        assert rack.wait_task(created["task"]["id"]).state is TaskState.FINISHED
        before = _counts(rack)
        with pytest.raises(Conflict, match=r"in hardware pool default: max_vms 1: this would make 2, 1 over"):
            maker.post("/api/v1/vms", {"name": rack.unique("more"), "memory_mib": 64})
        with pytest.raises(Forbidden, match=r"may not attach volume x\.img to a VM"):
            maker.post("/api/v1/vms", {"name": rack.unique("vol"), "memory_mib": 64,
                                       "disks": [{"volume": volume_id}]})  # fmt: skip
        with pytest.raises(Forbidden, match=f"may not delete VM {theirs}"):
            maker.post(f"/api/v1/vms/{theirs}/delete")
        assert _counts(rack) == before
        # Through the CLI as well: one line and the quota's exit code.
        over = rack.drover("vm", "create", rack.unique("cli"), "--memory", "64", principal="maker")
        assert over.returncode == 5 and "max_vms 1: this would make 2, 1 over" in over.stderr, over.stderr
        assert rack.wait_task(maker.post(f"/api/v1/vms/{mine}/delete")["id"]).state is TaskState.FINISHED
        again = rack.drover("vm", "create", mine, "--memory", "64", "--wait", principal="maker")
        assert again.returncode == 0 and "vm_create: finished" in again.stdout, again.stdout + again.stderr
    finally:
        for name in (mine, theirs):
            rack.drover("vm", "delete", name, "--wait")
        rack.drover("user", "remove", "maker")
        with session_scope(rack.db) as s:
            s.execute(delete(StorageVolume).where(StorageVolume.id == volume_id))
            s.execute(delete(StoragePool).where(StoragePool.id == pool_id))


def _volume_row(rack: TaskRack) -> tuple[int, int]:
    """A volume to try attaching (rows only, in a pending pool no task touches): its id and its pool's."""
    with session_scope(rack.db) as s:
        pool = StoragePool(name=rack.unique("attach"), type=StorageType.DIR, path="/nonexistent",
                           hardware_pool_id=default_pool(s).id, state=StorageState.PENDING)  # fmt: skip
        s.add(pool)
        s.flush()
        vol = StorageVolume(storage_pool_id=pool.id, name="x.img", capacity_bytes=1 << 20, state=StorageState.PENDING)
        s.add(vol)
        s.flush()
        return vol.id, pool.id


def test_quotas_refuse_at_create_and_start_saying_by_how_much(
    task_rack: TaskRack, kdc: LabKdc, client_as: AsUser
) -> None:
    rack = task_rack
    added = rack.drover("user", "add", "quser", "--role", "admin", "--pool", "default")
    assert added.returncode == 0, added.stderr
    again = rack.drover("user", "add", "quser", "--role", "admin", "--pool", "default")
    assert again.returncode == 5 and "already has the role admin in hardware pool default" in again.stderr
    quota = rack.drover("user", "quota", "quser", "--pool", "default", "--vms", "1", "--vcpus", "1")
    assert quota.returncode == 0 and "vms 1, vcpus 1, memory_mib unlimited" in quota.stdout, quota.stderr
    boss: Client = client_as("boss")
    principal = f"quser@{kdc.realm.name}"
    shown = boss.request("PUT", f"/api/v1/users/{principal}/quota",
                         body={"pool": "default", "max_vms": 1, "max_vcpus": 1, "max_memory_mib": 1024})  # fmt: skip
    assert shown == {"principal": principal, "pool": "default", "max_vms": 1, "max_vcpus": 1,
                     "max_memory_mib": 1024, "max_disk_bytes": None}  # fmt: skip
    with pytest.raises(UsageError, match="max_vms: must be a whole number"):
        boss.request("PUT", f"/api/v1/users/{principal}/quota", body={"max_vms": -1})
    with session_scope(rack.db) as s:
        user_id = s.scalars(select(User.id).where(User.principal == principal)).one()
    q: Client = client_as("quser")
    name = rack.unique("quota")
    first = q.post("/api/v1/vms", {"name": name, "memory_mib": 64, "vcpus": 2})
    assert rack.wait_task(first["task"]["id"]).state is TaskState.FINISHED
    before = _counts(rack)
    with pytest.raises(Conflict, match=r"over quota in hardware pool default: max_vms 1: this would make 2, 1 over"):
        q.post("/api/v1/vms", {"name": rack.unique("quota"), "memory_mib": 64})
    with pytest.raises(Conflict, match=r"max_vcpus 1: this would make 2, 1 over"):
        q.post(f"/api/v1/vms/{name}/start")
    assert _counts(rack) == before
    rack.wait_task(q.post(f"/api/v1/vms/{name}/delete")["id"])
    with session_scope(rack.db) as s:
        s.execute(delete(Quota).where(Quota.user_id == user_id))


def test_a_libvirt_error_fails_readably_and_the_queue_flows_on(task_rack: TaskRack) -> None:
    rack = task_rack
    broken, fine = rack.unique("broken"), rack.unique("fine")
    args = rack.guest_args(broken)
    args[args.index("--kernel") + 1] = "/nonexistent/vmlinuz"
    assert rack.drover(*args, "--wait").returncode == 0  # defining does not open the kernel
    started = rack.drover("vm", "start", broken, "--wait")
    assert started.returncode == 10
    assert "/nonexistent/vmlinuz" in started.stderr
    vm = rack.vm(broken)
    assert vm.state is VmState.STOPPED and "/nonexistent/vmlinuz" in vm.state_reason
    with session_scope(rack.db) as s:
        task = s.scalars(select(Task).where(Task.target_id == vm.id).order_by(Task.id.desc())).first()
        assert task is not None and task.attempts == 1  # not a transient error: no retries
    assert rack.drover(*rack.guest_args(fine), "--wait").returncode == 0
    shown = rack.drover("vm", "show", broken)
    assert "start failed" in shown.stdout
    for name in (broken, fine):
        assert rack.drover("vm", "delete", name, "--wait").returncode == 0


def test_a_host_gone_mid_task_fails_after_bounded_retries(
    task_rack: TaskRack, libvirt_nodes: NodeFactory
) -> None:
    rack = task_rack
    fqdn = f"tgone{uuid.uuid4().hex[:4]}.example.test"
    node = libvirt_nodes.start(fqdn, settings=libvirt_nodes.plan(fqdn, port=rack.lab.libvirt_port))
    with session_scope(rack.db) as s:
        pool_id = s.scalars(select(HardwarePool.id).where(HardwarePool.name == "default")).one()
        host = Host(uuid=node.settings.host_uuid, hostname=fqdn, approved_at=utcnow(),
                    credentials_issued_at=utcnow(), memory_mib=1024, cpu_count=2,
                    hypervisor_type=HypervisorType.QEMU, hardware_pool_id=pool_id)  # fmt: skip
        s.add(host)
        s.flush()
        host_id = host.id

    def up() -> bool:
        with session_scope(rack.db) as s:
            return s.get(Host, host_id).state is HostState.AVAILABLE  # type: ignore[union-attr]

    wait_until("the new host available", up, 60)
    name = rack.unique("gone")
    # No kernel and no disk: qemu runs (firmware finds nothing to boot), nothing answers ACPI.
    assert rack.drover("vm", "create", name, "--memory", "64", "--host", fqdn, "--wait").returncode == 0
    assert rack.drover("vm", "start", name, "--wait").returncode == 0
    queued = rack.drover("vm", "shutdown", name, "--timeout", "600")
    task_id = int(queued.stdout.split()[1])
    deadline = time.monotonic() + 60
    while True:
        with session_scope(rack.db) as s:
            if s.get(Task, task_id).state is TaskState.RUNNING:  # type: ignore[union-attr]
                break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)
    node.stop()  # libvirtd and its guest gone while the shutdown task waits on it
    task = rack.wait_task(task_id, 180)
    assert task.state is TaskState.FAILED
    assert "gave up after" in (task.error or "") and task.attempts > 1
    vm = rack.vm(name)
    assert vm.state in (VmState.RUNNING, VmState.UNREACHABLE)  # back to what it was, or what the browser saw
    assert "shutdown failed" in vm.state_reason
    with session_scope(rack.db) as s:
        s.execute(delete(Vm).where(Vm.id == vm.id))
        s.execute(delete(Host).where(Host.id == host_id))


def test_vm_and_host_lists_come_in_pages(task_rack: TaskRack, kdc: LabKdc, client_as: AsUser) -> None:
    """GET /vms and /hosts take limit/offset and say the total; the CLI reads every page (or the one asked
    for); bad paging is a 400 naming the parameter. The VMs are rows in a hardware pool of this test's own,
    seen by a user whose only role is there (the rack's other VMs are not theirs to see)."""
    rack = task_rack
    pool_name = rack.unique("pages")
    with session_scope(rack.db) as s:
        pool = HardwarePool(name=pool_name, parent_id=default_pool(s).id)
        s.add(pool)
        s.flush()
        pool_id = pool.id
        names = [f"{pool_name}-{n:02d}" for n in range(7)]
        for name in reversed(names):  # inserted out of order: the list is by name
            s.add(Vm(uuid=str(uuid.uuid4()), name=name, vcpus=1, memory_mib=64, hardware_pool_id=pool_id,
                     state=VmState.PENDING))  # fmt: skip
    added = rack.drover("user", "add", "pager", "--role", "monitor", "--pool", pool_name)
    assert added.returncode == 0, added.stderr
    try:
        pager: Client = client_as("pager")
        first = pager.get("/api/v1/vms", {"limit": "3"})
        assert (first["total"], first["offset"], first["limit"]) == (7, 0, 3)
        assert [v["name"] for v in first["vms"]] == names[:3]
        last = pager.get("/api/v1/vms", {"limit": "3", "offset": "6"})
        assert [v["name"] for v in last["vms"]] == names[6:] and last["total"] == 7
        assert [v["name"] for v in pager.get("/api/v1/vms")["vms"]] == names  # no limit: all, as before paging
        assert [v["name"] for v in pager.pages("/api/v1/vms", "vms", page_size=3)] == names  # three requests
        for query, field in ((b"limit=0", "limit"), (b"limit=lots", "limit"), (b"limit=10001", "limit"),
                             (b"offset=-1", "offset"), (b"colour=red", "colour")):  # fmt: skip
            r = pager._http.get(f"/api/v1/vms?{query.decode()}")
            assert r.status_code == 400 and r.json()["error"].startswith(f"{field}:"), r.text
        listed = rack.drover("vm", "list", principal="pager")
        assert listed.returncode == 0 and [line.split()[1] for line in listed.stdout.splitlines()[1:]] == names
        one = rack.drover("vm", "list", "--limit", "2", "--offset", "1", "--json", principal="pager")
        assert one.returncode == 0 and [v["name"] for v in json.loads(one.stdout)] == names[1:3]
        bad = rack.drover("vm", "list", "--limit", "-1", principal="pager")
        assert bad.returncode == 2 and "not a whole number" in bad.stderr

        boss: Client = client_as("boss")
        every = boss.get("/api/v1/hosts")
        assert every["total"] == len(every["hosts"]) >= 2 and every["limit"] is None
        page = boss.get("/api/v1/hosts", {"limit": "1", "offset": "1"})
        ids = [h["id"] for h in every["hosts"]]  # by id: a host's state may move on between two reads
        assert [h["id"] for h in page["hosts"]] == ids[1:2] and page["total"] == every["total"]
        hosts = rack.drover("host", "list", "--limit", "1", "--json")
        assert hosts.returncode == 0 and [h["id"] for h in json.loads(hosts.stdout)] == ids[:1]
    finally:
        rack.drover("user", "remove", "pager")
        with session_scope(rack.db) as s:
            s.execute(delete(Vm).where(Vm.hardware_pool_id == pool_id))
            s.execute(delete(HardwarePool).where(HardwarePool.id == pool_id))
