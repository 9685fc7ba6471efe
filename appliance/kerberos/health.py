"""Is the realm usable by drover? One check per thing that can be wrong, each with what to do about it.

`drover realm status` prints them; `drover serve` runs them at start and refuses to serve on a failure.
For an existing (external) realm the rights check does what enrolment and removal do, on a probe
principal that matches the same kadm5.acl line as a node's: add it, extract a fresh key, delete it.
kadmind's own `getprivs` cannot stand in for it: it does not report what a target-restricted line
grants (INQUIRE ADD MODIFY DELETE both for `adci` and for `ai` on libvirt/*, kadmind 1.20).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.config import KerberosMode
from appliance.errors import CommandFailed, KerberosError
from appliance.kerberos.kadmin import KadminRefused
from appliance.kerberos.realm import Realm
from appliance.runner import run

# A node principal no real host can have (.invalid is reserved), so the probe never touches a node's key.
PROBE_HOST = "drover-realm-check.invalid"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def keytab_principals(path: Path, env: dict[str, str]) -> list[str]:
    """The principals a keytab holds keys for (`klist -k`), in file order, each once."""
    out = run(["klist", "-k", str(path)], env=env, timeout=30).stdout
    names: list[str] = []
    seen_rule = False
    for line in out.splitlines():
        if line.startswith("----"):
            seen_rule = True
            continue
        parts = line.split()
        if seen_rule and len(parts) >= 2 and parts[1] not in names:
            names.append(parts[1])
    return names


def _answers(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _keytab(name: str, path: Path | None, principal: str, env: dict[str, str], export: str) -> Check:
    """A keytab drover reads: there, readable, holding `principal`. `export` is how the realm's admin makes it."""
    if path is None:
        return Check(name, False, "not configured", export)
    if not path.is_file():
        return Check(name, False, f"{path} does not exist", export)
    if not os.access(path, os.R_OK):
        return Check(name, False, f"{path} is not readable by this user", f"chown/chmod it for drover ({export})")
    try:
        held = keytab_principals(path, env)
    except CommandFailed as exc:
        return Check(name, False, f"{path} is not a keytab: {exc.output.strip()[-200:]}", export)
    if principal not in held:
        return Check(name, False, f"{path} holds keys for {', '.join(held) or 'nobody'}, not {principal}", export)
    return Check(name, True, f"{path} holds {principal}")


def _rights(realm: Realm) -> Check:
    """Add, extract (randkey) and delete on a probe principal; the first refusal names the missing ACL letter."""
    name = "admin rights"
    acl = f"{realm.admin_principal}@{realm.name}  adci  libvirt/*@{realm.name}"
    try:
        kadmin = realm.kadmin()
        probe = kadmin.qualify(f"libvirt/{PROBE_HOST}")
        with tempfile.TemporaryDirectory(prefix="drover-realm-check-") as tmp:
            steps: list[tuple[str, Callable[[], object]]] = [
                ("add", lambda: kadmin.add(probe)),
                ("extract a fresh key (ktadd)", lambda: kadmin.keytab([probe], Path(tmp) / "probe.keytab")),
                ("delete", lambda: kadmin.delete(probe)),
            ]
            for what, step in steps:
                try:
                    step()
                except KadminRefused as exc:
                    left = ""
                    if what != "add":
                        try:
                            kadmin.delete(probe)
                        except KerberosError:
                            left = f"; the probe principal {probe} is left: delete it on the KDC"
                    return Check(name, False, f"{exc.message} (while trying to {what}){left}",
                                 f"kadm5.acl needs the line: {acl} (then restart kadmind)")  # fmt: skip
    except KerberosError as exc:
        return Check(name, False, exc.message, exc.hint)
    return Check(name, True, f"{realm.admin_principal}@{realm.name} may add, extract keys of and delete libvirt/*")


def check(realm: Realm) -> list[Check]:
    """Every check for this realm, in the order a fix has to follow (reachability before rights)."""
    env = realm.env()
    checks: list[Check] = []
    conf = Path(env["KRB5_CONFIG"])
    if realm.mode is KerberosMode.EXTERNAL:
        found = conf.is_file()
        checks.append(Check("krb5.conf", found, f"{conf}" if found else f"{conf} does not exist",
                            "copy the realm's krb5.conf there (or export KRB5_CONFIG)"))  # fmt: skip
    else:
        exists = realm.files.database.is_file()
        checks.append(Check("database", exists, f"{realm.files.database} {'exists' if exists else 'missing'}",
                            "" if exists else "run `drover realm init`"))  # fmt: skip
    kdc_ok = realm.kdc_answers(timeout=2.0)
    kdc_fix = "start it with `drover realm start`" if realm.mode is KerberosMode.EMBEDDED else (
        "check the realm's KDC, or [kerberos] kdc_host/kdc_port")  # fmt: skip
    checks.append(Check("kdc", kdc_ok, f"{realm.spec.kdc} {'answering' if kdc_ok else 'NOT answering'}", kdc_fix))
    if realm.mode is KerberosMode.EXTERNAL:
        where = f"{realm.spec.kdc_host}:{realm.spec.kadmin_port}"
        kadmind_ok = _answers(realm.spec.kdc_host, realm.spec.kadmin_port)
        checks.append(Check("kadmind", kadmind_ok, f"{where} {'answering' if kadmind_ok else 'NOT answering'}",
                            "start kadmind on the realm's admin server, or set [kerberos] kadmin_port"))  # fmt: skip
        admin = f"{realm.admin_principal}@{realm.name}"
        keytab = _keytab("admin keytab", realm.admin_keytab, admin, env,
                         f"on the KDC: kadmin.local -q 'ktadd -norandkey -k FILE {admin}', then set "
                         "[kerberos] admin_keytab to FILE")  # fmt: skip
        checks.append(keytab)
        if kdc_ok and kadmind_ok and keytab.ok:
            checks.append(_rights(realm))
        else:
            checks.append(Check("admin rights", False, "not tried: fix the checks above first"))
    for name, path, principal in (
        ("HTTP keytab", realm.files.http_keytab, realm.http_principal),
        ("libvirt client keytab", realm.files.appliance_keytab, realm.appliance_principal),
    ):
        export = (
            "run `drover realm init`"
            if realm.mode is KerberosMode.EMBEDDED
            else f"on the KDC: kadmin.local -q 'ktadd -norandkey -k FILE {principal}', FILE copied to {path} (0600)"
        )
        checks.append(_keytab(name, path, principal, env, export))
    return checks


def failures(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]
