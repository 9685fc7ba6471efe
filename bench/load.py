"""Load: one appliance under a fleet's steady traffic, all at once, for LOAD_SECONDS (10 minutes by default).

Together, paced by the clock and bounded in count and time:
- heartbeats of SIM_HOSTS enrolled hosts every HEARTBEAT_S over the node API's HTTPS (real requests, real
  agent-token checks; the hosts are SIMULATED: rows enrolled directly in the database, no machine behind);
- IDENTIFY_PER_S identifies with a one-time token each (real: a keytab issued through kadmin.local);
- TASKS_PER_S tasks (re-read a VM's state) enqueued with the API's own enqueue function and run by the
  task engine against two real lab libvirtds over Kerberos (VMS defined domains): in its own process
  (`drover taskengine run`, as a busy appliance runs it) when ENGINE_PROCESS, else inside `drover serve`.
  60 s of the mix on this 2-core machine, 2026-11-30 night: 98.6 heartbeats/s and 99.5 tasks/s finished
  with the engine in its own process, 98.7 and 90.0 inside serve (one interpreter holds at most a core);
- the collectd stream of SIM_HOSTS hosts (signed with each host's own secret, VALUES_PER_HOST values every
  HEARTBEAT_S) into the receiver and on into VictoriaMetrics.

Reported: achieved rates, p50/p99 of each request kind and of task enqueue -> finished, failures, the
receiver's values counted against those sent (any difference must show up in its drop counters), and the
server's RSS sampled each minute (flat means the last minute is within 10 % of the second). The
generator's threads run at nice GENERATOR_NICE: the simulated fleet stands for other machines, and on this
one it must not take the CPU the appliance needs (its share of the machine is reported all the same). The host
browser is off: its cost for 1,000 hosts is measured in section enrolment (`scale_1000_hosts`), and 1,000
simulated hosts cannot hold libvirt sessions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import secrets
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import libvirt
from sqlalchemy import func, select

from appliance import tasking
from appliance.db.base import utcnow
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostState, HypervisorType, Task, TaskState, TaskType, Vm, VmState
from appliance.db.tokens import mint
from appliance.hosts import default_pool
from nodeagent import wire
from tests.lab.appliance import start_appliance
from tests.lab.collectd_packets import DERIVE, GAUGE, Vl, encode, sign
from tests.lab.kdc import start_kdc
from tests.lab.libvirtd import LabHosts, NodeFactory
from tests.lab.postgres import running_postgres
from tests.lab.proc import terminate
from tests.test_enrolment import facts

LOAD_SECONDS = float(os.environ.get("DROVER_BENCH_LOAD_SECONDS", "600"))
SIM_HOSTS = 1000
HEARTBEAT_S = 10
IDENTIFY_PER_S = 10
TASKS_PER_S = 100
VMS = 200
TASK_WORKERS = 8
ENGINE_PROCESS = True
BEAT_SENDERS = 64
GENERATOR_NICE = 5
IDENTIFY_SENDERS = 16
VALUES_PER_HOST = 50
BEATS_PER_S = SIM_HOSTS / HEARTBEAT_S
COLLECTD = True
NODES = ("load1.example.test", "load2.example.test")


@dataclass
class Series:
    """Latencies and failures of one kind of request, and how far the sender fell behind its schedule."""

    seconds: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    late: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, took: float) -> None:
        with self.lock:
            self.seconds.append(took)

    def failed(self, why: str) -> None:
        with self.lock:
            self.failures[why] = self.failures.get(why, 0) + 1

    def summary(self, elapsed: float) -> dict[str, Any]:
        ordered = sorted(self.seconds)
        out: dict[str, Any] = {"done": len(ordered), "per_second": round(len(ordered) / elapsed, 1)}
        if ordered:
            out["p50_ms"] = round(statistics.median(ordered) * 1000, 1)
            out["p99_ms"] = round(ordered[max(int(len(ordered) * 0.99) - 1, 0)] * 1000, 1)
        out["failures"] = dict(self.failures)
        out["late_sends"] = self.late
        return out


def paced(rate: float, until: float, stop: threading.Event, series: Series, send: Callable[[int], None]) -> None:
    """Call send(i) at `rate` per second until the clock reaches `until` (never past it: what could not be sent
    in time is not sent, and the achieved rate says so); a send over a second behind its slot counts as late."""
    start = time.monotonic()
    i = 0
    while not stop.is_set() and time.monotonic() < until:
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            stop.wait(wait)
        elif wait < -1.0:
            series.late += 1
        send(i)
        i += 1


def senders(
    rate: float, workers: int, until: float, stop: threading.Event, series: Series, send: Callable[[int], None]
) -> list[threading.Thread]:
    """`workers` threads sharing `rate` (request i goes to thread i % workers), so one slow answer delays one
    thread's next request, not the whole stream."""
    return [
        threading.Thread(target=paced, args=(rate / workers, until, stop, series, lambda i, k=k: send(i * workers + k)))
        for k in range(workers)
    ]


