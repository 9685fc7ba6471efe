"""`drover whoami` and `drover serve` as processes: the CLI under a user's ticket, the server's life cycle."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from tests.lab.appliance import LabAppliance, start_appliance
from tests.lab.kdc import LabKdc
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
