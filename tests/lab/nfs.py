"""Lab fixture: a real NFSv4 server (nfs-ganesha, userspace, VFS backend) exporting a temp dir on loopback.

No kernel server module and no rpcbind: NFSv4 only, TCP only, on a free port (LAB.md). `Graceless`
skips the 90 s grace period a fresh server otherwise starts with. This machine's kernel has no NFS
client, so the export is proven with libnfs's userspace tools (`nfs-ls`, `nfs-cp`); a PXE-booted node
(its own Debian kernel and nfs-common) mounts it through qemu user-net, where 10.0.2.2 is this host.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.runner import run, spawn
from tests.lab.net import free_port, wait_listening
from tests.lab.proc import terminate

EXPORT_PATH = "/export"


def ganesha_conf(root: Path, export_dir: Path, port: int, address: str) -> str:
    return f"""NFS_CORE_PARAM {{
    Bind_addr = {address};
    NFS_Port = {port};
    Protocols = 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = {root / "recovery"};
    Allow_Numeric_Owners = true;
    Only_Numeric_Owners = true;
}}
EXPORT {{
    Export_Id = 1;
    Path = {export_dir};
    Pseudo = {EXPORT_PATH};
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 4;
    Transports = TCP;
    FSAL {{ Name = VFS; }}
}}
"""


@dataclass
class LabNfs:
    root: Path
    export_dir: Path  # what the server exports, as a plain dir of this machine
    address: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def export(self) -> str:
        return EXPORT_PATH

    def url(self, path: str = "") -> str:
        """A libnfs URL for `path` under the export (NFSv4, our port)."""
        return f"nfs://{self.address}{EXPORT_PATH}/{path.lstrip('/')}?version=4&nfsport={self.port}"

    def ls(self) -> list[str]:
        """Names in the export's root as an NFS client sees them (libnfs, not the local dir)."""
        out = run(["nfs-ls", self.url()], timeout=30).stdout
        return [line.split()[-1] for line in out.splitlines() if line.strip()]

    def log_text(self) -> str:
        path = self.root / "ganesha.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def stop(self) -> None:
        terminate(self.process)


def start_nfs(root: Path, address: str = "127.0.0.1", timeout: float = 20, port: int | None = None) -> LabNfs:
    export_dir = root / "export"
    export_dir.mkdir(parents=True, exist_ok=True)
    (root / "recovery").mkdir(exist_ok=True)
    port = port or free_port(address)
    conf = root / "ganesha.conf"
    conf.write_text(ganesha_conf(root, export_dir, port, address))
    process = spawn(
        ["ganesha.nfsd", "-F", "-f", conf, "-L", root / "ganesha.log", "-p", root / "ganesha.pid", "-N", "NIV_EVENT"],
        log_file=root / "ganesha.stdout",
    )
    lab = LabNfs(root, export_dir, address, port, process)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ganesha.nfsd exited with {process.returncode}:\n{lab.log_text()[-3000:]}")
            try:
                wait_listening(address, port, timeout=0.5)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
    except BaseException:
        lab.stop()
        raise
    return lab


@pytest.fixture(scope="session")
def nfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabNfs]:
    lab = start_nfs(tmp_path_factory.mktemp("nfs"))
    yield lab
    lab.stop()
