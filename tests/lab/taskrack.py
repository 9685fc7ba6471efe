"""Lab fixture: one rack for the whole session — a real `drover serve`, two lab libvirtd nodes with distinct
host UUIDs on one libvirt port, both recorded as approved hosts the host browser connects, and the task
engine run as separate `drover taskengine run` processes the rack can start, kill and restart.

Shared by every module that needs VMs on nodes (task engine now; monitor and UI later): booting per test
would cost a core-minute each. The appliance's own task engine threads are off here so a test decides how
many worker processes run and may SIGKILL them; test_taskengine_serve_lab.py covers the threads of serve.

Nodes accept the appliance's principal and each other's libvirt/<fqdn> principals (peer-to-peer migration).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from appliance.client import Client
from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import Host, HostState, HypervisorType, Task, TaskState, Vm
from appliance.hosts import default_pool
from appliance.kerberos.realm import APPLIANCE_CLIENT
from tests.lab.accel import Accel
from tests.lab.appliance import ADMIN, DROVER, ROOT, LabAppliance, own_resolver
from tests.lab.guest import GuestImage, cmdline
from tests.lab.kdc import APPLIANCE_HOST, LabKdc
from tests.lab.libvirtd import LabHosts, LabNode, NodeFactory
from tests.lab.proc import terminate
from tests.lab.rack import Lab, rack

RACK_NODES = ("tn1.example.test", "tn2.example.test")
HOST_MEMORY_MIB = 2048  # what the rack's host rows say (placement's capacity), not the machine's
HOST_CPUS = 4


@dataclass
class TaskRack:
    lab: Lab
    nodes: list[LabNode]
    host_ids: list[int]
    image: GuestImage
    accel: Accel
    workdir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def served(self) -> LabAppliance:
        return self.lab.served

    @property
    def db(self) -> Engine:
        return self.lab.db

    def drover(
        self, *argv: str, principal: str | None = ADMIN, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.served.drover(*argv, principal=principal, timeout=timeout)

    def worker_env(self, database_url: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir), "PYTHONPATH": str(ROOT),
               "PYTHONFAULTHANDLER": "1", **self.served.config_env, **self.lab.hosts.env,
               "DROVER_NODES_LIBVIRT_PORT": str(self.lab.libvirt_port),
               "DROVER_TASKENGINE_LEASE_SECONDS": "6", "DROVER_TASKENGINE_POLL_MS": "100"}  # fmt: skip
        if database_url is not None:
            env["DROVER_DATABASE_URL"] = database_url
        env.update(extra or {})
        return env

    def start_worker(
        self, workers: int = 2, database_url: str | None = None, log_name: str = "", env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """A `drover taskengine run` process resolving lab names as the server does; stopped at session end.
        `env`: extra settings for this worker (DROVER_TASKENGINE_...)."""
        argv, full_env = own_resolver([*DROVER, "-v", "taskengine", "run", "--workers", str(workers)],
                                      self.worker_env(database_url, env))  # fmt: skip
        log = self.workdir / (log_name or f"worker-{len(self.workers)}.log")
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, env=full_env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                terminate(proc, 15)
        self.workers.clear()

    @contextlib.contextmanager
    def workers_with(self, env: dict[str, str], workers: int = 2) -> Iterator[subprocess.Popen[bytes]]:
        """For the block, the rack's task engine is one process with these extra settings (a test of a
        worker setting); afterwards a default one again. Nothing may be running when the block starts."""
        self.stop_workers()
        proc = self.start_worker(workers, env=env, log_name="worker-settings.log")
        try:
            yield proc
        finally:
            self.stop_workers()
            self.start_worker(log_name="worker-main.log")

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No task engine during the block (what is queued meanwhile waits); the default one again after."""
        self.stop_workers()
        try:
            yield
        finally:
            self.start_worker(log_name="worker-main.log")

    def ensure_worker(self) -> None:
        """At least one live worker process (a test may have killed them all)."""
        self.workers = [p for p in self.workers if p.poll() is None]
        if not self.workers:
            self.start_worker()

    def wait_task(self, task_id: int, timeout: float = 180) -> Task:
        deadline = time.monotonic() + timeout
        while True:
            with session_scope(self.db) as s:
                task = s.get(Task, task_id)
                assert task is not None
                if task.state.is_terminal():
                    s.expunge(task)
                    return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} still {task.state} after {timeout}s ({task.message})")
            time.sleep(0.1)

    def vm(self, name: str) -> Vm:
        with session_scope(self.db) as s:
            vm = s.scalars(select(Vm).where(Vm.name == name)).one()
            s.expunge(vm)
            return vm

    def node_of(self, host_id: int | None) -> LabNode:
        return self.nodes[self.host_ids.index(host_id or -1)]

    def serial_log(self, host_id: int | None, vm_name: str) -> Path:
        return self.node_of(host_id).qemu_log_dir / f"{vm_name}-serial.log"

    def guest_args(self, name: str, memory: int = 96, *extra: str) -> list[str]:
        """`drover vm create` arguments for a lab guest (direct kernel boot of the lab's busybox image)."""
        return ["vm", "create", name, "--memory", str(memory), "--kernel", str(self.image.kernel),
                "--initrd", str(self.image.initrd), "--cmdline", cmdline(), *extra]  # fmt: skip

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{uuidlib.uuid4().hex[:6]}"


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout}s")
        time.sleep(0.1)


