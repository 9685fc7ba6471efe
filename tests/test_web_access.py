"""The web UI's session cookie, CSRF token and sign-in redirects, in process (the browser tests are in
test_webui_lab.py): a forged, altered or expired cookie is no session; without one a page redirects to the
Kerberos sign-in URL, a fragment or the event stream gets a 401; a POST needs the session's token."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select, update

from appliance import websessions
from appliance.api import create_app
from appliance.db import migrate
from appliance.db.base import utcnow
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Event, HardwarePool, Permission, User, Vm, WebSession
from appliance.db.models.users import Role
from appliance.errors import Forbidden, NotFound
from appliance.hosts import default_pool
from appliance.serving import Group, bind, listener
from appliance.web import stream
from appliance.web.access import PASSWORD_TRIES_PER_MINUTE, is_loopback, safe_next
from appliance.web.session import COOKIE, Sessions, csrf_ok
from tests.lab.kdc import LabKdc
from tests.test_enrolment import lab_config


def test_a_session_cookie_is_a_random_id_whose_row_decides(db_engine: Engine) -> None:
    sessions = Sessions(db_engine, lifetime=3600)
    session, cookie = sessions.issue("alice@LAB", "password", "192.0.2.7 curl/8")
    assert sessions.read(cookie) == session and session.principal == "alice@LAB"
    other, other_cookie = sessions.issue("root@LAB")
    assert other.csrf != session.csrf and len(session.csrf) >= 24 and other_cookie != cookie
    # Only a hash is stored: neither the table nor the cookie says who or how to forge one.
    with session_scope(db_engine) as s:
        rows = list(s.scalars(select(WebSession)))
        assert len(rows) == 2 and all(cookie not in (r.id_hash, r.csrf) for r in rows)
        assert {r.source for r in rows} == {"192.0.2.7 curl/8", ""}
    assert "alice" not in cookie and "." not in cookie
    for junk in ("", ".", "abc", cookie[:-1], cookie[:-1] + ("A" if cookie[-1] != "A" else "B"), "x" * 5000, None,
                 cookie + "=", "'" * 43):  # fmt: skip
        assert sessions.read(junk) is None
    # Signed out: that cookie (and any copy of it) is nobody; the other session lives on.
    assert sessions.end(cookie) and not sessions.end(cookie)
    assert sessions.read(cookie) is None and sessions.read(other_cookie) == other


def test_expired_sessions_are_refused_and_purged(db_engine: Engine) -> None:
    sessions = Sessions(db_engine, lifetime=3600)
    old, old_cookie = sessions.issue("alice@LAB")
    _, live_cookie = sessions.issue("bob@LAB")
    with session_scope(db_engine) as s:
        s.execute(update(WebSession).where(WebSession.id == old.id).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert sessions.read(old_cookie) is None
    sessions.issue("carol@LAB")  # every sign-in purges what has expired
    with session_scope(db_engine) as s:
        assert sorted(s.scalars(select(WebSession.principal))) == ["bob@LAB", "carol@LAB"]
        assert websessions.purge(s, utcnow() + timedelta(hours=2)) == 2
    assert sessions.read(live_cookie) is None


def test_revoked_and_disabled_users_sessions_end(db_engine: Engine) -> None:
    sessions = Sessions(db_engine)
    with session_scope(db_engine) as s:
        s.add(User(principal="alice@LAB"))
    a1, c1 = sessions.issue("alice@LAB")
    _, c2 = sessions.issue("alice@LAB")
    _, c3 = sessions.issue("bob@LAB")
    with session_scope(db_engine) as s:
        assert [w.id for w in websessions.of(s, "alice@LAB")] == [a1.id + 1, a1.id]
        assert websessions.revoke(s, "alice@LAB", a1.id) == 1
    assert sessions.read(c1) is None and sessions.read(c2) is not None
    with session_scope(db_engine) as s, pytest.raises(NotFound, match="no session"):
        websessions.revoke(s, "bob@LAB", a1.id + 1)  # alice's id under bob's name: not bob's, nothing ended
    assert sessions.read(c2) is not None
    with session_scope(db_engine) as s:
        websessions.set_disabled(s, "alice@LAB", True)
    assert sessions.read(c2) is None and sessions.read(c3) is not None
    with pytest.raises(Forbidden, match="disabled"):
        sessions.issue("alice@LAB")  # no new session either
    with session_scope(db_engine) as s:
        assert websessions.of(s, "alice@LAB") == []
        websessions.set_disabled(s, "alice@LAB", False)
    _, again = sessions.issue("alice@LAB")
    assert sessions.read(again) is not None


def test_csrf_tokens_must_match_exactly(db_engine: Engine) -> None:
    session, _ = Sessions(db_engine).issue("alice@LAB")
    assert csrf_ok(session, session.csrf)
    for wrong in (None, "", session.csrf[:-1], session.csrf + "x"):
        assert not csrf_ok(session, wrong)


def test_after_sign_in_only_paths_inside_the_ui() -> None:
    assert safe_next("/ui/vms?x=1") == "/ui/vms?x=1"
    for bad in (None, "", "https://evil.example/", "//evil.example/ui/", "/api/v1/hosts", "/ui\\evil", "/uix"):
        assert safe_next(bad) == "/ui/"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    assert not is_loopback("192.0.2.1")


@pytest.fixture(params=["sqlite", "postgresql"])
def client(
    request: pytest.FixtureRequest, kdc: LabKdc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[httpx.Client, Engine, Sessions]]:
    """The API app (UI included) served on a free loopback port in this process, and its session signer.

    On PostgreSQL the event hub's safety-net poll is set far beyond the tests' waits: an event that
    arrives in time came by LISTEN/NOTIFY.
    """
    path = tmp_path / "drover.db"
    if request.param == "sqlite":
        shutil.copyfile(request.getfixturevalue("sqlite_migrated_file"), path)
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        migrate.upgrade(url)
        monkeypatch.setattr(stream, "NOTIFIED_POLL_SECONDS", 120.0)
    engine = make_engine(url)
    cfg = lab_config(kdc, path, DROVER_DATABASE_URL=url)
    sock = bind("127.0.0.1", 0, "test")
    group = Group([listener("api", create_app(cfg, engine=engine), sock)])
    thread = threading.Thread(target=group.run)
    thread.start()
    deadline = time.monotonic() + 10
    while not group.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)
    with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", trust_env=False) as http:
        yield http, engine, Sessions(engine)
    stream.STOPPING.set()  # ends the open streams, as `drover serve` does when it stops
    group.stop()
    thread.join(15)
    stream.STOPPING.clear()
    engine.dispose()


def signed_in(signer: Sessions) -> tuple[str, dict[str, str]]:
    """A session's CSRF token and the Cookie header that carries it."""
    session, cookie = signer.issue("nobody@LAB.EXAMPLE.TEST")
    return session.csrf, {"Cookie": f"{COOKIE}={cookie}"}


