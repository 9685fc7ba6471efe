"""A lab node driven by the REAL node agent (Debian's python3, a child process) against a lab rack's
`drover serve`: its facts as a small tree of data files, its kernel command line as a file, and libvirtd
(re)started through `--restart=command` by a tiny client that asks this test process to start or restart
the node's lab libvirtd on the files the agent wrote (no systemd as PID 1 here).

`make_node(fqdn, dmi_uuid)` needs a `lab` fixture (a tests.lab.rack.Lab) in the requesting module.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from appliance.db.engine import session_scope
from appliance.db.models import Host, HostState
from tests.lab.appliance import LabAppliance
from tests.lab.libvirtd import LabNode, NodeFiles, NodeSettings, libvirtd_conf
from tests.lab.nodeagent_peer import SYSTEM_PYTHON, start_agent
from tests.lab.rack import Lab

log = logging.getLogger(__name__)

# The restart command the agent runs: connect to the test's unix socket, wait for "0" (libvirtd is up).
_CLIENT = (
    "import socket, sys; s = socket.socket(socket.AF_UNIX); s.settimeout(60); s.connect(sys.argv[1]); "
    "s.sendall(b'restart'); r = s.recv(4096); sys.stderr.write(r[1:].decode()); sys.exit(0 if r[:1] == b'0' else 1)"
)


class RestartServer:
    """The test's end of `--restart=command`: each connection (re)starts the node's lab libvirtd on the
    files the agent wrote, and answers once it listens; the LabNode stays this process's child.

    close() wakes the accepting thread and waits for it before the socket's fd is released. A thread
    left blocked in accept(2) on a closed fd keeps waiting on the old socket, and a transparent restart
    of that system call (a stop/continue of this process, the freezer) re-enters it with the same fd
    number, which by then names a later test's socket: it took one of that test's restart requests
    and answered it by restarting its own node (a full-run flake of the failed-restart test).
    """

    def __init__(self, path: Path, start: Callable[[], LabNode]) -> None:
        self.path = path
        self.start_node = start
        self.node: LabNode | None = None
        self.restarts = 0
        self.fail_next = 0  # this many restarts fail first, as a libvirtd that does not come up
        self.requests: list[tuple[int, bytes]] = []  # (peer pid, payload) of every connection, in order
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, name=f"restart-{path.parent.name}", daemon=True)
        self.thread.start()

    @property
    def command(self) -> str:
        return shlex.join([SYSTEM_PYTHON, "-c", _CLIENT, str(self.path)])

    def restart(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("libvirtd failed to start (scripted by the test)")
        if self.node is None:
            self.node = self.start_node()
        else:
            self.node.restart()
        self.restarts += 1

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
                payload = conn.recv(64)
                self.requests.append((pid, payload))
                log.info("restart server %s: pid %s sent %r (fail_next %s)", self.path, pid, payload, self.fail_next)
                if not payload:  # a connect that sends nothing is no restart request
                    continue
                try:
                    self.restart()
                    answer = b"0"
                except Exception as exc:  # reported to the agent, which logs it
                    answer = b"1" + str(exc)[-2000:].encode()
                with contextlib.suppress(OSError):
                    conn.sendall(answer)

    def close(self) -> None:
        # shutdown() wakes a blocked accept (close() alone does not); the fd goes only once the thread is gone.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=60)
        if self.thread.is_alive():
            raise RuntimeError(f"restart server {self.path} did not stop; its fd is kept open")
        self.sock.close()
        self.path.unlink(missing_ok=True)


@dataclass
class FakeNode:
    """One node's data: facts tree, kernel command line, config root, agent state and log."""

    tmp: Path
    fqdn: str
    dmi_uuid: str
    settings: NodeSettings
    restarter: RestartServer

    @property
    def conf(self) -> Path:
        return self.tmp / "conf"

    @property
    def keytab(self) -> Path:
        return self.conf / "etc/libvirt/krb5.tab"

    @property
    def state(self) -> Path:
        return self.tmp / "agent.json"

    @property
    def log(self) -> Path:
        return self.tmp / "agent.log"

    def facts_tree(self, nics: dict[str, str]) -> None:
        root = self.tmp / "root"
        for rel, text in {
            "sys/class/dmi/id/product_uuid": self.dmi_uuid.upper() + "\n",
            "proc/sys/kernel/hostname": self.fqdn + "\n",
            "proc/sys/kernel/osrelease": "6.1.0-28-amd64\n",
            "proc/cpuinfo": "".join(
                f"processor\t: {i}\nmodel name\t: E2E Test CPU\nphysical id\t: 0\ncore id\t\t: {i}\n"
                "cpu cores\t: 2\nflags\t\t: fpu vmx sse2\n\n"
                for i in range(2)
            ),
            "proc/meminfo": "MemTotal:        4096000 kB\n",
            "proc/uptime": "42.5 10.0\n",
            "sys/block/vda/size": str(20 * 2**30 // 512) + "\n",
            "sys/block/vda/device/model": "E2E disk\n",
        }.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        net = root / "sys/class/net"
        if net.exists():
            for old in net.iterdir():
                for f in old.iterdir():
                    f.rmdir() if f.is_dir() else f.unlink()
                old.rmdir()
        for name, mac in nics.items():
            (net / name / "device").mkdir(parents=True)
            (net / name / "address").write_text(mac + "\n")
            (net / name / "type").write_text("1\n")
            (net / name / "speed").write_text("1000\n")

    def cmdline(self, appliance: LabAppliance, token: str, ca: str, bootif: str, extra: str = "") -> None:
        token_arg = f" drover.token={token}" if token else ""
        (self.tmp / "cmdline").write_text(
            f"BOOT_IMAGE=vmlinuz drover.appliance=http://127.0.0.1:{appliance.boot_port}{token_arg} "
            f"drover.ca={ca} BOOTIF={bootif} {extra} quiet\n"
        )

    def start_agent(self) -> Any:
        return start_agent(
            "--root", str(self.tmp / "root"),
            "--config-root", str(self.conf),
            "--cmdline", str(self.tmp / "cmdline"),
            "--state-file", str(self.state),
            "--restart", "command",
            "--restart-command", self.restarter.command,
            "--libvirt-address", self.settings.address,
            "--libvirt-port", str(self.settings.port),
            "--no-announce",
            "--error-backoff", "0.2",
            "--error-backoff-max", "1",
            "--refused-pause", "0.5",
            log=self.log,
        )  # fmt: skip


@pytest.fixture
def make_node(lab: Lab, tmp_path: Path) -> Iterator[Callable[[str, str], FakeNode]]:
    made: list[FakeNode] = []

    def make(fqdn: str, dmi_uuid: str) -> FakeNode:
        settings = lab.nodes.plan(fqdn, port=lab.libvirt_port)
        tmp = tmp_path / fqdn
        conf = tmp / "conf"
        (conf / "etc/libvirt").mkdir(parents=True)
        # The node's distro libvirtd.conf (the lab's: address, port, private socket dir, log); the agent
        # keeps those lines and replaces the auth settings with its managed block.
        (conf / "etc/libvirt/libvirtd.conf").write_text(libvirtd_conf(settings, lab.nodes.root_for(settings)))
        files = NodeFiles(
            libvirtd_conf=conf / "etc/libvirt/libvirtd.conf",
            sasl_dir=conf / "etc/sasl2",
            keytab=conf / "etc/libvirt/krb5.tab",
            krb5_conf=conf / "etc/krb5.conf",  # the node's krb5.conf, as the appliance handed it over
        )
        restarter = RestartServer(tmp / "restart.sock", lambda: lab.nodes.start(fqdn, settings=settings, files=files))
        node = FakeNode(tmp, fqdn, dmi_uuid, settings, restarter)
        made.append(node)
        return node

    yield make
    for node in made:
        node.restarter.close()
        if node.restarter.node is not None:
            node.restarter.node.stop()


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Path | None = None) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"{what} not within {timeout}s\n{tail}")
        time.sleep(0.05)
    return time.monotonic() - start


def host_row(db: Engine, dmi_uuid: str) -> tuple[int, HostState] | None:
    with session_scope(db) as s:
        row = s.execute(select(Host.id, Host.state).where(Host.uuid == dmi_uuid)).one_or_none()
    return (row[0], row[1]) if row is not None else None


def host_state(db: Engine, dmi_uuid: str) -> HostState | None:
    row = host_row(db, dmi_uuid)
    return row[1] if row else None


def mint(lab: Lab, admin: str, *bound: str) -> tuple[str, str]:
    """`drover host token [--uuid U --mac M]` as `admin`: the token and the CA pin from the kernel arguments."""
    minted = lab.served.drover("host", "token", *bound, principal=admin)
    assert minted.returncode == 0, minted.stderr
    pin = re.search(r"drover\.ca=(sha256:[0-9a-f]{64})", minted.stdout)
    assert pin is not None, minted.stdout
    return minted.stdout.splitlines()[0], pin.group(1)
