"""Lab fixture: a real iSCSI target (tgt, userspace) on a loopback portal, LUNs backed by files.

tgtd keeps its control socket at /run/tgtd/socket.N whatever else it is told (LAB.md), so each lab
target takes its own control number N (-C N), picked free by trying; tgtadm talks to it with the same
N. It ignores SIGTERM: it is stopped with SIGINT. This machine's kernel has no iSCSI initiator, so the
target is proven with libiscsi's userspace `iscsi-ls`; libvirt's iscsi pool needs open-iscsi's
iscsiadm and a kernel initiator, which only a PXE-booted node has.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.runner import run, spawn
from tests.lab.net import free_port, wait_listening

TARGET_IQN = "iqn.2026-11.test.example:drover.lab"
_SOCKET_DIR = Path("/run/tgtd")


@dataclass
class LabIscsi:
    root: Path
    address: str
    port: int
    control: int  # tgtd's -C N: its control socket is /run/tgtd/socket.N
    process: subprocess.Popen[bytes]
    iqn: str = TARGET_IQN
    luns: list[Path] = field(default_factory=list)

    @property
    def portal(self) -> str:
        return f"{self.address}:{self.port}"

    def tgtadm(self, *argv: str) -> str:
        return run(["tgtadm", "-C", str(self.control), "--lld", "iscsi", *argv], timeout=30).stdout

    def add_lun(self, size_bytes: int) -> int:
        """A new LUN backed by a sparse file of `size_bytes`; returns its number (1, 2, ...)."""
        lun = len(self.luns) + 1
        backing = self.root / f"lun{lun}.img"
        with backing.open("wb") as f:
            f.truncate(size_bytes)
        self.tgtadm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", str(lun), "-b", str(backing))
        self.luns.append(backing)
        return lun

    def ls(self) -> str:
        """What an initiator sees at the portal (libiscsi's iscsi-ls, with LUN sizes)."""
        return run(["iscsi-ls", "-s", f"iscsi://{self.portal}"], timeout=30).stdout

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # SIGTERM is ignored by tgtd
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for suffix in ("", ".lock"):
            sock = _SOCKET_DIR / f"socket.{self.control}{suffix}"
            if sock.exists():
                sock.unlink()


def _free_control() -> int:
    """A control number whose socket nobody holds (another lab target, or a leftover of a killed run)."""
    for n in range(1000 + os.getpid() % 5000, 10000):
        if not (_SOCKET_DIR / f"socket.{n}").exists():
            return n
    raise RuntimeError("no free tgtd control number")


def start_iscsi(root: Path, address: str = "127.0.0.1", timeout: float = 20) -> LabIscsi:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port(address)
    control = _free_control()
    process = spawn(
        ["tgtd", "-f", "-C", str(control), "--iscsi", f"portal={address}:{port}"],
        log_file=root / "tgtd.log",
    )
    lab = LabIscsi(root, address, port, control, process)
    try:
        deadline = time.monotonic() + timeout
        while not (_SOCKET_DIR / f"socket.{control}").exists():
            if process.poll() is not None:
                raise RuntimeError(f"tgtd exited with {process.returncode}: {(root / 'tgtd.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"tgtd control socket {control} not there after {timeout}s")
            time.sleep(0.02)
        wait_listening(address, port, timeout=timeout)
        lab.tgtadm("--op", "new", "--mode", "target", "--tid", "1", "-T", lab.iqn)
        lab.tgtadm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
    except BaseException:
        lab.stop()
        raise
    return lab


@pytest.fixture(scope="session")
def iscsi_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabIscsi]:
    lab = start_iscsi(tmp_path_factory.mktemp("iscsi"))
    lab.add_lun(64 * 2**20)
    yield lab
    lab.stop()
