"""Task engine benchmark: start/stop through the queue vs the same libvirt calls made directly, latency,
1 vs 4 workers, live migration of a running guest, and placement at scale.

- Two lab libvirtds (Kerberos on qemu+tcp, as in the tests), a SQLite database, `drover taskengine run`
  processes as the workers. VMs are small TCG domains with nothing to boot (qemu runs, the firmware finds
  no disk): start and stop cost what libvirt and qemu cost, not a guest's boot.
- raw baseline: the same start (create) and stop (destroy) calls, one after the other, from one client
  process over one qemu+tcp connection with the appliance's ticket, against the same libvirtd.
- queue: every start and poweroff enqueued at once (each VM's in order), timed until the last one ended;
  latency is each task's created -> finished.
- migration: a booted lab guest migrated through the queue; libvirt's own downtime figure for the job.
- placement: 10,000 VMs on 1,000 hosts, SIMULATED: host capacities are rows in memory, no libvirt at all
  (the placement algorithm is pure: that is the code measured).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from appliance import placement, tasking
from appliance.db import migrate
from appliance.db.base import utcnow
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostState, HypervisorType, Task, TaskState, TaskType, Vm, VmState
from appliance.hosts import default_pool
from appliance.kerberos.realm import APPLIANCE_CLIENT
from tests.lab.accel import Accel, detect
from tests.lab.appliance import DROVER, ROOT, config_env, own_resolver
from tests.lab.guest import BOOT_MARKER, GuestImage, cmdline, wait_for_text
from tests.lab.kdc import start_kdc
from tests.lab.libvirtd import LabHosts, NodeFactory, client_env, client_python
from tests.lab.net import free_port
from tests.lab.proc import terminate

VMS = 4
CYCLES = 5  # start + stop per VM
PLACE_VMS = 10_000
PLACE_HOSTS = 1_000

_RAW = """
import sys, time, libvirt
conn = libvirt.open(sys.argv[1])
doms = [conn.lookupByUUIDString(u) for u in sys.argv[3:]]
cycles = int(sys.argv[2])
start = time.perf_counter()
for _ in range(cycles):
    for d in doms:
        d.create()
        d.destroy()