def _span(rows: Any) -> float:
    created = [c for _, c, _ in rows]
    finished = [f for _, _, f in rows if f is not None]
    return (max(finished) - min(created)).total_seconds() if created and finished else 0.0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _cpu() -> tuple[float, float, float]:
    """(machine busy jiffies, machine total jiffies, this process's CPU seconds)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]  # guest is in user
    idle = fields[3] + fields[4]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return sum(fields) - idle, sum(fields), usage.ru_utime + usage.ru_stime


def _cpu_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> dict[str, float]:
    busy, total = after[0] - before[0], after[1] - before[1]
    seconds = total / os.sysconf("SC_CLK_TCK") / len(os.sched_getaffinity(0))
    generator = (after[2] - before[2]) / seconds if seconds else 0.0
    busy_pct = 100 * busy / total if total else 0.0
    generator_pct = 100 * generator / len(os.sched_getaffinity(0))
    rest_pct = busy_pct - generator_pct
    return {"busy": round(busy_pct, 1), "generator": round(generator_pct, 1), "rest": round(rest_pct, 1)}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _simulated_hosts(engine: Any) -> list[tuple[str, str, str, str, str]]:
    """SIM_HOSTS enrolled host rows: (uuid, hostname, agent token, collectd user, collectd secret)."""
    out = []
    with session_scope(engine) as s:
        pool = default_pool(s).id
        for i in range(SIM_HOSTS):
            token, secret = secrets.token_urlsafe(32), secrets.token_hex(16)
            row = Host(uuid=str(uuid.uuid4()), hostname=f"sim{i:04d}.load.test", hardware_pool_id=pool,
                       approved_at=utcnow(), approved_by="bench", credentials_issued_at=utcnow(),
                       state=HostState.AVAILABLE, agent_token_hash=hashlib.sha256(token.encode()).hexdigest(),
                       collectd_user=f"sim-{i:04d}", collectd_secret=secret)  # fmt: skip
            s.add(row)
            out.append((row.uuid, row.hostname, token, f"sim-{i:04d}", secret))
    return out


def _domains(nodes: list[Any], engine: Any) -> list[int]:
    """VMS defined (not started) domains spread over the lab nodes, with their VM rows; their ids."""
    ids = []
    with session_scope(engine) as s:
        pool = default_pool(s).id
        hosts = {h.hostname: h for h in s.scalars(select(Host).where(Host.hostname.in_(NODES)))}
        for n, node in enumerate(nodes):
            conn = libvirt.open(node.local_uri)
            try:
                for i in range(n, VMS, len(nodes)):
                    vm_uuid, name = str(uuid.uuid4()), f"load-{i:03d}"
                    conn.defineXML(f"<domain type='qemu'><name>{name}</name><uuid>{vm_uuid}</uuid>"
                                   "<memory unit='MiB'>32</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type>"
                                   "</os></domain>")  # fmt: skip
                    vm = Vm(uuid=vm_uuid, name=name, vcpus=1, memory_mib=32, state=VmState.STOPPED,
                            host_id=hosts[node.fqdn].id, hardware_pool_id=pool)  # fmt: skip
                    s.add(vm)
                    s.flush()
                    ids.append(vm.id)
            finally:
                conn.close()
    return ids


def run() -> dict[str, Any]:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # The generator enqueues with the appliance's own function, which logs each task it queues; here that is
    # the simulated fleet's noise (the appliance's log is its own file), 100 lines a second of its CPU.
    logging.getLogger("appliance").setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="drover-bench-load-"))
    kdc = start_kdc(tmp / "kdc")
    hosts = LabHosts(tmp / "nss_hosts")
    nodes = NodeFactory(kdc, hosts, Path(tempfile.mkdtemp(prefix="lv-", dir="/tmp")))
    try:
        with running_postgres() as postgres:
            return _measure(tmp, kdc, hosts, nodes, postgres.server.create_database("load"))
    finally:
        nodes.stop_all()
        kdc.process.terminate()
        kdc.process.wait(timeout=10)


def _measure(tmp: Path, kdc: Any, hosts: LabHosts, nodes: NodeFactory, url: str) -> dict[str, Any]:
    libvirt_port = 0
    lab_nodes = []
    for fqdn in NODES:
        planned = nodes.plan(fqdn, port=libvirt_port)
        libvirt_port = planned.port
        lab_nodes.append(nodes.start(fqdn, settings=planned))
    settings = {"DROVER_DATABASE_URL": url, "DROVER_NODES_IDENTIFY_PER_MINUTE": "0",
                "DROVER_NODES_HEARTBEAT_SECONDS": str(HEARTBEAT_S), "DROVER_HOSTBROWSER_ENABLED": "false",
                "DROVER_NODES_LIBVIRT_PORT": str(libvirt_port), "DROVER_TASKENGINE_WORKERS": str(TASK_WORKERS),
                "DROVER_MONITOR_SECURITY_LEVEL": "sign",
                "DROVER_TASKENGINE_ENABLED": "false" if ENGINE_PROCESS else "true"}  # fmt: skip
    served = start_appliance(kdc, tmp / "appliance", extra_env=hosts.env, settings=settings, timeout=60)
    engine = make_engine(url)
    workers = None
    try:
        if ENGINE_PROCESS:
            with open(tmp / "appliance" / "taskengine.log", "ab") as out:
                workers = subprocess.Popen([*served.argv[:-2], "-v", "taskengine", "run"], env=served.env,
                                           stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        with session_scope(engine) as s:
            pool = default_pool(s).id
            for node in lab_nodes:
                s.add(Host(uuid=node.settings.host_uuid, hostname=node.fqdn, approved_at=utcnow(), approved_by="bench",
                           credentials_issued_at=utcnow(), state=HostState.AVAILABLE, libvirt_connected=True,
                           memory_mib=65536, cpu_count=32, hypervisor_type=HypervisorType.QEMU,
                           hardware_pool_id=pool))  # fmt: skip
        sims = _simulated_hosts(engine)
        vm_ids = _domains(lab_nodes, engine)
        with session_scope(engine) as s:
            first_task = (s.scalar(select(func.max(Task.id))) or 0) + 1
            tokens = [mint(s).token for _ in range(int(IDENTIFY_PER_S * (LOAD_SECONDS + 5)))]
        return _drive(served, engine, sims, vm_ids, tokens, first_task, kdc, workers.pid if workers else None)
    finally:
        if workers is not None:
            terminate(workers, 30)
        engine.dispose()
        served.stop()


def _drive(served: Any, engine: Any, sims: list[tuple[str, str, str, str, str]], vm_ids: list[int],
           tokens: list[str], first_task: int, kdc: Any, engine_pid: int | None) -> dict[str, Any]:  # fmt: skip
    ctx = ssl.create_default_context(cadata=(kdc.root / "pki" / "ca.pem").read_text())
    # The simulated fleet stands for other machines: on this one it yields the CPU to the appliance and its
    # services (started before, so not niced). Linux nices the calling thread; the senders inherit it.
    os.nice(GENERATOR_NICE)
    stop = threading.Event()
    beats, identifies, enqueues, sent = Series(), Series(), Series(), {"values": 0, "packets": 0}
    before = httpx.get(f"{served.local_url}/metrics", timeout=10).text
    started = time.monotonic()
    until = started + LOAD_SECONDS
    local = threading.local()

    def node_client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=served.node_url, verify=ctx, trust_env=False, timeout=30)
        client: httpx.Client = local.client
        return client

    def beat(i: int) -> None:
        host_uuid, _, token, _, _ = sims[i % len(sims)]
        body = wire.encode(wire.Heartbeat(host_uuid, True, True, int(time.monotonic() - started), agent_token=token))
        t0 = time.perf_counter()
        try:
            r = node_client().post("/node/v1/heartbeat", content=body)
        except httpx.HTTPError as exc:
            beats.failed(type(exc).__name__)
            return
        (beats.ok(time.perf_counter() - t0) if r.status_code == 200 else beats.failed(str(r.status_code)))

    def identify(i: int) -> None:
        # Its own MAC (the appliance refuses an enrolled host's MAC with 409): facts() takes one from 24 bits
        # of the UUID, and 6,013 identifies drew three clashes in the 2026-11-30 evening run.
        mac = "52:54:01:" + ":".join(f"{b:02x}" for b in i.to_bytes(3, "big"))
        nic = wire.Nic("ens3", mac, 1000, ("10.0.2.15/24",), True)
        body = wire.encode(wire.IdentifyRequest(tokens[i], facts(str(uuid.uuid4()), f"new{i:05d}.load.test", (nic,))))
        t0 = time.perf_counter()
        try:
            r = node_client().post("/node/v1/identify", content=body)
        except httpx.HTTPError as exc:
            identifies.failed(type(exc).__name__)
            return
        ok = r.status_code == 200
        identifies.ok(time.perf_counter() - t0) if ok else identifies.failed(str(r.status_code))

    def enqueue(i: int) -> None:
        t0 = time.perf_counter()
        try:
            with session_scope(engine) as s:
                tasking.enqueue(s, TaskType.VM_UPDATE_STATE, vm_ids[i % len(vm_ids)], {}, created_by="bench-load")
        except Exception as exc:  # a refusal or a lost connection is a figure here, not the end of the run
            enqueues.failed(type(exc).__name__)
            return
        enqueues.ok(time.perf_counter() - t0)

    def collectd() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        per_packet = VALUES_PER_HOST
        rate = len(sims) / HEARTBEAT_S
        start = time.monotonic()
        i = 0
        while not stop.is_set():
            due = start + i / rate
            if due >= until:
                break
            if (wait := due - time.monotonic()) > 0:
                stop.wait(wait)
            _, hostname, _, user, secret = sims[i % len(sims)]
            now_hr = int(time.time() * (1 << 30))
            vls = [Vl(hostname, "cpu", "cpu", ((DERIVE, i * 100 + k),), str(k // 8), f"s{k % 8}", now_hr)
                   for k in range(per_packet - 3)]  # fmt: skip
            vls.append(Vl(hostname, "load", "load", ((GAUGE, 0.5), (GAUGE, 0.4), (GAUGE, 0.3)), time_hr=now_hr))
            sock.sendto(sign(encode(vls), user, secret.encode()), ("127.0.0.1", served.monitor_port))
            sent["values"] += per_packet
            sent["packets"] += 1
            i += 1
        sock.close()

    rss: list[tuple[float, float]] = []
    engine_rss: list[tuple[float, float]] = []

    def sample() -> None:
        while not stop.wait(min(60.0, LOAD_SECONDS / 10)):
            rss.append((round(time.monotonic() - started), _rss_mib(served.process.pid)))
            if engine_pid is not None:
                engine_rss.append((round(time.monotonic() - started), _rss_mib(engine_pid)))

    # Enough senders that one slow answer does not hold back the schedule (a fleet does not wait either).
    threads = senders(BEATS_PER_S, BEAT_SENDERS, until, stop, beats, beat) if BEATS_PER_S else []
    threads += senders(IDENTIFY_PER_S, IDENTIFY_SENDERS, until, stop, identifies, identify) if IDENTIFY_PER_S else []
    threads += senders(TASKS_PER_S, 4, until, stop, enqueues, enqueue) if TASKS_PER_S else []
    threads += [threading.Thread(target=collectd)] if COLLECTD else []
    cpu_before = _cpu()
    sampler = threading.Thread(target=sample, daemon=True)
    for t in threads:
        t.start()
    sampler.start()
    for t in threads:
        t.join(LOAD_SECONDS + 120)
    stop.set()
    elapsed = time.monotonic() - started
    cpu = _cpu_share(cpu_before, _cpu())
    # The queue drains (bounded), then every task is counted by its end state.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with session_scope(engine) as s:
            open_ = s.scalar(select(func.count()).select_from(Task).where(
                Task.id >= first_task, Task.state.in_((TaskState.QUEUED, TaskState.RUNNING)))) or 0  # fmt: skip
        if not open_:
            break
        time.sleep(1)
    with session_scope(engine) as s:
        rows = s.execute(select(Task.state, Task.created_at, Task.finished_at).where(Task.id >= first_task)).all()
    took = sorted((f - c).total_seconds() for st, c, f in rows if st is TaskState.FINISHED and f is not None)
    states: dict[str, int] = {}
    for st, _, _ in rows:
        states[str(st)] = states.get(str(st), 0) + 1
    after = httpx.get(f"{served.local_url}/metrics", timeout=10).text
    counted = {k: _metric(after, f"drover_monitor_{k}_total") - _metric(before, f"drover_monitor_{k}_total")
               for k in ("values", "packets", "queue_drops", "kernel_drops", "stored")}  # fmt: skip
    rss.append((round(time.monotonic() - started), _rss_mib(served.process.pid)))
    second, last = (rss[1][1] if len(rss) > 1 else rss[0][1]), rss[-1][1]
    return {
        "note": f"{SIM_HOSTS} SIMULATED enrolled hosts (rows, no machines) heartbeating and sending collectd; "
                "real identifies (keytabs), real tasks on 2 lab libvirtds, PostgreSQL; host browser off",
        "seconds": round(elapsed, 1),
        "heartbeats": beats.summary(elapsed),
        "identifies": identifies.summary(elapsed),
        "task_enqueues": enqueues.summary(elapsed),
        "tasks": {
            "by_state": states,
            # Over the span from the first enqueue to the last finish: the drain after the senders stop counts.
            "finished_per_second": round(len(took) / span, 1) if (span := _span(rows)) else None,
            "p50_ms": round(statistics.median(took) * 1000, 1) if took else None,
            "p99_ms": round(took[max(int(len(took) * 0.99) - 1, 0)] * 1000, 1) if took else None,
        },
        # Every packet sent is read (packets) or dropped by the kernel and counted (kernel_drops); every packet
        # read is decoded or dropped from the queue and counted (queue_drops). Unaccounted must be 0.
        "collectd": {"values_sent": sent["values"], "packets_sent": sent["packets"], **counted,
                     "packets_unaccounted": sent["packets"] - counted["packets"] - counted["kernel_drops"]},
        # Where the machine's CPU went while the senders ran: all cores busy means the figures above are this
        # machine's ceiling for the mix, not the appliance's; the generator's share is its own process.
        "cpu_percent_of_machine": cpu,
        "server_rss_mib": rss,
        "engine_rss_mib": engine_rss,
        "engine_rss_last_vs_second_sample": round(engine_rss[-1][1] / engine_rss[1][1], 3)
        if len(engine_rss) > 1 and engine_rss[1][1] else None,
        "rss_last_vs_second_sample": round(last / second, 3) if second else None,
    }
