"""appliance.lifecycle and the host browser's writer on SQLite and PostgreSQL: maintenance, activate, remove.

The writer is driven with the changes a libvirt session queues (hostbrowser.sync.apply); the lab test
(test_host_lifecycle_lab.py) does the same through a real `drover serve`, libvirtd and kadmin.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from typing import Any

import pytest
import sqlalchemy.event
import sqlalchemy.exc
from sqlalchemy import Engine, func, select

from appliance import hosts, lifecycle
from appliance.db import tokens
from appliance.db.base import Base, utcnow
from appliance.db.engine import session_scope
from appliance.db.models import (
    EnrolmentToken,
    Event,
    Host,
    HostDisk,
    HostNic,
    HostState,
    Severity,
    StoragePool,
    StorageState,
    StorageType,
    TargetKind,
    Task,
    TaskState,
    TaskType,
    Vm,
    VmState,
)
from appliance.db.tokens import Refusal, TokenRefused
from appliance.errors import Conflict, KerberosError, NotFound, UsageError
from appliance.kerberos.realm import Realm
from hostbrowser import sync
from tests.lab.kdc import LabKdc

ADMIN = "admin@LAB.EXAMPLE.TEST"


def add_host(
    engine: Engine,
    hostname: str = "n1.example.test",
    *,
    approved: bool = True,
    state: HostState = HostState.AVAILABLE,
    connected: bool = True,
    macs: tuple[str, ...] = ("52:54:00:10:00:01",),
) -> int:
    with session_scope(engine) as s:
        host = Host(uuid=str(uuid.uuid4()), hostname=hostname, hardware_pool_id=hosts.default_pool(s).id,
                    state=state, libvirt_connected=connected)  # fmt: skip
        if approved:
            host.approved_at, host.approved_by, host.credentials_issued_at = utcnow(), "token test", utcnow()
        for i, mac in enumerate(macs):
            host.nics.append(HostNic(name=f"eno{i + 1}", mac=mac, is_boot=i == 0))
        s.add(host)
        s.flush()
        return host.id


def add_vm(engine: Engine, host_id: int | None, state: VmState, name: str = "guest") -> str:
    with session_scope(engine) as s:
        vm_uuid = str(uuid.uuid4())
        s.add(Vm(uuid=vm_uuid, name=name, vcpus=1, memory_mib=256, state=state, host_id=host_id,
                 hardware_pool_id=hosts.default_pool(s).id))  # fmt: skip
        return vm_uuid


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: what a refusal must leave exactly as it was."""
    with session_scope(engine) as s:
        return {
            t.name: [tuple(r) for r in s.execute(select(t).order_by(*t.primary_key.columns)).all()]
            for t in Base.metadata.sorted_tables
        }


def host(engine: Engine, host_id: int) -> tuple[HostState, str, bool]:
    with session_scope(engine) as s:
        h = s.get(Host, host_id)
        assert h is not None
        return h.state, h.state_reason, h.libvirt_connected


def events(engine: Engine, kind: str) -> list[str]:
    with session_scope(engine) as s:
        return list(s.scalars(select(Event.message).where(Event.kind == kind).order_by(Event.id)).all())


def apply(engine: Engine, *changes: sync.Change) -> None:
    with session_scope(engine) as s:
        for change in changes:
            sync.apply(s, change)


def maintenance(engine: Engine, key: str, reason: str = "") -> Host:
    with session_scope(engine) as s:
        return lifecycle.maintenance(s, hosts.find(s, key), ADMIN, reason)


def test_maintenance_keeps_the_reason_and_writes_an_event(db_engine: Engine) -> None:
    host_id = add_host(db_engine)
    done = maintenance(db_engine, "n1", "  replacing DIMM B2 \n")
    assert (done.id, done.state) == (host_id, HostState.MAINTENANCE)
    assert host(db_engine, host_id) == (HostState.MAINTENANCE, "replacing DIMM B2", True)
    assert events(db_engine, "host.state")[-1] == f"available -> maintenance: replacing DIMM B2 (by {ADMIN})"
    # From unavailable, and without a reason, too.
    other = add_host(db_engine, "n2.example.test", state=HostState.UNAVAILABLE, connected=False,
                     macs=("52:54:00:10:00:02",))  # fmt: skip
    maintenance(db_engine, str(other))
    assert host(db_engine, other) == (HostState.MAINTENANCE, "", False)
    assert events(db_engine, "host.state")[-1] == f"unavailable -> maintenance (by {ADMIN})"


