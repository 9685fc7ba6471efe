"""Web UI sessions are server-side: the lab appliance (`drover serve`, SQLite), real SPNEGO sign-ins, and an admin
ending them through the CLI, the API and the users page; a copied cookie dies with its session. Also where an
admin sees which appliance process fences (`drover fencer status`, the dashboard)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import httpx
import pytest

from appliance.client import Client
from appliance.db.engine import make_engine
from appliance.errors import Forbidden, NotFound, UsageError
from appliance.web.session import COOKIE, Sessions
from tests.lab.appliance import LabAppliance
from tests.lab.fuzz import negotiate
from tests.lab.kdc import APPLIANCE_HOST, LabKdc

pytestmark = pytest.mark.lab


@pytest.fixture
def site(appliance: LabAppliance, kdc: LabKdc, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
    tag = secrets.token_hex(3)
    made = Site(appliance, kdc, f"sess-admin-{tag}", f"sess-user-{tag}")
    for name, role in ((made.admin, "admin"), (made.user, "user")):
        added = appliance.drover("user", "add", name, "--role", role)
        assert added.returncode == 0, added.stdout + added.stderr
    yield made
    for client in made.clients:
        client.close()


class Site:
    def __init__(self, appliance: LabAppliance, kdc: LabKdc, admin: str, user: str) -> None:
        self.appliance, self.kdc, self.admin, self.user = appliance, kdc, admin, user
        self.clients: list[Client] = []

    def principal(self, name: str) -> str:
        return f"{name}@{self.kdc.realm.name}"

    def sign_in(self, name: str) -> str:
        """A SPNEGO sign-in to the web UI, as a browser with a ticket does it: the session cookie's value."""
        r = self.try_sign_in(name)
        assert r.status_code == 303, r.text
        value = r.headers["set-cookie"].split(";", 1)[0].split("=", 1)
        assert value[0] == COOKIE
        return value[1]

    def try_sign_in(self, name: str) -> httpx.Response:
        ccache = self.kdc.ticket(name)["KRB5CCNAME"]
        return httpx.get(f"{self.appliance.local_url}/ui/login/negotiate", trust_env=False, follow_redirects=False,
                         headers={"Authorization": negotiate(APPLIANCE_HOST, ccache), "User-Agent": "lab-browser/1"},
                         timeout=30)  # fmt: skip

    def page(self, cookie: str, path: str = "/ui/vms") -> httpx.Response:
        return httpx.get(f"{self.appliance.local_url}{path}", headers={"Cookie": f"{COOKIE}={cookie}"},
                         trust_env=False, follow_redirects=False, timeout=30)  # fmt: skip

    def alive(self, cookie: str) -> bool:
        status = self.page(cookie).status_code
        assert status in (200, 303), status
        return status == 200

    def api(self, name: str) -> Client:
        client = Client(self.appliance.local_url, service_host=APPLIANCE_HOST,
                        ccache=self.kdc.ticket(name)["KRB5CCNAME"])  # fmt: skip
        self.clients.append(client)
        return client


def listed_ids(out: str) -> list[int]:
    return [int(line.split()[0]) for line in out.splitlines()[1:] if line.strip()]


