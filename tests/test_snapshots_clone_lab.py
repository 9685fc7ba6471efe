"""Snapshots and clones through the task queue: a VM with a qcow2 disk in a dir pool, defined on a lab libvirtd
by the core's create task, then snapshot create / revert / delete and clone, by the real task engine (a child
process) over qemu+tcp + GSSAPI. The VM stays stopped (offline internal snapshots: qemu-img under libvirt);
the disk's content is written and read with qemu-io to prove what revert and clone did.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import libvirt
import pytest
from sqlalchemy import Engine, select

from appliance import snapshots, storage, tasking
from appliance.db.engine import session_scope
from appliance.db.models import (
    Quota,
    Snapshot,
    SnapshotState,
    StorageState,
    StorageVolume,
    Task,
    TaskType,
    User,
    Vm,
    VmDisk,
    VmNic,
    VmState,
    VolumeFormat,
)
from appliance.errors import Conflict, NotFound
from appliance.hosts import default_pool
from appliance.runner import run
from tests.lab.libvirtd import LabNode
from tests.lab.taskworker import LabWorker, finished, wait

pytestmark = pytest.mark.lab

ME = "admin@LAB.EXAMPLE.TEST"


def qemu_io(path: str, command: str) -> str:
    return run(["qemu-io", "-f", "qcow2", "-c", command, path]).stdout


def reads(path: str, pattern: int) -> bool:
    out = run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern:#x} 0 1M", path], check=False).stdout
    return "Pattern verification failed" not in out and "read 1048576/1048576" in out


def snaps_on(node: LabNode, vm_name: str) -> list[str]:
    conn = libvirt.open(node.local_uri)
    try:
        return sorted(conn.lookupByName(vm_name).snapshotListNames(0))
    finally:
        conn.close()


def domains_on(node: LabNode) -> list[str]:
    conn = libvirt.open(node.local_uri)
    try:
        return sorted(d.name() for d in conn.listAllDomains(0))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def vm_id(
    task_db: Engine, task_worker: LabWorker, task_hosts: list[int], tmp_path_factory: pytest.TempPathFactory
) -> int:
    """VM 'snapvm': a 16 MiB qcow2 disk in dir pool 'vmstore', defined on node1 by the core's create task."""
    path = tmp_path_factory.mktemp("vmstore")
    with session_scope(task_db) as s:
        spec = storage.PoolSpec.from_request({"name": "vmstore", "type": "dir", "path": str(path)})
        task_id = storage.create_pool(s, spec, ME)[1].id
    finished(task_db, task_id, task_worker)
    with session_scope(task_db) as s:
        vol, t = storage.create_volume(s, storage.find_pool(s, "vmstore"), "snapvm.qcow2", 16 << 20,
                                       VolumeFormat.QCOW2, ME)  # fmt: skip
        vol_id, task_id = vol.id, t.id
    finished(task_db, task_id, task_worker)
    with session_scope(task_db) as s:
        vm = Vm(uuid=str(uuid.uuid4()), name="snapvm", vcpus=1, memory_mib=64, hardware_pool_id=default_pool(s).id)
        s.add(vm)
        s.flush()
        s.add(VmDisk(vm_id=vm.id, storage_volume_id=vol_id, target_dev="vda"))
        s.add(VmNic(vm_id=vm.id, mac="52:54:00:aa:bb:01"))
        s.flush()
        vm_id = vm.id
        task_id = tasking.enqueue(s, TaskType.VM_CREATE, vm.id, {"host_id": task_hosts[0]}, created_by=ME).id
    finished(task_db, task_id, task_worker)
    return vm_id


def _disk(engine: Engine, vm_id: int) -> str:
    with session_scope(engine) as s:
        vm = s.get_one(Vm, vm_id)
        return str(vm.disks[0].volume.path)


