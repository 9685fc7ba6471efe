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


# kadmind's refusal names the privilege; kadm5.acl spells it as one letter.
_REFUSED = re.compile(r"Operation requires ``([a-z-]+)'' privilege")
ACL_LETTER = {"add": "a", "delete": "d", "modify": "m", "change-password": "c", "get": "i", "list": "l",
              "extract": "e", "set-key": "s"}  # fmt: skip
# What kadmin prints when it cannot start a session at all, and what to do about each.
_INIT_FAILURES = (
    ("Keytab contains no suitable keys", "the admin keytab holds no key for the admin principal",
     "export the admin principal's keys into it (`drover realm status` names both)"),
    ("Password incorrect", "the admin keytab's key is out of date (the principal's key changed since)",
     "export the admin principal's current keys again"),
    ("Preauthentication failed", "the admin keytab's key is out of date (the principal's key changed since)",
     "export the admin principal's current keys again"),
    ("not found in Kerberos database", "the admin principal does not exist in the realm",
     "create it on the KDC (kadmin.local addprinc -randkey) or fix [kerberos] admin_principal"),
    ("Cannot contact any KDC", "no KDC of the realm answers", "check the realm's KDC and krb5.conf"),
    ("GSS-API (or Kerberos) error", "kadmind did not accept the session (is it running, for this realm?)",
     "check kadmind on the realm's admin server"),
    ("Communication failure with server", "kadmind is not answering (or not this realm's)",
     "start kadmind on the realm's admin server; check admin_server in krb5.conf"),
    ("Connection refused", "kadmind is not answering", "start kadmind on the realm's admin server"),
    ("Cannot resolve network address for admin server", "kadmind is not answering",
     "start kadmind on the realm's admin server"),
)  # fmt: skip


class KadminRefused(KerberosError):
    """kadmind said no: the admin principal lacks a privilege in the realm's kadm5.acl."""

    def __init__(self, message: str, hint: str, privilege: str) -> None:
        super().__init__(message, hint)
        self.privilege = privilege


class Kadmin:
    """One admin session's worth of kadmin queries; each call is one kadmin process."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], realm: str, admin: str = "") -> None:
        self._argv = list(argv)
        self._env = dict(env)
        self.realm = realm
        self.admin = admin  # who kadmind sees (remote only): named in refusals

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
        return cls(argv, env, realm, admin_principal)

    @property
    def is_remote(self) -> bool:
        return bool(self.admin)

    def _refusal(self, query: str, line: str) -> KadminRefused | None:
        found = _REFUSED.search(line)
        if found is None:
            return None
        privilege = found.group(1)
        verb, _, rest = query.partition(" ")
        target = rest.split()[-1] if rest.split() else ""
        letter = ACL_LETTER.get(privilege, "?")
        return KadminRefused(
            f"the realm refused kadmin {verb} {target}: {self.admin or 'the admin principal'} lacks the "
            f"{privilege!r} privilege (kadm5.acl '{letter}')",
            f"give it '{letter}' on that principal in the realm's kadm5.acl and restart kadmind "
            "(`drover realm status` checks every right drover needs)",
            privilege,
        )

    def query(self, query: str, tolerate: str = "") -> str:
        """Run one kadmin query; its error lines raise (a refusal as KadminRefused), except ones containing
        `tolerate` (an expected answer such as "does not exist")."""
        try:
            proc = run([*self._argv, "-q", query], env=self._env, timeout=60)
        except CommandFailed as exc:
            # kadmin's own stdout line comes last (buffered); its error went to stderr before it.
            lines = [ln for ln in exc.output.strip().splitlines() if not ln.startswith("Authenticating as")]
            for needle, what, fix in _INIT_FAILURES:
                if any(needle in line for line in lines):
                    raise KerberosError(f"kadmin as {self.admin or 'admin'} failed: {what} ({lines[-1].strip()})",
                                        fix) from exc  # fmt: skip
            said = lines[-1].strip() if lines else f"exit {exc.returncode}, no message"
            raise KerberosError(f"kadmin failed: {query}: {said}") from exc
        # kadmin exits 0 on most query errors; its messages are the only signal.
        bad = [line for line in proc.stdout.splitlines() if re.search(r"while |error|[Ee]rror|not found", line)]
        bad = [line for line in bad if not (tolerate and tolerate in line)]
        if bad:
            refused = self._refusal(query, bad[-1])
            if refused is not None:
                raise refused
            raise KerberosError(f"kadmin {query.split(maxsplit=1)[0]}: {bad[-1].strip()}")
        return proc.stdout

    def qualify(self, name: str) -> str:
        check_principal(name)
        return name if "@" in name else f"{name}@{self.realm}"

    def principals(self) -> list[str]:
        """Every principal of the realm (kadm5.acl 'l'; drover's own work never needs it)."""
        out = self.query("listprincs")
        return [line.strip() for line in out.splitlines() if "@" in line and not line.startswith("Authenticating")]

    def exists(self, name: str) -> bool:
        """One getprinc (kadm5.acl 'i' on that principal), not a listing of a realm that may be large."""
        principal = self.qualify(name)
        out = self.query(f"getprinc {principal}", tolerate="does not exist")
        return f"Principal: {principal}" in out

    def add(self, name: str, password: str | None = None) -> bool:
        """Create `name` with a random key (services, hosts) or a password (people); existing is fine.

        True when this call created it, so a caller that fails later can take it back. One addprinc
        (kadm5.acl 'a'), no look-up first: "already exists" is an answer, not an error.
        """
        principal = self.qualify(name)
        if password is None:
            out = self.query(f"addprinc -randkey {principal}", tolerate="already exists")
        else:
            if not password or any(c in password for c in "\"\n"):
                raise KerberosError("password must be non-empty and contain no quotes or newlines")
            out = self.query(f'addprinc -pw "{password}" {principal}', tolerate="already exists")
        created = f'Principal "{principal}" created.' in out
        if created:
            log.info("created principal %s", principal)
        return created

    def delete(self, name: str) -> bool:
        """Delete `name` (kadm5.acl 'd'); one that does not exist is fine. True when this call deleted it."""
        principal = self.qualify(name)
        out = self.query(f"delprinc -force {principal}", tolerate="does not exist")
        return f'Principal "{principal}" deleted.' in out

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
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.umask(old)
        os.chmod(tmp, 0o600)
        tmp.replace(path)
        return path
