"""Enrolment benchmark: identify requests/s, host browser changes/s into the DB, and 1,000 hosts in one process.

- identify: POST /node/v1/identify over HTTPS to a real `drover serve` (lab KDC, SQLite), without a token
  (pending: DB work only) and with tokens (kadmin.local issues a keytab each); baseline: GET /api/v1/health
  on the same server process. Then the same accepted identifies against a second `drover serve` in external
  mode, whose keytabs come from a site-style realm's kadmind (tests/lab/kdc.py start_site_realm) through
  remote kadmin, as a ratio to the embedded kadmin.local figure of this run.
- events: lifecycle changes through the host browser's DB writer; baseline: plain Event inserts, same batch.
- scale: 1,000 approved hosts with 10 domains each, 10 of them (scattered) hanging in connect like a frozen
  libvirtd: the other 990 must not wait for them. SIMULATED at the libvirt-connection boundary: the connector
  hands out in-memory connections (or blocks) instead of calling libvirt.open; everything above it (connect
  pool, sessions, writer, DB) is the real code.
"""

from __future__ import annotations

import resource
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import libvirt
from sqlalchemy import Engine, func, select

from appliance.config import load
from appliance.db import migrate
from appliance.db.base import utcnow
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Event, Host, HostState, Vm, VmState
from appliance.db.tokens import mint
from appliance.hosts import default_pool
from hostbrowser.browser import HostBrowser
from hostbrowser.sync import Domain, DomainChanged, Writer
from nodeagent import wire
from tests.lab.appliance import LabAppliance, start_appliance
from tests.lab.kdc import external_state, start_kdc, start_site_realm
from tests.test_enrolment import facts

PENDING_REQUESTS = 300
ACCEPTED_REQUESTS = 10  # per round; each side runs ACCEPTED_ROUNDS rounds
ACCEPTED_ROUNDS = 4
EVENTS = 20_000
HOSTS = 1000
DOMAINS_PER_HOST = 10
HUNG_HOSTS = 10  # every HOSTS // HUNG_HOSTS-th host never answers a connect (until the end of the run)
HUNG_TIMEOUT = 5  # [hostbrowser] connect_timeout_seconds for this run, so abandoning shows within it


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def _identify(tmp: Path) -> dict[str, Any]:
    kdc = start_kdc(tmp / "kdc")
    site = start_site_realm(tmp / "site")
    labs: list[LabAppliance] = []
    try:
        # One client sends every request: the per-source limit (60 identifies a minute by default) is off,
        # as it would be for a measurement of the server itself.
        unlimited = {"DROVER_NODES_IDENTIFY_PER_MINUTE": "0"}
        lab = start_appliance(kdc, tmp / "appliance", extra_env=unlimited)
        labs.append(lab)
        state = tmp / "external"
        external = start_appliance(site.kdc, state, settings=external_state(site, state), extra_env=unlimited)
        labs.append(external)
        pem = (kdc.root / "pki" / "ca.pem").read_text()
        with httpx.Client(base_url=lab.local_url, trust_env=False) as api:
            start = time.perf_counter()
            for _ in range(PENDING_REQUESTS):
                api.get("/api/v1/health").raise_for_status()
            health = _rate(PENDING_REQUESTS, time.perf_counter() - start)
        ctx = ssl.create_default_context(cadata=pem)
        with httpx.Client(base_url=lab.node_url, verify=ctx, trust_env=False) as node:
            bodies = [wire.encode(wire.IdentifyRequest("", facts(str(uuid.uuid4()), f"b{i}.example.test")))
                      for i in range(PENDING_REQUESTS)]  # fmt: skip
            start = time.perf_counter()
            for body in bodies:
                assert node.post("/node/v1/identify", content=body).status_code == 202
            pending = _rate(PENDING_REQUESTS, time.perf_counter() - start)
        # Embedded (kadmin.local) and external (kadmin to kadmind) identifies in alternating rounds, so a
        # machine busy with something else weighs on both alike.
        sides = {"local": (lab, pem), "remote": (external, (state / "pki" / "ca.pem").read_text())}
        seconds = {"local": 0.0, "remote": 0.0}
        for n in range(ACCEPTED_ROUNDS):
            for side in ("local", "remote") if n % 2 == 0 else ("remote", "local"):
                served, ca = sides[side]
                seconds[side] += _accepted(served, ca, f"{side}{n}-")
    finally:
        for served in labs:
            served.stop()
        site.stop()
        kdc.process.terminate()
        kdc.process.wait(timeout=10)
    accepted = _rate(ACCEPTED_ROUNDS * ACCEPTED_REQUESTS, seconds["local"])
    remote = _rate(ACCEPTED_ROUNDS * ACCEPTED_REQUESTS, seconds["remote"])
    return {
        "baseline_health_per_second": health,
        "identify_pending_per_second": pending,
        "identify_accepted_with_keytab_per_second": accepted,
        "pending_vs_health_ratio": round(pending / health, 3),
        "identify_accepted_with_keytab_remote_kadmin_per_second": remote,
        "remote_kadmin_vs_kadmin_local_ratio": round(remote / accepted, 3),
    }


