"""HTTPS for the web UI and REST API: the appliance's own CA or the admin's certificate, over real TLS.

A real `drover serve` with [api] tls = on (loopback would otherwise be plain HTTP), reached by httpx and
the drover client verifying against the CA, by the CLI (its CA from the state dir, --ca, [api] ca_file),
and by Debian's Chromium trusting exactly the served key (never --ignore-certificate-errors).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance import pki as pkimod
from appliance.client import ApiUntrusted, Client
from appliance.config import Config, KerberosConfig
from appliance.pki import Pki
from tests.lab.appliance import ADMIN, LabAppliance, start_appliance
from tests.lab.browser import browser
from tests.lab.kdc import APPLIANCE_HOST, LabKdc

pytestmark = pytest.mark.lab

QUIET = {
    "DROVER_TASKENGINE_ENABLED": "false",
    "DROVER_HOSTBROWSER_ENABLED": "false",
    "DROVER_MONITOR_ENABLED": "false",
}
TLS = {**QUIET, "DROVER_API_TLS": "on"}


# -- certificates made here, for the "company CA" an admin brings and for broken ones --------------------


@dataclass(frozen=True)
class Issuer:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return Issuer(key, cert)


def make_leaf(ca: Issuer, *, days: float = 30, start_days: float = -1) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    names = [x509.DNSName(APPLIANCE_HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder().subject_name(_name(APPLIANCE_HOST)).issuer_name(ca.cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + timedelta(days=start_days)).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )  # fmt: skip
    return Issuer(key, cert)


def write_pem(path: Path, item: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    if isinstance(item, x509.Certificate):
        path.write_bytes(item.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(item.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))  # fmt: skip
        path.chmod(0o600)
    return path


def spki_hash(pem: bytes) -> str:
    """What Chromium's --ignore-certificate-errors-spki-list takes: base64 SHA-256 of the key's SPKI."""
    der = x509.load_pem_x509_certificate(pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


# -- the appliance over HTTPS with its own CA ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served(kdc: LabKdc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabAppliance]:
    lab = start_appliance(kdc, tmp_path_factory.mktemp("tls"), timeout=120, settings=TLS)
    added = lab.drover("user", "add", ADMIN, "--role", "admin")
    assert added.returncode == 0, added.stderr
    yield lab
    lab.stop()


@pytest.fixture(scope="module")
def wrong_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pem(tmp_path_factory.mktemp("wrong") / "wrong-ca.pem", make_ca("not the appliance").cert)


def test_the_api_answers_over_https_with_the_appliances_ca_and_hsts(served: LabAppliance) -> None:
    assert served.local_url.startswith("https://")
    own_ca = ssl.create_default_context(cafile=str(served.ca_file))
    answer = httpx.get(f"{served.local_url}/api/v1/health", verify=own_ca)
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    assert answer.headers["strict-transport-security"] == "max-age=31536000"
    # The certificate is the one the node service presents, issued by the CA the boot service publishes.
    pem = served.ca_file.read_text()
    assert Pki(served.ca_file.parent).ca_pem() == pem
    # Plain HTTP to the HTTPS port gets no answer at all, let alone a page.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{served.port}/api/v1/health", timeout=5)


def test_a_kerberos_client_works_over_https_and_a_wrong_ca_is_refused(
    served: LabAppliance, wrong_ca: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRB5_CONFIG", str(served.kdc.krb5_conf))
    ccache = served.kdc.ticket(ADMIN)["KRB5CCNAME"]
    with Client(served.local_url, service_host=APPLIANCE_HOST, ccache=ccache, ca_file=served.ca_file) as api:
        assert api.get("/api/v1/whoami")["roles"] == ["admin"]
    for ca in (wrong_ca, None):  # another CA, and the system's trusted CAs (which never signed ours)
        with (
            Client(served.local_url, service_host=APPLIANCE_HOST, ccache=ccache, ca_file=ca) as api,
            pytest.raises(ApiUntrusted, match="does not vouch") as err,
        ):
            api.get("/api/v1/whoami")
        assert "drover ca export" in err.value.hint
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{served.local_url}/api/v1/health", verify=ssl.create_default_context(cafile=str(wrong_ca)))


def test_the_cli_verifies_the_api_against_its_ca(served: LabAppliance, wrong_ca: Path, tmp_path: Path) -> None:
    exported = served.drover("ca", "export")
    assert exported.returncode == 0 and exported.stdout == served.ca_file.read_text(), exported.stderr
    out = tmp_path / "drover-ca.pem"
    assert served.drover("ca", "export", "--out", str(out)).returncode == 0 and out.read_text() == exported.stdout
    shown = served.drover("ca", "show")
    assert shown.returncode == 0, shown.stderr
    assert "HTTPS with the appliance's own CA" in shown.stdout and "sha256:" in shown.stdout, shown.stdout

    # On the appliance the CLI finds the CA under the state dir; elsewhere --ca or [api] ca_file names it.
    me = served.drover("whoami", principal=ADMIN)
    assert me.returncode == 0 and "admin" in me.stdout, me.stderr
    assert served.drover("--ca", str(out), "whoami", principal=ADMIN).returncode == 0
    refused = served.drover("--ca", str(wrong_ca), "whoami", principal=ADMIN)
    assert refused.returncode == 8, refused.stderr
    first = refused.stderr.splitlines()[0]
    assert first.startswith("drover: error: the drover API at https://") and "does not vouch" in first
    refused = served.drover("whoami", principal=ADMIN, env={"DROVER_API_CA_FILE": str(wrong_ca)})
    assert refused.returncode == 8, refused.stderr
    missing = served.drover("--ca", str(tmp_path / "nope.pem"), "whoami", principal=ADMIN)
    assert missing.returncode == 2 and "nope.pem: cannot use it" in missing.stderr, missing.stderr


def test_chromium_signs_in_over_https_and_gets_a_secure_cookie(served: LabAppliance, tmp_path: Path) -> None:
    served_key = spki_hash((served.ca_file.parent / "server.pem").read_bytes())
    trusted = [f"--ignore-certificate-errors-spki-list={served_key}"]
    url = f"{served.url}/ui/"
    with browser(tmp_path / "trusting", served.kdc.krb5_conf, served.kdc.ticket(ADMIN), trusted) as context:
        page = context.new_page()
        answer = page.goto(url)
        assert answer is not None and answer.url.startswith("https://")
        page.wait_for_selector("h1:has-text('Dashboard')", timeout=20000)
        cookie = next(c for c in context.cookies() if c["name"] == "drover_session")
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert answer.headers.get("strict-transport-security") == "max-age=31536000"
    # A browser that was not told to trust the appliance's certificate refuses the page.
    with browser(tmp_path / "plain", served.kdc.krb5_conf, served.kdc.ticket(ADMIN)) as context:
        page = context.new_page()
        with pytest.raises(Exception, match="ERR_CERT_AUTHORITY_INVALID"):
            page.goto(url)


# -- a certificate the admin provides -----------------------------------------------------------------------


def test_a_provided_certificate_is_served_instead_of_the_appliances(kdc: LabKdc, tmp_path: Path) -> None:
    company = make_ca("company CA")
    leaf = make_leaf(company)
    company_ca = write_pem(tmp_path / "company-ca.pem", company.cert)
    cert, key = write_pem(tmp_path / "web.pem", leaf.cert), write_pem(tmp_path / "web.key", leaf.key)
    settings = {**TLS, "DROVER_API_CERT_FILE": str(cert), "DROVER_API_KEY_FILE": str(key)}
    # DROVER_API_CA_FILE: what this test's clients (the readiness check, the CLI) verify against.
    lab = start_appliance(kdc, tmp_path / "appliance", timeout=120,
                          settings={**settings, "DROVER_API_CA_FILE": str(company_ca)})
    own = kdc.root / "pki" / "ca.pem"
    try:
        ok = httpx.get(f"{lab.local_url}/api/v1/health", verify=ssl.create_default_context(cafile=str(company_ca)))
        assert ok.status_code == 200 and "strict-transport-security" in ok.headers
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{lab.local_url}/api/v1/health", verify=ssl.create_default_context(cafile=str(own)))
        assert lab.drover("user", "add", ADMIN, "--role", "admin").returncode == 0
        me = lab.drover("whoami", principal=ADMIN)
        assert me.returncode == 0, me.stderr
        # With a provided certificate the CLI on the appliance no longer assumes the appliance's own CA.
        unset = lab.drover("whoami", principal=ADMIN, env={"DROVER_API_CA_FILE": ""})
        assert unset.returncode == 8, unset.stderr
        assert lab.drover("--ca", str(own), "whoami", principal=ADMIN).returncode == 8
        assert "provided certificate" in lab.drover("ca", "show").stdout
    finally:
        lab.stop()


def _broken(tmp: Path, case: str) -> tuple[dict[str, str], str]:
    company = make_ca("company CA")
    good, other = make_leaf(company), make_leaf(company)
    cert, key = write_pem(tmp / "web.pem", good.cert), write_pem(tmp / "web.key", good.key)
    if case == "mismatched key":
        return {"DROVER_API_CERT_FILE": str(cert), "DROVER_API_KEY_FILE": str(write_pem(tmp / "o.key", other.key))}, \
            "does not match the certificate"  # fmt: skip
    if case == "expired":
        old = write_pem(tmp / "old.pem", make_leaf(company, days=-1, start_days=-10).cert)
        return {"DROVER_API_CERT_FILE": str(old), "DROVER_API_KEY_FILE": str(key)}, "expired on"
    if case == "not yet valid":
        new = write_pem(tmp / "new.pem", make_leaf(company, start_days=2, days=30).cert)
        return {"DROVER_API_CERT_FILE": str(new), "DROVER_API_KEY_FILE": str(key)}, "not valid before"
    if case == "not PEM":
        (tmp / "junk.pem").write_text("hello\n")
        return {"DROVER_API_CERT_FILE": str(tmp / "junk.pem"), "DROVER_API_KEY_FILE": str(key)}, "not a PEM certificate"
    if case == "key missing":
        return {"DROVER_API_CERT_FILE": str(cert), "DROVER_API_KEY_FILE": str(tmp / "gone.key")}, "no such file"
    if case == "cert alone":
        return {"DROVER_API_CERT_FILE": str(cert)}, "cert_file and key_file go together"
    if case == "plain HTTP off loopback":
        return {"DROVER_API_TLS": "off", "DROVER_API_LISTEN": "0.0.0.0"}, "plain HTTP is for loopback only"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["mismatched key", "expired", "not yet valid", "not PEM", "key missing", "cert alone", "plain HTTP off loopback"],
)
def test_a_bad_provided_certificate_stops_the_start_with_one_line(kdc: LabKdc, tmp_path: Path, case: str) -> None:
    settings, words = _broken(tmp_path, case)
    with pytest.raises(RuntimeError, match="exited with 2") as err:
        start_appliance(kdc, tmp_path / "appliance", timeout=120, settings={**TLS, **settings})
    errors = [line for line in str(err.value).splitlines() if line.startswith("drover: error:")]
    assert len(errors) == 1 and words in errors[0], str(err.value)[-2000:]
    assert "Traceback" not in str(err.value)


# -- the appliance's own server certificate -------------------------------------------------------------


def test_the_own_server_certificate_is_reissued_before_it_ends(tmp_path: Path) -> None:
    cfg = Config(state_dir=tmp_path, kerberos=KerberosConfig(hostname=APPLIANCE_HOST))
    pki = pkimod.ensure(cfg)
    fingerprint, first = pki.fingerprint(), pki.server_cert.read_bytes()
    assert pkimod.ensure(cfg).server_cert.read_bytes() == first  # nothing to do: kept
    # Replace it by one that ends in a week (inside RENEW_BEFORE), signed by the same CA.
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = Issuer(ca_key, x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()))
    ending = make_leaf(ca, days=7)
    write_pem(pki.server_cert, ending.cert)
    write_pem(pki.server_key, ending.key)
    renewed = pkimod.ensure(cfg)
    cert = x509.load_pem_x509_certificate(renewed.server_cert.read_bytes())
    assert cert.not_valid_after_utc > datetime.now(UTC) + timedelta(days=pkimod.SERVER_DAYS - 2)
    assert renewed.fingerprint() == fingerprint  # the CA nodes and browsers pinned is kept
