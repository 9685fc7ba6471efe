"""The host page's power panel, in process: the same permission check as the API, a BMC that does not answer
shown as an error (and recorded), an admin's "confirm rebooted" fencing the host in their name. The panel's
actions against a real BMC are the API's (tests/test_fencing_lab.py drives them through virtualbmc)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from appliance import hosts, power
from appliance.db.access import grant
from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import Event, FenceState, Host, HostState
from appliance.db.models.users import Role
from appliance.secretbox import SecretBox
from tests.lab.kdc import LabKdc
from tests.lab.net import free_udp_port
from tests.test_web_access import Served, client, signed_in

__all__ = ["client"]  # the fixture, imported so this module gets the same in-process server

ADMIN = "nobody@LAB.EXAMPLE.TEST"  # signed_in()'s principal, made admin here


def test_power_panel_and_confirm_rebooted(client: Served, kdc: LabKdc) -> None:
    tc, engine, signer = client
    csrf, cookie = signed_in(signer)
    headers = {**cookie, "X-CSRF-Token": csrf}
    with session_scope(engine) as s:
        host = Host(uuid=str(uuid.uuid4()), hostname="pm.example.test", hardware_pool_id=hosts.default_pool(s).id,
                    state=HostState.UNAVAILABLE, approved_at=utcnow(), approved_by="t",
                    credentials_issued_at=utcnow())  # fmt: skip
        s.add(host)
        s.flush()
        host_id = host.id
        events_before = s.scalar(select(func.count()).select_from(Event))
    # Without a role: refused by page and by action, nothing written.
    assert tc.get(f"/ui/hosts/{host_id}", headers=cookie).status_code == 403
    refused = tc.post(f"/ui/hosts/{host_id}/power-off", headers=headers)
    assert refused.status_code == 403 and "may not power hosts off" in refused.text
    refused = tc.post(f"/ui/hosts/{host_id}/confirm-rebooted", headers=headers)
    assert refused.status_code == 403
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Event)) == events_before
        grant(s, ADMIN, Role.ADMIN)

    page = tc.get(f"/ui/hosts/{host_id}", headers=cookie)
    assert page.status_code == 200 and 'id="power"' in page.text and "No power management" in page.text
    assert 'id="confirm-rebooted"' in page.text  # unavailable and not fenced
    # Settings pointing at a port where no BMC answers: the panel's buttons, an error naming the BMC.
    port = free_udp_port()
    with session_scope(engine) as s:
        row = s.get(Host, host_id)
        assert row is not None
        # The in-process appliance's state dir is the lab realm's root (tests.test_enrolment.lab_config).
        settings = power.PowerSettings("127.0.0.1", port, "admin", "s3cret-pw")
        power.configure(s, row, settings, SecretBox.under(kdc.root), ADMIN)
    page = tc.get(f"/ui/hosts/{host_id}", headers=cookie)
    assert f"127.0.0.1:{port} as admin" in page.text and "s3cret-pw" not in page.text
    for button in ("power-status", "power-on", "power-off", "power-cycle"):
        assert f'id="{button}"' in page.text
    failed = tc.post(f"/ui/hosts/{host_id}/power-off", headers=headers, timeout=60)
    assert failed.status_code == 502 and f"BMC 127.0.0.1:{port}" in failed.text, failed.text
    with session_scope(engine) as s:
        messages = list(s.scalars(select(Event.message).where(Event.host_id == host_id, Event.kind == "host.power")))
    assert any("power off by" in m and "failed" in m for m in messages), messages
    # The admin vouches for the reboot: fenced in their name.
    done = tc.post(f"/ui/hosts/{host_id}/confirm-rebooted", headers=headers)
    assert done.status_code == 200 and "fenced on your word" in done.text
    with session_scope(engine) as s:
        row = s.get(Host, host_id)
        assert row is not None and row.fence_state is FenceState.FENCED and row.fenced_by == ADMIN
