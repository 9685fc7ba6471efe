"""Lab fixture: a throwaway MIT KDC on loopback, built with the appliance's own embedded-realm code.

`kdc` is session-scoped (a realm costs ~0.2 s, but every test sharing one keeps the suite quick);
`kdc.ticket(name)` returns an environment whose KRB5CCNAME holds a fresh TGT for that principal.

`start_site_realm()` is a realm as a site serves it, for drover's external mode: krb5kdc and kadmind
as their own processes, a kadm5.acl that gives drover's admin principal only what drover needs, and
that principal's keytab as the one thing drover gets (its state dir is elsewhere, without the database).
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.config import KerberosMode
from appliance.kerberos import profile
from appliance.kerberos.realm import Realm, RealmFiles
from appliance.kerberos.ticket import kinit_keytab
from appliance.runner import spawn
from tests.lab.net import free_port, free_tcp_udp_port, wait_listening
from tests.lab.proc import terminate

REALM = "LAB.EXAMPLE.TEST"
APPLIANCE_HOST = "appliance.example.test"


@dataclass
class LabKdc:
    realm: Realm
    root: Path
    process: subprocess.Popen[bytes]
    _count: Iterator[int] = field(default_factory=itertools.count)

    @property
    def env(self) -> dict[str, str]:
        """KRB5_CONFIG (+ KDC profile) for any Kerberos-using child; no credential cache chosen."""
        return self.realm.env()

    @property
    def krb5_conf(self) -> Path:
        return self.realm.files.krb5_conf

    def principal(self, name: str) -> str:
        kadmin = self.realm.kadmin()
        kadmin.add(name)
        return kadmin.qualify(name)

    def keytab(self, name: str, path: Path | None = None) -> Path:
        """A keytab for `name` (created if needed), keeping the principal's current keys."""
        principal = self.principal(name)
        path = path or self.root / "keytabs" / (principal.replace("/", "_") + ".keytab")
        if not path.is_file():
            self.realm.kadmin().keytab([principal], path, keep_keys=True)
        return path

    def ticket(self, name: str) -> dict[str, str]:
        """Environment with a private ccache holding a TGT for `name`."""
        principal = self.principal(name)
        ccache = self.root / "ccaches" / f"{principal.replace('/', '_')}.{next(self._count)}"
        ccache.parent.mkdir(exist_ok=True)
        return kinit_keytab(principal, self.keytab(principal), ccache, self.env)

    def no_ticket(self) -> dict[str, str]:
        """Environment with an empty (missing) ccache: how a user without credentials looks."""
        return {**self.env, "KRB5CCNAME": f"FILE:{self.root / 'ccaches' / f'none.{next(self._count)}'}"}


def start_kdc(root: Path, hostname: str = APPLIANCE_HOST, realm_name: str = REALM) -> LabKdc:
    spec = profile.RealmSpec(realm_name, "127.0.0.1", free_tcp_udp_port(), free_port())
    realm = Realm(spec, RealmFiles(root / "realm"), hostname, KerberosMode.EMBEDDED, "drover/admin")
    realm.create()
    proc = realm.spawn_foreground()
    try:
        wait_listening(spec.kdc_host, spec.kdc_port, timeout=10)
    except TimeoutError:
        proc.kill()
        raise
    return LabKdc(realm, root, proc)


@pytest.fixture(scope="session")
def kdc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabKdc]:
    lab = start_kdc(tmp_path_factory.mktemp("kdc"))
    yield lab
    lab.process.terminate()
    lab.process.wait(timeout=10)


# drover's admin principal in a site realm, and the one kadm5.acl line it needs (README: "existing realm"):
# add (a), delete (d), a fresh key on extraction (ktadd randomizes: c, "change-password"; it also reads the
# principal: i, "get"), on libvirt/* only. Nothing for other principals, no listing, no -norandkey (e).
SITE_ADMIN = "drover/admin"
SITE_ACL = "{admin}@{realm}  adci  libvirt/*@{realm}\n"


