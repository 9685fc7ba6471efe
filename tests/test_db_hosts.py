"""appliance.hosts on SQLite and PostgreSQL: finding a host by any name an admin types; hosts across migrations."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, text

from appliance import hosts
from appliance.db import migrate
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostState
from appliance.errors import NotFound


def add_host(engine: Engine, hostname: str, dmi: str | None = None) -> int:
    with session_scope(engine) as s:
        host = Host(uuid=dmi or str(uuid.uuid4()), hostname=hostname, hardware_pool_id=hosts.default_pool(s).id)
        s.add(host)
        s.flush()
        return host.id


def test_find_by_id_uuid_fqdn_and_short_name(db_engine: Engine) -> None:
    dmi = str(uuid.uuid4())
    first = add_host(db_engine, "rack1-n01.example.test", dmi)
    add_host(db_engine, "rack1-n010.example.test")
    with session_scope(db_engine) as s:
        for key in (str(first), dmi, dmi.upper(), "rack1-n01.example.test", "RACK1-N01.example.test.", "rack1-n01"):
            assert hosts.find(s, key).id == first, key
        for key in ("rack1", "rack1-n0", "", "n01.example.test", "%", "rack1-n0_"):
            with pytest.raises(NotFound, match="no host"):
                hosts.find(s, key)


def test_a_name_that_means_several_hosts_asks_for_the_id(db_engine: Engine) -> None:
    a = add_host(db_engine, "n1.a.example.test")
    b = add_host(db_engine, "n1.b.example.test")
    c = add_host(db_engine, "twin.example.test")
    d = add_host(db_engine, "twin.example.test")
    with session_scope(db_engine) as s:
        with pytest.raises(NotFound, match=f"names 2 hosts \\(ids {a}, {b}\\)") as err:
            hosts.find(s, "n1")
        assert "id or the DMI UUID" in err.value.hint
        with pytest.raises(NotFound, match=f"ids {c}, {d}"):
            hosts.find(s, "twin.example.test")
        with pytest.raises(NotFound, match=f"ids {c}, {d}"):
            hosts.find(s, "twin")
        assert hosts.find(s, "n1.a.example.test").id == a


def test_migration_0003_fills_hosts_that_exist(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate.upgrade_engine(engine, "0002")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO hardware_pools (id, name, description, created_at) "
                              "VALUES (1, 'default', '', CURRENT_TIMESTAMP)"))  # fmt: skip
            conn.execute(text(
                "INSERT INTO hosts (id, uuid, hostname, state, state_changed_at, cpu_model, cpu_sockets, cpu_count, "
                "cpu_cores, cpu_flags, memory_mib, hypervisor_type, arch, hardware_pool_id, created_at) VALUES "
                "(7, 'u-7', 'old.example.test', 'maintenance', CURRENT_TIMESTAMP, '', 1, 1, 1, '[]', 0, 'kvm', "
                "'x86_64', 1, CURRENT_TIMESTAMP)"
            ))  # fmt: skip
        assert migrate.upgrade_engine(engine).after == migrate.head()
        with session_scope(engine) as s:
            old = s.get(Host, 7)
            assert old is not None
            assert (old.state, old.state_reason, old.libvirt_connected) == (HostState.MAINTENANCE, "", False)
            assert hosts.find(s, "old").id == 7
    finally:
        engine.dispose()
