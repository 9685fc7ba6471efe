"""Storage and hosts on the shared rack: `drover storage volume refresh` re-reads one volume through the task
engine (permission-checked like its neighbours); a host that becomes available is given the cluster's storage
pools by refresh tasks the appliance queues, without anyone's `storage pool refresh`.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import libvirt
import pytest
from sqlalchemy import delete, select

from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import Host, HostState, HypervisorType, StoragePool, Task, TaskState, TaskType
from appliance.hosts import default_pool
from appliance.kerberos.realm import APPLIANCE_CLIENT
from tests.lab.libvirtd import LabNode, NodeFactory
from tests.lab.taskrack import TaskRack, wait_until
from tests.test_storage_cli_lab import js, ok, refused

pytestmark = pytest.mark.lab

PEEKER = "peeker"  # monitor role: may look, may not change


def _pools_on(node: LabNode) -> dict[str, bool]:
    conn = libvirt.open(node.local_uri)
    try:
        return {p.name(): bool(p.isActive()) for p in conn.listAllStoragePools(0)}
    finally:
        conn.close()


def test_volume_refresh_verb_and_a_new_host_gets_the_pools(
    task_rack: TaskRack, libvirt_nodes: NodeFactory, tmp_path: Path
) -> None:
    rack = task_rack
    rack.ensure_worker()
    pool = rack.unique("hostpool")
    where = tmp_path / "p"
    ok(rack, "storage", "pool", "create", pool, "--type", "dir", "--path", str(where), "--wait")
    ok(rack, "storage", "volume", "create", pool, "data.img", "--size", "8M", "--format", "raw", "--wait")
    vol = {v["name"]: v for v in js(rack, "storage", "volume", "list", pool)}["data.img"]
    assert vol["allocation_bytes"] < 1 << 20  # sparse
    with (where / "data.img").open("r+b") as f:  # written behind libvirt's back: the row does not know yet
        f.write(b"\xa5" * (2 << 20))
    assert js(rack, "storage", "volume", "list", pool)[0]["allocation_bytes"] == vol["allocation_bytes"]

    # Bad input and permissions: one line, an exit code, nothing queued.
    rack.drover("user", "add", PEEKER, "--role", "monitor")  # another module may have made it already
    tasks = _task_count(rack)
    assert "is not in storage pool" in refused(rack, 4, "storage", "volume", "refresh", pool, "nope.img")
    assert "does not exist" in refused(rack, 4, "storage", "volume", "refresh", "no-such-pool", "data.img")
    assert "may not refresh volumes in" in refused(rack, 9, "storage", "volume", "refresh", pool, "data.img",
                                                   principal=PEEKER)  # fmt: skip
    assert _task_count(rack) == tasks

    out = ok(rack, "storage", "volume", "refresh", pool, "data.img", "--wait")
    assert "volume_refresh: finished" in out, out
    assert js(rack, "storage", "volume", "list", pool)[0]["allocation_bytes"] >= 2 << 20

    # A host comes up (a third lab libvirtd, recorded as approved): the appliance queues the pool's refresh.
    fqdn = f"tns{uuid.uuid4().hex[:4]}.example.test"
    node = libvirt_nodes.start(fqdn, settings=libvirt_nodes.plan(fqdn, (APPLIANCE_CLIENT,), port=rack.lab.libvirt_port))
    assert pool not in _pools_on(node)
    with session_scope(rack.db) as s:
        host = Host(uuid=node.settings.host_uuid, hostname=fqdn, approved_at=utcnow(), credentials_issued_at=utcnow(),
                    memory_mib=2048, cpu_count=4, hypervisor_type=HypervisorType.QEMU,
                    hardware_pool_id=default_pool(s).id)  # fmt: skip
        s.add(host)
        s.flush()
        host_id = host.id
    try:

        def up() -> bool:
            with session_scope(rack.db) as s:
                return s.get(Host, host_id).state is HostState.AVAILABLE  # type: ignore[union-attr]

        wait_until("the new host available", up, 60)
        given = _given(rack, pool, fqdn)
        assert given.created_by is None  # the appliance's, not a user's
        assert given.state is TaskState.FINISHED, given.error
        assert fqdn in (given.result or {}).get("hosts", []), given.result
        assert _pools_on(node).get(pool) is True  # defined and running on the new host
        assert pool in ok(rack, "storage", "pool", "list")
    finally:
        node.stop()
        with session_scope(rack.db) as s:
            s.execute(delete(Host).where(Host.id == host_id))
    ok(rack, "storage", "volume", "delete", pool, "data.img", "--wait")
    ok(rack, "storage", "pool", "delete", pool, "--wait")


def _task_count(rack: TaskRack) -> int:
    with session_scope(rack.db) as s:
        return len(s.scalars(select(Task.id)).all())


def _given(rack: TaskRack, pool: str, fqdn: str) -> Task:
    """The refresh queued for `pool` when `fqdn` became available, once it has ended."""
    deadline = time.monotonic() + 120
    while True:
        with session_scope(rack.db) as s:
            pool_id = s.scalars(select(StoragePool.id).where(StoragePool.name == pool)).one()
            rows = s.scalars(select(Task).where(Task.type == TaskType.STORAGE_POOL_REFRESH,
                                                Task.target_id == pool_id)).all()  # fmt: skip
            mine = [t.id for t in rows if t.args.get("reason") == f"host {fqdn} became available"]
        if mine:
            assert len(mine) == 1, mine
            return rack.wait_task(mine[0], 120)
        assert time.monotonic() < deadline, f"no refresh of {pool} was queued for {fqdn}"
        time.sleep(0.2)
