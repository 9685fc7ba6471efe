"""Storage through the task queue: appliance.storage checks and queues, the real task engine (a child process,
tests/lab/taskworker.py) runs the tasks against two lab libvirtds over qemu+tcp + GSSAPI, PostgreSQL holds it all.

The two nodes share one directory as the stand-in for shared storage (an NFS mount on real nodes): a dir pool
at that path is "the same pool" on both. What is on each node is checked through the lab's unix socket.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import libvirt
import pytest
from sqlalchemy import Engine, func, select

from appliance import storage, tasking
from appliance.db.engine import session_scope
from appliance.db.models import (
    HardwarePool,
    StoragePool,
    StorageState,
    StorageType,
    StorageVolume,
    Task,
    TaskState,
    Template,
    VolumeFormat,
)
from appliance.errors import Conflict, NotFound, UsageError
from appliance.hosts import default_pool
from appliance.imagefile import ImageKind, detect
from appliance.runner import run
from tests.lab.libvirtd import LabNode
from tests.lab.nfs import LabNfs
from tests.lab.taskworker import LabWorker, finished, wait

pytestmark = pytest.mark.lab

ME = "admin@LAB.EXAMPLE.TEST"


@pytest.fixture(scope="module")
def engine(task_db: Engine) -> Engine:
    return task_db


@pytest.fixture(scope="module")
def nodes(task_nodes: list[LabNode]) -> list[LabNode]:
    return task_nodes


@pytest.fixture(scope="module")
def worker(task_worker: LabWorker) -> LabWorker:
    return task_worker


def pools_on(node: LabNode) -> list[str]:
    conn = libvirt.open(node.local_uri)
    try:
        return sorted(p.name() for p in conn.listAllStoragePools(0))
    finally:
        conn.close()


def count(engine: Engine, model: type[object]) -> int:
    with session_scope(engine) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def make_pool(engine: Engine, worker: LabWorker, body: dict[str, object]) -> tuple[int, Task]:
    with session_scope(engine) as s:
        pool, task = storage.create_pool(s, storage.PoolSpec.from_request(body), ME)
        pool_id, task_id = pool.id, task.id
    return pool_id, wait(engine, task_id, worker)


def test_dir_pool_volumes_template_refresh_delete(
    engine: Engine, worker: LabWorker, nodes: list[LabNode], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    pool_id, task = make_pool(engine, worker, {"name": "shared", "type": "dir", "path": str(shared)})
    assert task.state is TaskState.FINISHED, task.error
    assert sorted((task.result or {})["hosts"]) == sorted(n.fqdn for n in nodes)
    for node in nodes:
        assert "shared" in pools_on(node)
    with session_scope(engine) as s:
        pool = s.get(StoragePool, pool_id)
        assert pool is not None and pool.state is StorageState.AVAILABLE and (pool.capacity_bytes or 0) > 0

    # A duplicate pool name is refused before anything is written.
    before = count(engine, Task), count(engine, StoragePool)
    with pytest.raises(Conflict, match="already exists"), session_scope(engine) as s:
        storage.create_pool(s, storage.PoolSpec.from_request({"name": "shared", "type": "dir", "path": "/x"}), ME)
    assert (count(engine, Task), count(engine, StoragePool)) == before

    # A volume.
    with session_scope(engine) as s:
        vol, t = storage.create_volume(s, storage.find_pool(s, "shared"), "data.qcow2", 32 << 20, VolumeFormat.QCOW2,
                                       ME)  # fmt: skip
        vol_id, task_id = vol.id, t.id
    finished(engine, task_id, worker)
    with session_scope(engine) as s:
        row = s.get(StorageVolume, vol_id)
        assert row is not None and row.state is StorageState.AVAILABLE and row.path == str(shared / "data.qcow2")
    info = run(["qemu-img", "info", str(shared / "data.qcow2")]).stdout
    assert "qcow2" in info and "32 MiB" in info
    with pytest.raises(Conflict, match="already exists"), session_scope(engine) as s:
        storage.create_volume(s, storage.find_pool(s, "shared"), "data.qcow2", 1 << 20, VolumeFormat.RAW, ME)
    with pytest.raises(NotFound), session_scope(engine) as s:
        storage.find_pool(s, "nope")

    # A template from a local qcow2: uploaded through libvirt's stream, the appliance's copy removed after.
    src = tmp_path / "upload.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", str(src), "48M"])
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 2M", str(src)])
    original = src.read_bytes()
    assert detect(src) is ImageKind.QCOW2
    with session_scope(engine) as s:
        tpl, tvol, t = storage.import_template(s, storage.find_pool(s, "shared"), "base", src, VolumeFormat.QCOW2, ME)
        tpl_id, tvol_id, task_id = tpl.id, tvol.id, t.id
    done = finished(engine, task_id, worker)
    assert (done.result or {})["format"] == "qcow2" and done.progress == 1.0
    assert (shared / "base.qcow2").read_bytes() == original and not src.exists()
    with session_scope(engine) as s:
        trow = s.get(StorageVolume, tvol_id)
        assert trow is not None and trow.capacity_bytes == 48 << 20 and trow.format is VolumeFormat.QCOW2
        assert s.get(Template, tpl_id) is not None

    # Refresh finds what appeared on the storage by other means.
    (shared / "dropped.img").write_bytes(b"\0" * 8192)
    with session_scope(engine) as s:
        task_id = storage.refresh_pool(s, storage.find_pool(s, "shared"), ME).id
    assert (finished(engine, task_id, worker).result or {})["added"] == 1
    with session_scope(engine) as s:
        names = sorted(v.name for v in storage.find_pool(s, "shared").volumes)
    assert names == ["base.qcow2", "data.qcow2", "dropped.img"]

    # In use: the pool cannot go while the template holds its volume; nothing changes.
    with pytest.raises(Conflict, match="in use by template base"), session_scope(engine) as s:
        storage.delete_pool(s, storage.find_pool(s, "shared"), ME)
    with pytest.raises(Conflict, match="in use by template base"), session_scope(engine) as s:
        storage.delete_volume(s, storage.find_volume(s, storage.find_pool(s, "shared"), "base.qcow2"), ME)
    with session_scope(engine) as s:
        assert storage.find_pool(s, "shared").state is StorageState.AVAILABLE

    # Delete a volume, the template (its volume with it), then the pool from both nodes.
    with session_scope(engine) as s:
        task_id = storage.delete_volume(s, storage.find_volume(s, storage.find_pool(s, "shared"), "data.qcow2"), ME).id
    finished(engine, task_id, worker)
    assert not (shared / "data.qcow2").exists()
    with session_scope(engine) as s:
        t2 = storage.delete_template(s, storage.find_template(s, "base"), ME)
        assert t2 is not None
        task_id = t2.id
    finished(engine, task_id, worker)
    assert not (shared / "base.qcow2").exists()
    with session_scope(engine) as s:
        task_id = storage.delete_pool(s, storage.find_pool(s, "shared"), ME).id
    assert sorted((finished(engine, task_id, worker).result or {})["removed_from"]) == sorted(n.fqdn for n in nodes)
    for node in nodes:
        assert "shared" not in pools_on(node)
    with session_scope(engine) as s:
        assert s.scalars(select(StoragePool).where(StoragePool.name == "shared")).first() is None
    assert (shared / "dropped.img").is_file()  # a pool delete never deletes data on the storage


def test_pool_that_cannot_start_fails_and_leaves_no_host_with_it(
    engine: Engine, worker: LabWorker, nodes: list[LabNode], nfs_server: LabNfs
) -> None:
    """NFS against the lab's nfs-ganesha: this kernel has no NFS client, so libvirt's mount fails on the
    first node; the pool is defined nowhere afterwards and its row says failed."""
    body = {"name": "ganesha", "type": "nfs", "server": nfs_server.address, "export": nfs_server.export,
            "port": nfs_server.port}  # fmt: skip
    pool_id, task = make_pool(engine, worker, body)
    assert task.state is TaskState.FAILED and "ganesha" in (task.error or "")
    for node in nodes:
        assert "ganesha" not in pools_on(node)
    with session_scope(engine) as s:
        pool = s.get(StoragePool, pool_id)
        assert pool is not None and pool.state is StorageState.FAILED
        task_id = storage.delete_pool(s, pool, ME).id
    finished(engine, task_id, worker)


def test_failed_upload_forgets_volume_and_template(engine: Engine, worker: LabWorker, tmp_path: Path) -> None:
    _, task = make_pool(engine, worker, {"name": "up", "type": "dir", "path": str(tmp_path / "up")})
    assert task.state is TaskState.FINISHED, task.error
    src = tmp_path / "disk.img"
    src.write_bytes(b"\0" * 4096)
    with session_scope(engine) as s:
        _, _, t = storage.import_template(s, storage.find_pool(s, "up"), "vanishing", src, VolumeFormat.RAW, ME)
        task_id = t.id
    # The file goes away before the worker gets to it (the appliance's copy lost): a readable failure.
    src.unlink()
    failed = wait(engine, task_id, worker)
    assert failed.state is TaskState.FAILED and "cannot read" in (failed.error or "")
    with session_scope(engine) as s:
        assert s.scalars(select(Template).where(Template.name == "vanishing")).first() is None
        assert not storage.find_pool(s, "up").volumes
        task_id = storage.delete_pool(s, storage.find_pool(s, "up"), ME).id
    finished(engine, task_id, worker)


def test_no_available_host_fails_readably(engine: Engine, worker: LabWorker) -> None:
    with session_scope(engine) as s:
        hw = HardwarePool(name=f"empty-{uuid.uuid4().hex[:6]}")
        s.add(hw)
        s.flush()
        spec = storage.PoolSpec.from_request({"name": "lonely", "type": "dir", "path": "/srv/lonely",
                                              "hardware_pool": hw.name})  # fmt: skip
        task_id = storage.create_pool(s, spec, ME)[1].id
    failed = wait(engine, task_id, worker)
    assert failed.state is TaskState.FAILED and "no available host" in (failed.error or "")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "type": "zfs"}, "not a storage type"),
        ({"name": "bad name", "type": "dir", "path": "/a"}, "not valid"),
        ({"name": "x", "type": "dir"}, "path: a dir pool needs it"),
        ({"name": "x", "type": "dir", "path": "relative"}, "absolute path"),
        ({"name": "x", "type": "dir", "path": "/a/../etc"}, "absolute path"),
        ({"name": "x", "type": "nfs", "server": "h"}, "export: a nfs pool needs it"),
        ({"name": "x", "type": "iscsi", "server": "h", "target": "not-an-iqn"}, "not an iSCSI name"),
        ({"name": "x", "type": "iscsi", "server": "h", "target": "iqn.2026-01.a:b", "port": 70000}, "65535"),
        ({"name": "x", "type": "dir", "path": "/a", "server": "h"}, "server: not a field of a dir pool"),
        ({"name": "x", "type": "logical", "vg_name": "bad/vg"}, "volume group"),
    ],
)
def test_bad_pool_requests(body: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        storage.PoolSpec.from_request(body)


def test_volume_checks_before_queueing(engine: Engine, worker: LabWorker) -> None:
    with session_scope(engine) as s:
        pool = StoragePool(name=f"lun-{uuid.uuid4().hex[:6]}", type=StorageType.ISCSI, server="127.0.0.1",
                           target="iqn.2026-01.test:x", hardware_pool_id=default_pool(s).id,
                           state=StorageState.AVAILABLE)  # fmt: skip
        pending = StoragePool(name=f"pend-{uuid.uuid4().hex[:6]}", type=StorageType.DIR, path="/srv/p",
                              hardware_pool_id=default_pool(s).id)  # fmt: skip
        s.add_all([pool, pending])
        s.flush()
        ids = pool.id, pending.id
    before = count(engine, Task), count(engine, StorageVolume)
    with pytest.raises(Conflict, match="LUNs"), session_scope(engine) as s:
        storage.create_volume(s, s.get_one(StoragePool, ids[0]), "v", 1 << 20, VolumeFormat.RAW, ME)
    with pytest.raises(Conflict, match="is pending"), session_scope(engine) as s:
        storage.create_volume(s, s.get_one(StoragePool, ids[1]), "v", 1 << 20, VolumeFormat.RAW, ME)
    with pytest.raises(UsageError, match="capacity"), session_scope(engine) as s:
        avail = s.get_one(StoragePool, ids[1])
        avail.state = StorageState.AVAILABLE
        storage.create_volume(s, avail, "v", 0, VolumeFormat.RAW, ME)
    assert (count(engine, Task), count(engine, StorageVolume)) == before
    with session_scope(engine) as s:
        for pool_id in ids:
            s.delete(s.get(StoragePool, pool_id))


def test_a_queued_delete_blocks_the_pool_until_it_is_canceled(engine: Engine) -> None:
    """No state is set at enqueue: the pending delete task is the mark, so a canceled delete leaves nothing
    stuck. (All in one transaction, before any worker can see the task.)"""
    with session_scope(engine) as s:
        pool = StoragePool(name=f"keep-{uuid.uuid4().hex[:6]}", type=StorageType.DIR, path="/srv/keep",
                           hardware_pool_id=default_pool(s).id, state=StorageState.AVAILABLE)  # fmt: skip
        s.add(pool)
        s.flush()
        first = storage.delete_pool(s, pool, ME)
        with pytest.raises(Conflict, match=f"task {first.id}"):
            storage.delete_pool(s, pool, ME)
        with pytest.raises(Conflict, match=f"being deleted by task {first.id}"):
            storage.create_volume(s, pool, "late.img", 1 << 20, VolumeFormat.RAW, ME)
        tasking.cancel(s, first.id, ME)
        assert pool.state is StorageState.AVAILABLE
        vol, task = storage.create_volume(s, pool, "late.img", 1 << 20, VolumeFormat.RAW, ME)
        tasking.cancel(s, task.id, ME)
        s.delete(vol)
        s.flush()
        s.delete(pool)


def test_a_canceled_import_leaves_a_template_that_can_be_deleted(engine: Engine, tmp_path: Path) -> None:
    with session_scope(engine) as s:
        pool = StoragePool(name=f"imp-{uuid.uuid4().hex[:6]}", type=StorageType.DIR, path=str(tmp_path / "p"),
                           hardware_pool_id=default_pool(s).id, state=StorageState.AVAILABLE)  # fmt: skip
        s.add(pool)
        s.flush()
        upload = tmp_path / "sent.img"
        upload.write_bytes(b"\0" * 4096)
        template, vol, task = storage.import_template(s, pool, f"never-{pool.id}", upload, VolumeFormat.RAW, ME)
        with pytest.raises(Conflict, match=f"still being imported by task {task.id}"):
            storage.delete_template(s, template, ME)
        tasking.cancel(s, task.id, ME)
        cleanup = storage.delete_template(s, template, ME)
        assert cleanup is not None and not upload.exists()  # the appliance's copy went with it
        tasking.cancel(s, cleanup.id, ME)
        s.delete(vol)
        s.flush()
        s.delete(pool)
