"""A migrated VM's series continue under the same UUID (issue 10), nothing mocked.

The task engine's session rack: two lab libvirtds with distinct host UUIDs and its `drover serve`, whose
receiver and embedded VictoriaMetrics are the monitor's. Each node gets a real collectd on the node agent's
own config (nodeagent.collectd.render), its virt plugin reading that node's libvirtd (the lab's unix socket),
its network plugin signing with the collectd user and secret the appliance issued to that host
(appliance.monitoring.collectd_for, what enrolment calls). A TCG guest started on node A through the queue is
migrated to node B with `drover vm migrate --wait`; its series are read back through GET /api/v1/vms/{uuid}/metrics,
and the raw samples straight from the TSDB to measure the hand-over.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from appliance import monitoring
from appliance.client import Client
from appliance.config import CollectdSecurity
from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import Host
from nodeagent import collectd, wire
from tests.lab.appliance import ADMIN
from tests.lab.collectd import LabCollectd, start_with_config
from tests.lab.guest import BOOT_MARKER, wait_for_text
from tests.lab.kdc import APPLIANCE_HOST
from tests.lab.libvirtd import LabNode, virsh
from tests.lab.taskrack import TaskRack, wait_until

pytestmark = pytest.mark.lab

INTERVAL = 1  # collectd's Interval on the lab nodes, seconds (a real node's is 10)
SERIES = "collectd_virt_virt_cpu_total"  # reported for every running domain, each read
# Longest hand-over allowed between the source's last sample and the destination's first: the migration's
# switch-over plus the destination's virt plugin noticing the domain (RefreshInterval, 3 intervals) and
# reading it, with slack for a loaded 2-core machine.
MAX_GAP_S = 8 * INTERVAL
LOG = """LoadPlugin logfile
<Plugin logfile>
  LogLevel info
  File "{root}/collectd.log"
  Timestamp true