def _accepted(lab: LabAppliance, pem: str, prefix: str) -> float:
    """Seconds for ACCEPTED_REQUESTS identifies with a token each (a keytab issued per request)."""
    engine = make_engine(lab.database_url)
    with session_scope(engine) as s:
        tokens = [mint(s).token for _ in range(ACCEPTED_REQUESTS)]
    engine.dispose()
    bodies = [wire.encode(wire.IdentifyRequest(t, facts(str(uuid.uuid4()), f"{prefix}{i}.example.test")))
              for i, t in enumerate(tokens)]  # fmt: skip
    ctx = ssl.create_default_context(cadata=pem)
    with httpx.Client(base_url=lab.node_url, verify=ctx, trust_env=False) as node:
        start = time.perf_counter()
        for body in bodies:
            assert node.post("/node/v1/identify", content=body).status_code == 200
        return time.perf_counter() - start


def _fresh_db(path: Path) -> Engine:
    migrate.upgrade(f"sqlite:///{path}")
    return make_engine(f"sqlite:///{path}")


def _add_hosts(engine: Engine, count: int) -> list[int]:
    with session_scope(engine) as s:
        pool = default_pool(s)
        rows = [Host(uuid=str(uuid.uuid4()), hostname=f"sim{i}.example.test", hardware_pool_id=pool.id,
                     approved_at=utcnow(), credentials_issued_at=utcnow()) for i in range(count)]  # fmt: skip
        s.add_all(rows)
        s.flush()
        return [h.id for h in rows]


