"""The SPNEGO acceptor on its own: real tickets from the lab KDC, real keytabs, no HTTP in between."""

from __future__ import annotations

import base64
from pathlib import Path

import gssapi
import pytest

from appliance.api.negotiate import Acceptor, encode, header_token
from appliance.client import SPNEGO
from appliance.errors import AuthError, KerberosError
from tests.lab.kdc import APPLIANCE_HOST, LabKdc, start_kdc

pytestmark = pytest.mark.lab


def _initiator_token(
    kdc: LabKdc, principal: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[gssapi.SecurityContext, bytes]:
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
    ccache = kdc.ticket(principal)["KRB5CCNAME"]
    creds = gssapi.Credentials(usage="initiate", store={"ccache": ccache})
    ctx = gssapi.SecurityContext(
        name=gssapi.Name(f"HTTP@{APPLIANCE_HOST}", gssapi.NameType.hostbased_service),
        creds=creds,
        usage="initiate",
        mech=SPNEGO,
        flags=gssapi.RequirementFlag.mutual_authentication,
    )
    token = ctx.step()
    assert token
    return ctx, token


@pytest.fixture(scope="module")
def acceptor(kdc: LabKdc) -> Acceptor:
    return Acceptor(kdc.realm.files.http_keytab, kdc.realm.http_principal)


def test_one_round_with_mutual_auth(kdc: LabKdc, acceptor: Acceptor, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, token = _initiator_token(kdc, "alice", monkeypatch)
    accepted = acceptor.accept(encode(token))
    assert accepted.principal == f"alice@{kdc.realm.name}"
    assert accepted.token is not None
    # The client side finishes only with the server's token: proof the server holds the HTTP/ key.
    ctx.step(accepted.token)
    assert ctx.complete


def test_the_same_header_twice_is_a_replay(kdc: LabKdc, acceptor: Acceptor, monkeypatch: pytest.MonkeyPatch) -> None:
    _, token = _initiator_token(kdc, "alice", monkeypatch)
    acceptor.accept(encode(token))
    with pytest.raises(AuthError):
        acceptor.accept(encode(token))


@pytest.mark.parametrize(
    "header",
    [
        "Negotiate",
        "Negotiate ",
        "Negotiate !!!not-base64!!!",
        "Negotiate " + base64.b64encode(b"garbage").decode(),
        "Negotiate " + base64.b64encode(bytes(range(256)) * 4).decode(),
        "Negotiate " + "A" * 200_000,
        "Basic YWxpY2U6c2VjcmV0",
        "Bearer abc",
    ],
)
def test_garbage_is_an_auth_error(acceptor: Acceptor, header: str) -> None:
    with pytest.raises(AuthError):
        acceptor.accept(header)


def test_header_token_is_case_insensitive_about_the_scheme() -> None:
    assert header_token("negotiate " + base64.b64encode(b"x").decode()) == b"x"


def test_ticket_from_another_realm_is_refused(
    kdc: LabKdc, acceptor: Acceptor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second realm with its own HTTP/appliance.example.test: a perfectly good ticket, wrong keys.
    other = start_kdc(tmp_path, realm_name="OTHER.EXAMPLE.TEST")
    try:
        _, token = _initiator_token(other, "mallory", monkeypatch)
        with pytest.raises(AuthError):
            acceptor.accept(encode(token))
    finally:
        other.process.terminate()
        other.process.wait(10)


def test_missing_keytab_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(KerberosError, match="drover realm init"):
        Acceptor(tmp_path / "http.keytab", "HTTP/appliance.example.test@LAB.EXAMPLE.TEST")


def test_keytab_without_the_principal_is_refused_at_start(kdc: LabKdc) -> None:
    with pytest.raises(KerberosError, match="klist -k"):
        Acceptor(kdc.realm.files.admin_keytab, kdc.realm.http_principal)
