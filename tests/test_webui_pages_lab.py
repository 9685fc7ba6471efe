"""The web UI's write pages and graphs in a real headless Chromium against the shared task rack.

The rack's two libvirtd nodes get real collectd (the node agent's own config, the virt plugin reading each
node's libvirtd, signed with the secret the appliance issued) sending to the rack's monitor and its embedded
VictoriaMetrics. An admin makes a dir storage pool, uploads a qcow2 template and makes a VM pool of one VM
kept running (the one guest this module boots), grants a plain user the user role on the default hardware
pool and a quota there, all from the pages; the user takes the VM from the pool and watches its graphs fill
with the virt plugin's data; the host page, the dashboard and the events filter show the same run. The API
and CLI verbs behind the pages are driven too (VM pools, graphs, pool grants and revokes), with refusals.
Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page
from sqlalchemy import select

from appliance.client import Client
from appliance.db.engine import session_scope
from appliance.db.models import Permission, StoragePool, StorageState, Template, User, Vm, VmPool, VmState
from appliance.errors import Forbidden
from appliance.runner import run
from tests.lab.appliance import ADMIN
from tests.lab.browser import browser, screenshot
from tests.lab.kdc import APPLIANCE_HOST
from tests.lab.taskrack import TaskRack, wait_until
from tests.test_monitor_migration_lab import node_collectds

pytestmark = pytest.mark.lab


@dataclass
class Scene:
    rack: TaskRack
    tmp: Path
    user: str  # a plain user: the user role on the default hardware pool, given from the users page
    other: str  # nobody: no role anywhere
    storage: str
    template: str
    vmpool: str
    made: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.rack.served.url}/ui"

    def principal(self, name: str) -> str:
        return f"{name}@{self.rack.lab.kdc.realm.name}"


@pytest.fixture(scope="module")
def scene(task_rack: TaskRack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    rack = task_rack
    rack.ensure_worker()
    tmp = tmp_path_factory.mktemp("webpages")
    user, other = rack.unique("uip-user"), rack.unique("uip-other")
    rack.lab.kdc.principal(user)
    rack.lab.kdc.principal(other)
    s = Scene(rack, tmp, user, other, rack.unique("uipool"), rack.unique("uitpl"), rack.unique("uivp"))
    with node_collectds(rack, tmp / "collectd"):
        try:
            yield s
        finally:
            _clean(s)


def _drover(rack: TaskRack, *argv: str, principal: str = ADMIN, code: int = 0) -> str:
    done = rack.drover(*argv, principal=principal, timeout=240)
    assert done.returncode == code, f"drover {' '.join(argv)}: {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def _clean(s: Scene) -> None:
    """Leave the shared rack as it was: the pool's VM, the pool, the template, the storage pool, the grants."""
    rack = s.rack
    with session_scope(rack.db) as db:
        vms = [(v.name, v.state) for v in db.scalars(select(Vm).join(VmPool).where(VmPool.name == s.vmpool))]
    for name, state in vms:
        if state in (VmState.RUNNING, VmState.PAUSED, VmState.STARTING):
            rack.drover("vm", "poweroff", name, "--wait", principal=ADMIN, timeout=240)
        rack.drover("vm", "delete", name, "--wait", principal=ADMIN, timeout=240)
    rack.drover("vmpool", "delete", s.vmpool, principal=ADMIN)
    rack.drover("template", "delete", s.template, "--wait", principal=ADMIN, timeout=240)
    rack.drover("storage", "pool", "delete", s.storage, "--wait", principal=ADMIN, timeout=240)
    for name in (s.user, s.other):
        rack.drover("user", "remove", name, principal=ADMIN)


def _browser(s: Scene, name: str) -> AbstractContextManager[BrowserContext]:
    env = s.rack.lab.kdc.ticket(name)
    return browser(s.tmp / f"chromium-{name}-{secrets.token_hex(3)}", s.rack.lab.kdc.krb5_conf, env)


