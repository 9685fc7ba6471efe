"""The realm the appliance uses: an embedded MIT KDC under the state dir, or an existing realm.

The embedded realm keeps everything under <state_dir>/realm: the KDC database and stash, its
configuration, the KDC's log and pid file, and the appliance's keytabs. Nothing global changes;
every Kerberos call drover makes gets KRB5_CONFIG (and KRB5_KDC_PROFILE) pointing there.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Config, KerberosMode
from appliance.errors import KerberosError
from appliance.kerberos import profile
from appliance.kerberos.kadmin import Kadmin
from appliance.runner import run, spawn

log = logging.getLogger(__name__)

# Client principal the appliance uses toward every node's libvirtd. SASL strips the realm, so this
# bare name is what nodes put in sasl_allowed_username_list.
APPLIANCE_CLIENT = "drover"
# The first administrator of an embedded realm; `drover realm init` gives it the super_admin role.
FIRST_ADMIN = "admin"


@dataclass(frozen=True)
class RealmFiles:
    root: Path

    @property
    def krb5_conf(self) -> Path:
        return self.root / "krb5.conf"

    @property
    def kdc_conf(self) -> Path:
        return self.root / "kdc.conf"

    @property
    def acl(self) -> Path:
        return self.root / "kadm5.acl"

    @property
    def database(self) -> Path:
        return self.root / "principal"

    @property
    def pidfile(self) -> Path:
        return self.root / "krb5kdc.pid"

    @property
    def http_keytab(self) -> Path:
        return self.root / "http.keytab"

    @property
    def appliance_keytab(self) -> Path:
        """Client keytab for APPLIANCE_CLIENT: how the host browser and task engine reach libvirtd."""
        return self.root / "appliance.keytab"

    @property
    def admin_keytab(self) -> Path:
        return self.root / "admin.keytab"

    @property
    def ccache(self) -> Path:
        return self.root / "appliance.ccache"


class Realm:
    """A Kerberos realm as the appliance sees it; `from_config()` builds the embedded or the external one."""

    def __init__(
        self,
        spec: profile.RealmSpec,
        files: RealmFiles,
        hostname: str,
        mode: KerberosMode,
        admin_principal: str,
        admin_keytab: Path | None = None,
    ) -> None:
        self.spec = spec
        self.files = files
        self.hostname = hostname
        self.mode = mode
        self.admin_principal = admin_principal
        self._admin_keytab = admin_keytab

    @classmethod
    def from_config(cls, cfg: Config) -> Realm:
        k = cfg.kerberos
        spec = profile.RealmSpec(k.realm, k.kdc_host, k.kdc_port, k.kadmin_port)
        keytab = Path(k.admin_keytab) if k.admin_keytab else None
        return cls(spec, RealmFiles(cfg.realm_dir), cfg.hostname, k.mode, k.admin_principal, keytab)

    @property
    def name(self) -> str:
        return self.spec.realm

    @property
    def admin_keytab(self) -> Path | None:
        """External realms: the keytab of admin_principal, drover's only credential toward kadmind."""
        return self._admin_keytab

    @property
    def http_principal(self) -> str:
        return f"HTTP/{self.hostname}@{self.name}"

    @property
    def appliance_principal(self) -> str:
        return f"{APPLIANCE_CLIENT}@{self.name}"

    def env(self) -> dict[str, str]:
        """The environment every Kerberos-using child of the appliance runs with."""
        env = {"KRB5_CONFIG": str(self.files.krb5_conf)}
        if self.mode is KerberosMode.EMBEDDED:
            env["KRB5_KDC_PROFILE"] = str(self.files.kdc_conf)
        elif not self.files.krb5_conf.is_file() and "KRB5_CONFIG" in os.environ:
            env["KRB5_CONFIG"] = os.environ["KRB5_CONFIG"]
        return env

    def kadmin(self) -> Kadmin:
        if self.mode is KerberosMode.EMBEDDED:
            if not self.files.database.is_file():
                raise KerberosError("the embedded realm does not exist yet", "run `drover realm init`")
            return Kadmin.local(self.env(), self.name)
        if self._admin_keytab is None:
            raise KerberosError(
                "an external realm needs an admin keytab", "set [kerberos] admin_keytab (DROVER_KERBEROS_ADMIN_KEYTAB)"
            )
        self.require_kdc()
        return Kadmin.remote(self.env(), self.name, self.admin_principal, self._admin_keytab)

    # --- the embedded KDC's life cycle ---------------------------------------------------------

    def write_profiles(self) -> None:
        self.files.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.files.krb5_conf.write_text(profile.krb5_conf(self.spec))
        if self.mode is KerberosMode.EMBEDDED:
            self.files.kdc_conf.write_text(profile.kdc_conf(self.spec, self.files.root))
            self.files.acl.write_text(profile.kadm5_acl(self.spec, self.admin_principal))

    def create(self) -> bool:
        """Create the embedded realm and the appliance's principals and keytabs; False if it existed."""
        if self.mode is not KerberosMode.EMBEDDED:
            raise KerberosError("`realm init` creates an embedded realm; this appliance uses an external one")
        self.write_profiles()
        created = False
        if not self.files.database.is_file():
            # The master password only protects the stash on this disk; nobody needs to know it.
            run(
                ["kdb5_util", "create", "-s", "-r", self.name, "-P", secrets.token_urlsafe(24)],
                env=self.env(),
                timeout=120,
            )
            created = True
        self.issue_appliance_keytabs(fresh=created)
        return created

    def issue_appliance_keytabs(self, fresh: bool) -> None:
        """Principals the appliance itself needs: HTTP/ for SPNEGO, its libvirt client, the first admin."""
        kadmin = self.kadmin()
        for name in (self.http_principal, self.appliance_principal, f"{FIRST_ADMIN}@{self.name}"):
            kadmin.add(name)
        wanted = (
            (self.files.http_keytab, self.http_principal),
            (self.files.appliance_keytab, self.appliance_principal),
            (self.files.admin_keytab, f"{FIRST_ADMIN}@{self.name}"),
        )
        for path, principal in wanted:
            if fresh or not path.is_file():
                kadmin.keytab([principal], path, keep_keys=self.mode is KerberosMode.EMBEDDED)

    def pid(self) -> int | None:
        try:
            pid = int(self.files.pidfile.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def kdc_answers(self, timeout: float = 0.5) -> bool:
        try:
            with socket.create_connection((self.spec.kdc_host, self.spec.kdc_port), timeout=timeout):
                return True
        except OSError:
            return False

    def require_kdc(self) -> None:
        if not self.kdc_answers(timeout=2.0):
            embedded = self.mode is KerberosMode.EMBEDDED
            fix = "start it with `drover realm start`" if embedded else "check the realm's KDC"
            raise KerberosError(f"the KDC at {self.spec.kdc} is not answering", fix)

    def start(self, wait: float = 10.0) -> int:
        """Start krb5kdc as a daemon (pid file under the realm dir); return its pid."""
        if self.mode is not KerberosMode.EMBEDDED:
            raise KerberosError("only an embedded realm's KDC is started by drover")
        if not self.files.database.is_file():
            raise KerberosError("the embedded realm does not exist yet", "run `drover realm init`")
        running = self.pid()
        if running is not None and self.kdc_answers():
            return running
        if self.kdc_answers():
            raise KerberosError(
                f"port {self.spec.kdc} is taken by another process",
                "stop it or set [kerberos] kdc_port (DROVER_KERBEROS_KDC_PORT)",
            )
        self.write_profiles()
        run(["krb5kdc", "-P", str(self.files.pidfile)], env=self.env(), timeout=30)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            pid = self.pid()
            if pid is not None and self.kdc_answers():
                log.info("KDC for %s listening on %s (pid %s)", self.name, self.spec.kdc, pid)
                return pid
            time.sleep(0.05)
        raise KerberosError(f"krb5kdc did not start listening on {self.spec.kdc}", f"see {self.files.root}/krb5kdc.log")

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.05)
        self.files.pidfile.unlink(missing_ok=True)
        return True

    def spawn_foreground(self) -> subprocess.Popen[bytes]:
        """krb5kdc kept in the foreground as our child (for a supervising process such as the lab)."""
        self.write_profiles()
        return spawn(["krb5kdc", "-n"], env=self.env(), log_file=self.files.root / "krb5kdc.stdout")
