"""The task engine's pure parts and its claims on both engines: placement, balance, domain XML, config,
claim order, one task per VM at a time, lease take-over, compare-and-set ends.
"""

from __future__ import annotations

import tomllib
import uuid
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlalchemy import event as sa_event

from appliance import config, placement, tasking
from appliance.db.base import utcnow
from appliance.db.engine import session_scope, transaction
from appliance.db.models import (
    Firmware,
    HardwarePool,
    Host,
    HostState,
    HypervisorType,
    StoragePool,
    StorageType,
    StorageVolume,
    TargetKind,
    Task,
    TaskState,
    TaskType,
    Vm,
    VmDisk,
    VmNic,
    VmState,
    VolumeFormat,
)
from taskengine import claims, domainxml, worker
from taskengine.migration import Convergence, Step

CAPS = """<capabilities><host><cpu><arch>x86_64</arch></cpu></host>
<guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/>{kvm}</arch></guest>
<guest><os_type>hvm</os_type><arch name='i686'><domain type='qemu'/></arch></guest></capabilities>"""


def _host(i: int, mem: int = 4096, cpus: int = 4, used_mem: int = 0, used: int = 0, **kw: object) -> placement.HostLoad:
    return placement.HostLoad(i, f"h{i}", mem, cpus, used_mem, used, pools=frozenset({1}), **kw)  # type: ignore[arg-type]


def test_placement_filters_then_spreads() -> None:
    hosts = [_host(1, used_mem=3000), _host(2, used_mem=1000), _host(3, available=False), _host(4, mem=256)]
    want = placement.Want(512, 1, pool_id=1)
    assert placement.best(want, hosts).id == 2  # type: ignore[union-attr]
    why = placement.rejections(placement.Want(4000, 1, 1), hosts, 1.0)
    assert why["h3"].startswith("not available") and "MiB free" in why["h4"]
    assert placement.best(placement.Want(512, 1, pool_id=9), hosts) is None  # wrong hardware pool
    assert placement.best(placement.Want(512, 1, 1, networks=frozenset({7})), hosts) is None
    assert placement.best(placement.Want(512, 1, 1, storage=frozenset({3})), hosts) is None  # storage unreachable
    assert placement.best(placement.Want(512, 1, 1, storage=frozenset({1})), hosts).id == 2  # type: ignore[union-attr]
    # The monitor's load counts when present: an idle host wins over an equally filled busy one.
    busy, idle = _host(5, load=0.9), _host(6, load=0.0)
    assert placement.best(want, [busy, idle]).id == 6  # type: ignore[union-attr]


def test_vcpus_overcommit_only_as_far_as_the_ratio() -> None:
    one_cpu = [_host(1, cpus=1, used=1)]  # a 1-CPU node already running a 1-vCPU VM
    want = placement.Want(96, 1, pool_id=1)
    assert placement.best(want, one_cpu, 1.0) is None
    assert placement.rejections(want, one_cpu, 1.0)["h1"] == "0 vCPUs free, 1 needed"
    assert placement.best(want, one_cpu, 4.0).id == 1  # type: ignore[union-attr]
    assert placement.best(placement.Want(96, 4, pool_id=1), one_cpu, 4.0) is None  # 5 > 4 x 1
    assert placement.best(placement.Want(8192, 1, pool_id=1), one_cpu, 4.0) is None  # memory never overcommits


def test_place_all_counts_what_it_placed() -> None:
    hosts = [_host(1, mem=1024), _host(2, mem=1024)]
    placed = placement.place_all([placement.Want(512, 1, 1)] * 5, hosts)
    assert sorted(p for p in placed if p is not None) == [1, 1, 2, 2]
    assert placed.count(None) == 1


def test_balance_moves_until_even_then_stops() -> None:
    hosts = [_host(1, used_mem=3072, used=3), _host(2), _host(3)]
    vms = [(n, 1, placement.Want(1024, 1, 1)) for n in range(3)]
    moves = placement.balance(hosts, vms)
    assert len(moves) == 2 and {m.dest for m in moves} == {2, 3} and all(m.gain > 0 for m in moves)
    assert placement.balance([_host(1, used_mem=1024, used=1), _host(2, used_mem=1024, used=1)],
                             [(0, 1, placement.Want(1024, 1, 1))]) == []  # fmt: skip


