"""A real Debian guest configures itself from drover's cloud-init seed, on the shared lab rack.

The guest is drover's own `image build --profile guest` disk (Debian's cloud-init and qemu-guest-agent),
imported as a template. `drover vm create --template T --user-data F --ssh-key K --network-config N` makes the
NoCloud seed; the VM is started at once, without waiting for its create task (the start is ordered after
the create, which uploads the seed first). Under TCG the guest boots, cloud-init reads the seed: the static
address from the network config goes on the NIC (on a bridge this test makes, like test_networks_vm_lab.py),
the key goes into the default user's authorized_keys, and runcmd writes a random token, with a count of that
key's lines, to the serial console. The guest agent then tells the host browser the address, which shows in
`drover vm show` and the API. One TCG boot for everything.

Bad input (user data that is not a #cloud-config mapping, unknown user data, a bad network config, a line
that is no public key) is refused with the reason and creates nothing.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select

from appliance import cloudinit
from appliance.db.engine import session_scope
from appliance.db.models import HostNetwork, HostNic, StorageState, StorageVolume, Task, TaskState, TaskType, Vm
from appliance.errors import UsageError
from appliance.runner import run
from image.manifest import GUEST_DISK
from tests.lab.appliance import ADMIN
from tests.lab.guest import wait_for_text
from tests.lab.image import NodeImage
from tests.lab.taskrack import AsUser, TaskRack

pytestmark = pytest.mark.lab

BOOT_TO_MARKER_S = 600  # TCG on a loaded 2-core machine: ~2 min measured alone, much more when busy
ADDRESS_S = 300


def _ok(rack: TaskRack, *argv: str, timeout: float = 300) -> str:
    done = rack.drover(*argv, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _counts(rack: TaskRack) -> tuple[int, int, int]:
    with session_scope(rack.db) as s:
        return (int(s.scalar(select(func.count()).select_from(Vm)) or 0),
                int(s.scalar(select(func.count()).select_from(StorageVolume)) or 0),
                int(s.scalar(select(func.count()).select_from(Task)) or 0))  # fmt: skip


@pytest.fixture
def bridge() -> Iterator[str]:
    """A bridge with no address and no port but the guest's tap: the guest's address is its own business."""
    name = f"dvc{secrets.token_hex(3)}"
    run(["ip", "link", "add", name, "type", "bridge"])
    run(["ip", "link", "set", name, "up"])
    try:
        yield name
    finally:
        run(["ip", "link", "delete", name], check=False)


@pytest.fixture
def lab_nic(task_rack: TaskRack) -> Iterator[str]:
    """A NIC row on the rack's first host, for a network assignment; removed with its assignments afterwards."""
    name = f"ci{secrets.token_hex(2)}"
    host_id = task_rack.host_ids[0]
    with session_scope(task_rack.db) as s:
        s.add(HostNic(host_id=host_id, name=name, mac=f"52:54:00:7c:{secrets.token_hex(1)}:01"))
    try:
        yield name
    finally:
        with session_scope(task_rack.db) as s:
            for row in s.scalars(select(HostNetwork).where(HostNetwork.host_id == host_id)).all():
                if name in row.nics:
                    s.delete(row)
            s.execute(delete(HostNic).where(HostNic.name == name))


