"""Power management and fencing on a rack of our own (tests/lab/fencerack.py says what is real and what is not).

Power: `drover host power set|show|status|off|on|cycle` through the API to virtualbmc, each action observed on
the power plane's libvirt (the chassis domain) and on the host (its libvirtd killed by the power loss, back and
reconnected after power on); the password sealed in the database, never shown. Fencing: the cases the issue
names, each asserting on the database, on the events and on the qemu processes of the machine.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import ssl
import stat
import time
import uuid
from collections.abc import Callable

import httpx
import libvirt
import pytest
from sqlalchemy import select

from appliance.db.engine import session_scope
from appliance.db.models import Event, FenceState, Host, HostState, Severity, Task, TaskState, TaskType, Vm
from appliance.secretbox import KEY_FILE
from nodeagent import wire
from tests.lab.agent_node import FakeNode, host_state, mint, wait_for
from tests.lab.appliance import ADMIN
from tests.lab.fencerack import Copies, FenceRack, RackHost, wait_until
from tests.lab.guest import TICK, wait_for_text
from tests.lab.nodeagent_peer import read_state, stop
from tests.lab.rack import Lab

pytestmark = pytest.mark.lab


def events(rack: FenceRack, host: RackHost, kind: str, after: int = 0) -> list[Event]:
    with session_scope(rack.engine) as s:
        rows = list(s.scalars(select(Event).where(Event.host_id == host.host_id, Event.kind == kind,
                                                  Event.id > after).order_by(Event.id)).all())  # fmt: skip
        for e in rows:
            s.expunge(e)
        return rows


def last_event_id(rack: FenceRack) -> int:
    with session_scope(rack.engine) as s:
        return s.scalars(select(Event.id).order_by(Event.id.desc()).limit(1)).first() or 0


def set_power(rack: FenceRack, host: RackHost) -> None:
    secret = rack.workdir / f"{host.chassis}.pw"
    secret.write_text(host.bmc.password + "\n")
    done = rack.drover("host", "power", "set", host.fqdn, "--address", host.bmc.address, "--port",
                       str(host.bmc.port), "--user", host.bmc.user, "--password-file", str(secret))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def ensure_power(rack: FenceRack) -> None:
    """Each fencing case stands alone (`-k`): both hosts get their BMC settings if the power test did not run."""
    for host in rack.hosts:
        if rack.host_row(host).power_address is None:
            set_power(rack, host)


def chassis_id(rack: FenceRack, host: RackHost) -> int:
    conn = libvirt.open(rack.plane.local_uri)
    try:
        dom = conn.lookupByName(host.chassis)
        return dom.ID() if dom.isActive() else -1
    finally:
        conn.close()


def test_power_management_through_virtualbmc(fence_rack: FenceRack) -> None:
    rack = fence_rack
    fa, fb = rack.host("fa"), rack.host("fb")

    # No settings yet: a clear refusal, nothing done.
    none = rack.drover("host", "power", "status", fb.fqdn)
    assert none.returncode == 5 and "no power management" in none.stderr, none.stderr
    # Bad input: one-line errors, exit 2, nothing stored.
    pw = rack.workdir / "pw"
    pw.write_text("secret\n")
    for bad, why in (
        (["--address", "not a host!", "--user", "admin"], "address"),
        (["--address", "127.0.0.1", "--port", "70000", "--user", "admin"], "port"),
        (["--address", "127.0.0.1", "--user", "ad min"], "user"),
    ):
        out = rack.drover("host", "power", "set", fb.fqdn, *bad, "--password-file", str(pw))
        assert out.returncode == 2 and why in out.stderr, out.stderr
    empty = rack.workdir / "empty"
    empty.write_text("")
    out = rack.drover("host", "power", "set", fb.fqdn, "--address", "127.0.0.1", "--user", "a", "--password-file",
                      str(empty))  # fmt: skip
    assert out.returncode == 2 and "empty" in out.stderr
    assert rack.host_row(fb).power_address is None

    for host in (fa, fb):
        set_power(rack, host)
    # Sealed at rest with a 0600 key under the state dir; never returned by the API or printed.
    row = rack.host_row(fb)
    assert row.power_secret and fb.bmc.password not in row.power_secret
    key = rack.kdc.root / KEY_FILE  # the lab appliance's state dir is the lab realm's root
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    shown = rack.drover("host", "power", "show", fb.fqdn)
    assert shown.returncode == 0 and f"{fb.bmc.address}:{fb.bmc.port} as admin" in shown.stdout
    api = rack.drover("host", "show", fb.fqdn, "--json")
    for text in (shown.stdout, api.stdout):
        assert fb.bmc.password not in text and "power_secret" not in text
    assert fb.bmc.password not in rack.served.log_text() if rack.served else True

    status = rack.drover("host", "power", "status", fb.fqdn)
    assert status.returncode == 0 and "power on" in status.stdout, status.stdout + status.stderr

    # Off: the chassis domain is destroyed (libvirt says so), the host loses power, the appliance notices.
    t0 = time.monotonic()
    called = f"Power off called for domain {fb.chassis}"
    offs = rack.bmcs.log_text().count(called)
    off = rack.drover("host", "power", "off", fb.fqdn)
    assert off.returncode == 0 and "reports power off" in off.stdout, off.stdout + off.stderr
    assert chassis_id(rack, fb) == -1
    # Sent once, as the fencer's are: virtualbmc would act again on an ipmitool retransmission.
    assert rack.bmcs.log_text().count(called) == offs + 1
    wait_until("fb unavailable", lambda: rack.host_row(fb).state is HostState.UNAVAILABLE, 30)
    assert fb.node.process.poll() is not None  # its libvirtd died with the power
    # Confirmed off by its BMC: a fence in the admin's name (so the fencer does not fence it again).
    row = rack.host_row(fb)
    assert row.fence_state is FenceState.FENCED and (row.fenced_by or "").startswith("boss@")
    # On: the chassis runs again, the host boots afresh and is reconnected.
    on = rack.drover("host", "power", "on", fb.fqdn)
    assert on.returncode == 0 and "reports power on" in on.stdout, on.stdout + on.stderr
    assert chassis_id(rack, fb) > 0
    rack.wait_available(fb)
    wait_until("fence cleared", lambda: rack.host_row(fb).fence_state is FenceState.NONE, 30)
    # Cycle: off, then on again (a new qemu process for the chassis: a new domain id).
    before = chassis_id(rack, fb)
    cycle = rack.drover("host", "power", "cycle", fb.fqdn)
    assert cycle.returncode == 0 and "reports power on" in cycle.stdout, cycle.stdout + cycle.stderr
    assert chassis_id(rack, fb) not in (-1, before)
    rack.wait_available(fb)
    wait_until("fence cleared", lambda: rack.host_row(fb).fence_state is FenceState.NONE, 30)
    elapsed = time.monotonic() - t0
    assert [e for _, h, e in rack.wire.log if h == fb.fqdn] == ["off", "on", "off", "on"], rack.wire.log
    assert not rack.wire.errors
    # Every action is an event with who did it; a quick off/on never reached the fencer's grace.
    power_events = [e.message for e in events(rack, fb, "host.power")]
    assert any("power off by boss" in m for m in power_events), power_events
    fenced = [e.message for e in events(rack, fb, "fence.done")]
    assert len(fenced) == 2 and "power off by boss" in fenced[0] and "power cycle by boss" in fenced[1], fenced
    assert events(rack, fb, "fence.start") == []  # the fencer itself never stepped in
    assert elapsed < 120
    # A non-admin is refused.
    refused = rack.drover("host", "power", "off", fb.fqdn, principal=None)
    assert refused.returncode != 0 and chassis_id(rack, fb) > 0
    # The BMC away: a 502-class error with the BMC named, exit 3, recorded as an error event.
    rack.bmcs.stop_bmc(fb.chassis)
    try:
        down = rack.drover("host", "power", "off", fb.fqdn)
        assert down.returncode == 3 and f"BMC {fb.bmc.address}:{fb.bmc.port}" in down.stderr, down.stderr
        assert chassis_id(rack, fb) > 0
    finally:
        rack.bmcs.start_bmc(fb.chassis)
    with session_scope(rack.engine) as s:
        assert s.scalars(select(Host.power_user).where(Host.id == fb.host_id)).one() == "admin"
    # An admin cannot vouch for a host that answers: refused, nothing fenced.
    vouch = rack.drover("host", "confirm-rebooted", fb.fqdn)
    assert vouch.returncode == 5 and "answers over libvirt" in vouch.stderr, vouch.stderr
    assert rack.host_row(fb).fence_state is FenceState.NONE


# --- fencing -------------------------------------------------------------------------------------------------

HA_VM = "ha1"


def vm_where(rack: FenceRack, name: str) -> tuple[int | None, str]:
    vm = rack.vm(name)
    return vm.host_id, str(vm.state)


def running_on(rack: FenceRack, name: str, host: RackHost) -> bool:
    return vm_where(rack, name) == (host.host_id, "running")


def start_tasks(rack: FenceRack, name: str) -> list[Task]:
    return [t for t in rack.tasks_of(rack.vm(name).id) if t.type is TaskType.VM_START]


def domains_on(host: RackHost) -> dict[str, bool]:
    """name -> active, as the host's own libvirtd says (its unix socket: no Kerberos, no network link)."""
    conn = libvirt.open(host.node.local_uri)
    try:
        return {d.name(): bool(d.isActive()) for d in conn.listAllDomains(0)}
    finally:
        conn.close()