def test_maintenance_refusals_change_nothing(db_engine: Engine) -> None:
    pending = add_host(db_engine, "p1.example.test", approved=False, state=HostState.PENDING, connected=False)
    add_host(db_engine, "m1.example.test", macs=("52:54:00:10:00:02",))
    maintenance(db_engine, "m1", "first")
    before = snapshot(db_engine)
    with pytest.raises(Conflict, match="pending approval") as err:
        maintenance(db_engine, str(pending))
    assert "drover host approve" in err.value.hint
    with pytest.raises(Conflict, match=r"already in maintenance since .* UTC: first"):
        maintenance(db_engine, "m1.example.test", "second")
    with pytest.raises(NotFound):
        maintenance(db_engine, "nosuch")
    for bad in (5, None, "x" * (lifecycle.MAX_REASON + 1), "bell\x07"):
        with pytest.raises(UsageError, match="reason"):
            lifecycle.check_reason(bad)
    assert snapshot(db_engine) == before


def test_in_maintenance_the_browser_records_the_link_and_the_vms_but_not_the_state(db_engine: Engine) -> None:
    host_id = add_host(db_engine)
    maintenance(db_engine, "n1", "firmware")
    vm = str(uuid.uuid4())
    # The connection drops: the state stays, the link and the VMs follow.
    apply(db_engine, sync.DomainChanged(host_id, sync.Domain(vm, "g1", VmState.RUNNING)))
    apply(db_engine, sync.HostDown(host_id, "keepalive timed out"))
    assert host(db_engine, host_id) == (HostState.MAINTENANCE, "firmware", False)
    with session_scope(db_engine) as s:
        assert s.scalars(select(Vm.state).where(Vm.uuid == vm)).one() is VmState.UNREACHABLE
    # Back, with the domain still there and a new one: re-synced, still in maintenance.
    new = str(uuid.uuid4())
    apply(db_engine, sync.HostUp(host_id, (sync.Domain(vm, "g1", VmState.RUNNING), sync.Domain(new, "g2", None))))
    apply(db_engine, sync.DomainChanged(host_id, sync.Domain(new, "g2", VmState.STOPPED)))
    assert host(db_engine, host_id) == (HostState.MAINTENANCE, "firmware", True)
    with session_scope(db_engine) as s:
        found = {name: vm_state for name, vm_state in s.execute(select(Vm.name, Vm.state).where(Vm.host_id == host_id))}
        assert found == {"g1": VmState.RUNNING, "g2": VmState.STOPPED}
    assert events(db_engine, "host.state")[-1].startswith("available -> maintenance")


def test_outside_maintenance_the_browser_moves_the_state_and_keeps_the_reason(db_engine: Engine) -> None:
    host_id = add_host(db_engine, state=HostState.PENDING, connected=False)
    apply(db_engine, sync.HostUp(host_id, ()))
    assert host(db_engine, host_id) == (HostState.AVAILABLE, "libvirt connected, 0 domains", True)
    apply(db_engine, sync.HostDown(host_id, "libvirt unreachable: connection refused"))
    assert host(db_engine, host_id) == (HostState.UNAVAILABLE, "libvirt unreachable: connection refused", False)
    # Changes for a host that is gone (removed while its session still reported) are dropped.
    with session_scope(db_engine) as s:
        count = s.scalar(select(func.count()).select_from(Event))
    apply(db_engine, sync.HostUp(999_999, ()), sync.HostDown(999_999, "x"),
          sync.DomainChanged(999_999, sync.Domain(str(uuid.uuid4()), "z", VmState.RUNNING)))  # fmt: skip
    with session_scope(db_engine) as s:
        assert s.scalar(select(func.count()).select_from(Event)) == count
        assert s.scalar(select(func.count()).select_from(Vm)) == 0


