"""The networks page in a real headless Chromium on a real `drover serve`: an admin defines a network and
assigns it on a host with the page's forms, a bad VLAN is refused with its reason (nothing written), and the
host's row says it is not in sync until its node reports (no node runs here: the row is one of this test's).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from appliance.db.base import utcnow
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostNetwork, HostNic, Network
from appliance.hosts import default_pool
from tests.lab.appliance import start_appliance
from tests.lab.browser import browser, screenshot
from tests.lab.kdc import LabKdc

pytestmark = pytest.mark.lab

ADMIN = "net-ui-admin"
HOST = "netui1.example.test"


@pytest.fixture(scope="module")
def served(kdc: LabKdc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Engine, Path]]:
    tmp = tmp_path_factory.mktemp("netui")
    app = start_appliance(kdc, tmp / "appliance", settings={"DROVER_TASKENGINE_ENABLED": "false"})
    added = app.drover("user", "add", ADMIN, "--role", "admin")
    assert added.returncode == 0, added.stderr
    db = make_engine(app.database_url)
    with session_scope(db) as s:
        host = Host(uuid=str(uuid.uuid4()), hostname=HOST, hardware_pool_id=default_pool(s).id, approved_at=utcnow(),
                    approved_by="test")  # fmt: skip
        host.nics.append(HostNic(name="eno2", mac="52:54:00:aa:bb:02"))
        s.add(host)
    try:
        yield f"{app.url}/ui", db, tmp
    finally:
        db.dispose()
        app.stop()


def test_define_and_assign_a_network_on_the_page(served: tuple[str, Engine, Path], kdc: LabKdc) -> None:
    url, db, tmp = served
    with browser(tmp / f"chromium-{secrets.token_hex(3)}", kdc.krb5_conf, kdc.ticket(ADMIN)) as context:
        page = context.new_page()
        page.goto(f"{url}/networks")
        page.fill("form[hx-post$='/networks'] input[name=name]", "bad")
        page.fill("form[hx-post$='/networks'] input[name=vlan]", "5000")
        page.click("button:has-text('Create')")
        page.wait_for_selector(".flash.error:has-text('is not a VLAN id')", timeout=10000)
        with session_scope(db) as s:
            assert s.scalar(select(func.count()).select_from(Network)) == 0
        page.fill("form[hx-post$='/networks'] input[name=name]", "storage")
        page.fill("form[hx-post$='/networks'] input[name=vlan]", "43")
        page.select_option("select[name=role]", "storage")
        page.fill("input[name=subnet]", "10.43.0.0/24")
        page.click("button:has-text('Create')")
        page.wait_for_selector("tr[data-network=storage]:has-text('br-storage')", timeout=10000)
        page.fill("input[name=host]", HOST)
        page.fill("input[name=network]", "storage")
        page.fill("input[name=nics]", "eno2")
        page.fill("input[name=address]", "10.43.0.9")
        page.click("button:has-text('Assign')")
        row = f"tr[data-host='{HOST}']"
        page.wait_for_selector(f"{row}:has-text('storage on eno2')", timeout=10000)
        assert "not in sync" in (page.text_content(row) or "")
        assert "has not reported" in (page.text_content(row) or "")
        screenshot(context, "networks")
    with session_scope(db) as s:
        a = s.scalars(select(HostNetwork)).one()
        assert a.nics == ["eno2"] and a.address == "10.43.0.9/24"
