"""Lab fixture: a throwaway MIT KDC on loopback, built with the appliance's own embedded-realm code.

`kdc` is session-scoped (a realm costs ~0.2 s, but every test sharing one keeps the suite quick);
`kdc.ticket(name)` returns an environment whose KRB5CCNAME holds a fresh TGT for that principal.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.config import KerberosMode
from appliance.kerberos import profile
from appliance.kerberos.realm import Realm, RealmFiles
from appliance.kerberos.ticket import kinit_keytab
from tests.lab.net import free_port, wait_listening

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
    spec = profile.RealmSpec(realm_name, "127.0.0.1", free_port(), free_port())
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