def test_the_cli_lists_and_ends_sessions_and_disabling_a_user_signs_them_out(site: Site) -> None:
    app, user = site.appliance, site.user
    first, second = site.sign_in(user), site.sign_in(user)
    assert site.alive(first) and site.alive(second) and first != second
    shown = app.drover("user", "sessions", user)
    assert shown.returncode == 0, shown.stderr
    ids = listed_ids(shown.stdout)
    assert len(ids) == 2 and "kerberos" in shown.stdout and "lab-browser/1" in shown.stdout, shown.stdout
    assert first not in shown.stdout and second not in shown.stdout  # never the cookie itself
    # The newest is listed first: ending the older one kills `first` (and any copy of it), not `second`.
    ended = app.drover("user", "sessions", user, "--revoke", str(ids[1]))
    assert ended.returncode == 0 and "ended 1" in ended.stdout, ended.stdout + ended.stderr
    assert not site.alive(first) and site.alive(second)
    # Bad input: a clear one-line error, nothing ended.
    zero = app.drover("user", "sessions", user, "--revoke", "0")
    assert zero.returncode == 2 and "--revoke" in zero.stderr
    gone = app.drover("user", "sessions", user, "--revoke", str(ids[1]))
    assert gone.returncode == 4 and "no session" in gone.stderr
    both = app.drover("user", "sessions", user, "--revoke", "1", "--all")
    assert both.returncode == 2
    assert site.alive(second)
    # Disabled: every session ends, and a new sign-in leads nowhere until the user is enabled again.
    off = app.drover("user", "disable", user)
    assert off.returncode == 0 and "ended 1" in off.stdout, off.stdout + off.stderr
    assert not site.alive(second)
    refused = site.try_sign_in(user)  # its browser would sign in again and again: refused instead
    assert refused.status_code == 403 and "set-cookie" not in refused.headers and "is disabled" in refused.text
    assert "[disabled]" in app.drover("user", "list").stdout
    on = app.drover("user", "enable", user)
    assert on.returncode == 0, on.stderr
    third = site.sign_in(user)
    assert site.alive(third)
    assert app.drover("user", "disable", "nobody-" + user).returncode == 4
    every = app.drover("user", "sessions", user, "--all")
    assert every.returncode == 0 and not site.alive(third)
    assert "no live web UI session" in app.drover("user", "sessions", user).stdout
    # Removing a user ends theirs too.
    fourth = site.sign_in(user)
    removed = app.drover("user", "remove", user)
    assert removed.returncode == 0 and "ended 1" in removed.stdout, removed.stdout
    assert not site.alive(fourth)


def test_the_api_lists_and_ends_sessions_for_an_admin_only(site: Site) -> None:
    user, principal = site.user, site.principal(site.user)
    first, second = site.sign_in(user), site.sign_in(user)
    admin = site.api(site.admin)
    listed = admin.get(f"/api/v1/users/{principal}/sessions")
    assert listed["principal"] == principal and len(listed["sessions"]) == 2
    _newest, older = (s["id"] for s in listed["sessions"])
    assert {s["method"] for s in listed["sessions"]} == {"kerberos"}
    assert all(first not in str(s) and second not in str(s) for s in listed["sessions"])
    # The user themself (role user) may not, and nothing is ended by trying.
    with pytest.raises(Forbidden):
        site.api(user).request("DELETE", f"/api/v1/users/{principal}/sessions")
    assert site.alive(first) and site.alive(second)
    assert admin.request("DELETE", f"/api/v1/users/{principal}/sessions/{older}") == {"principal": principal,
                                                                                      "ended": 1}  # fmt: skip
    assert not site.alive(first) and site.alive(second)
    with pytest.raises(NotFound):
        admin.request("DELETE", f"/api/v1/users/{principal}/sessions/{older}")
    with pytest.raises(UsageError):
        admin.request("PUT", f"/api/v1/users/{principal}/disabled", body={"disabled": "yes"})
    assert site.alive(second)
    assert admin.request("PUT", f"/api/v1/users/{principal}/disabled", body={"disabled": True})["disabled"] is True
    assert not site.alive(second)
    assert admin.request("PUT", f"/api/v1/users/{principal}/disabled", body={"disabled": False})["disabled"] is False
    third = site.sign_in(user)
    assert admin.request("DELETE", f"/api/v1/users/{principal}/sessions") == {"principal": principal, "ended": 1}
    assert not site.alive(third)
    with pytest.raises(UsageError):
        admin.request("PUT", f"/api/v1/users/{site.principal(site.admin)}/disabled", body={"disabled": True})


