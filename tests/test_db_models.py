"""The schema's rules hold in the database itself, on SQLite and PostgreSQL: unique keys, foreign keys, checks."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from appliance.db.engine import session_factory, session_scope
from appliance.db.models import (
    Cluster,
    HardwarePool,
    Host,
    HostNic,
    HostState,
    Permission,
    Role,
    StoragePool,
    StorageType,
    StorageVolume,
    User,
    Vm,
    VmDisk,
    VmNic,
    VmState,
)


def _pool(session: Session, name: str = "default", parent: HardwarePool | None = None) -> HardwarePool:
    pool = HardwarePool(name=name, parent=parent)
    session.add(pool)
    session.flush()
    return pool


def _host(session: Session, pool: HardwarePool, dmi: str | None = None, mac: str = "52:54:00:00:00:01") -> Host:
    host = Host(uuid=dmi or str(uuid.uuid4()), hostname="node1.example.test", pool=pool)
    host.nics.append(HostNic(name="eno1", mac=mac, is_boot=True, addresses=["10.0.0.5/24"]))
    session.add(host)
    session.flush()
    return host


def _vm(session: Session, pool: HardwarePool, host: Host | None = None, **kw: object) -> Vm:
    vm = Vm(uuid=str(uuid.uuid4()), name="guest", vcpus=1, memory_mib=512, pool=pool, host=host, **kw)
    session.add(vm)
    session.flush()
    return vm


def _rejected(engine: Engine, *rows: object) -> None:
    session = session_factory(engine)()
    try:
        with pytest.raises(IntegrityError):
            session.add_all(rows)
            session.flush()
    finally:
        session.rollback()
        session.close()


def test_whole_graph_round_trips(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        dc = _pool(session, "dc1")
        sub = _pool(session, "rack1", parent=dc)
        cluster = Cluster(name="c1", pool=sub)
        session.add(cluster)
        host = _host(session, sub)
        host.cluster = cluster
        host.cpu_flags = ["vmx", "sse4_2"]
        sp = StoragePool(name="local", type=StorageType.DIR, path="/var/lib/images", pool=sub)
        vol = StorageVolume(storage_pool=sp, name="disk0", capacity_bytes=10 << 30)
        session.add_all([sp, vol])
        vm = _vm(session, sub, host, state=VmState.RUNNING)
        vm.disks.append(VmDisk(volume=vol, target_dev="vda"))
        vm.nics.append(VmNic(mac="52:54:00:aa:bb:cc"))
    with session_scope(db_engine) as session:
        host = session.scalars(select(Host)).one()
        assert host.state is HostState.PENDING
        assert host.cpu_flags == ["vmx", "sse4_2"]
        assert host.nics[0].addresses == ["10.0.0.5/24"]
        assert host.pool.parent is not None and host.pool.parent.is_datacenter
        assert host.cluster is not None and host.cluster.name == "c1"
        assert [v.state for v in host.vms] == [VmState.RUNNING]
        assert host.vms[0].disks[0].volume.storage_pool.type is StorageType.DIR
        # Enums are stored as their values, which other tools and SQL reports read.
        assert session.execute(text("SELECT state FROM vms")).scalar() == "running"


def test_duplicate_dmi_uuid_rejected(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        pool = _pool(session)
        _host(session, pool, dmi="4c4c4544-0000-1000-8000-000000000001")
        pool_id = pool.id
    _rejected(db_engine, Host(uuid="4c4c4544-0000-1000-8000-000000000001", hostname="other", hardware_pool_id=pool_id))


def test_duplicate_mac_rejected(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        pool = _pool(session)
        host = _host(session, pool, mac="52:54:00:00:00:01")
        vm = _vm(session, pool)
        vm.nics.append(VmNic(mac="52:54:00:00:00:99"))
        host_id, vm_id = host.id, vm.id
    _rejected(db_engine, HostNic(host_id=host_id, name="eno2", mac="52:54:00:00:00:01"))
    _rejected(db_engine, VmNic(vm_id=vm_id, mac="52:54:00:00:00:99"))


def test_duplicate_principal_rejected(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        session.add(User(principal="alice@DROVER.TEST"))
    _rejected(db_engine, User(principal="alice@DROVER.TEST"))


def test_duplicate_global_grant_rejected(db_engine: Engine) -> None:
    # A plain UNIQUE over a NULL pool would let this through; the partial index must not.
    with session_scope(db_engine) as session:
        user = User(principal="bob@DROVER.TEST")
        user.permissions.append(Permission(role=Role.ADMIN))
        session.add(user)
        session.flush()
        user_id = user.id
    _rejected(db_engine, Permission(user_id=user_id, role=Role.ADMIN))


def test_foreign_keys_rejected(db_engine: Engine) -> None:
    _rejected(db_engine, Host(uuid=str(uuid.uuid4()), hostname="orphan", hardware_pool_id=12345))
    _rejected(db_engine, Permission(user_id=12345, role=Role.USER))


def test_pool_with_hosts_cannot_be_deleted(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        _host(session, _pool(session))
    with pytest.raises(IntegrityError), session_scope(db_engine) as session:
        session.execute(text("DELETE FROM hardware_pools"))


def test_deleting_a_host_keeps_its_vms_and_drops_its_nics(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        pool = _pool(session)
        _vm(session, pool, _host(session, pool))
    with session_scope(db_engine) as session:
        # Plain SQL, so it is the database's ON DELETE rules at work and not the ORM's cascades.
        session.execute(text("DELETE FROM hosts"))
    with session_scope(db_engine) as session:
        assert session.scalars(select(HostNic)).all() == []
        vm = session.scalars(select(Vm)).one()
        assert vm.host_id is None


def test_enum_values_checked_by_the_database(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        pool_id = _pool(session).id
    with pytest.raises(IntegrityError), session_scope(db_engine) as session:
        session.execute(
            text("INSERT INTO hosts (uuid, hostname, state, state_changed_at, cpu_model, cpu_sockets, cpu_count,"
                 " cpu_cores, cpu_flags, memory_mib, hypervisor_type, arch, hardware_pool_id, created_at)"
                 " VALUES ('u', 'h', 'exploded', CURRENT_TIMESTAMP, '', 1, 1, 1, '[]', 0, 'kvm', 'x86_64', :p,"
                 " CURRENT_TIMESTAMP)"),
            {"p": pool_id},
        )


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (StorageType.DIR, {}),
        (StorageType.NFS, {"server": "nas"}),
        (StorageType.ISCSI, {"server": "san", "port": 3260}),
        (StorageType.LOGICAL, {"path": "/dev/vg0"}),
    ],
)
def test_storage_pool_without_its_type_fields_rejected(
    db_engine: Engine, kind: StorageType, fields: dict[str, object]
) -> None:
    with session_scope(db_engine) as session:
        pool_id = _pool(session).id
    _rejected(db_engine, StoragePool(name="sp", type=kind, hardware_pool_id=pool_id, **fields))


def test_vm_needs_a_vcpu(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        pool_id = _pool(session).id
    _rejected(db_engine, Vm(uuid=str(uuid.uuid4()), name="x", vcpus=0, memory_mib=1, hardware_pool_id=pool_id))
