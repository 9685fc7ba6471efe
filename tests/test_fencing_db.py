"""What a fence does to the database (appliance.fencing), on SQLite and PostgreSQL; secrets and power settings.

The fencer itself, the BMCs and the HA restarts through the task engine are tested for real in
tests/test_fencing_lab.py; here the release's rules, which the lab's single HA VM cannot all show:
priority order, which VMs restart, who confirmed, and what is refused.
"""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from appliance import fencing, hosts, power
from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import Event, FenceState, Host, HostState, Task, TaskType, Vm, VmState
from appliance.errors import Conflict, UsageError
from appliance.ipmi import Bmc
from appliance.secretbox import SecretBox, SecretError
from hostbrowser import sync


def add_host(engine: Engine, name: str, state: HostState = HostState.AVAILABLE) -> int:
    with session_scope(engine) as s:
        host = Host(uuid=str(uuid.uuid4()), hostname=name, hardware_pool_id=hosts.default_pool(s).id, state=state,
                    libvirt_connected=state is HostState.AVAILABLE, approved_at=utcnow(), approved_by="test",
                    credentials_issued_at=utcnow(), memory_mib=4096, cpu_count=4)  # fmt: skip
        s.add(host)
        s.flush()
        return host.id


def add_vm(engine: Engine, host_id: int, name: str, state: VmState, ha: bool = False, priority: int = 0) -> int:
    with session_scope(engine) as s:
        vm = Vm(uuid=str(uuid.uuid4()), name=name, vcpus=1, memory_mib=128, state=state, host_id=host_id,
                hardware_pool_id=hosts.default_pool(s).id, is_ha=ha, ha_priority=priority)  # fmt: skip
        s.add(vm)
        s.flush()
        return vm.id


def test_a_fence_releases_the_vms_and_restarts_live_ha_ones_by_priority(db_engine: Engine) -> None:
    lost = add_host(db_engine, "lost.example.test")
    add_host(db_engine, "spare.example.test")
    low = add_vm(db_engine, lost, "low", VmState.RUNNING, ha=True, priority=1)
    high = add_vm(db_engine, lost, "high", VmState.RUNNING, ha=True, priority=9)
    paused = add_vm(db_engine, lost, "paused", VmState.PAUSED, ha=True, priority=5)
    plain = add_vm(db_engine, lost, "plain", VmState.RUNNING)
    idle = add_vm(db_engine, lost, "idle", VmState.STOPPED, ha=True, priority=50)
    # The host browser loses the host: every VM on it becomes unreachable, each keeping what it was.
    with session_scope(db_engine) as s:
        sync.apply(s, sync.HostDown(lost, "keepalive timed out"))
    with session_scope(db_engine) as s:
        states = {name: (state, lost) for name, state, lost in s.execute(select(Vm.name, Vm.state, Vm.lost_state))}
    unreachable = VmState.UNREACHABLE
    assert states == {"low": (unreachable, VmState.RUNNING), "high": (unreachable, VmState.RUNNING),
                      "paused": (unreachable, VmState.PAUSED), "plain": (unreachable, VmState.RUNNING),
                      "idle": (unreachable, VmState.STOPPED)}  # fmt: skip

    with session_scope(db_engine) as s:
        host = s.get(Host, lost)
        assert host is not None
        queued = fencing.release(s, host, "bmc", "powered off through its BMC")
    with session_scope(db_engine) as s:
        tasks = [s.get(Task, t) for t in queued]
        assert [(t.type, t.target_id, t.priority) for t in tasks if t] == [
            (TaskType.VM_START, high, 109), (TaskType.VM_START, paused, 105), (TaskType.VM_START, low, 101)]
        for vm_id in (low, high, paused, plain, idle):
            vm = s.get(Vm, vm_id)
            assert vm is not None and vm.host_id is None and vm.state is VmState.STOPPED and vm.lost_state is None
        assert {t.target_id for t in s.scalars(select(Task))} == {low, high, paused}  # not plain, not idle
        host = s.get(Host, lost)
        assert host is not None and host.fence_state is FenceState.FENCED and host.fenced_by == "bmc"
        kinds = [e.kind for e in s.scalars(select(Event).where(Event.kind.in_(("fence.done", "ha.restart"))))]
        assert kinds == ["fence.done", "ha.restart", "ha.restart", "ha.restart"]


def test_confirm_rebooted_is_recorded_with_who_and_refused_for_a_host_that_answers(db_engine: Engine) -> None:
    up = add_host(db_engine, "up.example.test")
    down = add_host(db_engine, "down.example.test", HostState.UNAVAILABLE)
    vm = add_vm(db_engine, down, "web", VmState.UNREACHABLE, ha=True)
    with session_scope(db_engine) as s:
        host = s.get(Host, up)
        assert host is not None
        with pytest.raises(Conflict, match="answers over libvirt"):
            fencing.confirm_rebooted(s, host, "admin@EX")
    with session_scope(db_engine) as s:
        host = s.get(Host, down)
        assert host is not None
        (task_id,) = fencing.confirm_rebooted(s, host, "admin@EX")
    with session_scope(db_engine) as s:
        host = s.get(Host, down)
        assert host is not None and host.fenced_by == "admin@EX" and "admin@EX confirmed" in host.fence_note
        task = s.get(Task, task_id)
        assert task is not None and task.target_id == vm
        with pytest.raises(Conflict, match="already fenced"):
            fencing.confirm_rebooted(s, host, "admin@EX")
        # Back from its reboot: the fence ends.
        fencing.clear(s, host, "libvirt answers again")
        assert host.fence_state is FenceState.NONE and host.fence_attempts == 0


def test_secrets_are_sealed_with_a_private_key(tmp_path: Path) -> None:
    box = SecretBox.under(tmp_path / "state")
    sealed = box.seal("hunter2")
    assert "hunter2" not in sealed and box.open(sealed) == "hunter2"
    key = tmp_path / "state" / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert SecretBox.under(tmp_path / "state").open(sealed) == "hunter2"  # the same key, read back
    with pytest.raises(SecretError, match="cannot be decrypted"):
        SecretBox.under(tmp_path / "other").open(sealed)
    assert "hunter2" not in repr(Bmc("10.0.0.9", 623, "admin", "hunter2"))
    assert "hunter2" not in repr(power.PowerSettings("10.0.0.9", 623, "admin", "hunter2"))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"address": "", "user": "a", "password": "p"}, "address"),
        ({"address": "bmc one", "user": "a", "password": "p"}, "address"),
        ({"address": "10.0.0.1", "port": 0, "user": "a", "password": "p"}, "port"),
        ({"address": "10.0.0.1", "port": "623", "user": "a", "password": "p"}, "port"),
        ({"address": "10.0.0.1", "user": "", "password": "p"}, "user"),
        ({"address": "10.0.0.1", "user": "a", "password": ""}, "password"),
        ({"address": "10.0.0.1", "user": "a", "password": "x" * 129}, "password"),
        ({"address": "10.0.0.1", "user": "a", "password": "p", "secret": 1}, "secret"),
    ],
    ids=["empty-address", "space", "port-0", "port-str", "no-user", "no-password", "long-password", "unknown"],
)
def test_power_settings_are_checked(body: dict[str, object], field: str) -> None:
    with pytest.raises(UsageError, match=field):
        power.check_settings(body)


def test_good_power_settings() -> None:
    got = power.check_settings({"address": "bmc-7.example.test", "user": "admin", "password": "p w"})
    assert (got.address, got.port, got.user, got.password) == ("bmc-7.example.test", 623, "admin", "p w")
