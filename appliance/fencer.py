"""The fencer: a thread of `drover serve` that walks unavailable hosts through oVirt's fencing order.

unavailable for [fencing] grace_seconds
  -> soft step, only while the node still heartbeats: its agent restarts libvirtd (heartbeat answer);
     back within soft_seconds: nothing more happens
  -> power off through the host's BMC, confirmed by the BMC reporting power off within confirm_seconds
  -> fenced: its VMs are released and its HA VMs restarted elsewhere (appliance.fencing)
A failed attempt is an error event and is retried every retry_seconds; it never counts as a fence. Nothing
is fenced in the first quiet_seconds after start: the host browser has not yet seen the fleet answer. Every
step is in the host's row (fence_state), so an appliance restarted mid-way carries on from there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, or_, select
from sqlalchemy.orm import Session

from appliance import fencing, hosts, power
from appliance.config import Config
from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import FenceState, Host, HostState, Severity
from appliance.errors import DroverError
from appliance.ipmi import Bmc, IpmiClient, PowerAction, PowerState
from appliance.secretbox import SecretBox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    host_id: int
    hostname: str


class Fencer:
    def __init__(
        self, cfg: Config, engine: Engine, client: IpmiClient | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cfg = cfg
        self.fc = cfg.fencing
        self.engine = engine
        self.client = client or IpmiClient(cfg.power)
        self.box = SecretBox.under(cfg.state_dir)
        self.clock = clock
        self.started = clock()
        self._held: set[int] = set()  # hosts told about the quiet period (one event each)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fencer", daemon=True)

    def start(self) -> None:
        self.started = self.clock()
        self._thread.start()
        log.info("fencer started: no fencing for %ss, then after %ss unavailable", self.fc.quiet_seconds,
                 self.fc.grace_seconds)  # fmt: skip

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.cfg.power.timeout_seconds * 3 + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except DroverError as exc:  # the database away: a daemon logs and carries on
                log.error("fencer: %s", exc)
            except Exception:
                log.exception("fencer: unexpected error")
            self._stop.wait(self.fc.poll_seconds)

    def quiet(self) -> bool:
        return self.clock() - self.started < self.fc.quiet_seconds

    def tick(self) -> None:
        """One look at every host that is unavailable or has a fence under way; power calls outside transactions."""
        with session_scope(self.engine) as s:
            ids = s.scalars(
                select(Host.id).where(
                    Host.approved_at.is_not(None),
                    or_(Host.state == HostState.UNAVAILABLE, Host.fence_state != FenceState.NONE),
                )
            ).all()
        for host_id in ids:
            attempt = self._step(host_id)
            if attempt is not None and not self._stop.is_set():
                self._fence(attempt)

    def _step(self, host_id: int) -> Attempt | None:
        now = utcnow()
        with session_scope(self.engine) as s:
            host = hosts.lock(s, host_id)
            if host is None:
                return None
            if host.state is not HostState.UNAVAILABLE:
                if host.state is HostState.AVAILABLE and host.fence_state is not FenceState.NONE:
                    fencing.clear(s, host, "libvirt answers again")
                return None
            if host.fence_state is FenceState.FENCED:
                return None  # released; waits for the host to come back from its reboot
            down = (now - host.state_changed_at).total_seconds()
            if host.fence_state is FenceState.NONE:
                if down < self.fc.grace_seconds:
                    return None
                if self.quiet():
                    if host.id not in self._held:
                        self._held.add(host.id)
                        left = self.fc.quiet_seconds - (self.clock() - self.started)
                        hosts.event(s, host, "fence.held", f"unavailable for {down:.0f}s, but the appliance "
                                    f"started less than {self.fc.quiet_seconds}s ago: not fenced for another "
                                    f"{left:.0f}s")  # fmt: skip
                    return None
                beat = host.last_heartbeat_at
                fresh = timedelta(seconds=3 * self.cfg.nodes.heartbeat_seconds)
                if self.fc.soft_seconds > 0 and beat is not None and now - beat <= fresh:
                    fencing.set_fence(s, host, FenceState.SOFT, "asking the node agent to restart libvirtd")
                    host.libvirtd_restart_asked_at = now
                    hosts.event(s, host, "fence.start", f"unavailable for {down:.0f}s but still heartbeating: "
                                "soft step, its agent is asked to restart libvirtd", Severity.WARNING)  # fmt: skip
                    return None
                fencing.set_fence(s, host, FenceState.FENCING, "powering off through its BMC")
                host.fence_attempts = 0
                hosts.event(s, host, "fence.start", f"unavailable for {down:.0f}s and silent: powering it off "
                            "through its BMC", Severity.WARNING)  # fmt: skip
                return self._attempt(s, host)
            since = (now - (host.fence_changed_at or now)).total_seconds()
            if host.fence_state is FenceState.SOFT:
                if since < self.fc.soft_seconds:
                    return None
                host.libvirtd_restart_asked_at = None
                fencing.set_fence(s, host, FenceState.FENCING, "powering off through its BMC")
                host.fence_attempts = 0
                hosts.event(s, host, "fence.start", f"libvirtd not back {self.fc.soft_seconds}s after the soft step: "
                            "powering it off through its BMC", Severity.WARNING)  # fmt: skip
                return self._attempt(s, host)
            # FENCING: the first attempt now, later ones retry_seconds after the last failure.
            if host.fence_attempts > 0 and since < self.fc.retry_seconds:
                return None
            return self._attempt(s, host)

    def _attempt(self, s: Session, host: Host) -> Attempt | None:
        if not power.configured(host):
            if host.fence_attempts == 0:  # said once; nothing to retry until someone sets power management
                host.fence_attempts = 1
                host.fence_note = "no power management: cannot fence"
                hosts.event(s, host, "fence.failed", "cannot fence: no power management; its VMs stay unreachable "
                            "until it answers, or until `drover host confirm-rebooted` once it is known to be off",
                            Severity.ERROR)  # fmt: skip
            return None
        return Attempt(host.id, host.hostname)

    def _fence(self, attempt: Attempt) -> None:
        """Power the host off and wait for its BMC to say off; record a fence or a failure."""
        try:
            with session_scope(self.engine) as s:
                host = s.get(Host, attempt.host_id)
                if host is None:
                    return
                bmc = power.bmc_of(host, self.box)
            log.warning("fencing %s: power off through its BMC %r", attempt.hostname, bmc)
            state = self.client.act(bmc, PowerAction.OFF)
            deadline = self.clock() + self.fc.confirm_seconds
            while state is not PowerState.OFF and self.clock() < deadline and not self._stop.is_set():
                time.sleep(1)
                state = self.client.status(bmc)
            if state is not PowerState.OFF:
                raise DroverError(f"its BMC still reports power {state} {self.fc.confirm_seconds}s after power off")
        except DroverError as exc:
            self._failed(attempt, exc.message)
            return
        with session_scope(self.engine) as s:
            host = hosts.lock(s, attempt.host_id)
            if host is None or host.fence_state is not FenceState.FENCING:
                return  # an admin confirmed it meanwhile (or another appliance process fenced it): released once
            host.fence_attempts += 1
            fencing.release(s, host, "bmc", f"powered off through its BMC {bmc.address}:{bmc.port}, which reports "
                            "power off")  # fmt: skip
        if self.fc.power_on_after:
            self._power_on(attempt, bmc)

    def _power_on(self, attempt: Attempt, bmc: Bmc) -> None:
        try:
            state = self.client.act(bmc, PowerAction.ON)
            message, severity = f"powered on again after the fence (BMC reports {state})", Severity.INFO
        except DroverError as exc:
            message, severity = f"fenced, but powering it on again failed: {exc.message}", Severity.WARNING
        with session_scope(self.engine) as s:
            host = s.get(Host, attempt.host_id)
            if host is not None:
                hosts.event(s, host, "host.power", message, severity)

    def _failed(self, attempt: Attempt, why: str) -> None:
        log.error("fencing %s failed: %s (retried in %ss)", attempt.hostname, why, self.fc.retry_seconds)
        with session_scope(self.engine) as s:
            host = hosts.lock(s, attempt.host_id)
            if host is None or host.fence_state is not FenceState.FENCING:
                return
            host.fence_attempts += 1
            fencing.set_fence(s, host, FenceState.FENCING, f"attempt {host.fence_attempts} failed: {why}")
            hosts.event(s, host, "fence.failed", f"fence attempt {host.fence_attempts} failed: {why}; retried in "
                        f"{self.fc.retry_seconds}s; its VMs are not restarted elsewhere until a fence succeeds",
                        Severity.ERROR)  # fmt: skip
