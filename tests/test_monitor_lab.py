"""The monitoring path end to end: `drover serve` (receiver + embedded VictoriaMetrics), enrolment handing out a
collectd user, the node agent's collectd config run by real collectd, the API, /metrics and `drover host metrics`.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select

from appliance import hosts
from appliance.client import Client
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Event, Vm
from appliance.db.tokens import mint
from appliance.errors import DroverError
from nodeagent import collectd, wire
from tests.lab import collectd_packets as cp
from tests.lab.appliance import ADMIN, LabAppliance, admin_appliance
from tests.lab.collectd import LabCollectd, start_with_config
from tests.lab.kdc import APPLIANCE_HOST, LabKdc
from tests.test_enrolment import facts

pytestmark = pytest.mark.lab

FQDN = "mon1.example.test"
UUID = "3c1d9a7e-5f2b-4a68-8e0d-7b6a5c4d3e2f"


def wait_for(check: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def served(kdc: LabKdc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabAppliance]:
    env = {"DROVER_MONITOR_LOAD_SECONDS": "1", "DROVER_HOSTBROWSER_ENABLED": "false"}
    with admin_appliance(kdc, tmp_path_factory.mktemp("monitor"), env) as lab:
        yield lab


@pytest.fixture(scope="module")
def db(served: LabAppliance) -> Iterator[Engine]:
    engine = make_engine(served.database_url)
    yield engine
    engine.dispose()


def enrol(served: LabAppliance, db: Engine) -> wire.Collectd:
    with session_scope(db) as s:
        token = mint(s, host_uuid=UUID).token  # bound to the machine: it re-enrols an enrolled host (its reboot)
    pinned = ssl.create_default_context(cafile=_ca(served))
    with httpx.Client(base_url=served.node_url, verify=pinned, trust_env=False) as client:
        r = client.post("/node/v1/identify", content=wire.encode(wire.IdentifyRequest(token, facts(UUID, FQDN))))
    assert r.status_code == 200, r.text
    creds = wire.decode(wire.IdentifyResponse, r.content).credentials
    assert creds is not None and creds.collectd is not None
    return creds.collectd


def _ca(served: LabAppliance) -> str:
    return str(served.kdc.root / "pki" / "ca.pem")


TEST_DOMAIN = "6695eb01-f6a4-8304-79aa-97f2502e193f"  # the running domain of libvirt's test:///default


def node_collectd(root: Path, settings: wire.Collectd, virt: bool = False) -> LabCollectd:
    # The node agent's own config, as it would write it, every second; virt reads libvirt's test driver
    # (one running domain) instead of the node's qemu:///system.
    conf = collectd.render(settings, FQDN, interval=1, virt=virt, libvirt_uri="test:///default")
    return start_with_config(root, conf)


def metrics_text(served: LabAppliance) -> str:
    r = httpx.get(f"{served.local_url}/metrics", timeout=10)  # no ticket: a Prometheus scraper has none
    assert r.status_code == 200
    return r.text


def counter(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_an_enrolled_node_reports_through_serve_to_the_api_and_cli(
    served: LabAppliance, db: Engine, tmp_path: Path
) -> None:
    settings = enrol(served, db)
    assert (settings.server, settings.port, settings.security_level) == ("127.0.0.1", served.monitor_port, "Sign")
    node = node_collectd(tmp_path / "node", settings, virt=True)
    try:
        wait_for(
            lambda: FQDN in served.drover("host", "metrics", FQDN, principal=ADMIN).stdout
            and "collectd_load_load_shortterm" in served.drover("host", "metrics", FQDN, principal=ADMIN).stdout,
            what="the node's load in `drover host metrics`",
        )
        wait_for(lambda: _load_row(db)[0] is not None, what="the host's load in the database")
        wait_for(lambda: _load_row(db)[3] == 1, what="the virt plugin's one domain counted")
        load_average, busy, used, _vms = _load_row(db)
        assert load_average is not None and load_average >= 0
        assert busy is not None and 0 <= busy <= 100
        assert used is not None and used > 0
        # a range with a sparkline, once two points are in
        time.sleep(5)
        shown = served.drover("host", "metrics", FQDN, "--series", "load_load_shortterm", "--since", "5m",
                              principal=ADMIN)  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"collectd_load_load_shortterm \(last 5m, \d+ points", shown.stdout), shown.stdout
        assert re.search("[▁▂▃▄▅▆▇█]{2,}", shown.stdout), shown.stdout
        text = metrics_text(served)
        assert counter(text, "drover_monitor_values_total") > 0
        assert 'drover_hosts{state="pending"} 1' in text
        # bad input: one-line errors, exit 2
        bad = served.drover("host", "metrics", FQDN, "--series", "load;drop", principal=ADMIN)
        assert bad.returncode == 2
        assert "not a metric name" in bad.stderr
        assert served.drover("host", "metrics", FQDN, "--since", "yesterday", principal=ADMIN).returncode == 2
        assert served.drover("host", "metrics", "nosuch.example.test", principal=ADMIN).returncode == 4
        nobody = served.drover("host", "metrics", FQDN, principal=None)
        assert nobody.returncode != 0
    finally:
        node.stop()


def test_a_re_enrolled_node_gets_a_new_secret_and_the_old_one_stops_working(
    served: LabAppliance, db: Engine, tmp_path: Path
) -> None:
    first = enrol(served, db)
    old = node_collectd(tmp_path / "old", first)
    try:
        wait_for(lambda: counter(metrics_text(served), "drover_monitor_values_total") > 0, what="values")
        second = enrol(served, db)
        assert second.username == first.username
        assert second.password != first.password
        user_failure = f'drover_monitor_user_failures_total{{user="{first.username}",kind="bad_signature"}}'
        wait_for(lambda: counter(metrics_text(served), user_failure) >= 2, what="the old secret refused")
        new = node_collectd(tmp_path / "new", second)
        try:
            before = counter(metrics_text(served), "drover_monitor_values_total")
            wait_for(lambda: counter(metrics_text(served), "drover_monitor_values_total") > before + 10, what="new")
        finally:
            new.stop()
    finally:
        old.stop()


def test_vm_metrics_follow_the_domain_uuid(
    served: LabAppliance, db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = enrol(served, db)
    with session_scope(db) as s:
        host = hosts.by_uuid(s, UUID)
        assert host is not None
        if s.scalar(select(Vm).where(Vm.uuid == TEST_DOMAIN)) is None:
            s.add(Vm(uuid=TEST_DOMAIN, name="web1", vcpus=1, memory_mib=512, host_id=host.id,
                     hardware_pool_id=host.hardware_pool_id))  # fmt: skip
    node = node_collectd(tmp_path / "node", settings, virt=True)
    monkeypatch.setenv("KRB5_CONFIG", str(served.kdc.krb5_conf))
    ccache = served.kdc.ticket(ADMIN)["KRB5CCNAME"]
    try:
        with Client(served.local_url, service_host=APPLIANCE_HOST, ccache=ccache) as api:
            wait_for(lambda: bool(api.get("/api/v1/vms/web1/metrics")["series"]), what="the VM's series")
            latest = api.get(f"/api/v1/vms/{TEST_DOMAIN}/metrics")
            assert latest["vm"] == "web1"
            names = {row["name"] for row in latest["series"]}
            assert any(n.startswith("collectd_virt_") for n in names), names
            assert all(row["labels"]["plugin_instance"] == TEST_DOMAIN for row in latest["series"])
            series = sorted(names)[0]
            ranged = api.get("/api/v1/vms/web1/metrics", {"series": series, "start": "-5m", "step": "1"})
            assert ranged["series"] and ranged["series"][0]["points"]
            with pytest.raises(DroverError) as bad:
                api.get("/api/v1/vms/web1/metrics", {"series": series, "step": "0"})
            assert bad.value.http_status == 400
            with pytest.raises(DroverError) as missing:
                api.get("/api/v1/vms/nosuch/metrics")
            assert missing.value.http_status == 404
    finally:
        node.stop()


def test_notifications_become_host_events_and_another_hosts_are_refused(served: LabAppliance, db: Engine) -> None:
    settings = enrol(served, db)
    stamp = int(time.time()) << 30
    own = cp.notification(FQDN, 1, "disk sda failing", stamp, "disk")
    forged = cp.notification("other.example.test", 1, "forged", stamp, "disk")
    before = counter(metrics_text(served), 'drover_monitor_failures_total{kind="host_mismatch"}')


    def events() -> list[tuple[str, str]]:
        # (re)sent until it shows: the receiver reads the new secret a moment after enrolment, and UDP is lossy
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for payload in (own, forged):
                signed = cp.sign(payload, settings.username, settings.password.encode())
                sock.sendto(signed, ("127.0.0.1", served.monitor_port))
        with session_scope(db) as s:
            rows = s.execute(select(Event.severity, Event.message).where(Event.kind == "host.collectd")).all()
        return [(str(sev), msg) for sev, msg in rows]

    wait_for(lambda: ("error", "disk: disk sda failing") in events(), what="the notification as a host event")
    assert not any("forged" in msg for _, msg in events())
    wait_for(
        lambda: counter(metrics_text(served), 'drover_monitor_failures_total{kind="host_mismatch"}') > before,
        what="the forged notification counted",
    )


def _load_row(db: Engine) -> tuple[float | None, float | None, int | None, int | None]:
    with session_scope(db) as s:
        host = hosts.by_uuid(s, UUID)
        assert host is not None
        return host.load_average, host.cpu_busy_percent, host.memory_used_mib, host.vm_count