def test_bad_cloud_init_input_is_refused_and_creates_nothing(
    task_rack: TaskRack, tmp_path: Path, client_as: AsUser
) -> None:
    rack = task_rack
    pool, tpl = rack.unique("cibadp"), rack.unique("cibadt")
    _ok(rack, "storage", "pool", "create", pool, "--type", "dir", "--path", str(tmp_path / "pool"), "--wait")
    image = tmp_path / "base.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", str(image), "16M"])
    _ok(rack, "template", "import", str(image), "--pool", pool, "--name", tpl, "--wait")
    cases = {
        "#cloud-config\nruncmd: [echo, 'unclosed\n": "cloud_init.user_data: not valid YAML",
        "#cloud-config\n- just\n- a list\n": "#cloud-config must be a YAML mapping",
        "echo hello\n": "cloud-init ignores user data whose first line is not #cloud-config",
    }
    uploads = Path(rack.served.config_env["DROVER_STATE_DIR"]) / "uploads"
    seeds_before = sorted(uploads.glob("*.upload"))
    before = _counts(rack)
    for n, (text, reason) in enumerate(cases.items()):
        f = tmp_path / f"ud{n}"
        f.write_text(text)
        bad = rack.drover("vm", "create", rack.unique("bad"), "--template", tpl, "--user-data", str(f))
        assert bad.returncode == 2 and reason in bad.stderr, (text, bad.stderr)
    nets = {"version: 3\n": "version: 1 or version: 2", "version: 2\nethernet: {}\n": "version 2 has no 'ethernet'",
            "version: 2\nethernets: [a]\n": "ethernets must be a mapping", "{": "network_config: not valid YAML"}
    for n, (text, reason) in enumerate(nets.items()):
        f = tmp_path / f"nc{n}"
        f.write_text(text)
        bad = rack.drover("vm", "create", rack.unique("bad"), "--template", tpl, "--network-config", str(f))
        assert bad.returncode == 2 and reason in bad.stderr, (text, bad.stderr)
    bad = rack.drover("vm", "create", rack.unique("bad"), "--template", tpl, "--ssh-key", "ssh-ed25519 not/base64!")
    assert bad.returncode == 2 and "is not an OpenSSH public key" in bad.stderr, bad.stderr
    bad = rack.drover("vm", "create", rack.unique("bad"), "--template", tpl, "--network", "x,colour=red")
    assert bad.returncode == 2 and "options are mac=MAC and model=MODEL" in bad.stderr, bad.stderr
    # The API answers 400 with the same reason.
    with pytest.raises(UsageError, match=r"cloud_init\.user_data: #cloud-config must be a YAML mapping"):
        client_as(ADMIN).post("/api/v1/vms", {"name": rack.unique("bad"), "template": tpl,
                                              "cloud_init": {"user_data": "#cloud-config\n[1, 2]\n"}})  # fmt: skip
    assert _counts(rack) == before  # no VM, no volume, no task
    assert sorted(uploads.glob("*.upload")) == seeds_before, "a refused request left a seed behind"
    _ok(rack, "template", "delete", tpl)


