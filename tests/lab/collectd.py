"""Lab fixture: real collectd (Debian collectd-core) as a sender to a receiver, or as a network server.

`start_sender` runs `collectd -f -C conf` reading this machine's cpu/memory/load/interface every
`interval` seconds and sending them with its network plugin at a security level; `start_server`
runs collectd's own network server (the bench's baseline), with unixsock so its counters can be read.
"""

from __future__ import annotations

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

    def stat(self, plugin: str, name: str) -> float | None:
        """The latest raw value of one of collectd's own counters (start_server's CSV), None before the first."""
        files = sorted((self.root / "csv" / "bench-server").glob(f"{plugin}/{name}-*"))
        if not files:
            return None
        lines = files[-1].read_text().strip().splitlines()
        last = lines[-1].split(",") if len(lines) > 1 else []
        return float(last[1]) if len(last) > 1 else None


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


def start_server(
    root: Path,
    port: int,
    *,
    level: str = "None",
    users: dict[str, str] | None = None,
    writer: str = "",
    cpus: str = "",
) -> LabCollectd:
    """collectd's own network server on 127.0.0.1:port: the bench's baseline.

    Its own counters (network plugin stats, write queue) go to CSV through a PostCache chain and
    nothing else does, unless `writer` names a write plugin (e.g. rrdtool) for every other value.
    `cpus`: run it (all its threads) under `taskset -c CPUS`.
    """
    root.mkdir(parents=True, exist_ok=True)
    secure = f'    SecurityLevel "{level}"\n'
    if users:
        auth = root / "passwd"
        auth.write_text("".join(f"{u}: {p}\n" for u, p in users.items()))
        secure += f'    AuthFile "{auth}"\n'
    conf = _common(root, "bench-server", 1)
    conf += f"""CollectInternalStats true
LoadPlugin csv
<Plugin csv>
  DataDir "{root}/csv"
  StoreRates false
</Plugin>
LoadPlugin match_regex
LoadPlugin network
<Plugin network>
  <Listen "127.0.0.1" "{port}">
{secure}  </Listen>
  MaxPacketSize 65535
  ReportStats true
</Plugin>
"""
    if writer == "rrdtool":
        conf += f"""LoadPlugin rrdtool
<Plugin rrdtool>
  DataDir "{root}/rrd"
</Plugin>
"""
    default = f'<Target "write">\n    Plugin "{writer}"\n  </Target>' if writer else 'Target "stop"'
    conf += f"""<Chain "PostCache">
  <Rule "own_stats">
    <Match "regex">
      Host "^bench-server$"
    </Match>
    <Target "write">
      Plugin "csv"
    </Target>
    Target "stop"
  </Rule>
  {default}
</Chain>
PostCacheChain "PostCache"
"""
    (root / "collectd.conf").write_text(conf)
    run([which("collectd"), "-t", "-C", root / "collectd.conf"])
    argv: list[str | Path] = [which("collectd"), "-f", "-C", root / "collectd.conf"]
    if cpus:
        argv = [which("taskset"), "-c", cpus, *argv]
    lab = LabCollectd(root, spawn(argv, log_file=root / "stdout.log"))
    deadline = time.monotonic() + 10
    while lab.stat("network", "total_values-dispatch-accepted") is None:
        if time.monotonic() > deadline or lab.process.poll() is not None:
            lab.stop()
            raise RuntimeError(f"collectd server did not start: {lab.log[-2000:]}")
        time.sleep(0.1)
    return lab
