"""Lab fixture: virtualbmc (PyPI, pinned in pyproject) as the BMCs of lab hosts, answering IPMI over LAN on loopback.

One `vbmcd` per LabBmcs, isolated by VIRTUALBMC_CONFIG (its config dir, pid file and ZMQ control port in a temp
dir, LAB.md); `add()` gives a libvirt domain a BMC on 127.0.0.1:<free port> with a user and password. What a
BMC does to its domain (start, destroy, reset) is real libvirt, observed through the same libvirtd.
`stop_bmc()`/`start_bmc()` take one BMC off the network and back: a fence that cannot reach it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.runner import run, spawn
from tests.lab.net import free_port, free_udp_port
from tests.lab.proc import terminate

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class LabBmc:
    domain: str
    address: str
    port: int
    user: str
    password: str


class LabBmcs:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "bmcs").mkdir(parents=True, exist_ok=True)
        self.config = root / "virtualbmc.conf"
        self.config.write_text(
            "[default]\n"
            f"config_dir = {root / 'bmcs'}\n"
            f"pid_file = {root / 'vbmcd.pid'}\n"
            f"server_port = {free_port()}\n"
            "server_response_timeout = 5000\n"
            "[log]\n"
            f"logfile = {root / 'vbmcd.log'}\n"
            "debug = true\n"
        )
        self.env = {"VIRTUALBMC_CONFIG": str(self.config), "PYTHONPATH": ""}
        self.process: subprocess.Popen[bytes] | None = None
        self.bmcs: dict[str, LabBmc] = {}

    def start(self, timeout: float = 30) -> None:
        # Its own session: vbmcd forks a process per BMC, and stop() ends the whole group it started.
        self.process = spawn([BIN / "vbmcd", "--foreground"], env=self.env, log_file=self.root / "vbmcd.stdout",
                             new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while self.vbmc("list", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vbmcd did not come up:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)

    def vbmc(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([BIN / "vbmc", *argv], env=self.env, check=check, timeout=60)

    def add(self, domain: str, libvirt_uri: str, user: str = "admin", password: str = "") -> LabBmc:
        """A BMC for `domain` (defined on `libvirt_uri`), started and answering."""
        bmc = LabBmc(domain, "127.0.0.1", free_udp_port(), user, password or f"pw-{os.urandom(6).hex()}")
        self.vbmc("add", domain, "--port", str(bmc.port), "--address", bmc.address, "--username", user,
                  "--password", bmc.password, "--libvirt-uri", libvirt_uri)  # fmt: skip
        self.bmcs[domain] = bmc
        self.start_bmc(domain)
        return bmc

    def start_bmc(self, domain: str) -> None:
        self.vbmc("start", domain)
        self._wait_answering(self.bmcs[domain])

    def stop_bmc(self, domain: str) -> None:
        self.vbmc("stop", domain)

    def ipmitool(self, bmc: LabBmc, *command: str) -> subprocess.CompletedProcess[str]:
        """Ask the BMC directly (the lab's own check, not the appliance's client)."""
        return run(["ipmitool", "-I", "lanplus", "-H", bmc.address, "-p", str(bmc.port), "-U", bmc.user, "-E",
                    "-R", "1", "-N", "1", *command], env={"IPMI_PASSWORD": bmc.password}, check=False,
                   timeout=30)  # fmt: skip

    def _wait_answering(self, bmc: LabBmc, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.ipmitool(bmc, "chassis", "power", "status").returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"BMC for {bmc.domain} not answering on {bmc.port}:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)

    def log_text(self) -> str:
        out = ""
        for name in ("vbmcd.log", "vbmcd.stdout"):
            path = self.root / name
            if path.is_file():
                out += path.read_text(errors="replace")
        return out

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            terminate(self.process, 10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # BMC children that outlived their parent
            self.process = None
