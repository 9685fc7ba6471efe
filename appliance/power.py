"""Hosts' power management: their BMC settings (password sealed by appliance.secretbox) and power actions.

The API, the web UI and the fencer all come here. A power call goes to the BMC outside any database
transaction (ipmitool may take seconds), and its outcome is recorded as an event afterwards.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from appliance import fencing, hosts
from appliance.db.base import utcnow
from appliance.db.models import EnrolmentWindow, FenceState, Host, Severity
from appliance.errors import Conflict, NotFound, UsageError
from appliance.ipmi import DEFAULT_PORT, Bmc, BmcError, IpmiClient, PowerAction, PowerState
from appliance.secretbox import SecretBox
from appliance.text import MAX_ID

MAX_PASSWORD = 128  # IPMI 2.0 passwords are at most 20 bytes; some BMCs take more through vendor extensions
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})")
_USER = re.compile(r"[\x21-\x7e]{1,64}")  # printable, no spaces: what ipmitool -U passes through unharmed

log = logging.getLogger(__name__)

Sessions = Callable[[], AbstractContextManager[Session]]


@dataclass(frozen=True)
class PowerSettings:
    address: str
    port: int
    user: str
    password: str

    def __repr__(self) -> str:
        return f"PowerSettings({self.address}:{self.port}, user={self.user!r})"


def check_settings(body: dict[str, Any]) -> PowerSettings:
    """A request's power settings, or UsageError naming the field (nothing is written on refusal)."""
    unknown = sorted(set(body) - {"address", "port", "user", "password"})
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown field", "fields: address, port, user, password")
    address, port, user, password = (body.get(k) for k in ("address", "port", "user", "password"))
    if not isinstance(address, str) or not _valid_address(address):
        raise UsageError("address: the BMC's IP address or host name")
    if port is None:
        port = DEFAULT_PORT
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise UsageError("port: an integer from 1 to 65535 (IPMI's is 623)")
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise UsageError("user: 1-64 printable characters, no spaces")
    if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD or "\n" in password:
        raise UsageError(f"password: 1-{MAX_PASSWORD} characters on one line")
    return PowerSettings(address, port, user, password)


def _valid_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return bool(_NAME.fullmatch(value)) and not value.endswith("-")


def configure(session: Session, host: Host, settings: PowerSettings, box: SecretBox, by: str) -> None:
    host.power_address, host.power_port, host.power_user = settings.address, settings.port, settings.user
    host.power_secret = box.seal(settings.password)
    hosts.event(session, host, "host.power", f"power management set to {settings.address}:{settings.port} "
                f"as {settings.user} by {by}")  # fmt: skip


def unconfigure(session: Session, host: Host, by: str) -> None:
    if host.power_address is None:
        raise Conflict(f"host {host.hostname} has no power management to remove")
    host.power_address = host.power_port = host.power_user = host.power_secret = None
    hosts.event(session, host, "host.power", f"power management removed by {by}", Severity.WARNING)


def configured(host: Host) -> bool:
    return host.power_address is not None and host.power_secret is not None


def bmc_of(host: Host, box: SecretBox) -> Bmc:
    if host.power_address is None or host.power_secret is None or host.power_user is None:
        raise Conflict(f"host {host.hostname} has no power management",
                       "set it: drover host power set HOST --address A --user U --password-file F")  # fmt: skip
    return Bmc(host.power_address, host.power_port or DEFAULT_PORT, host.power_user, box.open(host.power_secret))


def describe(host: Host) -> dict[str, object]:
    """What the API shows: never the password, not even sealed."""
    return {
        "configured": configured(host),
        "address": host.power_address,
        "port": host.power_port,
        "user": host.power_user,
        "fence_state": str(host.fence_state),
        "fence_attempts": host.fence_attempts,
        "fence_changed_at": host.fence_changed_at.isoformat() if host.fence_changed_at else None,
        "fence_note": host.fence_note,
        "fenced_by": host.fenced_by,
    }


@dataclass(frozen=True)
class Outcome:
    host_id: int
    hostname: str
    action: PowerAction
    state: PowerState | None
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"host": self.hostname, "host_id": self.host_id, "action": str(self.action),
                "power": str(self.state) if self.state else None, "error": self.error}  # fmt: skip