def _fetch_post(page: Page, path: str, form: dict[str, str]) -> tuple[int, str]:
    """A POST from inside the page with the session's cookie and CSRF token, as a script of the user's would."""
    script = """async ([path, form]) => {
        const csrf = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token'];
        const r = await fetch(path, {method: 'POST', credentials: 'same-origin', body: new URLSearchParams(form),
                                     headers: {'X-CSRF-Token': csrf, 'HX-Request': 'true'}});
        return [r.status, await r.text()];
    }"""
    status, text = page.evaluate(script, [path, form])
    return int(status), str(text)


def _ok_flash(page: Page, contains: str) -> str:
    page.wait_for_selector(f".flash.ok:has-text('{contains}')", timeout=30000)
    return page.inner_text("#flash")


def _points(page: Page, chart: str) -> int:
    value = page.get_attribute(f"#graphs figure[data-chart='{chart}']", "data-points")
    return int(value or 0)


def _wait_points(page: Page, charts: tuple[str, ...], timeout: float = 150) -> None:
    """Until each chart has drawn points: the page redraws every 15 s; a click on the range redraws at once."""
    deadline = time.monotonic() + timeout
    while True:
        page.wait_for_selector("#graphs figure[data-chart]", timeout=30000)
        if all(_points(page, c) > 0 for c in charts):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"charts {charts} still empty: {[(c, _points(page, c)) for c in charts]}")
        time.sleep(4)
        page.click("#graphs button[data-span].on")


def test_an_admin_makes_storage_a_template_and_a_vm_pool_from_the_pages(scene: Scene) -> None:
    s, rack = scene, scene.rack
    image = s.tmp / "base.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", str(image), "16M"])
    with _browser(s, ADMIN) as context:
        page = context.new_page()
        page.goto(f"{s.url}/storage")
        page.wait_for_selector("#storage-create", timeout=20000)
        page.fill("#storage-create input[name=name]", s.storage)
        page.select_option("#storage-create select[name=type]", "dir")
        page.select_option("#storage-create select[name=hardware_pool]", label="default")
        page.fill("#storage-create input[name=path]", str(s.tmp / "images"))
        page.click("#storage-create button")
        _ok_flash(page, "defines it on the hosts")
        # The pool turns available on the open page (event stream), no reload.
        page.wait_for_selector(f"section[data-storage-pool='{s.storage}'] h2 .badge.running", timeout=120000)
        refused = page.locator(f"section[data-storage-pool='{s.storage}'] button:has-text('create volume')")
        page.fill(f"section[data-storage-pool='{s.storage}'] input[name=name]", "v1")
        page.fill(f"section[data-storage-pool='{s.storage}'] input[name=size]", "lots")
        refused.click()
        page.wait_for_selector(".flash.error:has-text('not understood')", timeout=15000)
        screenshot(context, "storage")

        page.goto(f"{s.url}/templates")
        page.set_input_files("#template-import input[type=file]", str(image))
        page.fill("#template-import input[name=name]", s.template)
        page.select_option("#template-import select[name=pool]", s.storage)
        page.fill("#template-import input[name=memory_mib]", "64")
        page.click("#template-import button")
        _ok_flash(page, "uploads it into its storage pool")
        page.wait_for_selector(f"tr[data-template='{s.template}'] .badge.running", timeout=120000)
        assert (s.tmp / "images" / f"{s.template}.qcow2").read_bytes() == image.read_bytes()
        screenshot(context, "templates")

        page.goto(f"{s.url}/pools")
        page.fill("#vmpool-create input[name=name]", s.vmpool)
        page.select_option("#vmpool-create select[name=template]", label=s.template)
        page.select_option("#vmpool-create select[name=pool]", label="default")
        page.fill("#vmpool-create input[name=size]", "1")
        page.fill("#vmpool-create input[name=prestarted]", "1")
        page.click("#vmpool-create button")
        _ok_flash(page, "1 VMs defined, 2 tasks queued")
        # One VM, kept running for whoever takes it: its create and start run on a rack node.
        page.wait_for_selector(f"tr[data-vmpool='{s.vmpool}'] td.free:text-is('1')", timeout=120000)
        wait_until("the pool's VM running", lambda: rack.vm(f"{s.vmpool}-1").state is VmState.RUNNING, 240)
        screenshot(context, "vmpools")

        # A role on the default hardware pool and a quota there, for the plain user; a refusal first.
        page.goto(f"{s.url}/users")
        # The form offers an admin no super_admin; sent anyway, the server refuses it as the API does.
        roles = page.eval_on_selector_all("#grant-form select[name=role] option", "os => os.map(o => o.value)")
        assert "super_admin" not in roles and "user" in roles
        forged = _fetch_post(page, "/ui/users", {"principal": s.principal(s.user), "role": "super_admin", "pool": ""})
        assert forged[0] == 403 and "may not grant or revoke the role super_admin" in forged[1]
        page.fill("#grant-form input[name=principal]", s.principal(s.user))
        page.select_option("#grant-form select[name=pool]", label="hardware pool default")
        page.select_option("#grant-form select[name=role]", "user")
        page.click("#grant-form button")
        _ok_flash(page, "now holds user in hardware pool default")
        page.fill("#quota-form input[name=principal]", s.principal(s.user))
        page.select_option("#quota-form select[name=pool]", label="default")
        page.fill("#quota-form input[name=max_vms]", "1")
        page.click("#quota-form button")
        _ok_flash(page, "vms 1")
        page.wait_for_selector(f"tr[data-user='{s.principal(s.user)}'] [data-grant='user@default']", timeout=15000)
        screenshot(context, "users")
    with session_scope(rack.db) as db:
        grants = db.execute(select(Permission.role, Permission.hardware_pool_id).join(User)
                            .where(User.principal == s.principal(s.user))).all()  # fmt: skip
        assert [(str(r), p is not None) for r, p in grants] == [("user", True)]
        state = db.scalars(select(StoragePool.state).where(StoragePool.name == s.storage)).one()
        assert state is StorageState.AVAILABLE
        assert db.scalars(select(Template.id).where(Template.name == s.template)).one()