def test_domain_type_comes_from_the_host_not_from_the_code() -> None:
    kvm_caps = domainxml.caps_from_xml(CAPS.format(kvm="<domain type='kvm'/>"), "x86_64", HypervisorType.KVM)
    assert kvm_caps.domain_type == "kvm"
    # Capabilities list kvm but the host record says it does not work there (a paravirtual /dev/kvm).
    assert domainxml.caps_from_xml(CAPS.format(kvm="<domain type='kvm'/>"), "x86_64",
                                   HypervisorType.QEMU).domain_type == "qemu"  # fmt: skip
    assert domainxml.caps_from_xml(CAPS.format(kvm=""), "x86_64", HypervisorType.KVM).domain_type == "qemu"
    assert domainxml.caps_from_xml(CAPS.format(kvm=""), "aarch64", HypervisorType.KVM).domain_types == frozenset()


def test_domain_xml_from_the_model() -> None:
    pool = StoragePool(name="images", type=StorageType.DIR, path="/var/lib/drover/images")
    vol = StorageVolume(name="web.qcow2", capacity_bytes=2**30, format=VolumeFormat.QCOW2, path="/v/web.qcow2",
                        storage_pool=pool)  # fmt: skip
    vm = Vm(uuid=str(uuid.uuid4()), name="web", vcpus=2, memory_mib=256, firmware=Firmware.UEFI)
    vm.disks = [VmDisk(volume=vol, target_dev="vda", boot_order=1)]
    vm.nics = [VmNic(mac="52:54:00:aa:bb:cc")]
    root = ET.fromstring(domainxml.build(vm, domainxml.HostCaps(frozenset({"qemu"}), False)))
    assert root.get("type") == "qemu"
    assert root.findtext("uuid") == vm.uuid and root.findtext("vcpu") == "2"
    assert root.find("os").get("firmware") == "efi"  # type: ignore[union-attr]
    disk = root.find("devices/disk")
    assert disk is not None and disk.find("source").get("file") == "/v/web.qcow2"  # type: ignore[union-attr]
    assert disk.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert root.find("devices/interface/mac").get("address") == "52:54:00:aa:bb:cc"  # type: ignore[union-attr]
    assert root.find("devices/serial/log").get("file") == "/var/log/libvirt/qemu/web-serial.log"  # type: ignore[union-attr]
    assert root.find("devices/graphics").get("type") == "vnc"  # type: ignore[union-attr]
    assert disk.find("boot").get("order") == "1" and disk.find("readonly") is None  # type: ignore[union-attr]
    assert root.find("os/boot") is None  # per-device boot order instead

    # A template's base image as the read-only boot disk (`vm create --template`): raw, readonly, boots first.
    iso = StorageVolume(name="guest.img", capacity_bytes=2**24, format=VolumeFormat.RAW, path="/v/guest.img",
                        storage_pool=pool)  # fmt: skip
    vm.disks = [VmDisk(volume=iso, target_dev="vda", boot_order=1, read_only=True)]
    disk = ET.fromstring(domainxml.build(vm, domainxml.HostCaps(frozenset({"qemu"}), False))).find("devices/disk")
    assert disk is not None and disk.find("readonly") is not None
    assert disk.find("driver").get("type") == "raw" and disk.find("boot").get("order") == "1"  # type: ignore[union-attr]


def test_taskengine_settings_round_trip_and_show(tmp_path: Path) -> None:
    cfg = config.load(env={"DROVER_STATE_DIR": str(tmp_path), "DROVER_TASKENGINE_WORKERS": "7",
                           "DROVER_TASKENGINE_LEASE_SECONDS": "12"})  # fmt: skip
    text = config.render(cfg)
    shown = tomllib.loads(text)["taskengine"]
    assert shown["workers"] == 7 and shown["lease_seconds"] == 12 and shown["retries"] == 5
    path = tmp_path / "again.toml"
    path.write_text(text)
    assert config.load(path, env={}) == cfg


def _vm(engine: Engine, n: int = 1) -> list[int]:
    with session_scope(engine) as s:
        pool = HardwarePool(name=f"p{uuid.uuid4().hex[:6]}")
        s.add(pool)
        s.flush()
        vms = [Vm(uuid=str(uuid.uuid4()), name=f"v{i}", vcpus=1, memory_mib=64, hardware_pool_id=pool.id,
                  state=VmState.STOPPED) for i in range(n)]  # fmt: skip
        s.add_all(vms)
        s.flush()
        return [v.id for v in vms]


