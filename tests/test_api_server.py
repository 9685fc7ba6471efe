"""The API as a real `drover serve` process: Negotiate with real tickets, refusals, JSON errors at the edge."""

from __future__ import annotations

import base64
import json
import sqlite3
import statistics
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from appliance.client import ApiError, Client
from tests.lab.appliance import LabAppliance, start_appliance
from tests.lab.kdc import APPLIANCE_HOST, LabKdc, start_kdc

pytestmark = pytest.mark.lab


def _curl(
    appliance: LabAppliance, env: dict[str, str], *extra: str, path: str = "/api/v1/whoami"
) -> tuple[int, dict[str, str], str]:
    """curl as an independent Negotiate peer; --resolve keeps the URL's host (and so the SPN) the real name."""
    proc = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--include",
            "--resolve",
            f"{APPLIANCE_HOST}:{appliance.port}:127.0.0.1",
            *extra,
            f"{appliance.url}{path}",
        ],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    head, _, body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
    # With --negotiate curl may print a 401 first and then the real answer; the last block counts.
    while body.startswith("HTTP/"):
        head, _, body = body.partition("\n\n")
    status_line, *lines = head.splitlines()
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _assert_challenge(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Negotiate"
    body = response.json()
    assert body["error"] and "kinit" in body["hint"]


def test_health_needs_no_ticket(appliance: LabAppliance) -> None:
    response = httpx.get(f"{appliance.local_url}/api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_client_with_a_ticket(appliance: LabAppliance, kdc: LabKdc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
    monkeypatch.setenv("KRB5CCNAME", kdc.ticket("alice")["KRB5CCNAME"])
    with Client(appliance.local_url, service_host=APPLIANCE_HOST) as api:
        me = api.get("/api/v1/whoami")
    assert me["principal"] == f"alice@{kdc.realm.name}"
    assert isinstance(me["roles"], list)


def test_curl_negotiate_is_an_independent_peer(appliance: LabAppliance, kdc: LabKdc) -> None:
    status, headers, body = _curl(appliance, kdc.ticket("bob"), "--negotiate", "--user", ":")
    assert status == 200, body
    assert json.loads(body)["principal"] == f"bob@{kdc.realm.name}"
    # Mutual authentication: the server's own token comes back with the answer.
    scheme, _, token = headers["www-authenticate"].partition(" ")
    assert scheme == "Negotiate" and base64.b64decode(token)


def test_curl_without_a_ticket_is_refused(appliance: LabAppliance, kdc: LabKdc) -> None:
    status, headers, body = _curl(appliance, kdc.no_ticket(), "--negotiate", "--user", ":")
    assert status == 401
    assert headers["www-authenticate"] == "Negotiate"
    assert json.loads(body)["error"]


def test_no_authorization_header_is_a_negotiate_challenge(appliance: LabAppliance) -> None:
    _assert_challenge(httpx.get(f"{appliance.local_url}/api/v1/whoami"))


@pytest.mark.parametrize(
    "value",
    [
        "Negotiate",
        "Negotiate %%%",
        "Negotiate " + base64.b64encode(b"\x60\x82garbage").decode(),
        "Negotiate " + base64.b64encode(bytes(range(256))).decode(),
        "Basic YWxpY2U6c2VjcmV0",
        "NTLM TlRMTVNTUAABAAAA",
    ],
)
def test_garbage_tokens_get_401_never_500(appliance: LabAppliance, value: str) -> None:
    _assert_challenge(httpx.get(f"{appliance.local_url}/api/v1/whoami", headers={"Authorization": value}))


def test_a_captured_header_cannot_be_replayed(appliance: LabAppliance, kdc: LabKdc) -> None:
    # curl prints the header it sent with --verbose; sending it again from elsewhere must fail.
    proc = subprocess.run(
        [
            "curl",
            "--silent",
            "--verbose",
            "--negotiate",
            "--user",
            ":",
            "--resolve",
            f"{APPLIANCE_HOST}:{appliance.port}:127.0.0.1",
            f"{appliance.url}/api/v1/whoami",
        ],
        env={"PATH": "/usr/bin:/bin", **kdc.ticket("alice")},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    sent = [line for line in proc.stderr.splitlines() if line.startswith("> Authorization: Negotiate")]
    assert sent, proc.stderr
    header = sent[-1].removeprefix("> Authorization: ").strip()
    _assert_challenge(httpx.get(f"{appliance.local_url}/api/v1/whoami", headers={"Authorization": header}))


def test_ticket_from_another_realm_is_refused(appliance: LabAppliance, tmp_path: Path) -> None:
    other = start_kdc(tmp_path, realm_name="OTHER.EXAMPLE.TEST")
    try:
        status, headers, _ = _curl(appliance, other.ticket("mallory"), "--negotiate", "--user", ":")
    finally:
        other.process.terminate()
        other.process.wait(10)
    assert status == 401
    assert headers["www-authenticate"] == "Negotiate"


def test_unknown_route_is_404_json(appliance: LabAppliance, kdc: LabKdc) -> None:
    status, headers, body = _curl(appliance, kdc.ticket("alice"), "--negotiate", "--user", ":", path="/api/v1/nope")
    assert status == 404
    assert json.loads(body)["error"] == "Not Found"
    assert headers["www-authenticate"].startswith("Negotiate ")


def test_unknown_route_without_a_ticket_is_401(appliance: LabAppliance) -> None:
    # Route names are not disclosed to anonymous callers.
    _assert_challenge(httpx.get(f"{appliance.local_url}/api/v1/nope"))


def test_wrong_method_is_405_json(appliance: LabAppliance, kdc: LabKdc) -> None:
    status, _, body = _curl(appliance, kdc.ticket("alice"), "--negotiate", "--user", ":", "--request", "DELETE")
    assert status == 405
    assert json.loads(body)["error"]


def test_keep_alive_answers_are_not_held_back_by_nagle(appliance: LabAppliance) -> None:
    # Without TCP_NODELAY on the listening socket every reused connection waited ~40 ms (delayed ACK).
    with httpx.Client() as http:
        http.get(f"{appliance.local_url}/api/v1/health")
        times = []
        for _ in range(21):
            start = time.perf_counter()
            http.get(f"{appliance.local_url}/api/v1/health")
            times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.025, times


def test_database_trouble_is_a_json_503_with_a_hint(
    kdc: LabKdc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = start_appliance(kdc, tmp_path)
    try:
        with sqlite3.connect(tmp_path / "drover.db") as db:
            db.execute("DROP TABLE permissions")
        monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
        ccache = kdc.ticket("alice")["KRB5CCNAME"]
        with Client(lab.local_url, service_host=APPLIANCE_HOST, ccache=ccache) as api, pytest.raises(ApiError) as err:
            api.get("/api/v1/whoami")
        assert err.value.status == 503
        assert "drover db upgrade" in err.value.hint
    finally:
        assert lab.stop() == 0