def test_the_writer_waits_for_an_admin_holding_the_host(db_engine: Engine) -> None:
    """An admin's transaction holds the host row (hosts.lock): the browser's change waits for its commit
    and then decides on what was committed, not on what it would have read before."""
    host_id = add_host(db_engine, state=HostState.AVAILABLE, connected=True)
    done = threading.Event()
    with session_scope(db_engine) as admin:
        held = hosts.lock(admin, host_id)
        assert held is not None
        hosts.set_state(admin, held, HostState.UNAVAILABLE, "held by the test")
        admin.flush()

        def browser() -> None:
            apply(db_engine, sync.HostUp(host_id, ()))
            done.set()

        writer = threading.Thread(target=browser)
        writer.start()
        time.sleep(0.5)
        assert not done.is_set(), "the writer did not wait for the row"
    writer.join(30)
    assert done.is_set()
    # It saw `unavailable` (committed) and made it available; without the lock it would have kept it.
    assert host(db_engine, host_id) == (HostState.AVAILABLE, "libvirt connected, 0 domains", True)


def activate(engine: Engine, key: str) -> Host:
    with session_scope(engine) as s:
        return lifecycle.activate(s, hosts.find(s, key), ADMIN)


def test_activate_is_available_when_libvirt_is_connected_else_unavailable(db_engine: Engine) -> None:
    up = add_host(db_engine, "up.example.test")
    down = add_host(db_engine, "down.example.test", macs=("52:54:00:10:00:02",))
    maintenance(db_engine, "up", "kernel update")
    maintenance(db_engine, "down", "kernel update")
    apply(db_engine, sync.HostDown(down, "connection refused"))
    assert activate(db_engine, "up").state is HostState.AVAILABLE
    assert host(db_engine, up) == (HostState.AVAILABLE, "activated; libvirt connected", True)
    assert events(db_engine, "host.state")[-1] == f"maintenance -> available: activated; libvirt connected (by {ADMIN})"
    assert activate(db_engine, str(down)).state is HostState.UNAVAILABLE
    state, reason, connected = host(db_engine, down)
    assert (state, connected) == (HostState.UNAVAILABLE, False) and "available once the host browser" in reason
    # The browser's next successful connect makes it available, as for any unavailable host.
    apply(db_engine, sync.HostUp(down, ()))
    assert host(db_engine, down)[0] is HostState.AVAILABLE


def test_activate_refuses_a_host_not_in_maintenance(db_engine: Engine) -> None:
    add_host(db_engine, "a.example.test")
    add_host(db_engine, "u.example.test", state=HostState.UNAVAILABLE, connected=False, macs=("52:54:00:10:00:02",))
    add_host(db_engine, "p.example.test", approved=False, state=HostState.PENDING, macs=("52:54:00:10:00:03",))
    before = snapshot(db_engine)
    for key, state in (("a", "available"), ("u", "unavailable"), ("p", "pending")):
        with pytest.raises(Conflict, match=f"not in maintenance \\(it is {state}\\)") as err:
            activate(db_engine, key)
        assert "drover host maintenance" in err.value.hint
    with pytest.raises(NotFound):
        activate(db_engine, "nosuch")
    assert snapshot(db_engine) == before


def test_a_connect_during_activation_is_not_lost(db_engine: Engine) -> None:
    """Activation saw libvirt down and holds the row; the browser's HostUp waits, then makes it available."""
    host_id = add_host(db_engine, connected=False, state=HostState.UNAVAILABLE)
    maintenance(db_engine, "n1")
    done = threading.Event()

    def browser() -> None:
        apply(db_engine, sync.HostUp(host_id, ()))
        done.set()

    with session_scope(db_engine) as admin:
        assert lifecycle.activate(admin, hosts.find(admin, "n1"), ADMIN).state is HostState.UNAVAILABLE
        admin.flush()
        writer = threading.Thread(target=browser)
        writer.start()
        time.sleep(0.5)
        assert not done.is_set()
    writer.join(30)
    assert host(db_engine, host_id) == (HostState.AVAILABLE, "libvirt connected, 0 domains", True)


