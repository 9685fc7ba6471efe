"""The node's collectd: its whole config, written from the identify response, and a restart through systemd.

The plugins of the original node: cpu (as percentages, so the appliance reads busy = 100 - idle
without keeping rates), memory, load, interface, disk, and virt reading the node's own libvirt
with each domain under its UUID as the plugin instance (host name stays the node's: the receiver
only accepts a node's values for its own name, and a VM's series follow it across migrations).
The virt plugin looks for new domains every three intervals (30 s at the node's 10): a VM migrated in
is reported within three intervals of its arrival, whatever the interval (a fixed 30 s left an 18 s
hole in a migrated VM's series at the lab's 1 s interval, tests/test_monitor_migration_lab.py).
The network plugin sends to the appliance as this host's collectd user. The file holds the
password, so it is 0600; Debian's collectd.service starts only once it exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from nodeagent import wire
from nodeagent.files import same_content, write_atomic

log = logging.getLogger(__name__)

SERVICE_UNIT = "collectd.service"
LEVELS = ("None", "Sign", "Encrypt")
REFRESH_INTERVALS = 3  # the virt plugin's RefreshInterval, in collectd intervals (30 s at the default 10)


@dataclass(frozen=True)
class CollectdPaths:
    conf: Path = Path("/etc/collectd/collectd.conf")

    def under(self, root: Path) -> CollectdPaths:
        return CollectdPaths(root / self.conf.relative_to("/"))


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(
    settings: wire.Collectd, hostname: str, interval: int = 10, virt: bool = True, libvirt_uri: str = "qemu:///system"
) -> str:
    if settings.security_level not in LEVELS:
        raise ValueError(f"collectd security level {settings.security_level!r} is not one of {LEVELS}")
    secure = f"    SecurityLevel {_quote(settings.security_level)}\n"
    if settings.security_level != "None":
        secure += f"    Username {_quote(settings.username)}\n    Password {_quote(settings.password)}\n"
    # A domain list refresh is a few libvirt calls per domain: cheap next to a hole in a migrated VM's history.
    refresh = REFRESH_INTERVALS * interval
    virt_block = (
        f"""LoadPlugin virt
<Plugin virt>
  Connection {_quote(libvirt_uri)}
  RefreshInterval {refresh}
  HostnameFormat "hostname"
  PluginInstanceFormat "uuid"
</Plugin>
"""
        if virt
        else ""
    )
    return f"""# Written by the drover node agent from the appliance's identify response; replaced at each enrolment.
Hostname {_quote(hostname)}
FQDNLookup false
Interval {interval}
TypesDB "/usr/share/collectd/types.db"
LoadPlugin syslog
<Plugin syslog>
  LogLevel info
</Plugin>
LoadPlugin cpu
<Plugin cpu>
  ReportByCpu false
  ReportByState true
  ValuesPercentage true
</Plugin>
LoadPlugin memory
LoadPlugin load
LoadPlugin interface
<Plugin interface>
  Interface "lo"
  IgnoreSelected true
</Plugin>
LoadPlugin disk
{virt_block}LoadPlugin network
<Plugin network>
  <Server {_quote(settings.server)} "{settings.port}">
{secure}  </Server>
</Plugin>
"""


def configure(paths: CollectdPaths, text: str) -> bool:
    """Write the config; True if it changed (collectd must be restarted to read it)."""
    data = text.encode()
    if same_content(paths.conf, data, 0o600):
        return False
    write_atomic(paths.conf, data, 0o600)
    log.info("wrote %s", paths.conf)
    return True


def restart() -> None:
    """Restart collectd.service through systemd's D-Bus API (it may not have started: no config at boot)."""
    import dbus  # noqa: PLC0415 - distro package, imported on use: the venv tests import this module without it

    bus = dbus.SystemBus()
    systemd = bus.get_object("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
    manager = dbus.Interface(systemd, "org.freedesktop.systemd1.Manager")
    manager.RestartUnit(SERVICE_UNIT, "replace")
    log.info("restarting %s", SERVICE_UNIT)