def _events(tmp: Path) -> dict[str, Any]:
    engine = _fresh_db(tmp / "events.db")
    (host_id,) = _add_hosts(engine, 1)
    start = time.perf_counter()
    for chunk in range(0, EVENTS, 500):
        with session_scope(engine) as s:
            s.add_all(Event(kind="bench", message=str(i)) for i in range(chunk, min(chunk + 500, EVENTS)))
    baseline = _rate(EVENTS, time.perf_counter() - start)
    writer = Writer(engine)
    writer.start()
    states = (VmState.RUNNING, VmState.STOPPED)
    doms = [str(uuid.uuid4()) for _ in range(50)]
    start = time.perf_counter()
    for i in range(EVENTS):
        writer.put(DomainChanged(host_id, Domain(doms[i % 50], f"vm{i % 50}", states[(i // 50) % 2], 1, 256)))
    writer.flush(300)
    applied = _rate(writer.applied, time.perf_counter() - start)
    writer.stop()
    engine.dispose()
    return {"baseline_event_inserts_per_second": baseline, "vm_changes_applied_per_second": applied,
            "applied_vs_insert_ratio": round(applied / baseline, 3)}  # fmt: skip


class SimulatedConnection:
    """Stands in for a libvirt connection (bench only): domains in memory, close callback on demand."""

    def __init__(self, name: str) -> None:
        self.domains = [SimulatedDomain(f"{name}-vm{i}") for i in range(DOMAINS_PER_HOST)]
        self.on_close: Any = None

    def setKeepAlive(self, interval: int, count: int) -> None:  # noqa: N802 - libvirt's names
        pass

    def registerCloseCallback(self, cb: Any, opaque: Any) -> None:  # noqa: N802
        self.on_close = cb

    def unregisterCloseCallback(self) -> None:  # noqa: N802
        self.on_close = None

    def domainEventRegisterAny(self, dom: Any, event: int, cb: Any, opaque: Any) -> int:  # noqa: N802
        return 1

    def domainEventDeregisterAny(self, callback_id: int) -> None:  # noqa: N802
        pass

    def listAllDomains(self, flags: int) -> list[SimulatedDomain]:  # noqa: N802
        return self.domains

    def close(self) -> None:
        pass


class SimulatedDomain:
    def __init__(self, name: str) -> None:
        self._name, self._uuid = name, str(uuid.uuid4())

    def info(self) -> list[int]:
        return [libvirt.VIR_DOMAIN_RUNNING, 524288, 524288, 1, 0]

    def name(self) -> str:
        return self._name

    def UUIDString(self) -> str:  # noqa: N802
        return self._uuid


def _count(engine: Engine, state: HostState) -> int:
    with session_scope(engine) as s:
        return int(s.scalar(select(func.count()).select_from(Host).where(Host.state == state)) or 0)


def _scale(tmp: Path) -> dict[str, Any]:
    engine = _fresh_db(tmp / "scale.db")
    _add_hosts(engine, HOSTS)
    conns: dict[str, SimulatedConnection] = {}
    gone = threading.Event()  # after the loss the hosts stay gone: reconnects fail, as to powered-off nodes
    release = threading.Event()  # the end of the run: hung connects return (and fail)
    hung = {f"sim{i}" for i in range(0, HOSTS, HOSTS // HUNG_HOSTS)} if HUNG_HOSTS else set()
    answering = HOSTS - len(hung)

    def connector(uri: str) -> SimulatedConnection:
        name = uri.split("/")[2].split(".", maxsplit=1)[0]
        if name in hung:
            release.wait()
        if gone.is_set() or name in hung:
            raise libvirt.libvirtError("simulated: the host is gone")
        conns[uri] = SimulatedConnection(name)
        return conns[uri]

    cfg = load(env={"DROVER_STATE_DIR": str(tmp), "DROVER_DATABASE_URL": f"sqlite:///{tmp / 'scale.db'}",
                    "DROVER_HOSTBROWSER_CONNECT_TIMEOUT_SECONDS": str(HUNG_TIMEOUT)})  # fmt: skip
    browser = HostBrowser(cfg, engine, connector)
    threads_before = threading.active_count()
    start = time.perf_counter()
    browser.start()
    try:
        while _count(engine, HostState.AVAILABLE) < answering:
            time.sleep(0.05)
        all_up = time.perf_counter() - start
        start = time.perf_counter()
        gone.set()
        for conn in list(conns.values()):
            conn.on_close(conn, libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE, None)
        while _count(engine, HostState.UNAVAILABLE) < answering:
            time.sleep(0.05)
        all_down = time.perf_counter() - start
        with session_scope(engine) as s:
            unreachable = s.scalar(select(func.count()).select_from(Vm).where(Vm.state == VmState.UNREACHABLE))
        while browser.pool.status()["abandoned"] < len(hung) and time.perf_counter() - start < 3 * HUNG_TIMEOUT:
            time.sleep(0.05)
        threads = threading.active_count() - threads_before
        connects = browser.pool.status()
    finally:
        release.set()
        browser.stop()
        engine.dispose()
    return {
        "note": "SIMULATED at the libvirt-connection boundary: in-memory connections instead of libvirt.open",
        "hosts": HOSTS,
        "hung_hosts": len(hung),
        "domains": HOSTS * DOMAINS_PER_HOST,
        "seconds_until_all_available": round(all_up, 2),  # the answering ones
        "seconds_until_all_unavailable_after_loss": round(all_down, 2),
        "vms_unreachable": unreachable,
        "connects_abandoned": connects["abandoned"],
        "connect_workers": connects["workers"],
        "threads_used": threads,  # incl. one stuck thread per hung host
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="drover-bench-enrol-"))
    try:
        return {"identify": _identify(tmp), "events": _events(tmp), "scale_1000_hosts": _scale(tmp)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
