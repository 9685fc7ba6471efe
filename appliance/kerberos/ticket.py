"""Getting and reading Kerberos tickets: kinit from a keytab into a private credential cache."""

from __future__ import annotations

from pathlib import Path

from appliance.errors import CommandFailed, KerberosError
from appliance.runner import run


def kinit_keytab(principal: str, keytab: Path, ccache: Path, env: dict[str, str]) -> dict[str, str]:
    """Put a TGT for `principal` into `ccache`; return env with KRB5CCNAME set for the caller's children."""
    if not keytab.is_file():
        raise KerberosError(f"keytab {keytab} does not exist")
    env = {**env, "KRB5CCNAME": f"FILE:{ccache}"}
    try:
        run(["kinit", "-k", "-t", str(keytab), principal], env=env, timeout=30)
    except CommandFailed as exc:
        raise KerberosError(f"kinit as {principal} failed: {exc.output.strip()}", "is the KDC running?") from exc
    return env


def kinit_password(principal: str, password: str, ccache: Path, env: dict[str, str]) -> dict[str, str]:
    env = {**env, "KRB5CCNAME": f"FILE:{ccache}"}
    try:
        run(["kinit", principal], env=env, input=password + "\n", timeout=30)
    except CommandFailed as exc:
        raise KerberosError(f"kinit as {principal} failed: {exc.output.strip()}") from exc
    return env
