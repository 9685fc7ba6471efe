"""The text of krb5.conf, kdc.conf and kadm5.acl for a realm drover runs or joins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RealmSpec:
    realm: str
    kdc_host: str
    kdc_port: int
    kadmin_port: int

    @property
    def kdc(self) -> str:
        return f"{self.kdc_host}:{self.kdc_port}"


def krb5_conf(spec: RealmSpec) -> str:
    """Client (and acceptor) libdefaults that work without DNS: every name is what the caller said.

    ignore_acceptor_hostname: libvirtd hands SASL no server name, so an acceptor must take any
    principal in its keytab instead of looking for one named after this machine's hostname.
    """
    return f"""[libdefaults]
    default_realm = {spec.realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    ignore_acceptor_hostname = true
    udp_preference_limit = 1
    forwardable = true
    ticket_lifetime = 10h
    renew_lifetime = 7d

[realms]
    {spec.realm} = {{
        kdc = {spec.kdc}
        admin_server = {spec.kdc_host}:{spec.kadmin_port}
    }}
"""


def kdc_conf(spec: RealmSpec, root: Path) -> str:
    return f"""[kdcdefaults]
    kdc_listen = {spec.kdc}
    kdc_tcp_listen = {spec.kdc}

[realms]
    {spec.realm} = {{
        database_name = {root / "principal"}
        key_stash_file = {root / "stash"}
        acl_file = {root / "kadm5.acl"}
        admin_keytab = {root / "kadm5.keytab"}
        kadmind_port = {spec.kadmin_port}
        kadmind_listen = {spec.kdc_host}:{spec.kadmin_port}
        max_life = 10h 0m 0s
        max_renewable_life = 7d 0h 0m 0s
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }}

[logging]
    kdc = FILE:{root / "krb5kdc.log"}
    admin_server = FILE:{root / "kadmind.log"}
"""


def kadm5_acl(spec: RealmSpec, admin_principal: str) -> str:
    return f"{admin_principal}@{spec.realm} *\n"