def test_claims_one_task_per_vm_by_priority_then_age(db_engine: Engine) -> None:
    a, b = _vm(db_engine, 2)
    lease = timedelta(seconds=30)
    with session_scope(db_engine) as s:
        t1 = tasking.enqueue(s, TaskType.VM_START, a, {}, created_by=None).id
        t2 = tasking.enqueue(s, TaskType.VM_POWEROFF, a, {}, created_by=None, priority=9).id
        t3 = tasking.enqueue(s, TaskType.VM_START, b, {}, created_by=None, priority=5).id
    with session_scope(db_engine) as s:
        first = claims.claim(s, "w1", lease)
    with session_scope(db_engine) as s:
        second = claims.claim(s, "w2", lease)
    with session_scope(db_engine) as s:
        third = claims.claim(s, "w3", lease)
    # t2 has the highest priority but waits behind t1 on the same VM; t3 (priority 5) goes first.
    assert first is not None and second is not None and (first.task_id, second.task_id) == (t3, t1)
    assert third is None  # t2 waits until t1 ends: never two tasks on one VM
    with session_scope(db_engine) as s:
        assert claims.renew(s, second, lease)
        assert claims.held(s, second) is not None
        task = s.get(Task, t1)
        task.move_to(TaskState.FINISHED)  # type: ignore[union-attr]
    with session_scope(db_engine) as s:
        fourth = claims.claim(s, "w3", lease)
    assert fourth is not None and fourth.task_id == t2
    with session_scope(db_engine) as s:
        assert not claims.renew(s, second, lease)  # ended: no longer ours