Served = tuple[httpx.Client, Engine, Sessions]


def test_without_a_session_pages_redirect_and_fragments_are_refused(client: Served) -> None:
    tc, _, _ = client
    page = tc.get("/ui/vms?x=1", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/ui/login/negotiate?next=/ui/vms%3Fx%3D1"
    assert tc.get("/ui/vms", headers={"HX-Request": "true"}).status_code == 401
    assert tc.get("/ui/stream").status_code == 401
    assert tc.get("/", follow_redirects=False).headers["location"] == "/ui/"
    challenge = tc.get("/ui/login/negotiate")
    assert challenge.status_code == 401 and challenge.headers["www-authenticate"] == "Negotiate"
    assert 'id="password-form"' in challenge.text  # what a browser without a ticket shows
    for answer in (challenge, page, tc.get("/ui/static/drover.css")):
        assert answer.headers["x-frame-options"] == "DENY", answer.url
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert tc.get("/ui/login/negotiate", headers={"Authorization": "Negotiate AAAA"}).status_code == 401
    forged = tc.get("/ui/vms", headers={"Cookie": f"{COOKIE}=eyJwIjoiYUBCIn0.AAAA"}, follow_redirects=False)
    assert forged.status_code == 303
    # The API itself still wants Negotiate, session cookie or not.
    assert tc.get("/api/v1/vms", headers={"Cookie": f"{COOKIE}=x"}).status_code == 401


def test_a_post_needs_the_sessions_own_token(client: Served) -> None:
    tc, engine, signer = client
    csrf, cookie = signed_in(signer)
    other, _ = signed_in(signer)  # a real token, of another session
    with session_scope(engine) as s:
        before = s.scalar(select(func.count()).select_from(Event))
    form = {"minutes": "5", "count": "1"}
    assert tc.post("/ui/enrolment/windows", data=form, headers=cookie).status_code == 403
    assert tc.post("/ui/enrolment/windows", data=form, headers={**cookie, "X-CSRF-Token": other}).status_code == 403
    # With its own token the request reaches the handler, whose permission check refuses this user.
    refused = tc.post("/ui/enrolment/windows", data=form, headers={**cookie, "X-CSRF-Token": csrf})
    assert refused.status_code == 403 and "may not open enrolment windows" in refused.text
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Event)) == before