def act(sessions: Sessions, key: str, action: PowerAction, client: IpmiClient, box: SecretBox, by: str) -> Outcome:
    """Do a power action on host `key` and record it; BmcError (502) when the BMC fails, after recording that too."""
    with sessions() as s:
        host = hosts.find(s, key)
        bmc, host_id, hostname = bmc_of(host, box), host.id, host.hostname
    try:
        state = client.act(bmc, action)
    except BmcError as exc:
        if action is not PowerAction.STATUS:
            _record(sessions, host_id, f"power {action} by {by} failed: {exc.message}", Severity.ERROR)
        raise
    if action is not PowerAction.STATUS:
        _record(sessions, host_id, f"power {action} by {by}: the BMC reports power {state}", Severity.WARNING)
    # Off confirmed by the BMC (a cycle confirms it half-way): the host's VMs died with it, which is a fence in
    # the admin's name. Without it the fencer would find the host unavailable, fence it again and power it on.
    if action is PowerAction.CYCLE or (action is PowerAction.OFF and state is PowerState.OFF):
        with sessions() as s:
            locked = hosts.lock(s, host_id)
            if locked is not None and locked.fence_state is not FenceState.FENCED:
                fencing.release(s, locked, by, f"power {action} by {by} through its BMC, which confirmed power off")
    return Outcome(host_id, hostname, action, state)


# Provisioning from cold. A machine that has never booted has no host row to hold its BMC settings, so the
# enrolment window an admin opens for its one MAC holds them: the admin powers the machine on through them, it
# PXE-boots into that window, and the host it enrols as inherits them (appliance.enrolment calls inherit()).


def configure_window(window: EnrolmentWindow, settings: PowerSettings, box: SecretBox) -> None:
    """Attach a BMC to a window; only a window for exactly one MAC: a BMC powers one machine."""
    if len(window.macs) != 1 or window.max_hosts != 1:
        raise UsageError("power: an enrolment window with BMC settings is for one machine: give exactly one MAC",
                         "e.g. drover host enrol --window 30m --mac MAC --bmc-address A --bmc-user U ...")  # fmt: skip
    window.power_address, window.power_port, window.power_user = settings.address, settings.port, settings.user
    window.power_secret = box.seal(settings.password)


def window_power(window: EnrolmentWindow) -> dict[str, object] | None:
    """What the API shows of a window's BMC: never the password."""
    if window.power_address is None:
        return None
    return {"address": window.power_address, "port": window.power_port, "user": window.power_user}


def inherit(session: Session, host: Host, window: EnrolmentWindow) -> bool:
    """A host enrolled through `window` takes its BMC settings, unless it has its own already (an admin's)."""
    if window.power_secret is None or configured(host):
        return False
    host.power_address, host.power_port, host.power_user = window.power_address, window.power_port, window.power_user
    host.power_secret = window.power_secret  # sealed with the same key: copied as it is, never opened here
    hosts.event(session, host, "host.power", f"power management {window.power_address}:{window.power_port} as "
                f"{window.power_user} from enrolment window {window.id}")  # fmt: skip
    return True


def act_window(
    sessions: Sessions, window_id: int, action: PowerAction, client: IpmiClient, box: SecretBox, by: str
) -> dict[str, object]:
    """Power the machine an open window is for on, off, or ask its status; BmcError (502) when its BMC fails."""
    with sessions() as s:
        window = s.get(EnrolmentWindow, window_id) if 0 < window_id <= MAX_ID else None
        if window is None:
            raise NotFound(f"no enrolment window {window_id}", "see `drover host enrol --list`")
        if window.power_address is None or window.power_user is None or window.power_secret is None:
            raise Conflict(f"enrolment window {window_id} has no BMC settings",
                           "open one with --bmc-address, --bmc-user and --bmc-password-file")  # fmt: skip
        if action is PowerAction.ON and (window.closed_at is not None or window.expires_at <= utcnow()):
            # Powered on outside its window the machine would PXE-boot into nothing and wait as pending.
            raise Conflict(f"enrolment window {window_id} is no longer open", "open a new one")
        bmc = Bmc(window.power_address, window.power_port or DEFAULT_PORT, window.power_user,
                  box.open(window.power_secret))  # fmt: skip
        mac = window.macs[0]
    state = client.act(bmc, action)
    if action is not PowerAction.STATUS:
        log.info("power %s of the machine %s (enrolment window %s) by %s: the BMC reports power %s", action, mac,
                 window_id, by, state)  # fmt: skip
    return {"window": window_id, "mac": mac, "action": str(action), "power": str(state)}


def _record(sessions: Sessions, host_id: int, message: str, severity: Severity) -> None:
    with sessions() as s:
        host = s.get(Host, host_id)
        if host is not None:
            hosts.event(s, host, "host.power", message, severity)
