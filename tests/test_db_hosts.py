"""appliance.hosts on SQLite and PostgreSQL: finding a host by any name an admin types."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine

from appliance import hosts
from appliance.db.engine import session_scope
from appliance.db.models import Host
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