@pytest.mark.timeout(1500)  # a cold image build (minutes) and a TCG boot of Debian on a busy machine
def test_debian_guest_runs_cloud_init_from_drovers_seed(
    task_rack: TaskRack, debian_guest: NodeImage, bridge: str, lab_nic: str, tmp_path: Path, client_as: AsUser
) -> None:
    rack = task_rack
    rack.ensure_worker()
    pool, tpl, net, name = rack.unique("cigp"), rack.unique("debian"), rack.unique("cinet"), rack.unique("ci")
    _ok(rack, "storage", "pool", "create", pool, "--type", "dir", "--path", str(tmp_path / "pool"), "--wait")
    _ok(rack, "template", "import", str(debian_guest.path(GUEST_DISK)), "--pool", pool, "--name", tpl, "--wait")
    _ok(rack, "network", "create", net, "--bridge", bridge)
    token = secrets.token_hex(8)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"drover-{token}", "-f", str(tmp_path / "id")])
    user_data = tmp_path / "user-data"
    user_data.write_text(
        "#cloud-config\nruncmd:\n"
        f"  - [sh, -c, 'echo DROVER-CI-{token} keys=$(grep -c drover-{token} /home/debian/.ssh/authorized_keys)"
        " host=$(hostname) > /dev/ttyS0']\n"
    )
    mac = "52:54:00:" + ":".join(secrets.token_hex(1) for _ in range(3))
    address = f"198.51.100.{secrets.randbelow(200) + 20}"  # TEST-NET-2, on a bridge nothing else is on
    network_config = tmp_path / "network-config"
    network_config.write_text(
        f"version: 2\nethernets:\n  lan:\n    match:\n      macaddress: '{mac}'\n    addresses: [{address}/24]\n"
    )
    try:
        _ok(rack, "host", "network", rack.nodes[0].fqdn, "--set", net, "--nic", lab_nic)
        # The start is queued right behind the create, before any worker has run the create (which uploads the
        # seed): it must wait for it, as a user's `vm create && vm start` does.
        with session_scope(rack.db) as s:
            first_task = int(s.scalar(select(func.max(Task.id))) or 0) + 1  # a deleted VM's id may come back
        with rack.paused():
            _ok(rack, "vm", "create", name, "--template", tpl, "--memory", "512", "--network", f"{net},mac={mac}",
                "--user-data", str(user_data), "--ssh-key", str(tmp_path / "id.pub"),
                "--network-config", str(network_config))  # fmt: skip
            _ok(rack, "vm", "start", name)
            started_at = time.monotonic()
        vm = rack.vm(name)
        with session_scope(rack.db) as s:
            start_id = s.scalars(select(Task.id).where(Task.target_id == vm.id, Task.type == TaskType.VM_START,
                                                       Task.id >= first_task)).one()  # fmt: skip
        done = rack.wait_task(start_id, 600)
        assert done.state is TaskState.FINISHED, (done.state, done.error)
        vm = rack.vm(name)
        with session_scope(rack.db) as s:
            tasks = s.scalars(select(Task).where(Task.target_id == vm.id, Task.id >= first_task, Task.type.in_(
                (TaskType.VM_CREATE, TaskType.VM_START))).order_by(Task.id)).all()  # fmt: skip
            assert [t.type for t in tasks] == [TaskType.VM_CREATE, TaskType.VM_START]
            create, start = tasks
            assert create.result is not None and create.result["seed"] == f"{name}-seed.iso"
            upload = Path(create.args[cloudinit.SEED_ARG])
            assert create.finished_at is not None and start.started_at is not None
            assert create.finished_at <= start.started_at
            seed = s.scalars(select(StorageVolume).where(StorageVolume.name == f"{name}-seed.iso")).one()
            assert seed.state is StorageState.AVAILABLE
        assert upload.parent.name == "uploads" and not upload.exists(), "the seed's copy outlived its upload"

        log = wait_for_text(rack.serial_log(vm.host_id, name), f"DROVER-CI-{token}", BOOT_TO_MARKER_S)
        marker = next(line for line in log.splitlines() if f"DROVER-CI-{token}" in line)
        print(f"boot to cloud-init marker: {time.monotonic() - started_at:.0f}s: {marker.strip()}")
        assert f"keys=1 host={name}" in marker, marker  # the key landed once; the seed's host name was set
        # cloud-init's "finished" line, right after runcmd, names the source it read: drover's seed disk.
        wait_for_text(rack.serial_log(vm.host_id, name), "Datasource DataSourceNoCloud [seed=/dev/vd", 120)

        def shown() -> dict[str, object]:
            out: dict[str, object] = json.loads(_ok(rack, "vm", "show", name, "--json"))
            return out

        deadline = time.monotonic() + ADDRESS_S
        while f"{address}/24" not in shown()["addresses"]:  # type: ignore[operator]
            assert time.monotonic() < deadline, f"{address} not in vm show after {ADDRESS_S}s: {shown()}"
            time.sleep(3)
        assert shown()["addresses_source"] == "agent"
        text = _ok(rack, "vm", "show", name)
        assert f"{address}/24" in text and "from the agent" in text, text
        api = client_as(ADMIN).get(f"/api/v1/vms/{name}")
        assert f"{address}/24" in api["addresses"] and api["addresses_source"] == "agent", api
    finally:
        rack.drover("vm", "poweroff", name, "--wait", timeout=180)
        deleted = rack.drover("vm", "delete", name, "--wait", timeout=180)
        rack.drover("host", "network", rack.nodes[0].fqdn, "--remove", net)
        rack.drover("network", "delete", net)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    # The seed went with the VM (as its overlay did): volume row and file.
    with session_scope(rack.db) as s:
        assert s.scalars(select(StorageVolume).where(StorageVolume.name == f"{name}-seed.iso")).first() is None
    assert not (tmp_path / "pool" / f"{name}-seed.iso").exists()
    _ok(rack, "template", "delete", tpl)
