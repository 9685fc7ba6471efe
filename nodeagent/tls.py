"""Pin the appliance's CA: fetch it over plain HTTP, check its SHA-256 against the kernel command line.

`GET <appliance>/boot/ca.pem` returns one PEM certificate; its DER's SHA-256 must equal `drover.ca`.
The HTTPS node API is, in order: `drover.api=` on the command line, the response's
`X-Drover-Node-Api: https://host:port` header, else https on the same host at the appliance's default
node port 8443. The pinned CA is then the *only* trust anchor of the SSL context, with
hostname checking on: a mismatch is refused before a single byte of identify is sent.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

log = logging.getLogger(__name__)

CA_PATH = "/boot/ca.pem"
API_HEADER = "X-Drover-Node-Api"
_MAX_CA_BYTES = 64 * 1024


class PinError(RuntimeError):
    """The CA the network handed us is not the one the kernel command line pinned. Never retried silently."""


class FetchError(RuntimeError):
    """The CA could not be fetched (network, HTTP status, not a single PEM certificate)."""


@dataclass(frozen=True)
class PinnedCa:
    pem: str
    sha256: str
    api_url: str  # https base URL of the node API

    def context(self) -> ssl.SSLContext:
        return client_context(self.pem)


def client_context(ca_pem: str) -> ssl.SSLContext:
    """Verify against ca_pem alone (no system store: cadata= keeps create_default_context from loading it)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def fingerprint(pem: str) -> str:
    """SHA-256 (hex) of the DER of exactly one PEM certificate."""
    if pem.count("-----BEGIN CERTIFICATE-----") != 1:
        raise FetchError("expected exactly one PEM certificate")
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.strip() + "\n")
    except ValueError as exc:
        raise FetchError(f"not a PEM certificate: {exc}") from None
    return hashlib.sha256(der).hexdigest()


DEFAULT_NODE_PORT = 8443  # appliance [nodes] port


def default_api_url(appliance_url: str) -> str:
    parts = urllib.parse.urlsplit(appliance_url)
    if parts.scheme == "https":
        return appliance_url.rstrip("/")
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"https://{host}:{DEFAULT_NODE_PORT}"


def fetch_ca(appliance_url: str, expected_sha256: str, timeout: float = 10.0, api_url: str = "") -> PinnedCa:
    """Fetch, check the pin, and return the CA with the API URL; PinError on any mismatch."""
    if not expected_sha256:
        raise PinError("no drover.ca=sha256:<hex> on the kernel command line: refusing to trust any CA")
    url = appliance_url.rstrip("/") + CA_PATH
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # plain http by design: pinned below
            body = resp.read(_MAX_CA_BYTES + 1)
            api_header = resp.headers.get(API_HEADER, "")
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"GET {url}: {exc}") from None
    if len(body) > _MAX_CA_BYTES:
        raise FetchError(f"GET {url}: larger than {_MAX_CA_BYTES} bytes")
    pem = body.decode("ascii", "replace")
    actual = fingerprint(pem)
    if not hmac.compare_digest(actual, expected_sha256.lower()):
        log.error(
            "CA from %s has SHA-256 %s but the kernel command line pins %s: refusing it", url, actual, expected_sha256
        )
        raise PinError(f"CA fingerprint mismatch from {url}: got sha256:{actual}, pinned sha256:{expected_sha256}")
    api_url = (api_url or api_header.strip() or default_api_url(appliance_url)).rstrip("/")
    if urllib.parse.urlsplit(api_url).scheme != "https":
        raise FetchError(f"{API_HEADER}: not an https URL: {api_url!r}")
    log.info("appliance CA sha256:%s pinned; node API at %s", actual, api_url)
    return PinnedCa(pem, actual, api_url)
