"""Power management and fencing on a rack of our own (tests/lab/fencerack.py says what is real and what is not).

Power: `drover host power set|show|status|off|on|cycle` through the API to virtualbmc, each action observed on
the power plane's libvirt (the chassis domain) and on the host (its libvirtd killed by the power loss, back and
reconnected after power on); the password sealed in the database, never shown. Fencing: the cases the issue
names, each asserting on the database, on the events and on the qemu processes of the machine.
"""

from __future__ import annotations

import stat
import time

import libvirt
import pytest
from sqlalchemy import select

from appliance.db.engine import session_scope
from appliance.db.models import Event, FenceState, Host, HostState
from appliance.secretbox import KEY_FILE
from tests.lab.fencerack import FenceRack, RackHost, wait_until

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
    off = rack.drover("host", "power", "off", fb.fqdn)
    assert off.returncode == 0 and "reports power off" in off.stdout, off.stdout + off.stderr
    assert chassis_id(rack, fb) == -1
    wait_until("fb unavailable", lambda: rack.host_row(fb).state is HostState.UNAVAILABLE, 30)
    assert fb.node.process.poll() is not None  # its libvirtd died with the power
    # On: the chassis runs again, the host boots afresh and is reconnected.
    on = rack.drover("host", "power", "on", fb.fqdn)
    assert on.returncode == 0 and "reports power on" in on.stdout, on.stdout + on.stderr
    assert chassis_id(rack, fb) > 0
    rack.wait_available(fb)
    # Cycle: off, then on again (a new qemu process for the chassis: a new domain id).
    before = chassis_id(rack, fb)
    cycle = rack.drover("host", "power", "cycle", fb.fqdn)
    assert cycle.returncode == 0 and "reports power on" in cycle.stdout, cycle.stdout + cycle.stderr
    assert chassis_id(rack, fb) not in (-1, before)
    rack.wait_available(fb)
    elapsed = time.monotonic() - t0
    assert [e for _, h, e in rack.wire.log if h == fb.fqdn] == ["off", "on", "off", "on"], rack.wire.log
    assert not rack.wire.errors
    # Every action is an event with who did it; a quick off/on never reached the fencer's grace.
    power_events = [e.message for e in events(rack, fb, "host.power")]
    assert any("power off by boss" in m for m in power_events), power_events
    assert rack.host_row(fb).fence_state is FenceState.NONE
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