def test_a_form_must_be_urlencoded(client: Served) -> None:
    tc, _, signer = client
    csrf, cookie = signed_in(signer)
    headers = {**cookie, "X-CSRF-Token": csrf, "Content-Type": "application/json"}
    sent = tc.post("/ui/vms", content=b'{"name": "x"}', headers=headers)
    assert sent.status_code == 400 and "x-www-form-urlencoded" in sent.text


def _stream_until(tc: httpx.Client, cookie: dict[str, str], stop_id: int, headers: dict[str, str]) -> list[str]:
    """The `data:` lines of /ui/stream up to the one of event `stop_id` (the stream sends in id order)."""
    data: list[str] = []
    with tc.stream("GET", "/ui/stream", headers={**cookie, **headers}, timeout=30) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: "):
                data.append(line)
                if f'"id": {stop_id},' in line:
                    break
    return data


def test_the_event_stream_sends_each_user_only_what_they_may_see(client: Served) -> None:
    tc, engine, signer = client
    with session_scope(engine) as s:
        root = default_pool(s)
        mine, theirs = HardwarePool(name="s-mine", parent=root), HardwarePool(name="s-theirs", parent=root)
        s.add_all([mine, theirs])
        s.flush()
        carol = User(principal="carol@LAB.EXAMPLE.TEST")
        s.add(carol)
        s.flush()
        s.add(Permission(user=carol, role=Role.USER, hardware_pool_id=mine.id))
        vm_mine = Vm(uuid=str(uuid.uuid4()), name="s-vm-mine", vcpus=1, memory_mib=64, pool=mine)
        vm_theirs = Vm(uuid=str(uuid.uuid4()), name="s-vm-theirs", vcpus=1, memory_mib=64, pool=theirs)
        s.add_all([vm_mine, vm_theirs])
        s.flush()
        events = [Event(kind="vm.state", subject="s-vm-theirs", vm_id=vm_theirs.id),
                  Event(kind="host.state", subject="some host"),
                  Event(kind="vm.state", subject="s-vm-mine", vm_id=vm_mine.id)]  # fmt: skip
        s.add_all(events)
        s.flush()
        ids = [e.id for e in events]
    _, cookie_value = signer.issue("carol@LAB.EXAMPLE.TEST")
    cookie = {"Cookie": f"{COOKIE}={cookie_value}"}
    seen = _stream_until(tc, cookie, ids[-1], {"Last-Event-ID": str(ids[0] - 1)})
    assert len(seen) == 1 and '"subject": "s-vm-mine"' in seen[0], seen
    # Resuming after the last id sees nothing old; a new event on her VM arrives on the open stream.
    got: list[str] = []
    subscribed, arrived = threading.Event(), threading.Event()

    def listen() -> None:
        with tc.stream("GET", "/ui/stream", headers={**cookie, "Last-Event-ID": str(ids[-1])}, timeout=30) as answer:
            for line in answer.iter_lines():
                if line.startswith("retry:"):
                    subscribed.set()
                if line.startswith("data: "):
                    got.append(line)
                    arrived.set()
                    return

    reader = threading.Thread(target=listen)
    reader.start()
    assert subscribed.wait(10)
    with session_scope(engine) as s:
        later = Event(kind="vm.state", subject="s-vm-mine", vm_id=vm_mine.id)
        s.add(later)
        s.flush()
        later_id = later.id
    assert arrived.wait(10), "the new event did not reach the open stream"
    reader.join(30)
    assert len(got) == 1 and f'"id": {later_id},' in got[0]


