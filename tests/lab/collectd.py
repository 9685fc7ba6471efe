"""Lab fixture: real collectd (Debian collectd-core) as a sender to a receiver, or as a network server.

`start_sender` runs `collectd -f -C conf` reading this machine's cpu/memory/load/interface every
`interval` seconds and sending them with its network plugin at a security level; `start_server`
runs collectd's own network server (the bench's baseline), with unixsock so its counters can be read.
"""

from __future__ import annotations

import socket as socketlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.runner import run, spawn, which
from tests.lab.proc import terminate

PLUGINS = ("cpu", "memory", "load", "interface")


@dataclass
class LabCollectd:
    root: Path
    process: subprocess.Popen[bytes]
    socket: Path | None = None

    @property
    def log(self) -> str:
        path = self.root / "collectd.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def stop(self) -> int:
        return terminate(self.process)

    def getval(self, identifier: str) -> dict[str, float]:
        """A value of the running collectd through its unixsock plugin (e.g. HOST/network/total_values-...)."""
        if self.socket is None:
            raise RuntimeError("this collectd has no unixsock")
        with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(self.socket))
            conn.sendall(f"GETVAL {identifier}\n".encode())
            out = b""
            while chunk := conn.recv(4096):
                out += chunk
                lines = out.decode().split("\n")  # "N Values found", then N lines; N < 0 is an error
                head = lines[0].split()[:1]
                if len(lines) > 1 and head and head[0].lstrip("-").isdigit():
                    found = int(head[0])
                    if found < 0 or len(lines) - 2 >= found:
                        break
        result: dict[str, float] = {}
        for line in out.decode().splitlines()[1:]:
            name, sep, value = line.partition("=")
            if sep:
                result[name.strip()] = float(value)
        return result


def _common(root: Path, hostname: str, interval: float) -> str:
    return f"""Hostname "{hostname}"
FQDNLookup false
BaseDir "{root}"
PIDFile "{root}/collectd.pid"
TypesDB "/usr/share/collectd/types.db"
Interval {interval}
LoadPlugin logfile
<Plugin logfile>
  LogLevel info
  File "{root}/collectd.log"
  Timestamp true
</Plugin>
"""


def _spawn(root: Path, conf: str) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "collectd.conf"
    path.write_text(conf)
    run([which("collectd"), "-t", "-C", path])  # config errors fail here, with collectd's message
    return spawn([which("collectd"), "-f", "-C", path], log_file=root / "stdout.log")


def start_sender(
    root: Path,
    port: int,
    *,
    hostname: str = "node1.lab.test",
    level: str = "None",
    user: str = "",
    password: str = "",
    interval: float = 1.0,
    plugins: tuple[str, ...] = PLUGINS,
    host: str = "127.0.0.1",
) -> LabCollectd:
    """collectd reading `plugins` and sending them to host:port at `level` (None, Sign or Encrypt)."""
    secure = f'  SecurityLevel "{level}"\n'
    if level != "None":
        secure += f'  Username "{user}"\n  Password "{password}"\n'
    conf = _common(root, hostname, interval)
    conf += "".join(f"LoadPlugin {name}\n" for name in plugins)
    conf += f"""LoadPlugin network
<Plugin network>
  <Server "{host}" "{port}">
{secure}  </Server>
</Plugin>
"""
    return LabCollectd(root, _spawn(root, conf))


def start_with_config(root: Path, conf: str) -> LabCollectd:
    """collectd on a config written elsewhere (the node agent's), with a BaseDir and pid file of the lab's."""
    lab_lines = f'BaseDir "{root}"\nPIDFile "{root}/collectd.pid"\n'
    return LabCollectd(root, _spawn(root, lab_lines + conf))


def start_server(root: Path, port: int, *, level: str = "None", users: dict[str, str] | None = None) -> LabCollectd:
    """collectd's own network server on 127.0.0.1:port with no writer, its stats readable by unixsock."""
    secure = f'    SecurityLevel "{level}"\n'
    if users:
        auth = root / "passwd"
        root.mkdir(parents=True, exist_ok=True)
        auth.write_text("".join(f"{u}: {p}\n" for u, p in users.items()))
        secure += f'    AuthFile "{auth}"\n'
    sock = root / "collectd.sock"
    conf = _common(root, "bench-server", 1)
    conf += f"""LoadPlugin unixsock
<Plugin unixsock>
  SocketFile "{sock}"
</Plugin>
LoadPlugin network
<Plugin network>
  <Listen "127.0.0.1" "{port}">
{secure}  </Listen>
  MaxPacketSize 65535
  ReportStats true
</Plugin>
"""
    lab = LabCollectd(root, _spawn(root, conf), sock)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline or lab.process.poll() is not None:
            lab.stop()
            raise RuntimeError(f"collectd server did not start: {lab.log[-2000:]}")
        time.sleep(0.05)
    return lab
