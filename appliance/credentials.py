"""A node's Kerberos identity: `libvirt/<fqdn>@REALM` made through kadmin, handed over as keytab + krb5.conf."""

from __future__ import annotations

import base64
import logging
import tempfile
from pathlib import Path

from appliance.config import Config
from appliance.errors import KerberosError, UsageError
from appliance.kerberos import profile
from appliance.kerberos.kadmin import check_principal
from appliance.kerberos.realm import APPLIANCE_CLIENT, Realm
from nodeagent import wire

# Who a node's libvirtd lets in over SASL GSSAPI: the appliance's own principal (its default-realm name).
# Sent with the credentials, and on the iPXE kernel line so libvirtd can start configured at boot.
LIBVIRT_ALLOWED_USERS: tuple[str, ...] = (APPLIANCE_CLIENT,)

log = logging.getLogger(__name__)


def service_principal(fqdn: str, realm: str) -> str:
    if not wire.valid_hostname(fqdn) or "." not in fqdn:
        raise UsageError(f"facts.fqdn: {fqdn!r} is not a fully qualified host name", "the node needs an FQDN")
    return check_principal(f"libvirt/{fqdn}@{realm}")


def kdc_address(cfg: Config, reached_as: str) -> str:
    """host:port of the KDC for the node: configured, else the name the node reached us by + the KDC port."""
    if cfg.nodes.kdc_address:
        return cfg.nodes.kdc_address
    host = reached_as or cfg.hostname
    return f"{host}:{cfg.kerberos.kdc_port}"


def node_krb5_conf(cfg: Config, realm: str, reached_as: str) -> str:
    host, _, port = kdc_address(cfg, reached_as).rpartition(":")
    spec = profile.RealmSpec(realm, host, int(port), cfg.kerberos.kadmin_port)
    return profile.krb5_conf(spec)


def issue(cfg: Config, realm: Realm, fqdn: str, reached_as: str) -> wire.Credentials:
    """Create the node's principal if needed and export a fresh key for it.

    A fresh key on every issue: a stateless node has lost its keytab on reboot, and the old key (which
    might have leaked with the old RAM) stops working the moment the new one exists.
    """
    principal = service_principal(fqdn, realm.name)
    kadmin = realm.kadmin()
    created = kadmin.add(principal)
    try:
        with tempfile.TemporaryDirectory(prefix="drover-keytab-") as tmp:
            path = kadmin.keytab([principal], Path(tmp) / "node.keytab")
            keytab = path.read_bytes()
    except KerberosError as exc:
        # The caller's transaction rolls the host back; the principal made for it must go too.
        if created:
            try:
                kadmin.delete(principal)
            except KerberosError as undo:
                raise KerberosError(
                    f"{exc.message}; and {principal}, created for this host, could not be deleted: {undo.message}",
                    f"delete it on the KDC (kadmin.local delprinc {principal}); {exc.hint}",
                ) from exc
            log.warning("took back principal %s: its keytab could not be issued", principal)
        raise
    log.info("issued a keytab for %s (%d bytes)", principal, len(keytab))
    return wire.Credentials(
        principal=principal,
        realm=realm.name,
        krb5_conf=node_krb5_conf(cfg, realm.name, reached_as),
        keytab_b64=base64.b64encode(keytab).decode("ascii"),
        allowed_users=LIBVIRT_ALLOWED_USERS,
    )
