"""Roles through the API: whoami reads them from the database, POST /users grants them, bad bodies change nothing."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from appliance.client import Client
from appliance.db.access import roles_of
from appliance.db.engine import make_engine, session_scope
from appliance.db.models.users import Permission, User
from appliance.errors import Conflict, Forbidden, UsageError
from tests.lab.appliance import LabAppliance
from tests.lab.kdc import APPLIANCE_HOST, LabKdc

pytestmark = pytest.mark.lab

AsUser = Callable[[str], Client]


@pytest.fixture
def as_user(appliance: LabAppliance, kdc: LabKdc, monkeypatch: pytest.MonkeyPatch) -> Iterator[AsUser]:
    """A client for the lab appliance under a fresh ticket for the given principal name."""
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
    clients: list[Client] = []

    def make(name: str) -> Client:
        ccache = kdc.ticket(name)["KRB5CCNAME"]
        client = Client(appliance.local_url, service_host=APPLIANCE_HOST, ccache=ccache)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _grant_cli(appliance: LabAppliance, principal: str, role: str) -> None:
    proc = appliance.drover("user", "add", principal, "--role", role)
    assert proc.returncode == 0, proc.stderr


def _db_snapshot(appliance: LabAppliance) -> tuple[int, int]:
    engine = make_engine(appliance.database_url)
    try:
        with session_scope(engine) as s:
            users = s.scalar(select(func.count()).select_from(User)) or 0
            grants = s.scalar(select(func.count()).select_from(Permission)) or 0
    finally:
        engine.dispose()
    return users, grants


def _roles_in_db(appliance: LabAppliance, principal: str) -> list[str]:
    engine = make_engine(appliance.database_url)
    try:
        with session_scope(engine) as s:
            return [str(r) for r in roles_of(s, principal)]
    finally:
        engine.dispose()


def test_whoami_shows_roles_granted_in_the_database(appliance: LabAppliance, kdc: LabKdc, as_user: AsUser) -> None:
    principal = f"dave@{kdc.realm.name}"
    assert as_user("dave").get("/api/v1/whoami") == {"principal": principal, "roles": []}
    _grant_cli(appliance, principal, "monitor")
    _grant_cli(appliance, principal, "admin")
    assert as_user("dave").get("/api/v1/whoami") == {"principal": principal, "roles": ["admin", "monitor"]}


def test_cli_whoami_prints_the_roles(appliance: LabAppliance, kdc: LabKdc) -> None:
    _grant_cli(appliance, f"erin@{kdc.realm.name}", "user")
    proc = appliance.drover("whoami", principal="erin")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"principal: erin@{kdc.realm.name}", "roles:     user"]


@pytest.fixture
def root(appliance: LabAppliance, kdc: LabKdc, as_user: AsUser) -> Client:
    """A super_admin's client (granted once through the CLI)."""
    principal = f"root@{kdc.realm.name}"
    if "super_admin" not in _roles_in_db(appliance, principal):
        _grant_cli(appliance, principal, "super_admin")
    return as_user("root")


def test_super_admin_grants_a_role(appliance: LabAppliance, kdc: LabKdc, root: Client, as_user: AsUser) -> None:
    frank = f"frank@{kdc.realm.name}"
    answer = root.post("/api/v1/users", {"principal": frank, "role": "admin"})
    assert answer == {"principal": frank, "roles": ["admin"], "pool_roles": []}
    assert as_user("frank").get("/api/v1/whoami")["roles"] == ["admin"]
    with pytest.raises(Conflict):
        root.post("/api/v1/users", {"principal": frank, "role": "admin"})


def test_without_the_right_role_granting_is_forbidden(appliance: LabAppliance, kdc: LabKdc, as_user: AsUser) -> None:
    before = _db_snapshot(appliance)
    with pytest.raises(Forbidden) as err:
        as_user("nobody").post("/api/v1/users", {"principal": f"nobody@{kdc.realm.name}", "role": "super_admin"})
    assert "may not grant" in err.value.message
    assert _db_snapshot(appliance) == before


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"principal": "x@Y", "role": "admin"',
        b"\xff\xfe",
        b"",
        b"[1, 2]",
        b'"just a string"',
        b'{"principal": "no realm", "role": "admin"}',
        b'{"principal": "g@LAB.EXAMPLE.TEST", "role": "emperor"}',
        b'{"principal": "g@LAB.EXAMPLE.TEST"}',
    ],
)
def test_bad_bodies_are_400_and_change_nothing(appliance: LabAppliance, root: Client, body: bytes) -> None:
    before = _db_snapshot(appliance)
    # Through the client's own authenticated transport, so only the body is wrong.
    response = root._http.post("/api/v1/users", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]
    assert _db_snapshot(appliance) == before


def test_client_reports_400_as_usage_error(root: Client) -> None:
    with pytest.raises(UsageError, match="principal"):
        root.post("/api/v1/users", {"principal": 42, "role": "admin"})


def test_granting_without_a_ticket_is_401(appliance: LabAppliance) -> None:
    before = _db_snapshot(appliance)
    response = httpx.post(f"{appliance.local_url}/api/v1/users", json={"principal": "h@X", "role": "admin"})
    assert response.status_code == 401
    assert _db_snapshot(appliance) == before


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_oversized_bodies_are_refused_before_the_role_check_reads_them(
    appliance: LabAppliance, kdc: LabKdc, as_user: AsUser
) -> None:
    """Issue 8: a 300 MB POST by a `monitor` user took the server to 1 GB before its 403. Now the declared
    size is refused at once, and a chunked body without a length is cut off past [api] max_body_bytes."""
    _grant_cli(appliance, f"watcher@{kdc.realm.name}", "monitor")
    http = as_user("watcher")._http
    before_rss, before_db = _rss_kib(appliance.process.pid), _db_snapshot(appliance)

    # Declared 300 MB, 16 bytes sent, no ticket at all: the size is refused first (413, not 401).
    port = int(appliance.local_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Length: 314572800\r\n\r\n" + b"{" * 16)
        answer = ""
        while "larger than" not in answer and (chunk := raw.recv(65536).decode()):
            answer += chunk
    assert answer.startswith("HTTP/1.1 413") and "larger than 1048576 bytes" in answer, answer

    def chunks() -> Iterator[bytes]:
        for _ in range(8):  # 8 MiB, bounded: the server stops reading after the first MiB
            yield b" " * 2**20

    chunked = http.post("/api/v1/users", content=chunks())
    assert chunked.status_code == 413, chunked.text
    assert _rss_kib(appliance.process.pid) - before_rss < 32 * 1024
    assert _db_snapshot(appliance) == before_db


def test_deeply_nested_json_is_a_400_not_a_500(appliance: LabAppliance, root: Client) -> None:
    before = _db_snapshot(appliance)
    body = b"[" * 100_000 + b"]" * 100_000
    response = root._http.post("/api/v1/users", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "nested deeper than" in response.json()["error"], response.text
    assert _db_snapshot(appliance) == before
    assert "RecursionError" not in appliance.log_text()