</Plugin>
"""


@dataclass(frozen=True)
class Sample:
    host: str
    at: float  # collectd's own time of the read, unix seconds


def _issue(rack: TaskRack, host_id: int) -> wire.Collectd:
    """This host's collectd user and a fresh secret in the appliance's database, as enrolment hands them out."""
    where = monitoring.CollectdTarget("127.0.0.1", rack.served.monitor_port, CollectdSecurity.SIGN)
    with session_scope(rack.db) as s:
        host = s.get(Host, host_id)
        assert host is not None
        return monitoring.collectd_for(host, where)


def _start(rack: TaskRack, node: LabNode, host_id: int, root: Path) -> LabCollectd:
    settings = _issue(rack, host_id)
    assert settings.security_level == "Sign" and settings.username == f"drover-host-{host_id}"
    # The node's config as the agent writes it; the virt plugin reads this lab node's libvirtd.
    conf = collectd.render(settings, node.fqdn, interval=INTERVAL, libvirt_uri=node.local_uri)
    return start_with_config(root, LOG.format(root=root) + conf)


def _restore(rack: TaskRack, stopped_at: float) -> None:
    """Leave the shared rack's host rows as they were: no collectd user, no load (placement reads CPU busy %).

    The monitor writes each host's load every [monitor] load_seconds, once more after the last values
    arrived: wait for that write (bounded) before clearing, or it would land after the clearing.
    """
    since = utcnow() - timedelta(seconds=time.monotonic() - stopped_at - 0.5)

    def written() -> bool:
        with session_scope(rack.db) as s:
            rows = [s.get(Host, h) for h in rack.host_ids]
            return all(r is not None and r.load_updated_at is not None and r.load_updated_at > since for r in rows)

    deadline = time.monotonic() + 25
    while not written() and time.monotonic() < deadline:
        time.sleep(0.5)
    with session_scope(rack.db) as s:
        for host_id in rack.host_ids:
            host = s.get(Host, host_id)
            assert host is not None
            host.collectd_user = host.collectd_secret = None
            host.load_average = host.cpu_busy_percent = host.load_updated_at = None
            host.memory_used_mib = host.vm_count = None


@contextmanager
def node_collectds(rack: TaskRack, root: Path) -> Iterator[list[LabCollectd]]:
    started: list[LabCollectd] = []
    try:
        for i, node in enumerate(rack.nodes):
            started.append(_start(rack, node, rack.host_ids[i], root / node.fqdn))
        yield started
    finally:
        for lab in started:
            lab.stop()
        _restore(rack, time.monotonic())


def _raw(rack: TaskRack, uuid: str) -> list[Sample]:
    """Every stored sample of the VM's CPU series, straight from the TSDB, by collectd's timestamps."""
    r = httpx.get(f"http://127.0.0.1:{rack.served.tsdb_port}/api/v1/export",
                  params={"match[]": f'{SERIES}{{plugin_instance="{uuid}"}}'}, timeout=10)  # fmt: skip
    assert r.status_code == 200, r.text
    out = []
    for line in r.text.splitlines():
        row = json.loads(line)
        out += [Sample(row["metric"]["host"], ms / 1000) for ms in row["timestamps"]]
    return sorted(out, key=lambda s: s.at)


def _ok(rack: TaskRack, *argv: str, timeout: float = 240) -> str:
    proc = rack.drover(*argv, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _counts_match_libvirt(rack: TaskRack, uuid: str) -> bool:
    """Each rack host's VM count (the monitor's, from its virt values) is what its libvirtd runs, the VM on B only.

    Counted from libvirt rather than assumed 0 and 1: a module before this one may have left a guest running.
    """
    running = []
    for node in rack.nodes:
        listed = virsh({}, node.local_uri, "list", "--uuid", "--state-running")
        assert listed.returncode == 0, listed.stdout
        running.append(set(listed.stdout.split()))
    if uuid in running[0] or uuid not in running[1]:
        return False
    with session_scope(rack.db) as s:
        counted = [s.get(Host, h).vm_count for h in rack.host_ids]  # type: ignore[union-attr]
    return counted == [len(r) for r in running]


def test_a_migrated_vms_series_continue_under_the_same_uuid(
    task_rack: TaskRack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rack = task_rack
    rack.ensure_worker()
    src, dst = rack.nodes
    monkeypatch.setenv("KRB5_CONFIG", str(rack.served.kdc.krb5_conf))
    ccache = rack.served.kdc.ticket(ADMIN)["KRB5CCNAME"]
    name = rack.unique("monmig")
    with node_collectds(rack, tmp_path) as labs, Client(rack.served.local_url, service_host=APPLIANCE_HOST,
                                                          ccache=ccache) as api:  # fmt: skip
        _ok(rack, *rack.guest_args(name), "--host", src.fqdn, "--wait")
        _ok(rack, "vm", "start", name, "--wait")
        vm = rack.vm(name)
        assert vm.host_id == rack.host_ids[0]
        wait_for_text(rack.serial_log(vm.host_id, name), BOOT_MARKER, 120)

        def hosts_reporting(since: float) -> set[str]:
            latest = api.get(f"/api/v1/vms/{vm.uuid}/metrics")
            assert latest["uuid"] == vm.uuid and latest["vm"] == name
            return {row["labels"]["host"] for row in latest["series"] if row["time"] >= since}

        t0 = time.time()
        wait_until("the VM's series from the source", lambda: src.fqdn in hosts_reporting(t0), 60)
        # Samples since t0 (the VM booted before it, so older ones would satisfy a plain count at once).
        wait_until("a few samples on the source", lambda: sum(s.at >= t0 for s in _raw(rack, vm.uuid)) >= 5, 60)

        started = time.time()
        out = _ok(rack, "vm", "migrate", name, "--host", dst.fqdn, "--wait")
        finished = time.time()
        assert "vm_migrate: finished" in out, out
        assert rack.vm(name).host_id == rack.host_ids[1]

        wait_until("the VM's series from the destination", lambda: dst.fqdn in hosts_reporting(finished), 60)

        def arrived() -> int:
            return sum(s.host == dst.fqdn and s.at > finished for s in _raw(rack, vm.uuid))

        wait_until("5 samples on the destination after the migration", lambda: arrived() >= 5, 60)
        # The monitor's per-host VM count follows too (a domain unseen for three intervals is gone).
        wait_until("each host's VM count as its libvirtd runs", lambda: _counts_match_libvirt(rack, vm.uuid), 60)

        # Through the API: one series name, the same UUID, one series per reporting host, both in range.
        ranged = api.get(f"/api/v1/vms/{vm.uuid}/metrics", {"series": SERIES, "start": f"{t0 - 5:.0f}", "step": "1"})
        by_host = {row["labels"]["host"]: row for row in ranged["series"]}
        assert set(by_host) == {src.fqdn, dst.fqdn}, ranged["series"]
        assert all(row["labels"]["plugin_instance"] == vm.uuid for row in ranged["series"])
        assert max(t for t, _ in by_host[dst.fqdn]["points"]) > finished
        assert min(t for t, _ in by_host[src.fqdn]["points"]) < started

        # The raw samples: the source before (and up to) the switch-over, the destination after, never both
        # reporting the VM at once, and a hand-over no longer than a few intervals.
        samples = _raw(rack, vm.uuid)
        first = [s for s in samples if s.at >= t0]
        assert first[0].host == src.fqdn
        last_src = max(s.at for s in samples if s.host == src.fqdn)
        first_dst = min(s.at for s in samples if s.host == dst.fqdn)
        assert started < first_dst, "the destination reported the VM before the migration began"
        assert last_src < first_dst, "source and destination both reported the VM"
        assert last_src <= finished + INTERVAL, "the source kept reporting the VM after it left"
        gap = first_dst - last_src
        before = [b.at - a.at for a, b in itertools.pairwise(first) if b.at <= last_src]
        print(f"\nmigration {finished - started:.1f}s (CLI, queued to finished); source's last sample "
              f"{last_src - started:+.1f}s, destination's first {first_dst - started:+.1f}s from its start; "
              f"hand-over gap {gap:.1f}s; largest gap before it {max(before, default=0.0):.1f}s; "
              f"{len(samples)} samples")  # fmt: skip
        assert gap <= MAX_GAP_S, f"{gap:.1f}s without samples at the hand-over"
        after = [b.at - a.at for a, b in itertools.pairwise(samples) if a.at >= first_dst]
        assert max(after, default=0) <= 3 * INTERVAL + 1, after
        for lab in labs:
            assert lab.process.poll() is None, lab.log[-2000:]
        # Both nodes' packets verified under their own host's user: no bad signature, no other host's name
        # (an unknown_user or two at the start is the receiver reading the new secrets on the first knock).
        exposed = httpx.get(f"{rack.served.local_url}/metrics", timeout=10).text
        for host_id in rack.host_ids:
            for kind in ("bad_signature", "host_mismatch"):
                assert f'{{user="drover-host-{host_id}",kind="{kind}"}}' not in exposed, exposed
        _ok(rack, "vm", "poweroff", name, "--wait")
        _ok(rack, "vm", "delete", name, "--wait")
    # The shared rack's hosts are left as they were found: no collectd user, no load for placement to read.
    with session_scope(rack.db) as s:
        rows = [s.get(Host, h) for h in rack.host_ids]
        assert all(r is not None and r.collectd_user is None and r.cpu_busy_percent is None for r in rows)