def test_snapshot_create_revert_delete(
    task_db: Engine, task_worker: LabWorker, task_nodes: list[LabNode], vm_id: int
) -> None:
    disk = _disk(task_db, vm_id)
    qemu_io(disk, "write -P 0x11 0 1M")
    with session_scope(task_db) as s:
        vm = s.get_one(Vm, vm_id)
        assert vm.state is VmState.STOPPED and vm.host is not None
        snap, t = snapshots.create_snapshot(s, vm, "s1", "before the change", ME)
        s1_id, task_id = snap.id, t.id
    assert (finished(task_db, task_id, task_worker).result or {})["with_memory"] is False
    qemu_io(disk, "write -P 0x22 0 1M")
    with session_scope(task_db) as s:
        task_id = snapshots.create_snapshot(s, s.get_one(Vm, vm_id), "s2", "", ME)[1].id
    assert (finished(task_db, task_id, task_worker).result or {})["parent"] == "s1"
    assert snaps_on(task_nodes[0], "snapvm") == ["s1", "s2"]
    with session_scope(task_db) as s:
        s2 = snapshots.find_snapshot(s, s.get_one(Vm, vm_id), "s2")
        assert s2.parent_id == s1_id and s2.state is SnapshotState.READY
        assert s.get_one(Vm, vm_id).state is VmState.STOPPED  # the state table: back where it was

    # A name taken, or an unknown snapshot: refused, nothing queued.
    with session_scope(task_db) as s:
        before = len(s.scalars(select(Task)).all())
    with pytest.raises(Conflict, match="already has a snapshot s1"), session_scope(task_db) as s:
        snapshots.create_snapshot(s, s.get_one(Vm, vm_id), "s1", "", ME)
    with pytest.raises(NotFound, match="no snapshot nope"), session_scope(task_db) as s:
        snapshots.find_snapshot(s, s.get_one(Vm, vm_id), "nope")
    with session_scope(task_db) as s:
        assert len(s.scalars(select(Task)).all()) == before

    # Revert to s1: the disk holds s1's bytes again.
    qemu_io(disk, "write -P 0x33 0 1M")
    with session_scope(task_db) as s:
        task_id = snapshots.revert_snapshot(s, snapshots.find_snapshot(s, s.get_one(Vm, vm_id), "s1"), ME).id
    assert (finished(task_db, task_id, task_worker).result or {})["vm_state"] == "stopped"
    assert reads(disk, 0x11) and not reads(disk, 0x33)

    # Delete s1: s2 hangs on nothing now, in libvirt and in the database.
    with session_scope(task_db) as s:
        task_id = snapshots.delete_snapshot(s, snapshots.find_snapshot(s, s.get_one(Vm, vm_id), "s1"), ME).id
    finished(task_db, task_id, task_worker)
    assert snaps_on(task_nodes[0], "snapvm") == ["s2"]
    with session_scope(task_db) as s:
        s2 = snapshots.find_snapshot(s, s.get_one(Vm, vm_id), "s2")
        assert s2.parent_id is None
        assert s.get(Snapshot, s1_id) is None
        task_id = snapshots.delete_snapshot(s, s2, ME).id
    finished(task_db, task_id, task_worker)
    assert snaps_on(task_nodes[0], "snapvm") == []


def test_snapshot_refused_for_raw_disks_and_vms_on_no_host(task_db: Engine, task_worker: LabWorker) -> None:
    with session_scope(task_db) as s:
        vm = Vm(uuid=str(uuid.uuid4()), name="nohost", vcpus=1, memory_mib=64, hardware_pool_id=default_pool(s).id,
                state=VmState.STOPPED)  # fmt: skip
        s.add(vm)
        s.flush()
        vm_id = vm.id
    with pytest.raises(Conflict, match="on no host"), session_scope(task_db) as s:
        snapshots.create_snapshot(s, s.get_one(Vm, vm_id), "x", "", ME)
    with session_scope(task_db) as s:
        assert s.scalars(select(Snapshot).where(Snapshot.vm_id == vm_id)).first() is None
        s.delete(s.get_one(Vm, vm_id))


def test_clone_copies_disks_and_defines_the_clone(
    task_db: Engine, task_worker: LabWorker, task_nodes: list[LabNode], vm_id: int
) -> None:
    disk = _disk(task_db, vm_id)
    qemu_io(disk, "write -P 0x44 0 1M")
    with session_scope(task_db) as s:
        clone, t = snapshots.clone_vm(s, s.get_one(Vm, vm_id), "snapvm-copy", ME)
        clone_id, task_id = clone.id, t.id
        assert clone.state is VmState.PENDING
    done = finished(task_db, task_id, task_worker)
    assert (done.result or {})["copied"] == ["snapvm-copy-vda.qcow2"]
    assert "snapvm-copy" in domains_on(task_nodes[0])
    with session_scope(task_db) as s:
        clone = s.get_one(Vm, clone_id)
        assert clone.state is VmState.STOPPED and clone.host_id == s.get_one(Vm, vm_id).host_id
        vol = clone.disks[0].volume
        assert vol.state is StorageState.AVAILABLE and vol.format is VolumeFormat.QCOW2
        copy_path = str(vol.path)
        assert clone.nics[0].mac != s.get_one(Vm, vm_id).nics[0].mac
        assert s.get_one(Vm, vm_id).state is VmState.STOPPED
    assert copy_path != disk and reads(copy_path, 0x44)
    # The copy is its own: writing the source does not change it.
    qemu_io(disk, "write -P 0x55 0 1M")
    assert reads(copy_path, 0x44)

    with pytest.raises(Conflict, match="already exists"), session_scope(task_db) as s:
        snapshots.clone_vm(s, s.get_one(Vm, vm_id), "snapvm-copy", ME)
    # A running source cannot be cloned: the state table refuses it at enqueue, nothing recorded.
    with session_scope(task_db) as s:
        s.get_one(Vm, vm_id).state = VmState.RUNNING
    try:
        with pytest.raises(Conflict, match="cannot clone VM snapvm: it is running"), session_scope(task_db) as s:
            snapshots.clone_vm(s, s.get_one(Vm, vm_id), "snapvm-2", ME)
        with session_scope(task_db) as s:
            assert s.scalars(select(Vm).where(Vm.name == "snapvm-2")).first() is None
            assert s.scalars(select(StorageVolume).where(StorageVolume.name == "snapvm-2-vda.qcow2")).first() is None
    finally:
        with session_scope(task_db) as s:
            s.get_one(Vm, vm_id).state = VmState.STOPPED