@contextmanager
def open_rack(
    kdc: LabKdc,
    lab_hosts: LabHosts,
    libvirt_nodes: NodeFactory,
    guest_image: GuestImage,
    guest_accel: Accel,
    state: Path,
    names: tuple[str, ...] = RACK_NODES,
    settings: dict[str, str] | None = None,
) -> Iterator[TaskRack]:
    """A rack: `drover serve` (settings: DROVER_* for it and its CLI, e.g. a PostgreSQL URL), lab libvirtds
    named `names` as approved hosts the host browser has connected, and one task engine worker process."""
    env = {"DROVER_TASKENGINE_ENABLED": "false", "DROVER_HOSTBROWSER_ZEROCONF": "false"}
    with rack(kdc, lab_hosts, libvirt_nodes, state, {ADMIN: "admin"}, env, settings) as lab:
        nodes: list[LabNode] = []
        host_ids: list[int] = []
        allowed = (APPLIANCE_CLIENT, "libvirt/*")  # the appliance, and peer nodes migrating to this one
        for fqdn in names:
            node = libvirt_nodes.start(fqdn, settings=libvirt_nodes.plan(fqdn, allowed, port=lab.libvirt_port))
            nodes.append(node)
            with session_scope(lab.db) as s:
                host = Host(uuid=node.settings.host_uuid, hostname=fqdn, approved_at=utcnow(), approved_by="lab",
                            credentials_issued_at=utcnow(),
                            memory_mib=HOST_MEMORY_MIB, cpu_count=HOST_CPUS, cpu_cores=HOST_CPUS,
                            hypervisor_type=HypervisorType.KVM if guest_accel is Accel.KVM else HypervisorType.QEMU,
                            hardware_pool_id=default_pool(s).id)  # fmt: skip
                s.add(host)
                s.flush()
                host_ids.append(host.id)

        def available() -> bool:
            with session_scope(lab.db) as s:
                rows = s.scalars(select(Host).where(Host.id.in_(host_ids))).all()
                return all(h.state is HostState.AVAILABLE and h.libvirt_connected for h in rows)

        wait_until("the rack's hosts available", available, 60)
        the_rack = TaskRack(lab, nodes, host_ids, guest_image, guest_accel, state)
        the_rack.start_worker(log_name="worker-main.log")
        try:
            yield the_rack
        finally:
            the_rack.stop_workers()


@pytest.fixture(scope="session")
def task_rack(
    kdc: LabKdc,
    lab_hosts: LabHosts,
    libvirt_nodes: NodeFactory,
    guest_image: GuestImage,
    guest_accel: Accel,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TaskRack]:
    state = tmp_path_factory.mktemp("taskrack")
    with open_rack(kdc, lab_hosts, libvirt_nodes, guest_image, guest_accel, state) as the_rack:
        yield the_rack


def pending_tasks(db: Engine) -> int:
    with session_scope(db) as s:
        return len(s.scalars(select(Task.id).where(Task.state.in_((TaskState.QUEUED, TaskState.RUNNING)))).all())


AsUser = Callable[[str], Client]


@pytest.fixture
def client_as(task_rack: TaskRack, kdc: LabKdc, monkeypatch: pytest.MonkeyPatch) -> Iterator[AsUser]:
    """API clients of the shared rack's appliance, each signed in (Kerberos) as the user named."""
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
    clients: list[Client] = []

    def make(name: str) -> Client:
        ccache = kdc.ticket(name)["KRB5CCNAME"]
        client = Client(task_rack.served.local_url, service_host=APPLIANCE_HOST, ccache=ccache)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()