@dataclass
class SiteRealm:
    """krb5kdc + kadmind on loopback, run as a site runs them. `kdc` is the KDC host's side (database,
    kadmin.local: the site admin's tools); drover reaches it only through kadmind with `admin_keytab`."""

    kdc: LabKdc
    kadmind: subprocess.Popen[bytes]
    admin_keytab: Path
    kpasswd_port: int

    @property
    def realm(self) -> str:
        return self.kdc.realm.name

    @property
    def kadmin_port(self) -> int:
        return self.kdc.realm.spec.kadmin_port

    @property
    def kadmind_log(self) -> Path:
        return self.kdc.realm.files.root / "kadmind.log"

    def acl(self, rights: str = "adci", target: str = "libvirt/*") -> None:
        """Rewrite kadm5.acl for drover's admin principal and restart kadmind (it reads the file at start)."""
        line = f"{SITE_ADMIN}@{self.realm}  {rights}  {target}@{self.realm}\n" if rights else ""
        self.kdc.realm.files.acl.write_text(line)
        self.restart_kadmind()

    def stop_kadmind(self) -> None:
        terminate(self.kadmind)

    def restart_kadmind(self) -> None:
        self.stop_kadmind()
        self.kadmind = _spawn_kadmind(self.kdc, self.kpasswd_port)

    def export(self, principal: str, path: Path) -> Path:
        """What the site admin does on the KDC: `kadmin.local ktadd -norandkey` (current keys), file 0600."""
        name = self.kdc.principal(principal)
        self.kdc.realm.kadmin().keytab([name], path, keep_keys=True)
        return path

    def exists(self, principal: str) -> bool:
        return self.kdc.realm.kadmin().exists(principal)

    def stop(self) -> None:
        self.stop_kadmind()
        terminate(self.kdc.process)


def _spawn_kadmind(kdc: LabKdc, kpasswd_port: int) -> subprocess.Popen[bytes]:
    """kadmind in the foreground on the realm's kadmind port; its kpasswd service on a free port, not 464."""
    files, spec = kdc.realm.files, kdc.realm.spec
    profile_text = files.kdc_conf.read_text().replace(
        f"kadmind_port = {spec.kadmin_port}\n",
        f"kadmind_port = {spec.kadmin_port}\n        kpasswd_listen = {spec.kdc_host}:{kpasswd_port}\n",
    )
    site_profile = files.root / "kadmind.conf"
    site_profile.write_text(profile_text)
    env = {**kdc.env, "KRB5_KDC_PROFILE": str(site_profile)}
    proc = spawn(["kadmind", "-nofork", "-P", str(files.root / "kadmind.pid")], env=env,
                 log_file=files.root / "kadmind.stdout")  # fmt: skip
    try:
        wait_listening(spec.kdc_host, spec.kadmin_port, timeout=10)
    except TimeoutError:
        proc.kill()
        raise
    return proc


def start_site_realm(root: Path, realm_name: str = "SITE.EXAMPLE.TEST") -> SiteRealm:
    """A fresh site realm with SITE_ADMIN, the narrow kadm5.acl and kadmind; the admin keytab under root."""
    kdc = start_kdc(root / "kdc", realm_name=realm_name)
    try:
        admin_keytab = root / "drover-admin.keytab"
        kdc.realm.kadmin().add(SITE_ADMIN)
        kdc.realm.kadmin().keytab([SITE_ADMIN], admin_keytab, keep_keys=True)
        kdc.realm.files.acl.write_text(SITE_ACL.format(admin=SITE_ADMIN, realm=realm_name))
        kpasswd_port = free_tcp_udp_port()
        return SiteRealm(kdc, _spawn_kadmind(kdc, kpasswd_port), admin_keytab, kpasswd_port)
    except BaseException:
        terminate(kdc.process)
        raise


def external_state(site: SiteRealm, state_dir: Path, hostname: str = APPLIANCE_HOST) -> dict[str, str]:
    """An appliance state dir set up as README's "existing realm" steps say, and the DROVER_* settings for it.

    The realm's krb5.conf, HTTP/<hostname> and drover@REALM keytabs exported by the site admin, the admin
    keytab beside them; nothing of the KDC's (database, stash, kdc.conf) is in reach of the appliance.
    """
    realm_dir = state_dir / "realm"
    realm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (realm_dir / "krb5.conf").write_text(site.kdc.krb5_conf.read_text())
    site.export(f"HTTP/{hostname}", realm_dir / "http.keytab")
    site.export("drover", realm_dir / "appliance.keytab")
    admin_keytab = state_dir / "drover-admin.keytab"
    admin_keytab.write_bytes(site.admin_keytab.read_bytes())
    os.chmod(admin_keytab, 0o600)
    spec = site.kdc.realm.spec
    return {
        "DROVER_STATE_DIR": str(state_dir),
        "DROVER_KERBEROS_MODE": "external",
        "DROVER_KERBEROS_REALM": spec.realm,
        "DROVER_KERBEROS_HOSTNAME": hostname,
        "DROVER_KERBEROS_KDC_HOST": spec.kdc_host,
        "DROVER_KERBEROS_KDC_PORT": str(spec.kdc_port),
        "DROVER_KERBEROS_KADMIN_PORT": str(spec.kadmin_port),
        "DROVER_KERBEROS_ADMIN_PRINCIPAL": SITE_ADMIN,
        "DROVER_KERBEROS_ADMIN_KEYTAB": str(admin_keytab),
    }