def test_the_users_page_shows_and_ends_a_users_sessions(site: Site) -> None:
    victim = site.sign_in(site.user)
    admin = site.sign_in(site.admin)
    page = site.page(admin, "/ui/users")
    assert page.status_code == 200
    row = re.search(rf'data-user="{re.escape(site.principal(site.user))}".*?</tr>', page.text, re.S)
    assert row is not None and 'data-sessions="1"' in row.group(0), page.text[-2000:]
    link = re.search(r'href="(/ui/users/(\d+)/sessions)"', row.group(0))
    assert link is not None
    listed = site.page(admin, link.group(1))
    assert listed.status_code == 200 and listed.text.count("data-session=") == 1
    sid = re.search(r'data-session="(\d+)"', listed.text)
    csrf = re.search(r'"X-CSRF-Token": "([^"]+)"', listed.text)
    assert sid is not None and csrf is not None
    headers = {"Cookie": f"{COOKIE}={admin}", "X-CSRF-Token": csrf.group(1), "HX-Request": "true"}
    url = f"{site.appliance.local_url}{link.group(1)}/revoke"
    no_token = httpx.post(url, data={"session": sid.group(1)}, headers={"Cookie": f"{COOKIE}={admin}"},
                          trust_env=False, timeout=30)  # fmt: skip
    assert no_token.status_code == 403 and site.alive(victim)
    bad = httpx.post(url, data={"session": "x"}, headers=headers, trust_env=False, timeout=30)
    assert bad.status_code == 400 and site.alive(victim)
    # A user without the admin role cannot even see the page.
    assert site.page(victim, link.group(1)).status_code == 403
    done = httpx.post(url, data={"session": sid.group(1)}, headers=headers, trust_env=False, timeout=30)
    assert done.status_code == 200 and "ended 1 session" in done.text, done.text
    assert not site.alive(victim) and site.alive(admin)
    # Disabled from the same page: the user's new session ends too, and enabled again.
    again = site.sign_in(site.user)
    uid = link.group(2)
    page_now = site.page(admin, link.group(1))
    assert 'id="disable-user"' in page_now.text
    off = httpx.post(f"{site.appliance.local_url}/ui/users/{uid}/disabled", data={"disabled": "true"},
                     headers=headers, trust_env=False, timeout=30)  # fmt: skip
    assert off.status_code == 200 and "1 session ended" in off.text, off.text
    assert not site.alive(again) and 'id="user-disabled"' in site.page(admin, link.group(1)).text
    junk = httpx.post(f"{site.appliance.local_url}/ui/users/{uid}/disabled", data={"disabled": "maybe"},
                      headers=headers, trust_env=False, timeout=30)  # fmt: skip
    assert junk.status_code == 400
    on = httpx.post(f"{site.appliance.local_url}/ui/users/{uid}/disabled", data={"disabled": "false"},
                    headers=headers, trust_env=False, timeout=30)  # fmt: skip
    assert on.status_code == 200 and site.alive(site.sign_in(site.user))
    # Signing out ends the admin's own session for every copy of the cookie.
    copy = admin
    out = httpx.post(f"{site.appliance.local_url}/ui/logout", headers=headers, trust_env=False, timeout=30)
    assert out.status_code == 204 and not site.alive(copy)
    engine = make_engine(site.appliance.database_url)
    try:
        assert Sessions(engine).read(copy) is None
    finally:
        engine.dispose()


def test_an_admin_sees_which_process_fences(site: Site) -> None:
    """The lab appliance runs the fencer thread: it holds the lease, shown by the CLI, the API and the dashboard."""
    status = site.appliance.drover("fencer", "status", principal=site.admin)
    assert status.returncode == 0, status.stderr
    line = status.stdout.splitlines()[0]
    assert line.startswith("fencer leader: ") and f":{site.appliance.process.pid}:" in line and "held" in line, line
    leader = site.api(site.admin).get("/api/v1/fencer")["leader"]
    assert leader["holder"] in line and leader["expired"] is False and leader["term"] >= 1
    dashboard = site.page(site.sign_in(site.admin), "/ui/")
    assert dashboard.status_code == 200
    fencing = re.search(r'<p class="fencer" id="fencer">(.*?)</p>', dashboard.text, re.S)
    assert fencing is not None and "led by" in fencing.group(1) and leader["holder"] in fencing.group(1)
    assert site.appliance.drover("fencer", "status", principal=None).returncode != 0