def test_an_activation_during_a_connect_sees_it(db_engine: Engine) -> None:
    """The browser's writer holds the row while it applies HostUp; activation waits and sees `connected`."""
    host_id = add_host(db_engine, connected=False, state=HostState.UNAVAILABLE)
    maintenance(db_engine, "n1")
    result: list[HostState] = []

    def admin() -> None:
        result.append(activate(db_engine, "n1").state)

    with session_scope(db_engine) as writer:
        sync.apply(writer, sync.HostUp(host_id, ()))
        writer.flush()
        thread = threading.Thread(target=admin)
        thread.start()
        time.sleep(0.5)
        assert not result
    thread.join(30)
    assert result == [HostState.AVAILABLE]
    assert host(db_engine, host_id) == (HostState.AVAILABLE, "activated; libvirt connected", True)


# --- remove: the lab KDC's kadmin deletes the principals, as in `drover serve` ------------------------


def with_principal(kdc: LabKdc, engine: Engine, hostname: str, **kw: Any) -> tuple[int, str]:
    """A host that collected its credentials: its principal exists in the lab realm."""
    principal = kdc.principal(f"libvirt/{hostname}")
    return add_host(engine, hostname, **kw), principal


def remove(engine: Engine, key: str, realm: Realm, force: bool = False) -> lifecycle.Removed:
    with session_scope(engine) as s:
        return lifecycle.remove(s, hosts.find(s, key), ADMIN, realm, force=force)


def token_refusal(engine: Engine, token: str, **kw: Any) -> Refusal:
    with pytest.raises(TokenRefused) as err, session_scope(engine) as s:
        tokens.consume(s, token, **kw)
    return err.value.reason


@pytest.mark.lab
def test_remove_forgets_the_host_its_principal_and_its_tokens(db_engine: Engine, kdc: LabKdc) -> None:
    mac = "52:54:00:20:00:01"
    host_id, principal = with_principal(kdc, db_engine, "rm1.example.test", macs=(mac, "52:54:00:20:00:02"))
    stopped = add_vm(db_engine, host_id, VmState.STOPPED, "idle")
    with session_scope(db_engine) as s:
        h = s.get(Host, host_id)
        assert h is not None
        dmi = h.uuid
        h.disks.append(HostDisk(name="vda", size_bytes=1 << 30))
        hosts.event(s, h, "host.identified", "earlier")
        by_uuid = tokens.mint(s, host_uuid=dmi).token
        by_mac = tokens.mint(s, mac=mac).token
        other = tokens.mint(s, mac="52:54:00:99:99:99").token
        s.add(Task(type=TaskType.HOST_CLEAR, target_kind=TargetKind.HOST, target_id=host_id))
    removed = remove(db_engine, "rm1", kdc.realm)
    assert removed.as_dict() == {
        "id": host_id, "hostname": "rm1.example.test", "uuid": dmi, "principal_deleted": principal,
        "principal_note": "", "tokens_invalidated": 2, "vms_detached": ["idle (stopped)"], "tasks_canceled": 1,
    }  # fmt: skip
    assert not kdc.realm.kadmin().exists(principal)
    with session_scope(db_engine) as s:
        assert s.get(Host, host_id) is None
        for model in (HostNic, HostDisk):
            assert s.scalar(select(func.count()).select_from(model)) == 0
        vm = s.scalars(select(Vm).where(Vm.uuid == stopped)).one()
        assert (vm.host_id, vm.state) == (None, VmState.STOPPED)
        earlier = s.scalars(select(Event).where(Event.message == "earlier")).one()
        assert earlier.host_id is None and earlier.subject == "rm1.example.test"
        gone = s.scalars(select(Event).where(Event.kind == "host.removed")).one()
        assert gone.host_id is None and gone.subject == "rm1.example.test"
        assert gone.message == (
            f"host rm1.example.test ({dmi}, id {host_id}, available) removed by {ADMIN}; principal {principal} "
            "deleted; 2 unused enrolment token(s) invalidated; VMs left on no host: idle (stopped); "
            "1 queued task(s) canceled"
        )
        assert s.scalars(select(Task.state)).one() is TaskState.CANCELED
    assert token_refusal(db_engine, by_uuid, host_uuid=dmi) is Refusal.EXPIRED
    assert token_refusal(db_engine, by_mac, mac=mac) is Refusal.EXPIRED
    with session_scope(db_engine) as s:  # a token for another machine is left alone
        untouched = s.scalars(select(EnrolmentToken).where(EnrolmentToken.selector == other.split(".")[1])).one()
        assert untouched.used_at is None and untouched.expires_at > utcnow()
    with pytest.raises(NotFound):
        remove(db_engine, str(host_id), kdc.realm)


