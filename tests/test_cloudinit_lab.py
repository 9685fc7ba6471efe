"""First-boot configuration on the lab rack: `drover vm create --template T --user-data F --ssh-key K
--network-config N` makes a cloud-init NoCloud seed (an ISO labelled cidata); the VM's create task uploads it
into the template's storage pool and defines the VM with it as a read-only disk; the seed's files are read
back from the pool, and the seed is deleted with the VM. Bad input (a line that is not a public key) is
refused with the reason and creates nothing.

A real Debian guest running cloud-init from such a seed: test_cloudinit_guest_lab.py.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
from sqlalchemy import func, select

from appliance.db.engine import session_scope
from appliance.db.models import StorageState, StorageVolume, Task, TaskState, TaskType, Vm
from appliance.runner import run
from tests.lab.taskrack import TaskRack

pytestmark = pytest.mark.lab

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl0ZXN0a2V5Zm9yZHJvdmVyY2xvdWRpbml0c2VlZA drover@lab"


def _ok(rack: TaskRack, *argv: str) -> str:
    done = rack.drover(*argv, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _counts(rack: TaskRack) -> tuple[int, int]:
    with session_scope(rack.db) as s:
        return (int(s.scalar(select(func.count()).select_from(Vm)) or 0),
                int(s.scalar(select(func.count()).select_from(StorageVolume)) or 0))  # fmt: skip


def test_vm_from_a_template_gets_a_nocloud_seed(task_rack: TaskRack, tmp_path: Path) -> None:
    rack = task_rack
    rack.ensure_worker()
    pool, tpl, name = rack.unique("cipool"), rack.unique("citpl"), rack.unique("civm")
    shared = tmp_path / "pool"
    _ok(rack, "storage", "pool", "create", pool, "--type", "dir", "--path", str(shared), "--wait")
    image = tmp_path / "base.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", str(image), "16M"])
    _ok(rack, "template", "import", str(image), "--pool", pool, "--name", tpl, "--wait")
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\nruncmd:\n  - echo DROVER-CLOUD-INIT-RAN > /dev/ttyS0\n")
    network_config = tmp_path / "network-config"
    network_config.write_text("version: 2\nethernets:\n  lan:\n    match: {macaddress: '52:54:00:aa:bb:cc'}\n"
                              "    addresses: [198.51.100.7/24]\n")  # fmt: skip
    key_file = tmp_path / "id.pub"
    key_file.write_text(KEY + "\n")

    before = _counts(rack)
    bad = rack.drover("vm", "create", rack.unique("bad"), "--template", tpl, "--ssh-key", "not a key")
    assert bad.returncode == 2 and "is not an OpenSSH public key" in bad.stderr, bad.stderr
    assert _counts(rack) == before

    _ok(rack, "vm", "create", name, "--template", tpl, "--user-data", str(user_data), "--ssh-key", str(key_file),
        "--network-config", str(network_config), "--memory", "64", "--wait")  # fmt: skip
    vm = rack.vm(name)
    with session_scope(rack.db) as s:
        seed = s.scalars(select(StorageVolume).where(StorageVolume.name == f"{name}-seed.iso")).one()
        assert seed.state is StorageState.AVAILABLE
        # The VM's own create task uploaded it (no volume task of its own that a start could overtake).
        create = s.scalars(select(Task).where(Task.type == TaskType.VM_CREATE, Task.target_id == vm.id)
                           .order_by(Task.id.desc())).first()  # fmt: skip
        assert create is not None and create.state is TaskState.FINISHED and create.result is not None
        assert create.result["seed"] == f"{name}-seed.iso"
        assert s.scalars(select(Task).where(Task.type == TaskType.VOLUME_CREATE, Task.target_id == seed.id)).first() \
            is None
    iso = shared / f"{name}-seed.iso"
    assert iso.is_file()
    pvd = run(["sh", "-c", 'xorriso -indev "$1" -pvd_info 2>&1', "pvd", str(iso)]).stdout
    assert "Volume id    : 'cidata'" in pvd, pvd
    out = tmp_path / "seed"
    run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(out)])
    meta = json.loads((out / "meta-data").read_text())
    assert meta == {"instance-id": vm.uuid, "local-hostname": name, "public-keys": [KEY]}
    assert (out / "user-data").read_text() == user_data.read_text()
    assert (out / "network-config").read_text() == network_config.read_text()

    conn = libvirt.open(rack.node_of(vm.host_id).local_uri)
    try:
        dom = ET.fromstring(conn.lookupByUUIDString(vm.uuid).XMLDesc(0))
    finally:
        conn.close()
    disks = {d.find("target").get("dev"): d for d in dom.findall("devices/disk")}  # type: ignore[union-attr]
    assert set(disks) == {"vda", "vdz"}
    assert disks["vdz"].find("readonly") is not None
    shown = json.loads(_ok(rack, "vm", "show", name, "--json"))
    # vda is the VM's own copy-on-write overlay over the template's image; vdz the seed.
    assert [d["volume"] for d in shown["disks"]] == [f"{name}-vda.qcow2", f"{name}-seed.iso"]
    _ok(rack, "vm", "delete", name, "--wait")
    assert not iso.exists()  # the seed is the VM's own, like its overlay
    with session_scope(rack.db) as s:
        assert s.scalars(select(StorageVolume).where(StorageVolume.name == f"{name}-seed.iso")).first() is None

    # A create that fails for good (no host carries the VM's network) leaves no seed copy on the appliance,
    # and deleting the failed VM deletes its seed from the pool and the database.
    net, failed = rack.unique("cinone"), rack.unique("cifail")
    _ok(rack, "network", "create", net, "--bridge", f"dvn{net[-6:]}")
    try:
        done = rack.drover("vm", "create", failed, "--template", tpl, "--user-data", str(user_data),
                           "--network", net, "--memory", "64", "--wait", timeout=240)  # fmt: skip
        assert done.returncode != 0 and "lacks one of the VM's networks" in done.stderr, done.stdout + done.stderr
        vm = rack.vm(failed)
        with session_scope(rack.db) as s:
            # The newest: SQLite may give a new VM the id of one deleted before it.
            failed_create = s.scalars(select(Task).where(Task.type == TaskType.VM_CREATE, Task.target_id == vm.id)
                                      .order_by(Task.id.desc())).first()  # fmt: skip
            assert failed_create is not None and failed_create.state is TaskState.FAILED
            upload = Path(failed_create.args["seed_upload"])
        assert not upload.exists(), "a failed create left its seed copy in the upload directory"
        _ok(rack, "vm", "delete", failed, "--wait")
        assert not (shared / f"{failed}-seed.iso").exists()
        with session_scope(rack.db) as s:
            assert s.scalars(select(StorageVolume).where(StorageVolume.name == f"{failed}-seed.iso")).first() is None
    finally:
        rack.drover("network", "delete", net)
