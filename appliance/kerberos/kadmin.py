"""Principals and keytabs through kadmin: kadmin.local for the embedded realm, kadmin + admin keytab otherwise."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from appliance.errors import CommandFailed, KerberosError
from appliance.runner import run

log = logging.getLogger(__name__)

# kadmin query arguments are parsed by kadmin itself; anything outside this set could smuggle options.
_PRINCIPAL = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?(@[A-Z0-9._-]+)?$")


def check_principal(name: str) -> str:
    if not _PRINCIPAL.match(name):
        raise KerberosError(f"invalid principal name {name!r}", "use name or service/host, letters, digits, . _ -")
    return name


class Kadmin:
    """One admin session's worth of kadmin queries; each call is one kadmin process."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], realm: str) -> None:
        self._argv = list(argv)
        self._env = dict(env)
        self.realm = realm

    @classmethod
    def local(cls, env: Mapping[str, str], realm: str) -> Kadmin:
        return cls(["kadmin.local", "-r", realm], env, realm)

    @classmethod
    def remote(cls, env: Mapping[str, str], realm: str, admin_principal: str, admin_keytab: Path) -> Kadmin:
        if not admin_keytab.is_file():
            raise KerberosError(
                f"admin keytab {admin_keytab} does not exist",
                "set [kerberos] admin_keytab to a keytab for the realm's admin principal",
            )
        argv = ["kadmin", "-r", realm, "-p", admin_principal, "-k", "-t", str(admin_keytab)]
        return cls(argv, env, realm)

    def query(self, query: str) -> str:
        try:
            proc = run([*self._argv, "-q", query], env=self._env, timeout=60)
        except CommandFailed as exc:
            raise KerberosError(f"kadmin failed: {query}: {exc.output.strip().splitlines()[-1:]}") from exc
        # kadmin exits 0 on most query errors; its messages are the only signal.
        bad = [line for line in proc.stdout.splitlines() if re.search(r"while |error|[Ee]rror|not found", line)]
        if bad:
            raise KerberosError(f"kadmin {query.split(maxsplit=1)[0]}: {bad[-1].strip()}")
        return proc.stdout

    def qualify(self, name: str) -> str:
        check_principal(name)
        return name if "@" in name else f"{name}@{self.realm}"

    def principals(self) -> list[str]:
        out = self.query("listprincs")
        return [line.strip() for line in out.splitlines() if "@" in line and not line.startswith("Authenticating")]

    def exists(self, name: str) -> bool:
        return self.qualify(name) in self.principals()

    def add(self, name: str, password: str | None = None) -> None:
        """Create `name` with a random key (services, hosts) or a password (people); existing is fine."""
        principal = self.qualify(name)
        if principal in self.principals():
            return
        if password is None:
            self.query(f"addprinc -randkey {principal}")
        else:
            if not password or any(c in password for c in "\"\n"):
                raise KerberosError("password must be non-empty and contain no quotes or newlines")
            self.query(f'addprinc -pw "{password}" {principal}')
        log.info("created principal %s", principal)

    def delete(self, name: str) -> None:
        principal = self.qualify(name)
        if principal in self.principals():
            self.query(f"delprinc -force {principal}")

    def keytab(self, names: Sequence[str], path: Path, keep_keys: bool = False) -> Path:
        """Write the principals' keys to a 0600 keytab at `path`, replacing it.

        `keep_keys` (kadmin.local only) exports the current keys instead of making new ones, so a
        keytab handed out earlier keeps working; a fresh key is the default because that is how an
        identity is (re)issued to a rebooted stateless node.
        """
        principals = [self.qualify(n) for n in names]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".new")
        tmp.unlink(missing_ok=True)
        old = os.umask(0o077)
        try:
            self.query(f"ktadd -k {tmp} {'-norandkey ' if keep_keys else ''}{' '.join(principals)}")
        finally:
            os.umask(old)
        os.chmod(tmp, 0o600)
        tmp.replace(path)
        return path