def test_failed_clone_is_removed_whole(task_db: Engine, task_worker: LabWorker, vm_id: int) -> None:
    """The source's volume vanished from the storage behind the appliance's back: the copy fails, and the clone
    (row, disks, volumes) is gone afterwards."""
    with session_scope(task_db) as s:
        src = s.get_one(Vm, vm_id).disks[0].volume
        path = Path(str(src.path))
    hidden = path.with_name(path.name + ".away")
    path.rename(hidden)
    try:
        with session_scope(task_db) as s:
            task_id = snapshots.clone_vm(s, s.get_one(Vm, vm_id), "doomed", ME)[1].id
        # The pool must notice the file is gone (libvirt keeps a volume list until refreshed).
        failed = wait(task_db, task_id, task_worker)
        assert failed.state.value == "failed", failed.result
        assert "snapvm.qcow2" in (failed.error or "")
        with session_scope(task_db) as s:
            assert s.scalars(select(Vm).where(Vm.name == "doomed")).first() is None
            assert s.scalars(select(StorageVolume).where(StorageVolume.name == "doomed-vda.qcow2")).first() is None
            assert s.get_one(Vm, vm_id).state is VmState.STOPPED
    finally:
        hidden.rename(path)


def test_clone_counts_against_the_callers_quota(task_db: Engine, task_worker: LabWorker, vm_id: int) -> None:
    """The clone is the caller's new VM: over their max_vms or max_disk_bytes in the pool it is refused, nothing
    recorded; within quota it is theirs."""
    with session_scope(task_db) as s:
        pool_id = s.get_one(Vm, vm_id).hardware_pool_id
        user = User(principal="cloner@LAB.EXAMPLE.TEST")
        s.add(user)
        s.flush()
        s.add(Quota(user_id=user.id, hardware_pool_id=pool_id, max_vms=0))
    with (
        pytest.raises(Conflict, match=r"over quota .* max_vms 0: this would make 1, 1 over"),
        session_scope(task_db) as s,
    ):
        snapshots.clone_vm(s, s.get_one(Vm, vm_id), "quota-copy", "cloner@LAB.EXAMPLE.TEST")
    with session_scope(task_db) as s:
        assert s.scalars(select(Vm).where(Vm.name == "quota-copy")).first() is None
        quota = s.scalars(select(Quota).join(User).where(User.principal == "cloner@LAB.EXAMPLE.TEST")).one()
        quota.max_vms, quota.max_disk_bytes = 5, 1 << 20  # the 16 MiB disk does not fit
    with pytest.raises(Conflict, match="max_disk_bytes"), session_scope(task_db) as s:
        snapshots.clone_vm(s, s.get_one(Vm, vm_id), "quota-copy", "cloner@LAB.EXAMPLE.TEST")
    with session_scope(task_db) as s:
        s.scalars(
            select(Quota).join(User).where(User.principal == "cloner@LAB.EXAMPLE.TEST")
        ).one().max_disk_bytes = None
        clone, t = snapshots.clone_vm(s, s.get_one(Vm, vm_id), "quota-copy", "cloner@LAB.EXAMPLE.TEST")
        assert clone.owner is not None and clone.owner.principal == "cloner@LAB.EXAMPLE.TEST"
        task_id = t.id
    finished(task_db, task_id, task_worker)


def test_a_canceled_snapshot_can_be_deleted(task_db: Engine, vm_id: int) -> None:
    with session_scope(task_db) as s:
        vm = s.get_one(Vm, vm_id)
        snap, task = snapshots.create_snapshot(s, vm, "never", "", ME)
        with pytest.raises(Conflict, match=f"task {task.id}"):
            snapshots.delete_snapshot(s, snap, ME)
        tasking.cancel(s, task.id, ME)
        assert snap.state is SnapshotState.CREATING
        cleanup = snapshots.delete_snapshot(s, snap, ME)
        tasking.cancel(s, cleanup.id, ME)
        s.delete(snap)
