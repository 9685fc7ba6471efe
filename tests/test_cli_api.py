"""`drover whoami` and `drover serve` as processes: the CLI under a user's ticket, the server's life cycle."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.lab.appliance import DROVER, NSS_WRAPPER, ROOT, LabAppliance, start_appliance
from tests.lab.kdc import APPLIANCE_HOST, LabKdc
from tests.lab.net import free_port

pytestmark = pytest.mark.lab


def test_whoami_with_a_ticket(appliance: LabAppliance, kdc: LabKdc) -> None:
    proc = appliance.drover("whoami", principal="carol")
    assert proc.returncode == 0, proc.stderr
    assert f"principal: carol@{kdc.realm.name}" in proc.stdout
    assert "roles:" in proc.stdout


def test_whoami_without_a_ticket_says_kinit(appliance: LabAppliance) -> None:
    proc = appliance.drover("whoami", principal=None)
    assert proc.returncode == 8, proc.stderr
    assert proc.stderr.startswith("drover: error: no Kerberos ticket")
    assert "kinit" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_whoami_with_the_api_down_is_one_line(appliance: LabAppliance) -> None:
    port = free_port()
    proc = appliance.drover("whoami", principal="carol", env={"DROVER_API_PORT": str(port)})
    assert proc.returncode != 0
    error, hint = proc.stderr.splitlines()
    assert error.startswith(f"drover: error: cannot reach the drover API at http://appliance.example.test:{port}/")
    assert hint.startswith("drover: hint:") and "drover serve" in hint


def test_serve_stops_cleanly_on_sigterm(kdc: LabKdc, tmp_path: Path) -> None:
    lab = start_appliance(kdc, tmp_path)
    lab.process.send_signal(signal.SIGTERM)
    assert lab.process.wait(15) == 0, lab.log_text()
    assert "drover API stopped" in lab.log_text()


def test_serve_stops_cleanly_on_ctrl_c(kdc: LabKdc, tmp_path: Path) -> None:
    lab = start_appliance(kdc, tmp_path)
    lab.process.send_signal(signal.SIGINT)
    assert lab.process.wait(15) == 0, lab.log_text()


def test_serve_on_a_taken_port_says_so(appliance: LabAppliance, kdc: LabKdc, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = appliance.drover("serve", env={"DROVER_API_PORT": str(port)}, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr


def test_serve_on_a_fresh_state_dir_brings_up_its_own_realm(tmp_path: Path) -> None:
    """No realm, no KDC: `drover serve` creates the embedded realm, starts its KDC and serves admin."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "DROVER_STATE_DIR": str(tmp_path),
        "DROVER_KERBEROS_HOSTNAME": APPLIANCE_HOST,
        "DROVER_KERBEROS_KDC_PORT": str(free_port()),
        "DROVER_KERBEROS_KADMIN_PORT": str(free_port()),
        "DROVER_API_PORT": str(free_port()),
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([*DROVER, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    realm_dir = tmp_path / "realm"
    try:
        health = f"http://127.0.0.1:{env['DROVER_API_PORT']}/api/v1/health"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(health, timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        (tmp_path / "hosts").write_text(f"127.0.0.1 {APPLIANCE_HOST}\n")
        ticket = {
            "KRB5_CONFIG": str(realm_dir / "krb5.conf"),
            "KRB5CCNAME": f"FILE:{tmp_path / 'admin.ccache'}",
        }
        subprocess.run(
            ["kinit", "-k", "-t", str(realm_dir / "admin.keytab"), "admin@DROVER.TEST"],
            env={**env, **ticket},
            check=True,
        )
        # No KRB5_CONFIG: on the appliance itself drover finds the embedded realm's krb5.conf.
        cli_env = {
            **env,
            "KRB5CCNAME": ticket["KRB5CCNAME"],
            "LD_PRELOAD": str(NSS_WRAPPER),
            "NSS_WRAPPER_HOSTS": str(tmp_path / "hosts"),
        }
        proc = subprocess.run([*DROVER, "whoami"], env=cli_env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == ["principal: admin@DROVER.TEST", "roles:     super_admin"]
    finally:
        server.terminate()
        server.wait(15)
        subprocess.run([*DROVER, "realm", "stop"], env=env, capture_output=True, check=False)
    assert server.returncode == 0, log.read_text()


def test_realm_init_makes_admin_super_admin_once(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "DROVER_STATE_DIR": str(tmp_path),
        "DROVER_KERBEROS_KDC_PORT": str(free_port()),
    }

    def drover(*argv: str) -> str:
        proc = subprocess.run([*DROVER, *argv], env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "admin@DROVER.TEST granted the super_admin role" in drover("realm", "init")
    assert "admin@DROVER.TEST already has the super_admin role" in drover("realm", "init")
    assert drover("user", "list").splitlines()[1].split() == ["admin@DROVER.TEST", "super_admin"]
