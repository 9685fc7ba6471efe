"""appliance.monitoring.record_load on both engines: one statement for a batch on PostgreSQL, a loop on SQLite,
the same rows either way."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine, select

from appliance.db.engine import session_scope
from appliance.db.models import Host
from appliance.hosts import default_pool
from appliance.monitoring import Load, record_load


def test_record_load_writes_what_each_host_sent_and_keeps_the_rest(db_engine: Engine) -> None:
    with session_scope(db_engine) as s:
        pool = default_pool(s).id
        for name in ("a.test", "b.test", "c.test"):
            s.add(Host(uuid=str(uuid.uuid4()), hostname=name, hardware_pool_id=pool, vm_count=7, memory_used_mib=10))
    loads = {
        "a.test": Load(1.5, 20.0, 100, 2),
        "b.test": Load(vm_count=3),  # only one value: the others keep what the row had
        "c.test": Load(),  # nothing at all: not touched
        "gone.test": Load(0.1),  # no such host: not counted
    }
    with session_scope(db_engine) as s:
        assert record_load(s, loads) == 2
    with session_scope(db_engine) as s:
        rows = {h.hostname: h for h in s.scalars(select(Host))}
    a, b, c = rows["a.test"], rows["b.test"], rows["c.test"]
    assert (a.load_average, a.cpu_busy_percent, a.memory_used_mib, a.vm_count) == (1.5, 20.0, 100, 2)
    assert (b.load_average, b.memory_used_mib, b.vm_count) == (None, 10, 3) and b.load_updated_at is not None
    assert (c.vm_count, c.load_updated_at) == (7, None)
    with session_scope(db_engine) as s:
        assert record_load(s, {}) == 0
