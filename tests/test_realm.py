"""The embedded realm: created by the appliance's own code, a real krb5kdc, real kinit and kadmin."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.lab.kdc import LabKdc
from tests.lab.net import free_port

DROVER = [sys.executable, "-m", "appliance.cli"]


def test_ticket_from_lab_kdc(kdc: LabKdc) -> None:
    env = kdc.ticket("alice")
    out = subprocess.run(["klist"], env=env, capture_output=True, text=True, check=True).stdout
    assert f"alice@{kdc.realm.name}" in out
    assert f"krbtgt/{kdc.realm.name}@{kdc.realm.name}" in out


def test_no_ticket_is_no_ticket(kdc: LabKdc) -> None:
    proc = subprocess.run(["klist", "-s"], env=kdc.no_ticket(), check=False)
    assert proc.returncode != 0


def test_appliance_keytabs_are_private_and_usable(kdc: LabKdc) -> None:
    files = kdc.realm.files
    for keytab in (files.http_keytab, files.appliance_keytab, files.admin_keytab):
        assert stat.S_IMODE(keytab.stat().st_mode) == 0o600
    listing = subprocess.run(["klist", "-k", str(files.http_keytab)], capture_output=True, text=True, check=True)
    assert kdc.realm.http_principal in listing.stdout


def _cli(state: Path, *argv: str, port: int = 1) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "DROVER_STATE_DIR": str(state),
        "DROVER_KERBEROS_KDC_PORT": str(port),
        "DROVER_KERBEROS_HOSTNAME": "appliance.example.test",
    }
    return subprocess.run([*DROVER, *argv], env=env, capture_output=True, text=True, check=False)


def test_cli_realm_lifecycle(tmp_path: Path) -> None:
    port = free_port()
    assert _cli(tmp_path, "realm", "init", port=port).returncode == 0
    status = _cli(tmp_path, "realm", "status", port=port)
    assert status.returncode == 1 and "NOT answering" in status.stdout
    started = _cli(tmp_path, "realm", "start", port=port)
    assert started.returncode == 0, started.stderr
    try:
        assert _cli(tmp_path, "realm", "status", port=port).returncode == 0
        again = _cli(tmp_path, "realm", "init", port=port)
        assert "already exists" in again.stdout
        listing = _cli(tmp_path, "realm", "list", port=port).stdout.split()
        assert "admin@DROVER.TEST" in listing and "drover@DROVER.TEST" in listing
    finally:
        assert _cli(tmp_path, "realm", "stop", port=port).returncode == 0


def test_cli_refuses_bad_principal_and_changes_nothing(tmp_path: Path) -> None:
    assert _cli(tmp_path, "realm", "init").returncode == 0
    before = _cli(tmp_path, "realm", "list").stdout
    bad = _cli(tmp_path, "realm", "add-principal", "x -pw y z")
    assert bad.returncode != 0
    assert bad.stderr.startswith("drover: error: invalid principal name")
    assert _cli(tmp_path, "realm", "list").stdout == before


def test_kadmin_without_realm_says_how_to_fix(tmp_path: Path) -> None:
    proc = _cli(tmp_path, "realm", "list")
    assert proc.returncode == 7
    assert "drover realm init" in proc.stderr


def test_start_refuses_a_taken_port(tmp_path: Path, kdc: LabKdc) -> None:
    # Another KDC (the lab's) already holds the port: starting must fail clearly, not "succeed".
    assert _cli(tmp_path, "realm", "init", port=kdc.realm.spec.kdc_port).returncode == 0
    proc = _cli(tmp_path, "realm", "start", port=kdc.realm.spec.kdc_port)
    assert proc.returncode == 7 and "is taken" in proc.stderr


def test_missing_kdc_package_is_one_line_with_the_fix(tmp_path: Path) -> None:
    # A private mount namespace hides /usr/sbin (where krb5-kdc's tools live) from this one command,
    # which is how a machine without the package looks; nothing outside the namespace changes.
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"PATH": os.environ["PATH"], "DROVER_STATE_DIR": str(tmp_path / "state")}
    script = f'mount --bind {empty} /usr/sbin && exec "$@"'
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *DROVER, "realm", "init"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.splitlines() == [
        "drover: error: required tool 'kdb5_util' not found",
        "drover: hint: install it: apt-get install krb5-kdc",
    ]
    assert not (tmp_path / "state" / "realm" / "principal").exists()
