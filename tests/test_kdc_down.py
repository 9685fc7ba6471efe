"""A KDC that is down: every Kerberos-using verb fails with one line naming the problem and the fix."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import KerberosMode
from appliance.errors import KerberosError
from appliance.kerberos.realm import Realm
from tests.lab.appliance import DROVER, ROOT, LabAppliance, start_appliance
from tests.lab.kdc import LabKdc, start_kdc


@pytest.fixture
def stopped(tmp_path: Path) -> Iterator[tuple[LabKdc, LabAppliance, dict[str, str]]]:
    """An appliance whose KDC died after a user got a TGT (but no service ticket yet)."""
    kdc = start_kdc(tmp_path / "kdc")
    lab = start_appliance(kdc, kdc.root)
    try:
        env = lab.cli_env("carol")
        kdc.process.terminate()
        kdc.process.wait(timeout=10)
        yield kdc, lab, env
    finally:
        lab.stop()
        if kdc.process.poll() is None:
            kdc.process.kill()


def test_whoami_names_the_kdc_problem(stopped: tuple[LabKdc, LabAppliance, dict[str, str]]) -> None:
    _, _, env = stopped
    proc = subprocess.run(
        [*DROVER, "whoami"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 7, proc.stderr
    first, hint = proc.stderr.splitlines()
    assert first.startswith("drover: error: cannot get a service ticket")
    assert "KDC" in first
    assert hint.startswith("drover: hint:") and "KDC is up" in hint


def test_external_realm_kadmin_refuses_a_dead_kdc(stopped: tuple[LabKdc, LabAppliance, dict[str, str]]) -> None:
    kdc, _, _ = stopped
    keytab = kdc.root / "admin.keytab"
    keytab.write_bytes(b"\x05\x02")
    spec, files = kdc.realm.spec, kdc.realm.files
    realm = Realm(spec, files, "appliance.example.test", KerberosMode.EXTERNAL, "drover/admin", keytab)
    with pytest.raises(KerberosError) as info:
        realm.kadmin()
    assert f"the KDC at {kdc.realm.spec.kdc} is not answering" in str(info.value)