def test_a_user_takes_the_vm_and_watches_its_graphs(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    s, rack = scene, scene.rack
    vm_name = f"{s.vmpool}-1"
    with _browser(s, s.user) as context:
        page = context.new_page()
        page.goto(f"{s.url}/pools")
        row = f"tr[data-vmpool='{s.vmpool}']"
        page.wait_for_selector(f"{row} button.take", timeout=20000)
        assert "Hosts" not in page.inner_text("header nav")  # the portal: their VMs, pools, templates, tasks
        screenshot(context, "vmpools-user")
        page.click(f"{row} button.take")
        assert f"VM {vm_name} is yours" in _ok_flash(page, "is yours")
        page.wait_for_selector(f"{row} td.free:text-is('0')", timeout=20000)
        # Nothing left: the button is disabled, and a POST sent anyway is refused with the reason.
        assert page.is_disabled(f"{row} button.take")
        pool_id = page.get_attribute(f"{row} button.take", "hx-post")
        late = _fetch_post(page, str(pool_id), {})
        assert late[0] == 409 and "no free VM left" in late[1], late
        assert rack.vm(vm_name).owner_id is not None

        page.goto(f"{s.url}/vms")
        page.wait_for_selector(f"#vms-table tr[data-vm='{vm_name}']", timeout=20000)
        vm_id = rack.vm(vm_name).id
        page.goto(f"{s.url}/vms/{vm_id}")
        _wait_points(page, ("cpu", "memory"))
        # A VM without a NIC has no network series: that chart says so instead of drawing nothing.
        empty = page.inner_text("#graphs figure[data-chart='network']")
        assert "No data in the last 1 h" in empty, empty
        page.click("#graphs button[data-span='6h']")
        page.wait_for_selector("#graphs[data-shown='6h']", timeout=30000)
        _wait_points(page, ("cpu",))
        assert "No data in the last 6 h" in page.inner_text("#graphs figure[data-chart='network']")
        screenshot(context, "vm-graphs")

    # The same data over the API, and the user's CLI view of the pools.
    monkeypatch.setenv("KRB5_CONFIG", str(rack.lab.kdc.krb5_conf))
    client = _client(s, s.user)
    body = client.get(f"/api/v1/vms/{vm_id}/graphs", {"span": "1h"})
    cpu = next(c for c in body["charts"] if c["key"] == "cpu")
    assert cpu["error"] is None and any(v is not None for v in cpu["series"][0]["values"])
    client.close()
    listed = _drover(rack, "vmpool", "list", principal=s.user)
    assert s.vmpool in listed and " yes" in listed


def _client(s: Scene, name: str) -> Client:
    ccache = s.rack.lab.kdc.ticket(name)["KRB5CCNAME"]
    return Client(s.rack.served.local_url, service_host=APPLIANCE_HOST, ccache=ccache)


def test_host_and_fleet_graphs_and_events_show_the_run(scene: Scene) -> None:
    s, rack = scene, scene.rack
    vm_name = f"{s.vmpool}-1"
    with _browser(s, ADMIN) as context:
        page = context.new_page()
        page.goto(f"{s.url}/hosts/{rack.host_ids[0]}")
        _wait_points(page, ("cpu", "load", "memory", "network"))
        screenshot(context, "host-graphs")
        page.goto(f"{s.url}/")
        _wait_points(page, ("cpu", "memory", "vms", "tasks"))
        screenshot(context, "dashboard-graphs")
        page.goto(f"{s.url}/events?vm={vm_name}&since=1d")
        page.wait_for_selector("#events-count", timeout=20000)
        text = page.inner_text("main")
        assert f"took VM {vm_name}" in text and f"of VM {vm_name} in the last 1d" in text
        screenshot(context, "events-filtered")


def test_the_api_and_cli_verbs_behind_the_pages_refuse_as_the_pages_do(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, rack = scene, scene.rack
    monkeypatch.setenv("KRB5_CONFIG", str(rack.lab.kdc.krb5_conf))
    assert "may not take a VM from pool" in _drover(rack, "vmpool", "take", s.vmpool, principal=s.other, code=9)
    assert s.vmpool not in _drover(rack, "vmpool", "list", principal=s.other)
    assert "no free VM left" in _drover(rack, "vmpool", "take", s.vmpool, principal=s.user, code=5)
    assert "may not create VM pools" in _drover(rack, "vmpool", "create", "x", "--template", s.template, "--size", "1",
                                                principal=s.user, code=9)  # fmt: skip
    assert "size" in _drover(rack, "vmpool", "create", "x", "--template", s.template, "--size", "0", code=2)
    assert "has VMs in use" in _drover(rack, "vmpool", "delete", s.vmpool, code=5)

    admin, nobody = _client(s, ADMIN), _client(s, s.other)
    other = s.principal(s.other)
    granted = admin.post("/api/v1/users", {"principal": other, "role": "monitor", "pool": "default"})
    assert granted["pool_roles"] == [{"role": "monitor", "pool": "default"}] and granted["roles"] == []
    with pytest.raises(Forbidden):
        nobody.request("DELETE", f"/api/v1/users/{s.principal(s.user)}/roles/user", params={"pool": "default"})
    # A monitor of the default pool sees the host graphs' refusal (they need a global view) ...
    with pytest.raises(Forbidden):
        nobody.get(f"/api/v1/hosts/{rack.host_ids[0]}/graphs")
    revoked = admin.request("DELETE", f"/api/v1/users/{other}/roles/monitor", params={"pool": "default"})
    assert revoked["pool_roles"] == []
    # The same from the CLI, straight in the database.
    _drover(rack, "user", "add", s.other, "--role", "monitor", "--pool", "default")
    assert "revoked monitor" in _drover(rack, "user", "revoke", s.other, "--role", "monitor", "--pool", "default")
    assert "does not hold" in _drover(rack, "user", "revoke", s.other, "--role", "monitor", "--pool", "default", code=4)
    fleet = admin.get("/api/v1/graphs/fleet", {"span": "1h"})
    assert {c["key"] for c in fleet["charts"]} == {"cpu", "memory", "vms", "tasks"}
    for client in (admin, nobody):
        client.close()
