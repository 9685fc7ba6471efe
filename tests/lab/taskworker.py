"""Lab fixture: the real task engine (taskengine.worker.Worker) in a child process, against a test's database.

The child runs as the appliance's libvirt client would: a ticket for drover@REALM and lab names resolved
through nss_wrapper, so it reaches lab libvirtds by FQDN over qemu+tcp + GSSAPI. One worker thread (the
nss_wrapper caveat in tests/lab/libvirtd.py). `wait(task_id)` polls the database until the task ended.

Module-scoped fixtures for a test module of tasks: `task_db` (a PostgreSQL database of its own at the newest
schema), `task_nodes` (node1 + one more lab libvirtd), `task_hosts` (their host rows, available, TCG) and
`task_worker` (the worker process on that database).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from appliance.db import migrate
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostState, HypervisorType, Task, TaskState
from appliance.hosts import default_pool
from appliance.kerberos.realm import APPLIANCE_CLIENT
from appliance.runner import spawn
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import ROOT, LabHosts, LabNode, NodeFactory, client_env
from tests.lab.postgres import PostgresServer
from tests.lab.proc import terminate

WORKER = """
import logging, sys, time
from appliance.config import TaskEngineConfig
from appliance.db.engine import make_engine
from taskengine.worker import Worker
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
settings = TaskEngineConfig(workers=1, lease_seconds=int(sys.argv[2]), poll_ms=100, retries=2, retry_base_ms=200)
worker = Worker(make_engine(sys.argv[1]), settings, 16509)
worker.start(1)
while True:
    time.sleep(3600)
"""


@dataclass
class LabWorker:
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        terminate(self.process)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


def start_worker(kdc: LabKdc, hosts: LabHosts, url: str, log: Path, lease_seconds: int = 10) -> LabWorker:
    env = client_env(kdc, hosts, APPLIANCE_CLIENT)
    process = spawn(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", WORKER, url, str(lease_seconds)], env=env, log_file=log
    )
    return LabWorker(process, log)


def wait(engine: Engine, task_id: int, worker: LabWorker, timeout: float = 120) -> Task:
    """The task once it has ended (finished, failed, canceled); TimeoutError with the worker's log if not."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(engine) as s:
            task = s.get(Task, task_id)
            if task is not None and task.state.is_terminal():
                s.expunge(task)
                return task
        if worker.process.poll() is not None:
            raise RuntimeError(f"the task worker exited ({worker.process.returncode}):\n{worker.log_text()[-4000:]}")
        if time.monotonic() > deadline:
            state = task.state if task is not None else "missing"
            raise TimeoutError(f"task {task_id} still {state} after {timeout}s:\n{worker.log_text()[-4000:]}")
        time.sleep(0.1)


def finished(engine: Engine, task_id: int, worker: LabWorker, timeout: float = 120) -> Task:
    task = wait(engine, task_id, worker, timeout)
    assert task.state is TaskState.FINISHED, f"task {task_id} {task.state}: {task.error}\n{worker.log_text()[-3000:]}"
    return task


@pytest.fixture(scope="module")
def task_db(postgres_server: PostgresServer) -> Iterator[Engine]:
    url = postgres_server.create_database(f"tasks_{uuid.uuid4().hex[:8]}")
    migrate.upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def task_nodes(libvirt_node: LabNode, libvirt_nodes: NodeFactory, request: pytest.FixtureRequest) -> list[LabNode]:
    second = f"{request.module.__name__.rsplit('.', 1)[-1].replace('_', '-')}.example.test"
    return [libvirt_node, libvirt_nodes.start(second)]


@pytest.fixture(scope="module")
def task_hosts(task_db: Engine, task_nodes: list[LabNode]) -> list[int]:
    """Host rows for the lab nodes: available, in the default hardware pool, TCG (no usable KVM in the lab)."""
    with session_scope(task_db) as s:
        pool = default_pool(s)
        rows = [
            Host(
                uuid=str(uuid.uuid4()),
                hostname=n.fqdn,
                state=HostState.AVAILABLE,
                libvirt_port=n.port,
                hardware_pool_id=pool.id,
                libvirt_connected=True,
                hypervisor_type=HypervisorType.QEMU,
                memory_mib=4096,
                cpu_count=4,
            )
            for n in task_nodes
        ]
        s.add_all(rows)
        s.flush()
        return [h.id for h in rows]


@pytest.fixture(scope="module")
def task_worker(
    task_db: Engine, task_hosts: list[int], kdc: LabKdc, lab_hosts: LabHosts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabWorker]:
    url = task_db.url.render_as_string(hide_password=False)
    w = start_worker(kdc, lab_hosts, url, tmp_path_factory.mktemp("worker") / "worker.log")
    yield w
    w.stop()
