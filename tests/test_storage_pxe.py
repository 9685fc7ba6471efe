"""Network storage for real: a node of the real image, PXE-booted from a real `drover serve`, mounts an NFS
storage pool served by the lab's nfs-ganesha and logs in to an iSCSI pool on the lab's tgt, through the task
engine over Kerberos. (This machine's kernel has neither client; the node's Debian kernel and the image's
nfs-common / open-iscsi have both.) The node reaches the servers on this machine's loopback as 10.0.2.2,
through qemu's user network.

The task engine runs as tests/lab/taskworker.py's child process on the appliance's database; the appliance's
own task engine threads are off, so exactly one engine runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance import storage
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostState, StorageState, VolumeFormat
from appliance.runner import run
from tests.lab.accel import detect
from tests.lab.appliance import start_appliance
from tests.lab.image import NodeImage
from tests.lab.iscsi import LabIscsi
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts
from tests.lab.nfs import LabNfs
from tests.lab.pxe import PxeNode, boot, free_address, vouch_for
from tests.lab.qemu import HOST_FROM_GUEST, Guest
from tests.lab.taskworker import finished, start_worker, wait

pytestmark = pytest.mark.lab

TIMEOUT = 900
ME = "admin@LAB.EXAMPLE.TEST"


@pytest.mark.boot
@pytest.mark.timeout(TIMEOUT, func_only=True)
def test_pxe_node_mounts_nfs_and_iscsi_pools(
    node_image: NodeImage, kdc: LabKdc, nfs_server: LabNfs, iscsi_target: LabIscsi, tmp_path: Path
) -> None:
    node = PxeNode.numbered(7, "example.test", free_address())
    hosts = LabHosts(tmp_path / "nss_hosts")
    hosts.add(node.fqdn, node.address)
    served = start_appliance(
        kdc,
        tmp_path / "appliance",
        extra_env={
            **hosts.env,
            "DROVER_NODES_HEARTBEAT_SECONDS": "1",
            "DROVER_NODES_EXTRA_NAMES": f"127.0.0.1,{HOST_FROM_GUEST}",
            "DROVER_TASKENGINE_ENABLED": "false",
        },
    )
    db = make_engine(served.database_url)
    guest: Guest | None = None
    worker = None
    # The export is the session's: files other tests left there are in every refresh, and not this test's.
    others = sorted(p.name for p in nfs_server.export_dir.iterdir())
    try:
        used = served.drover("boot", "use", str(node_image.dir))
        assert used.returncode == 0, used.stdout + used.stderr
        vouch_for(served, node)
        guest = boot(node, tmp_path, served.boot_port, detect())
        deadline = time.monotonic() + 500
        while True:
            with session_scope(db) as s:
                state = s.scalars(select(Host.state).where(Host.uuid == node.uuid)).first()
            if state is HostState.AVAILABLE:
                break
            assert guest.proc.poll() is None, guest.serial()[-4000:]
            assert time.monotonic() < deadline, f"node not available:\n{guest.serial()[-4000:]}"
            time.sleep(0.5)
        worker = start_worker(kdc, hosts, served.database_url, tmp_path / "worker.log", lease_seconds=60)

        # NFS: defined and mounted on the node; a volume made there is a file on the server.
        body = {"name": "ganesha", "type": "nfs", "server": HOST_FROM_GUEST, "export": nfs_server.export,
                "port": nfs_server.port}  # fmt: skip
        with session_scope(db) as s:
            task_id = storage.create_pool(s, storage.PoolSpec.from_request(body), ME)[1].id
        done = finished(db, task_id, worker, timeout=180)
        assert (done.result or {})["hosts"] == [node.fqdn]
        with session_scope(db) as s:
            pool = storage.find_pool(s, "ganesha")
            assert pool.state is StorageState.AVAILABLE and (pool.capacity_bytes or 0) > 0
            _vol, t = storage.create_volume(s, pool, "on-nfs.qcow2", 64 << 20, VolumeFormat.QCOW2, ME)
            task_id = t.id
        finished(db, task_id, worker, timeout=180)
        on_server = nfs_server.export_dir / "on-nfs.qcow2"
        assert on_server.is_file()
        assert "qcow2" in run(["qemu-img", "info", str(on_server)]).stdout
        (nfs_server.export_dir / "from-server.img").write_bytes(b"\0" * 65536)
        with session_scope(db) as s:
            task_id = storage.refresh_pool(s, storage.find_pool(s, "ganesha"), ME).id
        finished(db, task_id, worker, timeout=180)
        with session_scope(db) as s:
            names = sorted(v.name for v in storage.find_pool(s, "ganesha").volumes)
        assert names == sorted(["from-server.img", "on-nfs.qcow2", *others])
        with session_scope(db) as s:
            task_id = storage.delete_volume(s, storage.find_volume(s, storage.find_pool(s, "ganesha"), "on-nfs.qcow2"),
                                            ME).id  # fmt: skip
        finished(db, task_id, worker, timeout=180)
        assert not on_server.exists()
        with session_scope(db) as s:
            task_id = storage.delete_pool(s, storage.find_pool(s, "ganesha"), ME).id
        assert (finished(db, task_id, worker, timeout=180).result or {})["removed_from"] == [node.fqdn]
        assert (nfs_server.export_dir / "from-server.img").is_file()

        # iSCSI: the node logs in to the lab target; its LUN shows up as a volume.
        body = {"name": "tgt", "type": "iscsi", "server": HOST_FROM_GUEST, "port": iscsi_target.port,
                "target": iscsi_target.iqn}  # fmt: skip
        with session_scope(db) as s:
            task_id = storage.create_pool(s, storage.PoolSpec.from_request(body), ME)[1].id
        got = wait(db, task_id, worker, timeout=180)
        assert got.error is None, f"{got.error}\n{guest.serial()[-3000:]}"
        with session_scope(db) as s:
            luns = [(v.lun, v.capacity_bytes) for v in storage.find_pool(s, "tgt").volumes]
        assert luns == [(1, 64 << 20)], luns
        with session_scope(db) as s:
            task_id = storage.delete_pool(s, storage.find_pool(s, "tgt"), ME).id
        finished(db, task_id, worker, timeout=180)
    finally:
        if worker is not None:
            worker.stop()
        if guest is not None:
            guest.kill()
        db.dispose()
        served.stop()
