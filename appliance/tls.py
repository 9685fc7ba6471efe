"""HTTPS for the web UI and REST API: which certificate `drover serve` presents, checked before it listens.

The appliance's own CA (appliance.pki) issues the certificate unless the admin names a PEM certificate and
key in [api] cert_file / key_file. A provided pair that cannot serve (unreadable, not PEM, a key that does not
match, expired or not yet valid) stops the start with one line saying which and why: a server that starts
and then fails every handshake is harder to diagnose than one that refuses to start.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from appliance.config import Config, TlsMode, is_loopback
from appliance.errors import ConfigError
from appliance.pki import Pki

log = logging.getLogger(__name__)

# Strict-Transport-Security on every HTTPS answer: a year, as browsers' preload lists expect.
HSTS = "max-age=31536000"


@dataclass(frozen=True)
class ServerCert:
    cert: Path
    key: Path
    provided: bool  # the admin's own, rather than issued by the appliance's CA
    not_after: datetime


def not_after(cert: Path) -> datetime:
    """The end of validity of the first (leaf) certificate in a PEM file."""
    return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc


def _read_leaf(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"[api] cert_file {path}: cannot read: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"[api] cert_file {path}: not a PEM certificate", "give a PEM certificate chain") from None


def check_pair(cert: Path, key: Path, *, now: datetime | None = None) -> datetime:
    """The certificate's end of validity, or ConfigError naming what is wrong with the pair."""
    leaf = _read_leaf(cert)
    now = now or datetime.now(UTC)
    if leaf.not_valid_after_utc <= now:
        raise ConfigError(
            f"[api] cert_file {cert}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", "renew it"
        )
    if leaf.not_valid_before_utc > now:
        raise ConfigError(f"[api] cert_file {cert}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if not key.is_file():
        raise ConfigError(f"[api] key_file {key}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        what = "does not match the certificate" if "mismatch" in str(exc).lower() else f"unusable ({reason})"
        raise ConfigError(f"[api] key_file {key}: {what}", f"give the private key of {cert}") from None
    except OSError as exc:
        raise ConfigError(f"[api] key_file {key}: cannot read: {exc.strerror}") from None
    return leaf.not_valid_after_utc


def server_cert(cfg: Config, pki: Pki) -> ServerCert | None:
    """What the API listener presents: None for plain HTTP (loopback only), else a checked certificate and key."""
    api = cfg.api
    if not cfg.api_tls:
        if not is_loopback(api.listen):
            raise ConfigError(
                f"[api] tls = off while listening on {api.listen}: plain HTTP is for loopback only",
                "leave [api] tls at auto, or listen on 127.0.0.1",
            )
        if api.cert_file or api.key_file:
            log.warning("[api] cert_file/key_file ignored: [api] tls is %s on %s", api.tls, api.listen)
        return None
    if bool(api.cert_file) != bool(api.key_file):
        raise ConfigError("[api] cert_file and key_file go together", "set both, or neither for the appliance's CA")
    if api.cert_file:
        cert, key = Path(api.cert_file).expanduser(), Path(api.key_file).expanduser()
        return ServerCert(cert, key, provided=True, not_after=check_pair(cert, key))
    return ServerCert(pki.server_cert, pki.server_key, provided=False, not_after=not_after(pki.server_cert))


def describe(cfg: Config) -> str:
    """One line for the log and `drover ca show`: how the API is served."""
    if not cfg.api_tls:
        return f"plain HTTP on loopback ([api] tls = {cfg.api.tls})"
    if cfg.api.cert_file:
        return f"HTTPS with the provided certificate {cfg.api.cert_file}"
    mode = "" if cfg.api.tls is TlsMode.AUTO else f" ([api] tls = {cfg.api.tls})"
    return f"HTTPS with the appliance's own CA ({cfg.pki_dir / 'ca.pem'}){mode}"