@pytest.mark.lab
def test_running_vms_refuse_the_removal_unless_forced(db_engine: Engine, kdc: LabKdc) -> None:
    host_id, principal = with_principal(kdc, db_engine, "rm2.example.test")
    running = add_vm(db_engine, host_id, VmState.RUNNING, "web")
    lost = add_vm(db_engine, host_id, VmState.UNREACHABLE, "db")
    before = snapshot(db_engine)
    with pytest.raises(Conflict, match=r"2 VM\(s\) that are or may be running: db \(unreachable\), web \(running\)"):
        remove(db_engine, "rm2", kdc.realm)
    assert snapshot(db_engine) == before and kdc.realm.kadmin().exists(principal)
    removed = remove(db_engine, "rm2", kdc.realm, force=True)
    assert removed.vms_detached == ["db (unreachable)", "web (running)"]
    with session_scope(db_engine) as s:
        states = {v.uuid: (v.host_id, v.state) for v in s.scalars(select(Vm))}
        assert states == {running: (None, VmState.UNREACHABLE), lost: (None, VmState.UNREACHABLE)}
        assert s.scalars(select(Event.message).where(Event.kind == "vm.state")).all() == [
            f"running -> unreachable: host rm2.example.test removed by {ADMIN}"]  # fmt: skip
        severity = s.scalars(select(Event.severity).where(Event.kind == "host.removed")).one()
        assert severity is Severity.WARNING
    assert not kdc.realm.kadmin().exists(principal)


@pytest.mark.lab
def test_two_enrolled_records_never_share_a_name_and_a_pending_host_needs_no_principal(
    db_engine: Engine, kdc: LabKdc
) -> None:
    _, principal = with_principal(kdc, db_engine, "twin.example.test")
    # The database itself refuses a second enrolled row for the name (enrolment refuses it before that).
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        add_host(db_engine, "twin.example.test", macs=("52:54:00:30:00:02",))
    add_host(db_engine, "twin.example.test", approved=False, state=HostState.PENDING, macs=("52:54:00:30:00:04",))
    assert kdc.realm.kadmin().exists(principal)
    # A pending host never had one: removing it needs no kadmin at all (this realm could not answer).
    add_host(db_engine, "pend.example.test", approved=False, state=HostState.PENDING, macs=("52:54:00:30:00:03",))
    removed = remove(db_engine, "pend", broken_realm(kdc))
    assert (removed.principal, removed.principal_note) == ("", "never issued: the host did not collect credentials")


def broken_realm(kdc: LabKdc) -> Realm:
    """The lab realm's files under a realm name kadmin does not know: every kadmin call fails."""
    r = kdc.realm
    return Realm(dataclasses.replace(r.spec, realm="NOSUCH.TEST"), r.files, r.hostname, r.mode, r.admin_principal)


@pytest.mark.lab
def test_a_kadmin_failure_rolls_the_removal_back(db_engine: Engine, kdc: LabKdc) -> None:
    with_principal(kdc, db_engine, "rm3.example.test")
    with session_scope(db_engine) as s:
        tokens.mint(s, mac="52:54:00:10:00:01")
    before = snapshot(db_engine)
    with pytest.raises(KerberosError, match="kadmin"):
        remove(db_engine, "rm3", broken_realm(kdc))
    assert snapshot(db_engine) == before


