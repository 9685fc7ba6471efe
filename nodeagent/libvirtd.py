"""Configure libvirtd for Kerberos-only TCP (SASL GSSAPI) and restart it.

Debian 12's libvirt 9.0 runs libvirtd socket-activated (libvirtd.socket, -ro, -admin); `--listen`
is refused when systemd passes sockets, and `listen_tcp` in libvirtd.conf is then ignored. So TCP
is enabled the way Debian ships it: the `libvirtd-tcp.socket` unit (port 16509), enabled for this
boot and started, then libvirtd.service restarted so it inherits the TCP socket. listen_tcp = 1 is
still written, for a libvirtd started by hand with --listen (the test lab does that).

Restarting goes through a small `Restarter`: systemd's D-Bus API (dbus-python) on the node; a test
on a machine without systemd as PID 1 plugs in a command that restarts a real lab libvirtd.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nodeagent.files import same_content, write_atomic
from nodeagent.proc import run

log = logging.getLogger(__name__)

TCP_SOCKET_UNIT = "libvirtd-tcp.socket"
SERVICE_UNIT = "libvirtd.service"
MANAGED_MARK = "# --- managed by the drover node agent: edits below are put back ---"


@dataclass(frozen=True)
class LibvirtdPaths:
    conf: Path = Path("/etc/libvirt/libvirtd.conf")
    sasl_conf: Path = Path("/etc/sasl2/libvirt.conf")
    qemu_conf: Path = Path("/etc/libvirt/qemu.conf")

    def under(self, root: Path) -> LibvirtdPaths:
        return LibvirtdPaths(*(root / p.relative_to("/") for p in (self.conf, self.sasl_conf, self.qemu_conf)))


# Guests' VNC displays listen on every address of the node: the appliance's console proxy must reach them
# (qemu's default is 127.0.0.1). Each display takes only a one-time password the appliance sets through
# libvirt for one connection; a VM's domain XML names no address, so it fits every node it migrates to.
QEMU_SETTINGS = {"vnc_listen": '"0.0.0.0"'}


def managed_settings(allowed_users: Sequence[str]) -> dict[str, str]:
    users = ", ".join('"' + u.replace("\\", "\\\\").replace('"', '\\"') + '"' for u in allowed_users)
    return {
        "listen_tls": "0",
        "listen_tcp": "1",
        "auth_tcp": '"sasl"',
        "sasl_allowed_username_list": f"[{users}]",
    }


def render_conf(existing: str, settings: dict[str, str]) -> str:
    """Keep the admin's other lines; drop every active line (and list continuation) of a managed key,
    then append the managed block. Idempotent: rendering the result again gives the same text."""
    keep: list[str] = []
    skipping_list = False
    key_re = re.compile(r"^\s*(" + "|".join(map(re.escape, settings)) + r")\s*=")
    for line in existing.splitlines():
        if skipping_list:
            skipping_list = "]" not in line
            continue
        if line.strip() == MANAGED_MARK:
            continue
        if key_re.match(line):
            value = line.split("=", 1)[1]
            skipping_list = "[" in value and "]" not in value
            continue
        keep.append(line)
    while keep and not keep[-1].strip():
        keep.pop()
    block = [MANAGED_MARK, *(f"{k} = {v}" for k, v in settings.items())]
    return "\n".join([*keep, "", *block]) + "\n" if keep else "\n".join(block) + "\n"


def render_sasl(keytab: Path) -> str:
    return f"mech_list: gssapi\nkeytab: {keytab}\n"


def configure(paths: LibvirtdPaths, keytab: Path, allowed_users: Sequence[str]) -> bool:
    """Write libvirtd.conf and the SASL config when they differ; True when anything changed."""
    try:
        existing = paths.conf.read_text()
    except FileNotFoundError:
        existing = ""
    conf = render_conf(existing, managed_settings(allowed_users)).encode()
    sasl = render_sasl(keytab).encode()
    qemu = render_conf(_read(paths.qemu_conf), QEMU_SETTINGS).encode()
    changed = False
    for path, data in ((paths.conf, conf), (paths.sasl_conf, sasl), (paths.qemu_conf, qemu)):
        if not same_content(path, data, 0o644):
            write_atomic(path, data, 0o644)
            changed = True
    if changed:
        log.info("libvirtd configured for SASL GSSAPI over TCP: %s, %s", paths.conf, paths.sasl_conf)
    return changed


def configured(paths: LibvirtdPaths, keytab: Path, allowed_users: Sequence[str]) -> bool:
    try:
        existing = paths.conf.read_text()
    except OSError:
        return False
    want = render_conf(existing, managed_settings(allowed_users))
    qemu = _read(paths.qemu_conf)
    return (existing == want and same_content(paths.sasl_conf, render_sasl(keytab).encode(), 0o644)
            and qemu == render_conf(qemu, QEMU_SETTINGS))  # fmt: skip


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def listening(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


class RestartFailed(RuntimeError):
    """libvirtd (or its TCP socket) did not come up after a restart."""


class Restarter(Protocol):
    def restart(self) -> None:
        """Make libvirtd run with the current config and listen on TCP; raise on failure."""


class SystemdRestarter:
    """org.freedesktop.systemd1.Manager over the system bus: stop libvirtd.service, start
    libvirtd-tcp.socket, then start libvirtd.service so it takes the socket.
    At boot, while libvirtd.service still waits for the agent, only the socket is started."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout

    def restart(self) -> None:
        import dbus  # noqa: PLC0415 - distro package, imported on use: the venv tests import this module without it

        bus = dbus.SystemBus()
        systemd = bus.get_object("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
        manager = dbus.Interface(systemd, "org.freedesktop.systemd1.Manager")
        # Started, not enabled: enabling would need a daemon reload (seconds on a small node), and the
        # socket is only wanted for this boot anyway; the next boot enrols afresh.
        if self._queued(bus, manager, SERVICE_UNIT):
            # Boot: libvirtd's start job waits for us (the agent's unit is ordered before it). Its
            # sockets just have to be there when it starts; stopping or starting it now would deadlock.
            self._wait(bus, manager.StartUnit(TCP_SOCKET_UNIT, "replace"))
            self._expect(bus, manager, TCP_SOCKET_UNIT, "active")
            log.info("%s started; %s starts with it once the agent is ready", TCP_SOCKET_UNIT, SERVICE_UNIT)
            return
        # systemd refuses to start a socket whose service already runs ("Failed to listen on ... Libvirt
        # non-TLS IP socket" on the booted image, where libvirtd.service is up at boot): stop it first.
        self._wait(bus, manager.StopUnit(SERVICE_UNIT, "replace"))
        self._expect(bus, manager, SERVICE_UNIT, "inactive", "failed")
        self._wait(bus, manager.StartUnit(TCP_SOCKET_UNIT, "replace"))
        self._expect(bus, manager, TCP_SOCKET_UNIT, "active")
        self._wait(bus, manager.StartUnit(SERVICE_UNIT, "replace"))
        self._expect(bus, manager, SERVICE_UNIT, "active")
        log.info("restarted %s with %s through systemd's D-Bus API", SERVICE_UNIT, TCP_SOCKET_UNIT)

    @staticmethod
    def _unit(bus: Any, manager: Any, unit: str, prop: str) -> Any:
        return bus.get_object("org.freedesktop.systemd1", manager.LoadUnit(unit), introspect=False).Get(
            "org.freedesktop.systemd1.Unit", prop, dbus_interface="org.freedesktop.DBus.Properties"
        )

    def _queued(self, bus: Any, manager: Any, unit: str) -> bool:
        """True while `unit` is inactive with a start job waiting (for us, at boot)."""
        job_id, _path = self._unit(bus, manager, unit, "Job")
        return int(job_id) != 0 and str(self._unit(bus, manager, unit, "ActiveState")) == "inactive"

    def _expect(self, bus: Any, manager: Any, unit: str, *states: str) -> None:
        """A finished job says nothing about its result: a socket that failed to bind ends its job too.
        So look at the unit itself, and fail loudly instead of heartbeating with libvirtd deaf on TCP."""
        state = str(self._unit(bus, manager, unit, "ActiveState"))
        if state not in states:
            raise RestartFailed(
                f"{unit} is {state} after its job (wanted {' or '.join(states)}); see journalctl -u {unit}"
            )

    def _wait(self, bus: Any, job: Any) -> None:
        """A job object disappears from the bus when it has finished."""
        import dbus  # noqa: PLC0415 - distro package, imported on use: the venv tests import this module without it

        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                bus.get_object("org.freedesktop.systemd1", job, introspect=False).Get(
                    "org.freedesktop.systemd1.Job", "State", dbus_interface="org.freedesktop.DBus.Properties"
                )
            except dbus.DBusException:
                return
            time.sleep(0.1)
        raise TimeoutError(f"systemd job {job} not finished after {self.timeout}s")


class CommandRestarter:
    """Runs a command (argument list) that restarts libvirtd: the test lab's real libvirtd, a sysvinit script."""

    def __init__(self, argv: Sequence[str], timeout: float = 60.0) -> None:
        self.argv = list(argv)
        self.timeout = timeout

    @classmethod
    def parse(cls, command: str) -> CommandRestarter:
        return cls(shlex.split(command))

    def restart(self) -> None:
        run(self.argv, env=dict(os.environ), timeout=self.timeout)
        log.info("restarted libvirtd with %s", shlex.join(self.argv))


class NoRestarter:
    def restart(self) -> None:
        log.warning("libvirtd restart disabled (--restart=none): its new config takes effect at its next start")