def test_password_sign_in_off_loopback_sets_a_secure_strict_cookie(
    kdc: LabKdc, tmp_path: Path, sqlite_migrated_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An appliance configured to listen beyond loopback marks its cookie Secure (served here on loopback)."""
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))  # as `drover serve` sets it for itself
    path = tmp_path / "drover.db"
    shutil.copyfile(sqlite_migrated_file, path)
    password = "Pw-" + uuid.uuid4().hex[:12]
    kdc.realm.kadmin().add("web-dave", password=password)
    engine = make_engine(f"sqlite:///{path}")
    cfg = lab_config(kdc, path, DROVER_API_LISTEN="0.0.0.0")
    sock = bind("127.0.0.1", 0, "test")
    group = Group([listener("api", create_app(cfg, engine=engine), sock)])
    thread = threading.Thread(target=group.run)
    thread.start()
    try:
        while not group.started:
            assert thread.is_alive()
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", trust_env=False) as http:
            form = {"user": "web-dave", "password": password, "next": "/ui/vms"}
            wrong = http.post("/ui/login", data={**form, "password": "x" + password})
            assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
            assert "sign-in failed" in wrong.text
            signed = http.post("/ui/login", data=form)
            assert signed.status_code == 303 and signed.headers["location"] == "/ui/vms"
            cookie = signed.headers["set-cookie"]
            for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/ui/", "Max-Age=28800"):
                assert attribute.lower() in cookie.lower(), cookie
            value = cookie.split(";", 1)[0].split("=", 1)[1]
            session = Sessions(engine).read(value)
            assert session is not None and session.principal == f"web-dave@{kdc.realm.name}"
            # A copy of the cookie (a thief's) works until its owner signs out, then for no one.
            thief = {"Cookie": f"{COOKIE}={value}"}
            assert http.get("/ui/", headers=thief, follow_redirects=False).status_code == 200
            with session_scope(engine) as s:
                row = s.scalars(select(WebSession).where(WebSession.principal == session.principal)).one()
                assert row.method == "password" and row.source.startswith("127.0.0.1")
            out = http.post("/ui/logout", headers={**thief, "X-CSRF-Token": session.csrf})
            assert out.status_code == 204 and f"{COOKIE}=" in out.headers["set-cookie"]
            assert http.get("/ui/", headers=thief, follow_redirects=False).status_code == 303
            assert Sessions(engine).read(value) is None
            # Guessing is bounded per client address: past the budget even the right password waits.
            answers = [http.post("/ui/login", data={**form, "password": f"guess{n}"}).status_code for n in range(25)]
            assert answers[: PASSWORD_TRIES_PER_MINUTE - 2] == [401] * (PASSWORD_TRIES_PER_MINUTE - 2)
            assert answers[-1] == 429
            late = http.post("/ui/login", data=form)
            assert late.status_code == 429 and "set-cookie" not in late.headers and "try again" in late.text
    finally:
        group.stop()
        thread.join(15)
        engine.dispose()