def test_a_batch_of_domain_changes_reads_each_vm_once_and_keeps_every_transition(db_engine: Engine) -> None:
    """A reconnecting fleet's burst: statements do not grow with the number of changes, events do."""
    a, b = add_host(db_engine, "n1.example.test"), add_host(db_engine, "n2.example.test", macs=("52:54:00:10:00:02",))
    guests = [add_vm(db_engine, a, VmState.STOPPED, f"g{i}") for i in range(40)]
    states = (VmState.RUNNING, VmState.PAUSED, VmState.RUNNING)
    changes: list[sync.Change] = [
        sync.DomainChanged(a, sync.Domain(u, f"g{i}", state)) for state in states for i, u in enumerate(guests)
    ]
    changes.append(sync.DomainChanged(b, sync.Domain(str(uuid.uuid4()), "found", VmState.RUNNING)))  # discovered
    selects: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    sqlalchemy.event.listen(db_engine, "before_cursor_execute", seen)
    try:
        with session_scope(db_engine) as s:
            sync.apply_all(s, changes)
    finally:
        sqlalchemy.event.remove(db_engine, "before_cursor_execute", seen)
    # Two host locks re-read, one VM query, the default pool's id for nothing: a handful, not 121.
    assert len(selects) <= 6, selects
    with session_scope(db_engine) as s:
        rows = {vm.name: vm for vm in s.scalars(select(Vm)).all()}
    assert all(rows[f"g{i}"].state is VmState.RUNNING and rows[f"g{i}"].host_id == a for i in range(40))
    assert rows["found"].host_id == b and rows["found"].state is VmState.RUNNING
    transitions = events(db_engine, "vm.state")
    assert len(transitions) == 120  # stopped -> running -> paused -> running, for each of the 40
    assert transitions[:2] == ["stopped -> running on n1.example.test"] * 2
    assert events(db_engine, "vm.discovered") == ["on n2.example.test: running"]


def test_a_host_that_becomes_available_is_given_the_storage_pools(db_engine: Engine) -> None:
    """Through the host browser's connect and through `host activate`: a refresh of every available storage
    pool of its hardware pool is queued (by the appliance); a pool not available, or busy, is left alone."""
    with session_scope(db_engine) as s:
        hw = hosts.default_pool(s).id
        for name, state in (("shared", StorageState.AVAILABLE), ("broken", StorageState.FAILED),
                            ("busy", StorageState.AVAILABLE)):  # fmt: skip
            s.add(StoragePool(name=name, type=StorageType.DIR, path=f"/srv/{name}", hardware_pool_id=hw, state=state))
        s.flush()
        busy = s.scalars(select(StoragePool).where(StoragePool.name == "busy")).one()
        s.add(Task(type=TaskType.STORAGE_POOL_DELETE, target_kind=TargetKind.STORAGE_POOL, target_id=busy.id,
                   args={}, state=TaskState.QUEUED))  # fmt: skip

    def refreshes() -> list[tuple[str, str | None, str]]:
        with session_scope(db_engine) as s:
            names = dict(s.execute(select(StoragePool.id, StoragePool.name)).tuples().all())
            rows = s.scalars(select(Task).where(Task.type == TaskType.STORAGE_POOL_REFRESH).order_by(Task.id)).all()
            return [(names[t.target_id], t.created_by, t.args["reason"]) for t in rows]

    up = add_host(db_engine, "up.example.test", state=HostState.UNAVAILABLE, connected=False)
    apply(db_engine, sync.HostUp(up, ()))
    assert refreshes() == [("shared", None, "host up.example.test became available")]
    apply(db_engine, sync.HostUp(up, ()))  # already available: nothing more
    assert len(refreshes()) == 1
    with session_scope(db_engine) as s:  # that refresh ran (one still queued would cover the host: none added)
        for task in s.scalars(select(Task).where(Task.type == TaskType.STORAGE_POOL_REFRESH)):
            task.state = TaskState.FINISHED
    maintenance(db_engine, "up")
    activate(db_engine, "up")
    assert refreshes()[1:] == [("shared", None, "host up.example.test became available")]
