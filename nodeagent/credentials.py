"""Install the Kerberos identity the appliance issued: krb5.conf (0644) and the keytab (0600), atomically."""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from pathlib import Path

from nodeagent import wire
from nodeagent.files import same_content, write_atomic

log = logging.getLogger(__name__)

KEYTAB_MODE = 0o600
KRB5_CONF_MODE = 0o644
EMPTY_KEYTAB = b"\x05\x02"  # the MIT keytab header and no entries


class CredentialsError(ValueError):
    """The credentials in a response cannot be installed (bad base64, not a keytab)."""


@dataclass(frozen=True)
class CredentialPaths:
    krb5_conf: Path = Path("/etc/krb5.conf")
    keytab: Path = Path("/etc/libvirt/krb5.tab")

    def under(self, root: Path) -> CredentialPaths:
        return CredentialPaths(root / self.krb5_conf.relative_to("/"), root / self.keytab.relative_to("/"))


def keytab_bytes(creds: wire.Credentials) -> bytes:
    try:
        data = base64.b64decode(creds.keytab_b64, validate=True)
    except binascii.Error as exc:
        raise CredentialsError(f"keytab_b64: not base64: {exc}") from None
    if data[:2] != EMPTY_KEYTAB:  # MIT keytab file format version 0x0502
        raise CredentialsError("keytab_b64: not a version 2 keytab")
    return data


def installed(creds: wire.Credentials, paths: CredentialPaths) -> bool:
    """True when both files already hold exactly these credentials with the right modes."""
    return same_content(paths.keytab, keytab_bytes(creds), KEYTAB_MODE) and same_content(
        paths.krb5_conf, creds.krb5_conf.encode(), KRB5_CONF_MODE
    )


def install(creds: wire.Credentials, paths: CredentialPaths) -> bool:
    """Write what differs; return True when anything changed."""
    keytab = keytab_bytes(creds)
    changed = False
    if not same_content(paths.krb5_conf, creds.krb5_conf.encode(), KRB5_CONF_MODE):
        write_atomic(paths.krb5_conf, creds.krb5_conf.encode(), KRB5_CONF_MODE)
        changed = True
    if not same_content(paths.keytab, keytab, KEYTAB_MODE):
        write_atomic(paths.keytab, keytab, KEYTAB_MODE)
        changed = True
    if changed:
        log.info("installed keytab for %s at %s (0600) and %s", creds.principal, paths.keytab, paths.krb5_conf)
    return changed


def ensure_keytab(path: Path) -> bool:
    """An empty keytab where there is none, so libvirtd's SASL GSSAPI plugin loads (it refuses to start
    without a readable keytab file) before enrolment brings the real one. True when one was written."""
    if path.exists():
        return False
    write_atomic(path, EMPTY_KEYTAB, KEYTAB_MODE)
    return True
