"""The web UI in a real headless Chromium against a real `drover serve` on the lab realm.

Sign-in by Kerberos (the browser's own Negotiate with a lab ticket) and by the password form (the realm
checks the password); approving a pending host from its page; a VM's state change reaching the open list
through the event stream without a reload; a plain user's view of another user's VM (page, fragment,
action, API, event stream); and POSTs without the session's CSRF token. Every main page is screenshotted
under tests/artifacts/.

The VM state change is written by the task engine's own state-writing function (taskengine.worker), as a
finished task writes it: no VM boots here, the event table is what the UI reads.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page
from sqlalchemy import Engine, func, select

from appliance.db.engine import make_engine, session_scope
from appliance.db.models import (
    EnrolmentWindow,
    Event,
    HardwarePool,
    Host,
    HostState,
    Permission,
    Task,
    TaskState,
    User,
    Vm,
    VmState,
)
from appliance.db.models.users import Role
from appliance.hosts import default_pool
from taskengine.worker import set_vm_state
from tests.lab.appliance import LabAppliance, start_appliance
from tests.lab.browser import browser, screenshot
from tests.lab.kdc import LabKdc
from tests.test_host_lifecycle_lab import identify

pytestmark = pytest.mark.lab

ADMIN = "ui-admin"
ALICE = "ui-alice"  # a plain user with a password, the user role in pool ui-a only
BOB = "ui-bob"  # the same in pool ui-b


@dataclass
class Ui:
    served: LabAppliance
    db: Engine
    kdc: LabKdc
    tmp: Path
    alice_password: str
    vm_ids: dict[str, int]

    @property
    def url(self) -> str:
        return f"{self.served.url}/ui"

    def principal(self, name: str) -> str:
        return f"{name}@{self.kdc.realm.name}"


@pytest.fixture(scope="module")
def ui(kdc: LabKdc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    tmp = tmp_path_factory.mktemp("webui")
    # No task engine: nothing but the tests changes a VM here, so what the page shows is what a test wrote.
    served = start_appliance(kdc, tmp / "appliance", settings={"DROVER_TASKENGINE_ENABLED": "false"})
    password = "Pw-" + secrets.token_hex(8)
    kdc.realm.kadmin().add(ALICE, password=password)
    kdc.principal(BOB)
    added = served.drover("user", "add", ADMIN, "--role", "admin")
    assert added.returncode == 0, added.stderr
    db = make_engine(served.database_url)
    vm_ids: dict[str, int] = {}
    with session_scope(db) as s:
        root = default_pool(s)
        pools = {name: HardwarePool(name=name, parent=root) for name in ("ui-a", "ui-b")}
        s.add_all(pools.values())
        for who, pool in ((ALICE, "ui-a"), (BOB, "ui-b")):
            user = User(principal=f"{who}@{kdc.realm.name}")
            s.add(user)
            s.flush()
            s.add(Permission(user=user, role=Role.USER, hardware_pool_id=pools[pool].id))
        vms = {"vm-alice": "ui-a", "vm-bob": "ui-b", "web-1": "ui-a", "db-1": "ui-b", "app-1": "ui-a"}
        for name, pool in vms.items():
            owner = s.scalars(select(User).where(User.principal == f"{ALICE}@{kdc.realm.name}")).one()
            vm = Vm(uuid=str(uuid.uuid4()), name=name, vcpus=1, memory_mib=512, pool=pools[pool], state=VmState.STOPPED,
                    owner=owner if name == "vm-alice" else None)
            s.add(vm)
            s.flush()
            vm_ids[name] = vm.id
    yield Ui(served, db, kdc, tmp, password, vm_ids)
    db.dispose()
    served.stop()


def kerberos_browser(ui: Ui, name: str | None) -> Any:
    """A browser holding a ticket for `name` (None: no ticket at all)."""
    env = ui.kdc.ticket(name) if name is not None else ui.kdc.no_ticket()
    return browser(ui.tmp / f"chromium-{name}-{secrets.token_hex(3)}", ui.kdc.krb5_conf, env)


def password_sign_in(page: Page, ui: Ui, user: str, password: str, path: str = "/vms") -> None:
    page.goto(f"{ui.url}{path}")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def csrf_of(page: Page) -> str:
    header = page.get_attribute("body", "hx-headers") or ""
    return str(json.loads(header)["X-CSRF-Token"])


@dataclass(frozen=True)
class Answer:
    status: int
    text: str


def fetch(page: Page, path: str, method: str = "GET", headers: dict[str, str] | None = None, form: str = "") -> Answer:
    """A request from inside the page (the browser's own cookies, origin and resolver), as a script would send it."""
    script = """async ([path, method, headers, form]) => {
        const init = {method, headers, credentials: 'same-origin'};
        if (method !== 'GET') { init.body = form; init.headers['Content-Type'] = 'application/x-www-form-urlencoded'; }
        const r = await fetch(path, init);
        return [r.status, await r.text()];
    }"""
    status, text = page.evaluate(script, [path, method, headers or {}, form])
    return Answer(int(status), str(text))


def tasks_for(db: Engine, vm_id: int) -> int:
    with session_scope(db) as s:
        return int(s.scalar(select(func.count()).select_from(Task).where(Task.target_id == vm_id)) or 0)


def test_spnego_sign_in_lands_on_the_dashboard_with_a_strict_cookie(ui: Ui) -> None:
    with kerberos_browser(ui, ADMIN) as context:
        page = context.new_page()
        page.goto(f"{ui.url}/")
        page.wait_for_selector("h1:has-text('Dashboard')", timeout=15000)
        assert ui.principal(ADMIN) in page.inner_text("header")
        cookie = next(c for c in context.cookies() if c["name"] == "drover_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui/"
        assert not cookie["secure"]  # plain HTTP on loopback; any other address gets Secure
        screenshot(context, "dashboard")
        # Signing out drops the cookie: the next page asks for a sign-in again.
        page.click("text=Sign out")
        page.wait_for_url("**/ui/login", timeout=10000)
        assert not [c for c in context.cookies() if c["name"] == "drover_session"]


def test_no_ticket_gets_the_password_form_and_the_realm_checks_the_password(ui: Ui) -> None:
    with kerberos_browser(ui, None) as context:
        page = context.new_page()
        page.goto(f"{ui.url}/vms")
        page.wait_for_selector("#password-form", timeout=15000)
        screenshot(context, "login")
        password_sign_in(page, ui, ALICE, "wrong-" + ui.alice_password)
        page.wait_for_selector("#login-error", timeout=15000)
        assert not [c for c in context.cookies() if c["name"] == "drover_session"]
        password_sign_in(page, ui, ALICE, ui.alice_password)
        page.wait_for_selector("#vms-table", timeout=15000)
        assert page.url.endswith("/ui/vms")
        names = page.eval_on_selector_all("#vms-table tr[data-vm]", "rows => rows.map(r => r.dataset.vm)")
        assert sorted(names) == ["app-1", "vm-alice", "web-1"]  # pool ui-a's, none of ui-b's
        assert ui.principal(ALICE) in page.inner_text("header")


def test_an_admin_approves_a_pending_host_from_its_page(ui: Ui) -> None:
    dmi = str(uuid.uuid4())
    # A machine that identifies without a token is recorded as pending, waiting for an admin.
    assert identify(ui.served, dmi, "node-ui1.example.test", "").status_code == 202
    with session_scope(ui.db) as s:
        host = s.scalars(select(Host).where(Host.uuid == dmi)).one()
        host_id, approved = host.id, host.approved_at
    assert approved is None
    with kerberos_browser(ui, ADMIN) as context:
        page = context.new_page()
        page.goto(f"{ui.url}/hosts")
        page.wait_for_selector("tr[data-host='node-ui1.example.test']", timeout=15000)
        screenshot(context, "hosts")
        page.click("tr[data-host='node-ui1.example.test'] a")
        page.wait_for_selector("#approve", timeout=10000)
        screenshot(context, "host")
        page.click("#approve")
        page.wait_for_selector(".flash.ok", timeout=10000)
        page.wait_for_selector("#approve", state="detached", timeout=10000)
        with session_scope(ui.db) as s:
            done = s.get(Host, host_id)
            assert done is not None and done.approved_at is not None
            assert done.approved_by == ui.principal(ADMIN)
        # Maintenance and back, from the same page; the badge follows without a reload.
        page.click("button:has-text('Maintenance')")
        page.wait_for_selector("#host-state:has-text('maintenance')", timeout=10000)
        page.click("button:has-text('Activate')")
        page.wait_for_selector("#host-state:not(:has-text('maintenance'))", timeout=10000)
        with session_scope(ui.db) as s:
            done = s.get(Host, host_id)
            assert done is not None and done.state is not HostState.MAINTENANCE
        # Remove it (a confirm dialog first): the row and its principal go.
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("button:has-text('Remove')")
        page.wait_for_selector(".flash.ok:has-text('remove')", timeout=15000)
        page.wait_for_selector("#live h2:has-text('Gone')", timeout=10000)  # the page says so in place
    with session_scope(ui.db) as s:
        assert s.get(Host, host_id) is None


def test_an_admin_grants_a_role_on_the_users_page(ui: Ui) -> None:
    newcomer = ui.principal("ui-carol")
    with kerberos_browser(ui, ADMIN) as context:
        page = context.new_page()
        page.goto(f"{ui.url}/users")
        page.fill("input[name=principal]", newcomer)
        page.select_option("select[name=role]", "monitor")
        page.click("button:has-text('Grant')")
        page.wait_for_selector(f"tr:has-text('{newcomer}') .badge:has-text('monitor')", timeout=10000)
        # An admin may not hand out super_admin: the form does not offer it, and sent anyway it is refused
        # with the reason, nothing granted.
        offered = page.eval_on_selector_all("#grant-form select[name=role] option", "os => os.map(o => o.value)")
        assert "super_admin" not in offered and "admin" in offered
        forged = fetch(page, "/ui/users", "POST", {"X-CSRF-Token": csrf_of(page)},
                       form=f"principal={newcomer.replace('@', '%40')}&role=super_admin")  # fmt: skip
        assert forged.status == 403 and "super_admin" in forged.text
    with session_scope(ui.db) as s:
        roles = s.scalars(select(Permission.role).join(User).where(User.principal == newcomer)).all()
        assert list(roles) == [Role.MONITOR]


def test_an_admin_opens_and_closes_an_enrolment_window(ui: Ui) -> None:
    with kerberos_browser(ui, ADMIN) as context:
        page = context.new_page()
        page.goto(f"{ui.url}/hosts")
        page.fill("input[name=minutes]", "5")
        page.fill("input[name=count]", "2")
        page.fill("input[name=note]", "rack 7")
        page.click("button:has-text('Open window')")
        row = page.locator("tr:has-text('rack 7')")
        row.locator(".badge.open").wait_for(timeout=10000)
        with session_scope(ui.db) as s:
            window = s.scalars(select(EnrolmentWindow).where(EnrolmentWindow.note == "rack 7")).one()
            assert window.max_hosts == 2 and window.closed_at is None and window.opened_by == ui.principal(ADMIN)
        # A bad value is refused with the reason on the page, and opens nothing.
        page.fill("input[name=minutes]", "soon")
        page.click("button:has-text('Open window')")
        page.wait_for_selector(".flash.error:has-text('whole numbers')", timeout=10000)
        row.locator("button:has-text('Close')").click()
        row.wait_for(state="detached", timeout=10000)  # the page lists open windows only
        with session_scope(ui.db) as s:
            windows = list(s.scalars(select(EnrolmentWindow)))
            assert len(windows) == 1 and windows[0].closed_at is not None


# The page believes the tab is hidden / shown again, as the browser tells it when the user switches tabs.
HIDE = """Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
document.dispatchEvent(new Event('visibilitychange'))"""
SHOW = """Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
document.dispatchEvent(new Event('visibilitychange'))"""


def test_a_vm_state_change_appears_in_the_open_list_without_a_reload(ui: Ui) -> None:
    with kerberos_browser(ui, ADMIN) as context:
        page = context.new_page()
        page.goto(f"{ui.url}/vms")
        page.wait_for_selector("#live-dot.on", timeout=15000)
        page.evaluate("window.__same_page = 1")
        badge = "tr[data-vm='web-1'] [data-state]"
        assert page.get_attribute(badge, "data-state") == "stopped"
        page.check("tr[data-vm='db-1'] input[name=vm]")  # a selection must survive the refresh
        with session_scope(ui.db) as s:
            vm = s.get(Vm, ui.vm_ids["web-1"])
            assert vm is not None
            set_vm_state(s, vm, VmState.RUNNING, "started by the test")
        page.wait_for_selector("tr[data-vm='web-1'] [data-state='running']", timeout=15000)
        assert page.evaluate("window.__same_page") == 1  # the same document: no reload happened
        assert page.is_checked("tr[data-vm='db-1'] input[name=vm]")
        # A hidden tab drops its stream; a change meanwhile shows once the tab is visible again.
        page.evaluate(HIDE)
        page.wait_for_selector("#live-dot.paused", timeout=5000)
        with session_scope(ui.db) as s:
            vm = s.get(Vm, ui.vm_ids["web-1"])
            assert vm is not None
            set_vm_state(s, vm, VmState.PAUSED, "suspended by the test")
        time.sleep(2)  # four stream polls: a live stream would have brought it by now
        assert page.get_attribute(badge, "data-state") == "running"
        page.evaluate(SHOW)
        page.wait_for_selector("tr[data-vm='web-1'] [data-state='paused']", timeout=15000)
        page.wait_for_selector("#live-dot.on", timeout=5000)
        assert page.evaluate("window.__same_page") == 1
        screenshot(context, "vms")
        page.click("tr[data-vm='web-1'] a")
        page.wait_for_selector("#vm-state", timeout=10000)
        screenshot(context, "vm")


def test_actions_queue_tasks_refusals_show_their_reason_and_the_panel_cancels(ui: Ui) -> None:
    vm_id = ui.vm_ids["app-1"]
    with kerberos_browser(ui, ADMIN) as context:
        page = context.new_page()
        page.goto(f"{ui.url}/vms")
        start = "tr[data-vm='app-1'] button:has-text('start')"
        page.click(start)
        page.wait_for_selector(".flash.ok:has-text('queued')", timeout=10000)
        # The task engine is off here: the start stays queued, so a second start cannot follow it.
        page.locator("#taskpanel .task").first.wait_for(timeout=10000)
        page.click(start)
        page.wait_for_selector(".flash.error", timeout=10000)
        assert "app-1" in page.inner_text(".flash.error")
        assert tasks_for(ui.db, vm_id) == 1
        screenshot(context, "vms-task")
        page.click("#taskpanel .task button:has-text('cancel')")
        page.wait_for_selector(".flash.ok:has-text('cancel')", timeout=10000)
        with session_scope(ui.db) as s:
            task = s.scalars(select(Task).where(Task.target_id == vm_id)).one()
            assert task.state is TaskState.CANCELED and task.created_by == ui.principal(ADMIN)
        # Search by name and state: only what matches stays in the list.
        page.fill("input[name=q]", "app")
        page.click("#vm-search button")
        page.wait_for_url("**/ui/vms?q=app*", timeout=10000)
        names = page.eval_on_selector_all("#vms-table tr[data-vm]", "rows => rows.map(r => r.dataset.vm)")
        assert names == ["app-1"]
        page.goto(f"{ui.url}/vms?state=stopped&q=vm-")
        names = page.eval_on_selector_all("#vms-table tr[data-vm]", "rows => rows.map(r => r.dataset.vm)")
        assert sorted(names) == ["vm-alice", "vm-bob"]
        page.goto(f"{ui.url}/vms?state=paused")  # web-1, paused by the stream test
        names = page.eval_on_selector_all("#vms-table tr[data-vm]", "rows => rows.map(r => r.dataset.vm)")
        assert names == ["web-1"]
        page.goto(f"{ui.url}/vms")
        # Bulk: each selected VM on its own; the paused one refuses a start, the stopped one queues it.
        bob_tasks = tasks_for(ui.db, ui.vm_ids["vm-bob"])
        page.check("tr[data-vm='vm-bob'] input[name=vm]")
        page.check("tr[data-vm='web-1'] input[name=vm]")
        page.click("button:has-text('start selected')")
        page.wait_for_selector(".flash:has-text('1 queued (vm-bob); 1 refused')", timeout=10000)
        assert "web-1" in page.inner_text(".flash")
        assert tasks_for(ui.db, ui.vm_ids["vm-bob"]) == bob_tasks + 1
        assert tasks_for(ui.db, ui.vm_ids["web-1"]) == 0
        # A new VM from the form: a row and its create task, as `drover vm create` makes them.
        page.fill("input[name=name]", "made-in-ui")
        page.select_option("select[name=pool]", label="ui-a")
        page.click("button:has-text('Create')")
        page.wait_for_selector("tr[data-vm='made-in-ui']", timeout=10000)
        with session_scope(ui.db) as s:
            vm = s.scalars(select(Vm).where(Vm.name == "made-in-ui")).one()
            assert vm.pool.name == "ui-a" and vm.memory_mib == 512
            assert s.scalars(select(Task).where(Task.target_id == vm.id)).one().created_by == ui.principal(ADMIN)


def _stream_events(page: Page, after: int, until_vm: int) -> list[dict[str, Any]]:
    """Open the event stream in the page (as drover.js does) and collect events until one about `until_vm`."""
    script = """([after, untilVm]) => new Promise(resolve => {
        const seen = [];
        const es = new EventSource('/ui/stream?after=' + after);
        const done = () => { es.close(); resolve(seen); };
        es.addEventListener('drover', e => {
            const d = JSON.parse(e.data); seen.push(d); if (d.vm_id === untilVm) done();
        });
        setTimeout(done, 15000);
    })"""
    result: list[dict[str, Any]] = page.evaluate(script, [after, until_vm])
    return result


def test_a_plain_user_cannot_see_or_reach_another_users_vm(ui: Ui) -> None:
    bob_vm, alice_vm = ui.vm_ids["vm-bob"], ui.vm_ids["vm-alice"]
    with kerberos_browser(ui, None) as context:
        page = context.new_page()
        password_sign_in(page, ui, ALICE, ui.alice_password)
        page.wait_for_selector("#vms-table", timeout=15000)
        assert page.locator("tr[data-vm='vm-bob']").count() == 0
        token = csrf_of(page)
        # The page, its live fragment and an action on it: refused, and no task is queued.
        assert fetch(page, f"/ui/vms/{bob_vm}").status == 403
        fragment = fetch(page, f"/ui/vms/{bob_vm}", headers={"HX-Request": "true", "HX-Target": "live"})
        assert fragment.status == 403 and "<table" not in fragment.text
        before = tasks_for(ui.db, bob_vm)
        htmx = {"X-CSRF-Token": token, "HX-Request": "true"}
        acted = fetch(page, f"/ui/vms/{bob_vm}/start", "POST", htmx)
        assert acted.status == 403
        assert tasks_for(ui.db, bob_vm) == before
        # Her own VM she may start: the same action path queues a task.
        own = fetch(page, f"/ui/vms/{alice_vm}/start", "POST", htmx)
        assert own.status == 200, own.text
        assert tasks_for(ui.db, alice_vm) == 1
        # Her quota: the queued start already counts against what she may still start.
        quota = ui.served.drover("user", "quota", ALICE, "--pool", "ui-a", "--vms", "3", "--vcpus", "4",
                                 "--memory", "2048", principal=ADMIN)  # fmt: skip
        assert quota.returncode == 0, quota.stderr
        page.reload()
        row = page.inner_text("#quotas tr[data-pool='ui-a']")
        assert "1 of 3 — 2 left" in row and "1 of 4 — 3 left" in row and "512 of 2048 MiB — 1536 MiB left" in row, row
        screenshot(context, "user-portal")
        # Admin pages by URL guessing.
        for path in ("/hosts", "/events", "/users", "/inventory", f"/hosts/{1}"):
            assert fetch(page, f"/ui{path}").status == 403, path
        # The event stream: bob's VM changes, then hers; she gets hers and never his.
        with session_scope(ui.db) as s:
            after = int(s.scalar(select(func.max(Event.id))) or 0)
        page.goto(f"{ui.url}/vms")
        with session_scope(ui.db) as s:
            vm = s.get(Vm, bob_vm)
            assert vm is not None
            set_vm_state(s, vm, VmState.PAUSED, "test")
        with session_scope(ui.db) as s:
            vm = s.get(Vm, alice_vm)
            assert vm is not None
            set_vm_state(s, vm, VmState.CRASHED, "test")
        seen = _stream_events(page, after, alice_vm)
        assert any(e["vm_id"] == alice_vm for e in seen), seen
        assert not any(e["vm_id"] == bob_vm for e in seen), seen
    # The API answers the same for her Kerberos ticket.
    shown = ui.served.drover("vm", "show", "vm-bob", principal=ALICE)
    assert shown.returncode != 0 and "may not" in shown.stderr, shown.stderr


def test_a_post_without_the_csrf_token_changes_nothing(ui: Ui) -> None:
    vm_id = ui.vm_ids["db-1"]
    with kerberos_browser(ui, ADMIN) as context:
        page = context.new_page()
        page.goto(f"{ui.url}/vms")
        page.wait_for_selector("#vms-table", timeout=15000)
        before = tasks_for(ui.db, vm_id)
        for headers in ({}, {"X-CSRF-Token": "forged"}):
            refused = fetch(page, f"/ui/vms/{vm_id}/start", "POST", headers)
            assert refused.status == 403 and "CSRF" in refused.text
        form = fetch(page, "/ui/users", "POST", form="principal=x%40Y&role=admin")
        assert form.status == 403
        assert tasks_for(ui.db, vm_id) == before
        with session_scope(ui.db) as s:
            assert s.scalars(select(User).where(User.principal == "x@Y")).one_or_none() is None
        # The same request with the page's token goes through: the refusal was the token's doing.
        done = fetch(page, f"/ui/vms/{vm_id}/start", "POST", {"X-CSRF-Token": csrf_of(page)})
        assert done.status == 200, done.text
        assert tasks_for(ui.db, vm_id) == before + 1


def test_screenshots_of_the_main_pages_once_everything_above_has_happened(ui: Ui) -> None:
    with kerberos_browser(ui, ADMIN) as context:
        page = context.new_page()
        for name in ("dashboard", "hosts", "vms", "tasks", "events", "inventory", "users"):
            page.goto(f"{ui.url}/{'' if name == 'dashboard' else name}")
            page.wait_for_selector("#live", timeout=10000)
            page.wait_for_selector("#taskpanel h2", timeout=10000)
            path = screenshot(context, f"page-{name}")
            assert path.stat().st_size > 10_000  # a rendered page, not a blank one
        page.goto(f"{ui.url}/inventory")
        row = page.locator("#pool-tree tr[data-pool='ui-a']")
        assert row.get_attribute("data-depth") == "1"  # under the root pool
        with session_scope(ui.db) as s:
            in_a = s.scalar(select(func.count()).select_from(Vm).join(HardwarePool).where(HardwarePool.name == "ui-a"))
        assert row.locator("td").nth(3).inner_text() == str(in_a)