def test_an_expired_lease_is_taken_over_and_the_old_owner_writes_nothing(db_engine: Engine) -> None:
    (a,) = _vm(db_engine)
    with session_scope(db_engine) as s:
        t1 = tasking.enqueue(s, TaskType.VM_START, a, {}, created_by=None).id
    with session_scope(db_engine) as s:
        dead = claims.claim(s, "dead", timedelta(seconds=30))
    with session_scope(db_engine) as s:
        assert claims.claim(s, "w2", timedelta(seconds=30)) is None  # lease still valid
        s.execute(update(Task).where(Task.id == t1).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    with session_scope(db_engine) as s:
        taken = claims.claim(s, "w2", timedelta(seconds=30))
    assert dead is not None and taken is not None and taken.task_id == t1
    assert taken.recovered and taken.attempts == 2
    with session_scope(db_engine) as s:
        assert claims.held(s, dead) is None and not claims.renew(s, dead, timedelta(seconds=30))
        assert claims.held(s, taken) is not None


def test_renewing_several_leases_at_once_keeps_ours_and_names_the_lost(db_engine: Engine) -> None:
    a, b, c = _vm(db_engine, 3)
    lease = timedelta(seconds=30)
    with session_scope(db_engine) as s:
        ids = [tasking.enqueue(s, TaskType.VM_START, v, {}, created_by=None).id for v in (a, b, c)]
    held = []
    for n in range(3):
        with session_scope(db_engine) as s:
            got = claims.claim(s, f"w{n}", lease)
            assert got is not None
            held.append(got)
    with session_scope(db_engine) as s:  # one taken over by another worker, one ended
        lost, ended = held[0], held[1]
        s.execute(update(Task).where(Task.id == lost.task_id).values(lease_owner="someone-else/x"))
        s.execute(update(Task).where(Task.id == ended.task_id).values(state=TaskState.FINISHED))
        before = s.get(Task, held[2].task_id).lease_expires_at  # type: ignore[union-attr]
    with session_scope(db_engine) as s:
        kept = claims.renew_all(s, held, timedelta(seconds=300))
    assert kept == {held[2].token}
    with session_scope(db_engine) as s:
        rows = {t.id: t for t in s.scalars(select(Task).where(Task.id.in_(ids)))}
        assert rows[held[2].task_id].lease_expires_at > before  # type: ignore[operator]
        assert rows[lost.task_id].lease_owner == "someone-else/x"
    with session_scope(db_engine) as s:
        assert claims.renew_all(s, [], lease) == set()


def test_ending_a_task_is_one_compare_and_set_that_a_lost_claim_cannot_pass(db_engine: Engine) -> None:
    a, b = _vm(db_engine, 2)
    lease = timedelta(seconds=30)
    with session_scope(db_engine) as s:
        ids = [tasking.enqueue(s, TaskType.VM_START, v, {"x": 1}, created_by="u").id for v in (a, b)]
    with transaction(db_engine) as conn:
        mine = claims.claim(conn, "w1", lease)
    with transaction(db_engine) as conn:
        other = claims.claim(conn, "w2", lease)
    assert mine is not None and other is not None
    # The claim's UPDATE returned the row: starting the task needs no other read.
    assert (mine.target_kind, mine.target_id, mine.args, mine.created_by) == (TargetKind.VM, a, {"x": 1}, "u")
    with transaction(db_engine) as conn:
        conn.execute(update(Task).where(Task.id == other.task_id).values(lease_owner="someone-else/x"))
    with transaction(db_engine) as conn:
        ended = claims.end(conn, mine, TaskState.FINISHED, {"ok": True}, None)
        lost = claims.end(conn, other, TaskState.FAILED, None, "boom")
    assert ended is not None and ended.args == {"x": 1} and lost is None
    with session_scope(db_engine) as s:
        rows = {t.id: t for t in s.scalars(select(Task).where(Task.id.in_(ids)))}
        done, taken = rows[mine.task_id], rows[other.task_id]
        assert (done.state, done.result, done.progress, done.lease_expires_at) == (TaskState.FINISHED, {"ok": True},
                                                                                   1.0, None)  # fmt: skip
        assert done.finished_at is not None
        assert (taken.state, taken.error, taken.lease_owner) == (TaskState.RUNNING, None, "someone-else/x")
    with transaction(db_engine) as conn:  # ended once: a second end by the same claim finds nothing
        assert claims.end(conn, mine, TaskState.FAILED, None, "again") is None


def test_a_failed_end_writes_its_error_and_no_result(db_engine: Engine) -> None:
    (vm,) = _vm(db_engine, 1)
    with session_scope(db_engine) as s:
        task_id = tasking.enqueue(s, TaskType.VM_START, vm, {}, created_by="u").id
    with transaction(db_engine) as conn:
        mine = claims.claim(conn, "w1", timedelta(seconds=30))
    assert mine is not None and mine.task_id == task_id
    with transaction(db_engine) as conn:
        assert claims.end(conn, mine, TaskState.FAILED, None, "boom") is not None
    with session_scope(db_engine) as s:
        task = s.get_one(Task, task_id)
        assert (task.result, task.state, task.error, task.lease_owner) == (None, TaskState.FAILED, "boom", mine.token)
        assert task.progress < 1.0 and task.finished_at is not None and task.lease_expires_at is None


def test_a_slow_claim_refreshes_the_queue_statistics_once_per_interval(db_engine: Engine) -> None:
    ran: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("ANALYZE"):
            ran.append(statement)

    sa_event.listen(db_engine, "before_cursor_execute", seen)
    try:
        stats = worker._Statistics(db_engine)
        stats.claimed(0.001)  # fast: nothing to do
        stats.claimed(0.2)
        stats.claimed(0.3)  # within the interval: not again
    finally:
        sa_event.remove(db_engine, "before_cursor_execute", seen)
    # SQLite plans without statistics of this kind: nothing is run there.
    assert ran == (["ANALYZE tasks"] if db_engine.dialect.name == "postgresql" else [])
    assert stats.enabled is (db_engine.dialect.name == "postgresql")


def test_convergence_raises_downtime_step_by_step_then_aborts() -> None:
    policy = Convergence(downtime_ms=100, step_ms=100, max_ms=300, stall_s=5)
    assert policy.observe(1000, 0) is Step.WAIT
    assert policy.observe(800, 3) is Step.WAIT  # shrinking: fine
    assert policy.observe(900, 7) is Step.WAIT  # not below the best yet, but not stalled for 5 s
    assert policy.observe(850, 8.1) is Step.RAISE and policy.downtime_ms == 200
    assert policy.observe(850, 10) is Step.WAIT
    assert policy.observe(700, 12) is Step.WAIT  # progress again resets the clock
    assert policy.observe(700, 17.5) is Step.RAISE and policy.downtime_ms == 300
    assert policy.observe(700, 23) is Step.ABORT and policy.downtime_ms == 300


def test_placement_reads_the_load_the_monitor_writes(db_engine: Engine) -> None:
    with session_scope(db_engine) as s:
        pool = HardwarePool(name=f"p{uuid.uuid4().hex[:6]}")
        s.add(pool)
        s.flush()
        busy = Host(uuid=str(uuid.uuid4()), hostname=f"busy{pool.id}.example.test", hardware_pool_id=pool.id,
                    memory_mib=4096, cpu_count=4, state=HostState.AVAILABLE, cpu_busy_percent=90.0)  # fmt: skip
        quiet = Host(uuid=str(uuid.uuid4()), hostname=f"quiet{pool.id}.example.test", hardware_pool_id=pool.id,
                     memory_mib=4096, cpu_count=4, state=HostState.AVAILABLE)  # fmt: skip
        s.add_all([busy, quiet])
        s.flush()
        by_id = {h.id: h for h in placement.loads(s, [busy, quiet])}
        assert by_id[busy.id].load == 0.9 and by_id[quiet.id].load is None
