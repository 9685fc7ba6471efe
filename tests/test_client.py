"""The API client against real peers: the lab appliance, nothing listening, and a server that is not drover."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.client import ApiUnreachable, Client
from appliance.errors import AuthError, NotFound
from tests.lab.appliance import LabAppliance
from tests.lab.kdc import APPLIANCE_HOST, LabKdc
from tests.lab.net import free_port, wait_listening

pytestmark = pytest.mark.lab


@pytest.fixture
def alice(kdc: LabKdc, monkeypatch: pytest.MonkeyPatch) -> str:
    """This process acts as alice: her ticket in KRB5CCNAME, the lab realm in KRB5_CONFIG."""
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
    monkeypatch.setenv("KRB5CCNAME", kdc.ticket("alice")["KRB5CCNAME"])
    return f"alice@{kdc.realm.name}"


def test_get_returns_parsed_json(appliance: LabAppliance, alice: str) -> None:
    with Client(appliance.local_url, service_host=APPLIANCE_HOST) as api:
        assert api.get("/api/v1/whoami")["principal"] == alice
        assert api.get("/api/v1/health") == {"status": "ok"}


def test_explicit_ccache_beats_the_environment(appliance: LabAppliance, kdc: LabKdc, alice: str) -> None:
    bob = kdc.ticket("bob")["KRB5CCNAME"]
    with Client(appliance.local_url, service_host=APPLIANCE_HOST, ccache=bob) as api:
        assert api.get("/api/v1/whoami")["principal"] == f"bob@{kdc.realm.name}"


def test_no_ticket_says_run_kinit(appliance: LabAppliance, kdc: LabKdc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
    monkeypatch.setenv("KRB5CCNAME", kdc.no_ticket()["KRB5CCNAME"])
    with Client(appliance.local_url, service_host=APPLIANCE_HOST) as api, pytest.raises(AuthError) as err:
        api.get("/api/v1/whoami")
    assert "no Kerberos ticket" in err.value.message
    assert "kinit" in err.value.hint


def test_server_errors_come_back_with_their_hint(appliance: LabAppliance, alice: str) -> None:
    with Client(appliance.local_url, service_host=APPLIANCE_HOST) as api, pytest.raises(NotFound) as err:
        api.get("/api/v1/no-such-thing")
    assert err.value.message == "Not Found"
    assert err.value.hint


def test_api_down_is_one_line_naming_the_url(alice: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, service_host=APPLIANCE_HOST) as api, pytest.raises(ApiUnreachable) as err:
        api.get("/api/v1/whoami")
    assert err.value.message.startswith(f"cannot reach the drover API at {url}/api/v1/whoami")
    assert "\n" not in err.value.message
    assert "drover serve" in err.value.hint


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[str]:
    """A plain web server answering 200 + JSON on the API's path, without any Kerberos."""
    (tmp_path / "api" / "v1").mkdir(parents=True)
    (tmp_path / "api" / "v1" / "whoami").write_text('{"principal": "root@EVIL", "roles": ["super_admin"]}')
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(tmp_path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening("127.0.0.1", port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_server_that_cannot_prove_its_identity_is_refused(impostor: str, alice: str) -> None:
    with Client(impostor, service_host=APPLIANCE_HOST) as api, pytest.raises(AuthError, match="prov"):
        api.get("/api/v1/whoami")