print(2 * cycles * len(doms) / (time.perf_counter() - start))
"""


class _Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.kdc = start_kdc(tmp / "kdc")
        self.hosts = LabHosts(tmp / "nss_hosts")
        self.factory = NodeFactory(self.kdc, self.hosts, tmp / "nodes")
        self.port = free_port()
        allowed = (APPLIANCE_CLIENT, "libvirt/*")
        self.nodes = [self.factory.start(f, settings=self.factory.plan(f, allowed, port=self.port))
                      for f in ("bn1.example.test", "bn2.example.test")]  # fmt: skip
        self.url = f"sqlite:///{tmp / 'drover.db'}"
        migrate.upgrade(self.url)
        self.db: Engine = make_engine(self.url)
        self.image = GuestImage.build(tmp / "guest")
        self.accel = detect(self.image)
        self.hypervisor = HypervisorType.KVM if self.accel is Accel.KVM else HypervisorType.QEMU
        with session_scope(self.db) as s:
            pool = default_pool(s).id
            self.host_ids = []
            for node in self.nodes:
                host = Host(uuid=node.settings.host_uuid, hostname=node.fqdn, approved_at=utcnow(), memory_mib=4096,
                            cpu_count=8, hardware_pool_id=pool, state=HostState.AVAILABLE,
                            hypervisor_type=self.hypervisor)  # fmt: skip
                s.add(host)
                s.flush()
                self.host_ids.append(host.id)
        self.workers: list[subprocess.Popen[bytes]] = []

    def worker(self, threads: int) -> subprocess.Popen[bytes]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.tmp), "PYTHONPATH": str(ROOT),
               **config_env(self.kdc, free_port(), self.url), **self.hosts.env,
               "DROVER_NODES_LIBVIRT_PORT": str(self.port), "DROVER_TASKENGINE_POLL_MS": "50"}  # fmt: skip
        argv, env = own_resolver([*DROVER, "taskengine", "run", "--workers", str(threads)], env)
        log = self.tmp / f"worker-{len(self.workers)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 30
        while "running with" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        self.workers.append(proc)
        return proc

    def run_tasks(self, plan: list[tuple[TaskType, int, dict[str, Any]]], timeout: float = 600) -> list[Task]:
        with session_scope(self.db) as s:
            ids = [tasking.enqueue(s, t, target, args, created_by="bench").id for t, target, args in plan]
        deadline = time.monotonic() + timeout
        while True:
            with session_scope(self.db) as s:
                rows = s.scalars(select(Task).where(Task.id.in_(ids))).all()
                if all(t.state.is_terminal() for t in rows):
                    for t in rows:
                        s.expunge(t)
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("tasks did not end")
            time.sleep(0.02)
        failed = [(t.id, t.type, t.error) for t in rows if t.state is not TaskState.FINISHED]
        if failed:
            raise RuntimeError(f"tasks failed: {failed[:3]}")
        return list(rows)

    def vms(self, count: int, host_index: int = 0, **kw: Any) -> list[int]:
        with session_scope(self.db) as s:
            pool = default_pool(s).id
            rows = [Vm(uuid=str(uuid.uuid4()), name=f"b{uuid.uuid4().hex[:6]}", vcpus=1,
                       memory_mib=kw.get("mem", 32), hardware_pool_id=pool, state=VmState.PENDING,
                       kernel_path=kw.get("kernel"), initrd_path=kw.get("initrd"),
                       kernel_cmdline=kw.get("cmdline")) for _ in range(count)]  # fmt: skip
            s.add_all(rows)
            s.flush()
            ids = [v.id for v in rows]
        proc = self.worker(2)
        try:
            self.run_tasks([(TaskType.VM_CREATE, i, {"host_id": self.host_ids[host_index]}) for i in ids])
        finally:
            terminate(proc, 15)
            self.workers.remove(proc)
        return ids

    def close(self) -> None:
        for proc in self.workers:
            terminate(proc, 15)
        self.db.dispose()
        self.factory.stop_all()
        self.kdc.process.terminate()


def _queue_round(b: _Bench, vm_ids: list[int], threads: int) -> dict[str, Any]:
    proc = b.worker(threads)
    cycle = (TaskType.VM_START, TaskType.VM_POWEROFF)
    plan: list[tuple[TaskType, int, dict[str, Any]]] = [
        (t, vm, {}) for _ in range(CYCLES) for vm in vm_ids for t in cycle
    ]
    start = time.perf_counter()
    rows = b.run_tasks(plan)
    elapsed = time.perf_counter() - start
    terminate(proc, 15)
    b.workers.remove(proc)
    lat = sorted((t.finished_at - t.created_at).total_seconds() * 1000 for t in rows if t.finished_at)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return {"tasks": len(rows), "seconds": round(elapsed, 2), "tasks_per_s": round(len(rows) / elapsed, 2),
            "p50_ms": round(statistics.median(lat), 1), "p99_ms": round(p99, 1)}  # fmt: skip


def _raw(b: _Bench, vm_ids: list[int]) -> float:
    with session_scope(b.db) as s:
        uuids = [s.get(Vm, i).uuid for i in vm_ids]  # type: ignore[union-attr]
    env = client_env(b.kdc, b.hosts, APPLIANCE_CLIENT)
    uri = b.nodes[0].uri()
    out = client_python(env, _RAW, uri, str(CYCLES), *uuids, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stdout)
    return float(out.stdout.strip().splitlines()[-1])


def _migration(b: _Bench) -> dict[str, Any]:
    (vm_id,) = b.vms(1, 0, mem=96, kernel=str(b.image.kernel), initrd=str(b.image.initrd), cmdline=cmdline())
    proc = b.worker(2)
    try:
        b.run_tasks([(TaskType.VM_START, vm_id, {})])
        with session_scope(b.db) as s:
            name = s.get(Vm, vm_id).name  # type: ignore[union-attr]
        wait_for_text(b.nodes[0].qemu_log_dir / f"{name}-serial.log", BOOT_MARKER, 180)
        results = []
        for n in range(3):  # there and back; the first migration after boot is the slow one (LAB.md)
            (task,) = b.run_tasks([(TaskType.VM_MIGRATE, vm_id, {"host_id": b.host_ids[(n + 1) % 2]})])
            results.append(task.result or {})
        b.run_tasks([(TaskType.VM_POWEROFF, vm_id, {})])
    finally:
        terminate(proc, 15)
        b.workers.remove(proc)
    downtimes = [r["downtime_ms"] for r in results if r.get("downtime_ms") is not None]
    return {"runs": results, "downtime_ms": min(downtimes) if downtimes else None,
            "total_ms": min(r["total_ms"] for r in results)}  # fmt: skip


def _placement() -> dict[str, Any]:
    rng = random.Random(9)
    hosts = [placement.HostLoad(i, f"sim{i}", rng.choice((65536, 131072, 262144)), rng.choice((16, 32, 64)),
                                pools=frozenset({1}), load=rng.random() if i % 2 else None)
             for i in range(PLACE_HOSTS)]  # fmt: skip
    wants = [placement.Want(rng.choice((512, 1024, 2048, 4096)), rng.choice((1, 2, 4)), 1) for _ in range(PLACE_VMS)]
    start = time.perf_counter()
    placed = placement.place_all(wants, hosts, cpu_overcommit=4.0)
    seconds = time.perf_counter() - start
    return {"note": "SIMULATED hosts: capacities in memory, the real placement algorithm, no libvirt",
            "vms": PLACE_VMS, "hosts": PLACE_HOSTS, "seconds": round(seconds, 2),
            "placed": sum(1 for p in placed if p is not None)}  # fmt: skip


def run() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="drover-bench-task-"))
    b = _Bench(tmp)
    try:
        vm_ids = b.vms(VMS)
        raw = _raw(b, vm_ids)
        one = _queue_round(b, vm_ids, 1)
        four = _queue_round(b, vm_ids, 4)
        migration = _migration(b)
    finally:
        b.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "note": f"{VMS} VMs x {CYCLES} start+stop on one lab libvirtd over qemu+tcp+GSSAPI; guests {b.accel.value}",
        "raw_libvirt_per_s": round(raw, 2),
        "tasks_per_s": one["tasks_per_s"],
        "ratio_queue_vs_raw": round(one["tasks_per_s"] / raw, 3) if raw else None,
        "p50_ms": one["p50_ms"],
        "p99_ms": one["p99_ms"],
        "workers_1": one,
        "workers_4": four,
        "ratio_4_vs_1_workers": round(four["tasks_per_s"] / one["tasks_per_s"], 3),
        "migration_downtime_ms": migration["downtime_ms"],
        "migration_total_ms": migration["total_ms"],
        "migration": migration,
        "placement_10000_vms_1000_hosts": _placement(),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
