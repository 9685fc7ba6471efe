"""An enrolment window's BMC (appliance.power, provisioning from cold), on SQLite and PostgreSQL: which windows may
carry one, what the host enrolled through it inherits, and what a power request on a window refuses before it
reaches any BMC. The real thing (virtualbmc, a PXE-booted libvirt domain) is tests/test_cold_provisioning_lab.py.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from appliance import admission, hosts, power
from appliance.config import PowerConfig
from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import EnrolmentWindow, Event, Host
from appliance.errors import Conflict, NotFound, UsageError
from appliance.ipmi import IpmiClient, PowerAction
from appliance.secretbox import SecretBox

MAC = "52:54:00:aa:00:01"
BMC = power.PowerSettings("127.0.0.1", 6230, "admin", "s3cret-pw")


def open_window(engine: Engine, box: SecretBox, macs: list[str], count: int = 1) -> int:
    with session_scope(engine) as s:
        window = admission.open_window(s, by="admin", duration=timedelta(minutes=5), max_hosts=count, macs=macs)
        power.configure_window(window, BMC, box)
        return window.id


def add_host(engine: Engine) -> int:
    with session_scope(engine) as s:
        host = Host(uuid=str(uuid.uuid4()), hostname=f"n-{uuid.uuid4().hex[:6]}.example.test",
                    hardware_pool_id=hosts.default_pool(s).id, approved_at=utcnow())  # fmt: skip
        s.add(host)
        s.flush()
        return host.id


def test_only_a_window_for_one_machine_carries_a_bmc(db_engine: Engine, tmp_path: Path) -> None:
    box = SecretBox.under(tmp_path)
    for macs, count in (([], 1), ([MAC, "52:54:00:aa:00:02"], 2)):
        with pytest.raises(UsageError, match="exactly one MAC"):
            open_window(db_engine, box, macs, count)
    with session_scope(db_engine) as s:
        assert s.scalars(select(EnrolmentWindow)).all() == []  # refused with its window: nothing stays
    wid = open_window(db_engine, box, [MAC])
    with session_scope(db_engine) as s:
        window = s.get(EnrolmentWindow, wid)
        assert window is not None and window.power_secret is not None
        assert BMC.password not in window.power_secret and box.open(window.power_secret) == BMC.password
        view = admission.window_view(window)
    assert view["power"] == {"address": "127.0.0.1", "port": 6230, "user": "admin"}
    assert BMC.password not in repr(view)


def test_the_enrolled_host_inherits_the_bmc_unless_it_has_its_own(db_engine: Engine, tmp_path: Path) -> None:
    box = SecretBox.under(tmp_path)
    wid = open_window(db_engine, box, [MAC])
    bare, own = add_host(db_engine), add_host(db_engine)
    with session_scope(db_engine) as s:
        window = s.get(EnrolmentWindow, wid)
        host, other = s.get(Host, bare), s.get(Host, own)
        assert window is not None and host is not None and other is not None
        power.configure(s, other, power.PowerSettings("127.0.0.9", 623, "root", "theirs"), box, "admin")
        assert power.inherit(s, host, window) is True
        assert power.inherit(s, other, window) is False
    with session_scope(db_engine) as s:
        host, other = s.get(Host, bare), s.get(Host, own)
        assert host is not None and other is not None
        bmc = power.bmc_of(host, box)
        assert (bmc.address, bmc.port, bmc.user, bmc.password) == (BMC.address, BMC.port, BMC.user, BMC.password)
        assert power.bmc_of(other, box).address == "127.0.0.9"  # an admin's own settings are never overwritten
        messages = s.scalars(select(Event.message).where(Event.host_id == bare, Event.kind == "host.power")).all()
    assert [m for m in messages if f"from enrolment window {wid}" in m], messages


def test_a_window_power_request_is_refused_before_any_bmc(db_engine: Engine, tmp_path: Path) -> None:
    box = SecretBox.under(tmp_path)
    # No BMC exists in this test: a request that got as far as ipmitool would fail with BmcError instead.
    client = IpmiClient(PowerConfig(timeout_seconds=2, retries=0))

    with pytest.raises(NotFound, match="no enrolment window 4242"):
        power.act_window(lambda: session_scope(db_engine), 4242, PowerAction.ON, client, box, "admin")
    with session_scope(db_engine) as s:
        plain = admission.open_window(s, by="admin", duration=timedelta(minutes=5), max_hosts=1, macs=[MAC]).id
    with pytest.raises(Conflict, match="no BMC settings"):
        power.act_window(lambda: session_scope(db_engine), plain, PowerAction.ON, client, box, "admin")
    wid = open_window(db_engine, box, [MAC])
    with session_scope(db_engine) as s:
        admission.close_windows(s, by="admin", window_id=wid)
    with pytest.raises(Conflict, match="no longer open"):
        power.act_window(lambda: session_scope(db_engine), wid, PowerAction.ON, client, box, "admin")
    with session_scope(db_engine) as s:
        window = s.get(EnrolmentWindow, wid)
        assert window is not None
        window.expires_at = utcnow() - timedelta(seconds=1)
        window.closed_at = None
    with pytest.raises(Conflict, match="no longer open"):
        power.act_window(lambda: session_scope(db_engine), wid, PowerAction.ON, client, box, "admin")