def serial_ticks(host: RackHost, name: str) -> int:
    path = host.node.qemu_log_dir / f"{name}-serial.log"
    return path.read_text(errors="replace").count(TICK) if path.is_file() else 0


def ha_vm_on(rack: FenceRack, host: RackHost) -> None:
    """The HA VM running on `host`: where the previous case left it, or made here when a case runs alone (-k)."""
    ensure_power(rack)
    with session_scope(rack.engine) as s:
        exists = s.scalars(select(Vm.id).where(Vm.name == HA_VM)).first() is not None
    if not exists:
        made = rack.drover(*rack.guest_args(HA_VM), "--host", host.fqdn, "--ha", "--ha-priority", "5", "--wait")
        assert made.returncode == 0, made.stdout + made.stderr
        started = rack.drover("vm", "start", HA_VM, "--wait", timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
    assert running_on(rack, HA_VM, host), vm_where(rack, HA_VM)
    wait_for_text(host.node.qemu_log_dir / f"{HA_VM}-serial.log", TICK, 120)


def figure(name: str, value: float, unit: str = "s") -> None:
    """A measured figure, printed for RELIABILITY.md (`pytest -s`); asserted nowhere: timing depends on the load."""
    print(f"FIGURE {name} = {value:.1f} {unit}")


def gap(copies: Copies) -> float:
    """Seconds between the old copy's last sample and the new copy's first: how long the VM was down."""
    first = copies.samples[0][1]
    gone = next(t for t, pids in copies.samples if not pids)
    back = next(t for t, pids in copies.samples if pids and pids != first)
    return back - gone


def check_restarted_once(rack: FenceRack, copies: Copies, fenced: RackHost, after_start_tasks: int) -> None:
    """The HA VM left `fenced` only after its fence, one start task later, never two copies at once."""
    starts = start_tasks(rack, HA_VM)
    assert len(starts) == after_start_tasks + 1, [(t.id, t.args, t.state) for t in starts]
    task = starts[-1]
    assert task.state is TaskState.FINISHED and task.args.get("ha") is True and task.created_by is None
    assert task.priority == 105  # HA band + the VM's ha_priority
    done = events(rack, fenced, "fence.done")[-1]
    assert task.created_at >= done.at
    # The machine's qemu processes for this VM's UUID: the old one gone before the new one existed.
    assert copies.most == 1, copies.samples
    seen = [pids for _, pids in copies.samples]
    assert seen[0] and seen[-1] and seen[0] != seen[-1], copies.samples
    assert [] in seen, copies.samples
    off_at = max(t for t, h, e in rack.wire.log if h == fenced.fqdn and e == "off")
    first_new = next(t for t, pids in copies.samples if pids and pids != seen[0])
    assert off_at <= first_new


def test_link_cut_fences_then_restarts_the_ha_vm_exactly_once(fence_rack: FenceRack) -> None:
    rack = fence_rack
    fa, fb = rack.host("fa"), rack.host("fb")
    ensure_power(rack)
    made = rack.drover(*rack.guest_args(HA_VM), "--host", fa.fqdn, "--ha", "--ha-priority", "5", "--wait")
    assert made.returncode == 0, made.stdout + made.stderr
    started = rack.drover("vm", "start", HA_VM, "--wait", timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    # A stopped HA VM on the same host: known to be off, so never started by a fence.
    idle = rack.drover(*rack.guest_args("ha-idle"), "--host", fa.fqdn, "--ha", "--wait")
    assert idle.returncode == 0, idle.stdout + idle.stderr
    flag = rack.drover("vm", "ha", "ha-idle", "--on", "--priority", "7")
    assert flag.returncode == 0 and "highly available (priority 7)" in flag.stdout, flag.stdout + flag.stderr
    bad = rack.drover("vm", "ha", "ha-idle", "--on", "--priority", "5000")
    assert bad.returncode == 2 and "priority" in bad.stderr
    assert rack.vm("ha-idle").ha_priority == 7
    wait_for_text(fa.node.qemu_log_dir / f"{HA_VM}-serial.log", TICK, 120)
    mark = last_event_id(rack)
    with Copies(rack.vm(HA_VM).uuid) as copies:
        t_cut = time.time()
        fa.link.cut()
        wait_until("ha1 unreachable", lambda: vm_where(rack, HA_VM)[1] == "unreachable", 30)
        figure("link cut: VM unreachable after", time.time() - t_cut)
        # Until the fence, the VM stays where it was: alive in its namespace, not started anywhere else.
        assert len(start_tasks(rack, HA_VM)) == 1  # the admin's own start, nothing more yet
        wait_until("ha1 running on fb", lambda: running_on(rack, HA_VM, fb), 180)
        time.sleep(1)  # a last sample or two of the new copy
    check_restarted_once(rack, copies, fa, 1)
    figure("link cut: fenced after", events(rack, fa, "fence.done", mark)[0].at.timestamp() - t_cut)
    figure("link cut: VM down (old qemu gone -> new qemu)", gap(copies))
    kinds = [e.kind for e in events(rack, fa, "fence.start", mark) + events(rack, fa, "fence.done", mark)]
    assert kinds == ["fence.start", "fence.done"]
    assert events(rack, fa, "fence.failed", mark) == []
    done = events(rack, fa, "fence.done", mark)[0]
    assert "powered off through its BMC" in done.message
    row = rack.host_row(fa)
    assert row.fence_state is FenceState.FENCED and row.fenced_by == "bmc"
    assert vm_where(rack, "ha-idle") == (None, "stopped") and start_tasks(rack, "ha-idle") == []
    assert domains_on(fb).get(HA_VM) is True
    # fa was powered on again after the fence: a fresh, empty libvirtd (the old guest died with the power).
    try:
        wait_until("fa powered on again", lambda: [e for _, h, e in rack.wire.log if h == fa.fqdn][-1:] == ["on"], 60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {rack.wire.log} {rack.wire.errors} "
                             f"{[e.message for e in events(rack, fa, 'host.power', mark)]}") from None
    assert domains_on(fa) == {}
    fa.link.restore()
    rack.wait_available(fa)
    wait_until("fence cleared", lambda: rack.host_row(fa).fence_state is FenceState.NONE, 30)
    assert running_on(rack, HA_VM, fb) and not rack.wire.errors


def test_a_killed_node_is_fenced_and_its_ha_vm_restarts_once(fence_rack: FenceRack) -> None:
    rack = fence_rack
    fa, fb = rack.host("fa"), rack.host("fb")
    ha_vm_on(rack, fb)
    before = len(start_tasks(rack, HA_VM))
    mark = last_event_id(rack)
    with Copies(rack.vm(HA_VM).uuid) as copies:
        time.sleep(0.2)
        # The node dies (kernel panic, say): libvirtd and guests gone at once; its BMC still says "on".
        t_kill = time.time()
        for pid in [fb.node.process.pid, *fb.node.guest_pids()]:
            os.kill(pid, signal.SIGKILL)
        assert rack.chassis_on(fb)
        wait_until("ha1 running on fa", lambda: running_on(rack, HA_VM, fa), 180)
        time.sleep(1)
    # Dead before the fence: still no start before the BMC confirmed the power off.
    assert len(start_tasks(rack, HA_VM)) == before + 1
    task = start_tasks(rack, HA_VM)[-1]
    done = events(rack, fb, "fence.done", mark)
    assert len(done) == 1 and task.created_at >= done[0].at and copies.most == 1
    figure("node killed: fenced after", done[0].at.timestamp() - t_kill)
    figure("node killed: VM down", gap(copies))
    rack.wait_available(fb, 90)  # powered on again after the fence, reconnected
    wait_until("fence cleared", lambda: rack.host_row(fb).fence_state is FenceState.NONE, 30)
    assert domains_on(fb) == {} and not rack.wire.errors


def test_a_partition_with_the_bmc_down_is_retried_and_never_runs_the_vm_twice(fence_rack: FenceRack) -> None:
    rack = fence_rack
    fa, fb = rack.host("fa"), rack.host("fb")
    ha_vm_on(rack, fa)
    before = len(start_tasks(rack, HA_VM))
    mark = last_event_id(rack)
    with Copies(rack.vm(HA_VM).uuid) as copies:
        time.sleep(0.2)
        alive = copies.pids()
        rack.bmcs.stop_bmc(fa.chassis)  # the management network fails too: fencing cannot confirm anything
        fa.link.cut()
        try:
            wait_until("two failed fence attempts", lambda: len(events(rack, fa, "fence.failed", mark)) >= 2, 120)
            failed = events(rack, fa, "fence.failed", mark)
            assert all(e.severity is Severity.ERROR and "not restarted" in e.message for e in failed), failed
            row = rack.host_row(fa)
            assert row.fence_state is FenceState.FENCING and row.fence_attempts >= 2
            # Never taken for a fence: the VM is unreachable, not restarted, and still runs cut off (counting).
            assert vm_where(rack, HA_VM) == (fa.host_id, "unreachable")
            assert len(start_tasks(rack, HA_VM)) == before and events(rack, fa, "fence.done", mark) == []
            ticks = serial_ticks(fa, HA_VM)
            wait_until("the cut-off guest still counting", lambda: serial_ticks(fa, HA_VM) > ticks, 60)
            assert copies.pids() == alive and HA_VM not in domains_on(fb)
        finally:
            rack.bmcs.start_bmc(fa.chassis)
            t_bmc = time.time()
        # The BMC answers again: the next attempt fences, and only then does the VM start on fb.
        wait_until("ha1 running on fb", lambda: running_on(rack, HA_VM, fb), 180)
        time.sleep(1)
    check_restarted_once(rack, copies, fa, before)
    figure("BMC back: fenced after", events(rack, fa, "fence.done", mark)[0].at.timestamp() - t_bmc)
    figure("failed fence attempts while the BMC was down", len(events(rack, fa, "fence.failed", mark)), "")
    fa.link.restore()
    rack.wait_available(fa, 90)
    wait_until("fence cleared", lambda: rack.host_row(fa).fence_state is FenceState.NONE, 30)


def test_soft_step_restarts_libvirtd_through_the_heartbeat_and_fences_nothing(fence_rack: FenceRack) -> None:
    """The node still answers (heartbeats) while its libvirtd is frozen: the agent is asked to restart libvirtd;
    back in time, nothing is powered off and the VM is not touched. The agent's part is played here with the
    real wire format over the node service's HTTPS (the node agent's own handling is tested in
    tests/test_nodeagent_agent.py)."""
    rack = fence_rack
    fb = rack.host("fb")
    ha_vm_on(rack, fb)
    assert rack.served is not None
    token = secrets.token_urlsafe(24)
    with session_scope(rack.engine) as s:
        row = s.get(Host, fb.host_id)
        assert row is not None
        row.agent_token_hash = hashlib.sha256(token.encode()).hexdigest()
    ca = rack.kdc.root / "pki" / "ca.pem"
    beat = wire.encode(wire.Heartbeat(fb.node.settings.host_uuid, True, True, 60, agent_token=token))
    before, chassis, pids = len(start_tasks(rack, HA_VM)), chassis_id(rack, fb), Copies(rack.vm(HA_VM).uuid).pids()
    mark = last_event_id(rack)
    asked = 0
    t_freeze = time.time()
    os.kill(fb.node.process.pid, signal.SIGSTOP)
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as http:
            deadline = time.monotonic() + 120
            while not asked and time.monotonic() < deadline:
                answer = http.post(f"{rack.served.node_url}/node/v1/heartbeat", content=beat,
                                   headers={"Content-Type": "application/json"})  # fmt: skip
                assert answer.status_code == 200, answer.text
                if wire.decode(wire.HeartbeatResponse, answer.content).restart_libvirtd:
                    asked += 1
                time.sleep(1)
    finally:
        os.kill(fb.node.process.pid, signal.SIGCONT)
    assert asked == 1
    fb.node.restart()  # what the agent's restarter does (systemctl restart libvirtd on a real node)
    rack.wait_available(fb, 60)
    wait_until("fence cleared", lambda: rack.host_row(fb).fence_state is FenceState.NONE, 30)
    figure("soft step: libvirtd frozen -> fence cleared", time.time() - t_freeze)
    kinds = [e.kind for e in events(rack, fb, "fence.start", mark) + events(rack, fb, "fence.soft", mark)
             + events(rack, fb, "fence.cleared", mark)]  # fmt: skip
    assert kinds == ["fence.start", "fence.soft", "fence.cleared"], kinds
    assert "soft step" in events(rack, fb, "fence.start", mark)[0].message
    assert events(rack, fb, "fence.done", mark) == [] and chassis_id(rack, fb) == chassis
    assert running_on(rack, HA_VM, fb) and len(start_tasks(rack, HA_VM)) == before
    assert Copies(rack.vm(HA_VM).uuid).pids() == pids  # the same qemu: libvirtd restarted under it


def test_no_fencing_in_the_quiet_period_after_start(fence_rack: FenceRack) -> None:
    rack = fence_rack
    fa = rack.host("fa")
    quiet = 30
    rack.stop_serve()
    mark = last_event_id(rack)
    fa.link.cut()
    chassis = chassis_id(rack, fa)
    try:
        rack.start_serve(DROVER_FENCING_QUIET_SECONDS=str(quiet))
        t0 = time.monotonic()
        wait_until("fence held", lambda: events(rack, fa, "fence.held", mark) != [], quiet)
        assert "not fenced for another" in events(rack, fa, "fence.held", mark)[0].message
        # Unavailable for longer than the grace period, yet nothing is done while the appliance is young.
        while time.monotonic() - t0 < quiet - 5:
            assert events(rack, fa, "fence.start", mark) == [] and chassis_id(rack, fa) == chassis
            time.sleep(1)
        wait_until("fenced after the quiet period", lambda: events(rack, fa, "fence.done", mark) != [], 60)
        assert time.monotonic() - t0 >= quiet - 3  # (a second or two: serve's own start precedes t0)
        figure(f"quiet period {quiet} s: fenced after the appliance's start", time.monotonic() - t0)
        wait_until("fa powered on again", lambda: chassis_id(rack, fa) not in (-1, chassis), 30)
    finally:
        fa.link.restore()
    rack.wait_available(fa, 90)
    wait_until("fence cleared", lambda: rack.host_row(fa).fence_state is FenceState.NONE, 30)


@pytest.fixture
def lab(fence_rack: FenceRack) -> Lab:
    """The fence rack as tests.lab.agent_node's make_node wants it."""
    assert fence_rack.served is not None
    return Lab(fence_rack.served, fence_rack.engine, fence_rack.kdc, fence_rack.hosts_file, fence_rack.factory,
               fence_rack.libvirt_port)  # fmt: skip


def test_soft_step_with_the_real_node_agent_brings_a_dead_libvirtd_back(
    fence_rack: FenceRack, lab: Lab, make_node: Callable[[str, str], FakeNode]
) -> None:
    """A third host run by the real node agent (enrolled with a token, heartbeating over HTTPS every 2 s): its
    libvirtd dies while the node lives. The fencer's soft step goes out in a heartbeat answer, the agent runs
    its restart command (the lab's restart server starts libvirtd again), the host comes back, nothing is
    powered off. Last in the module: the host stays behind, without power management."""
    rack = fence_rack
    fqdn, dmi_uuid = "fc.example.test", str(uuid.uuid4())
    node = make_node(fqdn, dmi_uuid)
    node.facts_tree({"ens3": "52:54:00:fc:00:01"})
    token, ca = mint(lab, ADMIN, "--uuid", dmi_uuid)
    node.cmdline(lab.served, token, ca, "01-52-54-00-fc-00-01")
    agent = node.start_agent()
    try:
        wait_for("host available", lambda: host_state(lab.db, dmi_uuid) is HostState.AVAILABLE, 60, node.log)
        assert node.restarter.restarts == 1 and node.restarter.node is not None
        with session_scope(rack.engine) as s:
            host_id = s.scalars(select(Host.id).where(Host.uuid == dmi_uuid)).one()
        host = RackHost(fqdn, node.restarter.node, None, "", None, host_id)  # type: ignore[arg-type]
        mark = last_event_id(rack)
        t0 = time.time()
        node.restarter.node.stop_daemon()  # libvirtd dies; the node and its agent live on
        wait_until("fence cleared", lambda: events(rack, host, "fence.cleared", mark) != [], 90)
        figure("soft step with the real agent: libvirtd killed -> back, fence cleared", time.time() - t0)
        kinds = [e.kind for e in events(rack, host, "fence.start", mark) + events(rack, host, "fence.soft", mark)
                 + events(rack, host, "fence.cleared", mark)]  # fmt: skip
        assert kinds == ["fence.start", "fence.soft", "fence.cleared"], kinds
        assert events(rack, host, "fence.failed", mark) == [] and events(rack, host, "fence.done", mark) == []
        assert node.restarter.restarts == 2
        wait_for("agent counted it", lambda: read_state(node.state).get("soft_restarts") == 1, 10, node.log)
        assert host_state(lab.db, dmi_uuid) is HostState.AVAILABLE
    finally:
        stop(agent)
