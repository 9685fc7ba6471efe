"""The appliance's own TLS CA and server certificate for the node-facing HTTPS service.

Nodes carry no pre-shared file: the iPXE kernel command line gives them `drover.ca=sha256:<hex>`,
the SHA-256 of this CA's DER encoding, and they pin the CA they fetch from /boot/ca.pem against it.
Everything is made with `openssl` through run(); keys are 0600 under <state_dir>/pki.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from appliance.config import Config
from appliance.errors import ConfigError
from appliance.runner import run

log = logging.getLogger(__name__)

CA_DAYS = 3650
SERVER_DAYS = 825  # the longest validity clients such as browsers still accept for a leaf
# A server certificate this close to its end is re-issued at the next start (it serves the web UI too).
RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class Pki:
    root: Path

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_names_file(self) -> Path:
        """The names the current server certificate was made for: a change of names re-issues it."""
        return self.root / "server.names"

    def ca_pem(self) -> str:
        return self.ca_cert.read_text()

    def fingerprint(self) -> str:
        """sha256:<hex> of the CA certificate's DER, as the kernel command line carries it."""
        return "sha256:" + der_sha256(self.ca_pem())


def der_sha256(pem: str) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def server_names(cfg: Config) -> list[str]:
    """The appliance's hostname first, then [nodes] extra_names, without duplicates."""
    names = [cfg.hostname]
    for item in cfg.nodes.extra_names.split(","):
        extra = item.strip()
        if extra and extra not in names:
            names.append(extra)
    return names


def _san(names: list[str]) -> str:
    entries = []
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not name.replace("-", "").replace(".", "").isalnum():
                raise ConfigError(f"[nodes] extra_names: {name!r} is neither a host name nor an IP address") from None
            entries.append(f"DNS:{name}")
        else:
            entries.append(f"IP:{name}")
    return ",".join(entries)


def _key(path: Path) -> list[str]:
    # EC P-256: small, fast handshakes for hundreds of heartbeating nodes, supported everywhere.
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(path)]


def ensure(cfg: Config) -> Pki:
    """Create the CA once and (re)issue the server certificate when missing or its names changed."""
    pki = Pki(cfg.pki_dir)
    pki.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    old = os.umask(0o077)  # keys are born 0600: there is never a moment they are world-readable
    try:
        if not (pki.ca_key.is_file() and pki.ca_cert.is_file()):
            _make_ca(pki, cfg.hostname)
        names = server_names(cfg)
        current = pki.server_names_file.read_text().split() if pki.server_names_file.is_file() else []
        if current != names or not (pki.server_key.is_file() and pki.server_cert.is_file()) or _ending(pki):
            _make_server(pki, names)
    finally:
        os.umask(old)
    return pki


def _ending(pki: Pki) -> bool:
    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    ending = cert.not_valid_after_utc - RENEW_BEFORE <= datetime.now(UTC)
    if ending:
        log.info("server certificate valid until %s: re-issuing it", cert.not_valid_after_utc)
    return ending


def _make_ca(pki: Pki, hostname: str) -> None:
    run(
        [
            "openssl", "req", "-x509",
            *_key(pki.ca_key),
            "-out", str(pki.ca_cert),
            "-days", str(CA_DAYS),
            "-subj", f"/O=drover/CN=drover CA {hostname}",
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        timeout=60,
    )  # fmt: skip
    os.chmod(pki.ca_key, 0o600)
    os.chmod(pki.ca_cert, 0o644)  # public: nodes download it
    log.info("created the appliance CA in %s (%s)", pki.root, pki.fingerprint())


def _make_server(pki: Pki, names: list[str]) -> None:
    csr = pki.root / "server.csr"
    ext = pki.root / "server.ext"
    ext.write_text(
        f"subjectAltName={_san(names)}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    tmp_key = pki.server_key.with_name("server.key.new")
    tmp_cert = pki.server_cert.with_name("server.pem.new")
    run(["openssl", "req", "-new", *_key(tmp_key), "-out", str(csr), "-subj", f"/CN={names[0]}"], timeout=60)
    run(
        [
            "openssl", "x509", "-req",
            "-in", str(csr),
            "-CA", str(pki.ca_cert),
            "-CAkey", str(pki.ca_key),
            "-CAcreateserial",
            "-days", str(SERVER_DAYS),
            "-extfile", str(ext),
            "-out", str(tmp_cert),
        ],
        timeout=60,
    )  # fmt: skip
    os.chmod(tmp_key, 0o600)
    # Key and certificate replaced together, the key first: a reader never pairs a new cert with an old key
    # for longer than the two renames.
    tmp_key.replace(pki.server_key)
    tmp_cert.replace(pki.server_cert)
    pki.server_names_file.write_text("\n".join(names) + "\n")
    csr.unlink(missing_ok=True)
    log.info("issued the node-facing server certificate for %s", ", ".join(names))
