"""IPMI over LAN to a host's BMC: chassis power status, on, off, cycle — through `ipmitool`.

ipmitool rather than pyghmi: pyghmi 1.6 asks the BMC for SHA-256 RAKP and fails against BMCs that answer
with SHA-1 (virtualbmc among them, LAB.md); making it work means forcing a private cipher-suite setting.
ipmitool negotiates what the BMC offers, is the tool admins already use to check a BMC by hand, and runs
through appliance.runner like every other command. The password goes in IPMI_PASSWORD with `-E`, never on
the command line that run() logs.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass

from appliance.config import PowerConfig
from appliance.errors import CommandFailed, UpstreamError
from appliance.runner import run

log = logging.getLogger(__name__)
# ipmitool's -R counts attempts, and 0 means its default (4): one datagram per request is -R 1 (measured with
# strace against a silent port: -R 0 sent 8 datagrams, -R 1 sent 2 — the session's two set-up messages).
ONE_TRY = 1

DEFAULT_PORT = 623
CYCLE_OFF_SECONDS = 1.0  # IPMI: a power cycle keeps the chassis off at least 1 s


class PowerState(enum.StrEnum):
    ON = "on"
    OFF = "off"


class PowerAction(enum.StrEnum):
    ON = "on"
    OFF = "off"  # hard power off, no ACPI: what fencing needs
    CYCLE = "cycle"
    STATUS = "status"


class BmcError(UpstreamError):
    """The BMC did not answer, refused us or said something we cannot read."""


@dataclass(frozen=True)
class Bmc:
    address: str
    port: int
    user: str
    password: str

    def __repr__(self) -> str:  # a dataclass repr would print the password into any log line that shows it
        return f"Bmc({self.address}:{self.port}, user={self.user!r})"


class IpmiClient:
    def __init__(self, cfg: PowerConfig) -> None:
        self.cfg = cfg

    def _call(self, bmc: Bmc, *command: str, retries: int | None = None) -> str:
        argv = [
            "ipmitool",
            "-I", self.cfg.interface,
            "-H", bmc.address,
            "-p", str(bmc.port),
            "-U", bmc.user,
            "-E",  # the password from IPMI_PASSWORD: not in argv, so not in the process list or our log
            "-R", str(self.cfg.retries if retries is None else retries),
            "-N", "2",
            *command,
        ]  # fmt: skip
        try:
            proc = run(argv, env={"IPMI_PASSWORD": bmc.password}, timeout=self.cfg.timeout_seconds)
        except CommandFailed as exc:
            last = (exc.output or str(exc)).strip().splitlines()
            raise BmcError(f"BMC {bmc.address}:{bmc.port}: {last[-1] if last else exc}",
                           "check the host's power settings and that its BMC answers") from None
        return proc.stdout

    def status(self, bmc: Bmc) -> PowerState:
        out = self._call(bmc, "chassis", "power", "status")
        # "Chassis Power is on" / "Chassis Power is off"
        words = out.strip().lower().split()
        if "on" in words[-1:]:
            return PowerState.ON
        if "off" in words[-1:]:
            return PowerState.OFF
        raise BmcError(f"BMC {bmc.address}:{bmc.port} answered an unknown power state: {out.strip()[:200]!r}")

    def send(self, bmc: Bmc, action: PowerAction) -> None:
        """Send "power on" or "power off" once: no ipmitool retransmission. A BMC that does not tell a resent
        request from a new one (virtualbmc does not) would otherwise act twice on a slow answer. The fencer
        records each command and asks the BMC's status afterwards, so a lost answer costs nothing twice."""
        if action not in (PowerAction.ON, PowerAction.OFF):
            raise ValueError(f"send() takes on or off, not {action}")
        log.info("power %s of %r (sent once)", action, bmc)
        self._call(bmc, "chassis", "power", str(action), retries=ONE_TRY)

    def act(self, bmc: Bmc, action: PowerAction) -> PowerState:
        """Do `action` and return the power state the BMC reports right after it."""
        if action is PowerAction.CYCLE:
            return self._cycle(bmc)
        if action is PowerAction.STATUS:
            return self.status(bmc)
        log.info("power %s of %r", action, bmc)
        want = PowerState.ON if action is PowerAction.ON else PowerState.OFF
        self._once(bmc, action, want)
        return self._settle(bmc, want)

    def _once(self, bmc: Bmc, action: PowerAction, want: PowerState) -> None:
        """An admin's on or off, sent once as the fencer's are (a BMC may act twice on a retransmission); a
        lost answer is not a failure if the BMC then reports the state asked for."""
        try:
            self._call(bmc, "chassis", "power", str(action), retries=ONE_TRY)
        except BmcError:
            if self._settle(bmc, want) is not want:
                raise
            log.info("power %s of %r: no answer, but the BMC reports %s", action, bmc, want)

    def _settle(self, bmc: Bmc, want: PowerState) -> PowerState:
        """The state the BMC reports once it shows `want`, or after timeout_seconds: many BMCs accept "on" at
        once and report it only when the chassis is up (virtualbmc answers before its domain has started)."""
        deadline = time.monotonic() + self.cfg.timeout_seconds
        state = self.status(bmc)
        while state is not want and time.monotonic() < deadline:
            time.sleep(0.5)
            state = self.status(bmc)
        return state

    def _cycle(self, bmc: Bmc) -> PowerState:
        """Off, confirmed off, a second's pause, on: what IPMI's own "power cycle" does. Done by hand because
        not every BMC has the command (virtualbmc answers it with 0xcc) and some refuse it while off."""
        log.info("power cycle of %r", bmc)
        self._once(bmc, PowerAction.OFF, PowerState.OFF)
        if self._settle(bmc, PowerState.OFF) is not PowerState.OFF:
            raise BmcError(f"BMC {bmc.address}:{bmc.port} still reports power on after power off")
        time.sleep(CYCLE_OFF_SECONDS)
        self._once(bmc, PowerAction.ON, PowerState.ON)
        return self._settle(bmc, PowerState.ON)
