"""The task engine as threads of `drover serve` (its default): a VM created and started through the API
runs on a rack node, and maintenance of its host with the VM running migrates it off (clear host).
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from appliance.db.base import utcnow
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostState, HypervisorType, Task, TaskType
from appliance.hosts import default_pool
from tests.lab.accel import Accel
from tests.lab.appliance import ADMIN, admin_appliance
from tests.lab.guest import BOOT_MARKER, wait_for_text
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts
from tests.lab.taskrack import TaskRack, wait_until

pytestmark = pytest.mark.lab


def test_serve_runs_tasks_in_its_own_threads_and_maintenance_clears_the_host(
    task_rack: TaskRack, kdc: LabKdc, lab_hosts: LabHosts, tmp_path_factory: pytest.TempPathFactory
) -> None:
    rack = task_rack
    env = {**lab_hosts.env, "DROVER_NODES_LIBVIRT_PORT": str(rack.lab.libvirt_port),
           "DROVER_HOSTBROWSER_ZEROCONF": "false", "DROVER_TASKENGINE_WORKERS": "2"}  # fmt: skip
    with admin_appliance(kdc, tmp_path_factory.mktemp("serve-te"), env) as served:
        db = make_engine(served.database_url)
        try:
            with session_scope(db) as s:
                ids = []
                for node in rack.nodes:
                    host = Host(uuid=node.settings.host_uuid, hostname=node.fqdn, approved_at=utcnow(),
                                credentials_issued_at=utcnow(), memory_mib=2048, cpu_count=4,
                                hypervisor_type=HypervisorType.KVM if rack.accel is Accel.KVM else HypervisorType.QEMU,
                                hardware_pool_id=default_pool(s).id)  # fmt: skip
                    s.add(host)
                    s.flush()
                    ids.append(host.id)

            def available() -> bool:
                with session_scope(db) as s:
                    return all(s.get(Host, i).state is HostState.AVAILABLE for i in ids)  # type: ignore[union-attr]

            wait_until("hosts available", available, 60)
            name = rack.unique("served")

            def ok(*argv: str) -> str:
                proc = served.drover(*argv, principal=ADMIN, timeout=240)
                assert proc.returncode == 0, proc.stdout + proc.stderr
                return proc.stdout

            ok(*rack.guest_args(name), "--host", rack.nodes[0].fqdn, "--wait")
            ok("vm", "start", name, "--wait")
            with session_scope(db) as s:
                vm_host = s.scalars(select(Host.id).where(Host.hostname == rack.nodes[0].fqdn)).one()
            wait_for_text(rack.node_of(rack.host_ids[0]).qemu_log_dir / f"{name}-serial.log", BOOT_MARKER, 120)
            with session_scope(db) as s:
                owners = set(s.scalars(select(Task.lease_owner)))
            assert all(o and o.split(":")[1].split("/")[0] == str(served.process.pid) for o in owners), owners

            ok("host", "maintenance", rack.nodes[0].fqdn, "--reason", "test")

            def cleared() -> bool:
                with session_scope(db) as s:
                    task = s.scalars(select(Task).where(Task.type == TaskType.HOST_CLEAR)).first()
                    return task is not None and task.state.is_terminal()

            wait_until("the clear host task", cleared, 180)
            with session_scope(db) as s:
                task = s.scalars(select(Task).where(Task.type == TaskType.HOST_CLEAR)).one()
                assert task.target_id == vm_host and task.error is None, task.error
            shown = ok("vm", "show", name)
            assert f"host:             {rack.nodes[1].fqdn}" in shown and "running" in shown
            ok("vm", "poweroff", name, "--wait")
            ok("vm", "delete", name, "--wait")
            ok("host", "activate", rack.nodes[0].fqdn)
        finally:
            db.dispose()
