"""Web UI benchmark: page and API server times with 1,000 hosts and 10,000 VMs, and event-stream fan-out.

Against a real `drover serve` (host browser and task engine off, so only the requests measured load it)
and a real lab KDC. Baseline, in the same run: GET /api/v1/health. Measured: the hosts and VMs list pages
(first page), a VM's page, and the API calls that return the same data (Negotiate per request); then
STREAMS open /ui/stream connections and one new event: the time until every stream has delivered it,
and the server's RSS with them open. Each figure is also given as a ratio to the baseline's median.
The whole set runs twice in one run: on SQLite (top-level keys) and on PostgreSQL (`postgresql`), with
`postgresql_vs_sqlite` the ratio of each p95.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select

from appliance.client import Client
from appliance.db import migrate
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Event, Host, HostState, Vm, VmState
from appliance.hosts import default_pool
from appliance.web.session import COOKIE, Sessions
from tests.lab.appliance import start_appliance
from tests.lab.kdc import APPLIANCE_HOST, LabKdc, start_kdc
from tests.lab.postgres import running_postgres

HOSTS = 1000
VMS = 10_000
REQUESTS = 40  # per page or call
STREAMS = 200
ADMIN = "bench-admin"


def _times(call: Any, count: int = REQUESTS) -> list[float]:
    call()  # warm: templates compiled, connections open
    out = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[max(int(len(ordered) * 0.95) - 1, 0)] * 1000, 2)}  # fmt: skip


def _fill(database_url: str) -> int:
    """HOSTS available hosts and VMS running VMs spread over them; the id of one VM."""
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as s:
            pool = default_pool(s).id
            s.execute(insert(Host), [
                {"uuid": str(uuid.uuid4()), "hostname": f"node{i:04d}.bench.test", "state": HostState.AVAILABLE,
                 "cpu_count": 32, "memory_mib": 262144, "hardware_pool_id": pool, "cpu_flags": []}
                for i in range(HOSTS)])  # fmt: skip
            host_ids = list(s.scalars(select(Host.id)))
            s.execute(insert(Vm), [
                {"uuid": str(uuid.uuid4()), "name": f"vm{i:05d}", "vcpus": 2, "memory_mib": 2048,
                 "state": VmState.RUNNING, "host_id": host_ids[i % len(host_ids)], "hardware_pool_id": pool}
                for i in range(VMS)])  # fmt: skip
            return int(s.scalars(select(Vm.id).where(Vm.name == f"vm{VMS // 2:05d}")).one())
    finally:
        engine.dispose()


async def _fanout(base_url: str, cookie: str, database_url: str, pid: int) -> tuple[float, float]:
    """Seconds from one event's commit until every one of STREAMS open streams has sent it; the server's
    RSS (MiB) with them all open."""
    limits = httpx.Limits(max_connections=STREAMS + 10)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60, trust_env=False) as http:
        ready: list[asyncio.Event] = [asyncio.Event() for _ in range(STREAMS)]
        got: list[float] = [0.0] * STREAMS

        async def listen(n: int) -> None:
            async with http.stream("GET", "/ui/stream", headers={"Cookie": f"{COOKIE}={cookie}"}) as answer:
                async for line in answer.aiter_lines():
                    if line.startswith("retry:"):
                        ready[n].set()
                    if line.startswith("data:") and '"kind": "bench.fanout"' in line:
                        got[n] = time.perf_counter()
                        return

        tasks = [asyncio.create_task(listen(n)) for n in range(STREAMS)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 30)
        rss = _rss_mib(pid)
        engine = make_engine(database_url)
        try:
            with session_scope(engine) as s:
                s.add(Event(kind="bench.fanout", subject="bench"))
            sent = time.perf_counter()
        finally:
            engine.dispose()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        return max(got) - sent, rss


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _measure(kdc: LabKdc, state_dir: Path, database_url: str | None) -> dict[str, Any]:
    """Every figure against one `drover serve` on SQLite (database_url None) or the given PostgreSQL."""
    off = {"DROVER_HOSTBROWSER_ENABLED": "false", "DROVER_TASKENGINE_ENABLED": "false"}
    if database_url is not None:
        migrate.upgrade(database_url)
        off["DROVER_DATABASE_URL"] = database_url
    lab = start_appliance(kdc, state_dir, settings=off)
    url = database_url or lab.database_url
    try:
        added = lab.drover("user", "add", ADMIN, "--role", "admin")
        assert added.returncode == 0 or "already" in added.stderr, added.stderr
        vm_id = _fill(url)
        signer = make_engine(url)
        try:
            _, cookie = Sessions(signer).issue(f"{ADMIN}@{kdc.realm.name}")
        finally:
            signer.dispose()
        out: dict[str, Any] = {"hosts": HOSTS, "vms": VMS}
        with httpx.Client(base_url=lab.local_url, trust_env=False) as web:
            web.headers["Cookie"] = f"{COOKIE}={cookie}"
            base = _summary(_times(lambda: web.get("/api/v1/health").raise_for_status()))
            out["baseline_health"] = base
            for key, path in (("hosts_page", "/ui/hosts"), ("vms_page", "/ui/vms"), ("vm_page", f"/ui/vms/{vm_id}"),
                              ("events_page", f"/ui/events?vm={vm_id}&since=1d"), ("pools_page", "/ui/pools"),
                              ("storage_page", "/ui/storage"), ("users_page", "/ui/users")):  # fmt: skip
                figures = _summary(_times(lambda path=path: web.get(path).raise_for_status()))
                out[f"{key}_ms"] = figures["p95_ms"]
                out[key] = {**figures, "vs_health_median": round(figures["median_ms"] / base["median_ms"], 1)}
        ccache = kdc.ticket(ADMIN)["KRB5CCNAME"]
        os.environ["KRB5_CONFIG"] = str(kdc.krb5_conf)
        with Client(lab.local_url, service_host=APPLIANCE_HOST, ccache=ccache) as api:
            # api_vms is every VM in one answer (no limit); api_vms_page one page of 100 (paging, with the
            # total counted): what `drover vm list` and a UI ask for at a time.
            for key, path in (("api_hosts", "/api/v1/hosts"), ("api_vms", "/api/v1/vms"),
                              ("api_vms_page", "/api/v1/vms?limit=100&offset=5000"),
                              ("api_vm", f"/api/v1/vms/{vm_id}")):  # fmt: skip
                figures = _summary(_times(lambda path=path: api.get(path), count=10))
                out[f"{key}_ms"] = figures["p95_ms"]
                out[key] = {**figures, "vs_health_median": round(figures["median_ms"] / base["median_ms"], 1)}
        out["rss_mib_before_streams"] = _rss_mib(lab.process.pid)
        fanout, rss = asyncio.run(_fanout(lab.local_url, cookie, url, lab.process.pid))
        out["sse_streams"] = STREAMS
        out["sse_fanout_ms"] = round(fanout * 1000, 1)
        out["rss_mib_with_streams"] = rss
        return out
    finally:
        lab.stop()


# Figures compared between the two databases (PostgreSQL's p95 over SQLite's, same run, same machine).
COMPARED = ("hosts_page_ms", "vms_page_ms", "vm_page_ms", "events_page_ms", "pools_page_ms", "storage_page_ms",
            "users_page_ms", "api_hosts_ms", "api_vms_ms", "api_vm_ms", "sse_fanout_ms")  # fmt: skip


def run() -> dict[str, Any]:
    """SQLite (the embedded default; its figures stay at the top level) and PostgreSQL (under `postgresql`),
    with `postgresql_vs_sqlite` the ratio of each figure."""
    with tempfile.TemporaryDirectory(prefix="drover-bench-ui-") as tmp:
        kdc = start_kdc(Path(tmp) / "kdc")
        try:
            out = _measure(kdc, Path(tmp) / "sqlite", None)
            out["database"] = "sqlite"
            with running_postgres() as pg:
                out["postgresql"] = _measure(kdc, Path(tmp) / "postgresql", pg.server.create_database("bench_ui"))
            out["postgresql_vs_sqlite"] = {
                key: round(out["postgresql"][key] / out[key], 2) for key in COMPARED if out.get(key)
            }
            return out
        finally:
            kdc.process.terminate()
            kdc.process.wait(timeout=10)
