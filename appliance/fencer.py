"""The fencer: a thread of `drover serve` that walks unavailable hosts through oVirt's fencing order.

unavailable for [fencing] grace_seconds
  -> soft step, only while the node still heartbeats: its agent restarts libvirtd (heartbeat answer);
     back within soft_seconds: nothing more happens
  -> power off through the host's BMC, confirmed by the BMC reporting power off within confirm_seconds
  -> fenced: its VMs are released and its HA VMs restarted elsewhere (appliance.fencing); then powered on again
A failed attempt is an error event and is retried every retry_seconds; it never counts as a fence. Nothing
is fenced in the first quiet_seconds after start: the host browser has not yet seen the fleet answer. Every
step is in the host's row (fence_state), so an appliance restarted mid-way carries on from there.

Several appliance processes may run against one database; only the one holding the `fencer` lease fences
(appliance.leadership). Every power command is recorded per fence episode before it is sent
(appliance.db.models.fencing): a process taking over finds the command its dead predecessor left `pending`
and asks the BMC what happened rather than sending it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.orm import Session

from appliance import fencing, hosts, power
from appliance.config import Config
from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import FenceAction, FenceAttempt, FenceResult, FenceState, Host, HostState, Severity
from appliance.errors import DroverError
from appliance.ipmi import Bmc, IpmiClient, PowerAction, PowerState
from appliance.leadership import Leadership, Lost
from appliance.secretbox import SecretBox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """One recorded power command: to send now, or (`resume`) sent by a fencer that is gone, to be looked at."""

    host_id: int
    hostname: str
    attempt_id: int
    action: FenceAction
    sent_at: datetime
    resume: bool = False

    @property
    def want(self) -> PowerState:
        return PowerState.OFF if self.action is FenceAction.OFF else PowerState.ON


class Fencer:
    def __init__(
        self,
        cfg: Config,
        engine: Engine,
        client: IpmiClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        lease: Leadership | None = None,
    ) -> None:
        self.cfg = cfg
        self.fc = cfg.fencing
        self.engine = engine
        self.client = client or IpmiClient(cfg.power)
        self.box = SecretBox.under(cfg.state_dir)
        self.clock = clock
        self.started = clock()
        self.lease = lease or Leadership(engine, self.fc.lease_seconds)
        # A command is recorded only with a third of the lease left: it reaches the BMC before anyone may take over.
        self.spare = self.fc.lease_seconds / 3
        self._held: set[int] = set()  # hosts told about the quiet period (one event each)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fencer", daemon=True)
        self._renewer = threading.Thread(target=self._renew, name="fencer-lease", daemon=True)

    def start(self) -> None:
        self.started = self.clock()
        self._renewer.start()
        self._thread.start()
        log.info("fencer started as %s: no fencing for %ss, then after %ss unavailable, while it holds the lease",
                 self.lease.holder, self.fc.quiet_seconds, self.fc.grace_seconds)  # fmt: skip

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.cfg.power.timeout_seconds * 3 + 5)
        self._renewer.join(10)
        self.lease.release()

    def _renew(self) -> None:
        """Its own thread: a fence waiting minutes on a slow BMC must not let the lease lapse under it."""
        every = max(0.2, self.fc.lease_seconds / 3)
        while not self._stop.is_set():
            try:
                self.lease.hold()
            except DroverError as exc:  # the database away: held() runs out by itself and the fencer stops acting
                log.error("fencer lease: %s", exc)
            except Exception:
                log.exception("fencer lease: unexpected error")
            self._stop.wait(every)

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
        """One look at every host that is unavailable or has a fence under way; power calls outside transactions.
        Only while this process leads: another process's fencer does the work otherwise."""
        if not self.lease.held(self.spare):
            return
        with session_scope(self.engine) as s:
            ids = s.scalars(
                select(Host.id).where(
                    Host.approved_at.is_not(None),
                    or_(Host.state == HostState.UNAVAILABLE, Host.fence_state != FenceState.NONE),
                )
            ).all()
        for host_id in ids:
            if self._stop.is_set() or not self.lease.held(self.spare):
                return
            attempt = self._step(host_id)
            if attempt is not None and not self._stop.is_set():
                self._power(attempt)

    def _step(self, host_id: int) -> Attempt | None:
        now = utcnow()
        with session_scope(self.engine) as s:
            host = hosts.lock(s, host_id)
            if host is None:
                return None
            try:
                self.lease.check(s)  # whatever it decides is written under the lease it holds
            except Lost as exc:
                log.warning("fencer: not deciding about %s: %s", host.hostname, exc)
                return None
            if host.state is not HostState.UNAVAILABLE:
                if host.state is HostState.AVAILABLE and host.fence_state is not FenceState.NONE:
                    fencing.clear(s, host, "libvirt answers again")
                return None
            if host.fence_state is FenceState.FENCED:
                return self._after_fence(s, host)  # released; powered on again, then waits for it to come back
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
                host.fence_episode += 1  # a new incident: its power commands are counted afresh
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
                return self._attempt(s, host, FenceAction.OFF)
            since = (now - (host.fence_changed_at or now)).total_seconds()
            if host.fence_state is FenceState.SOFT:
                if since < self.fc.soft_seconds:
                    return None
                host.libvirtd_restart_asked_at = None
                fencing.set_fence(s, host, FenceState.FENCING, "powering off through its BMC")
                host.fence_attempts = 0
                hosts.event(s, host, "fence.start", f"libvirtd not back {self.fc.soft_seconds}s after the soft step: "
                            "powering it off through its BMC", Severity.WARNING)  # fmt: skip
                return self._attempt(s, host, FenceAction.OFF)
            # FENCING. A power off recorded and never closed: its sender died (or lost the lease) after recording
            # it. It may have reached the BMC: ask the BMC, do not send it again.
            pending = self._pending(s, host, FenceAction.OFF)
            if pending is not None:
                return pending
            # The first attempt now, later ones retry_seconds after the last failure.
            if host.fence_attempts > 0 and since < self.fc.retry_seconds:
                return None
            return self._attempt(s, host, FenceAction.OFF)

    def _after_fence(self, s: Session, host: Host) -> Attempt | None:
        """A host its BMC fenced is powered on again once per episode (a stateless node boots and re-enrols)."""
        if not self.fc.power_on_after or host.fenced_by != "bmc":
            return None
        confirmed_off = s.scalar(select(func.count()).select_from(FenceAttempt).where(
            FenceAttempt.host_id == host.id, FenceAttempt.episode == host.fence_episode,
            FenceAttempt.action == FenceAction.OFF, FenceAttempt.result == FenceResult.CONFIRMED))  # fmt: skip
        if not confirmed_off:
            return None  # not this fencer's fence (one from before the episodes were recorded): left as it is
        pending = self._pending(s, host, FenceAction.ON)
        if pending is not None:
            return pending
        if self._count(s, host, FenceAction.ON) > 0:
            return None  # sent, and confirmed or reported failed: not repeated
        return self._attempt(s, host, FenceAction.ON)

    def _count(self, s: Session, host: Host, action: FenceAction) -> int:
        return s.scalar(select(func.count()).select_from(FenceAttempt).where(
            FenceAttempt.host_id == host.id, FenceAttempt.episode == host.fence_episode,
            FenceAttempt.action == action)) or 0  # fmt: skip

    def _pending(self, s: Session, host: Host, action: FenceAction) -> Attempt | None:
        row = s.scalars(select(FenceAttempt).where(
            FenceAttempt.host_id == host.id, FenceAttempt.episode == host.fence_episode,
            FenceAttempt.action == action, FenceAttempt.result == FenceResult.PENDING)
            .order_by(FenceAttempt.number.desc()).limit(1)).first()  # fmt: skip
        if row is None:
            return None
        log.warning("fencer: power %s of %s (attempt %s, sent by %s in term %s) was never confirmed: asking its BMC",
                    action, host.hostname, row.number, row.holder, row.term)  # fmt: skip
        return Attempt(host.id, host.hostname, row.id, action, row.sent_at, resume=True)

    def _attempt(self, s: Session, host: Host, action: FenceAction) -> Attempt | None:
        """Record the power command about to be sent, under the lease, with time to spare; None if it cannot be."""
        if not power.configured(host):
            if action is FenceAction.OFF and host.fence_attempts == 0:  # said once; nothing to retry until someone
                host.fence_attempts = 1  # sets power management
                host.fence_note = "no power management: cannot fence"
                hosts.event(s, host, "fence.failed", "cannot fence: no power management; its VMs stay unreachable "
                            "until it answers, or until `drover host confirm-rebooted` once it is known to be off",
                            Severity.ERROR)  # fmt: skip
            return None
        try:
            term = self.lease.check(s, self.spare)
        except Lost as exc:
            log.warning("fencer: power %s of %s not sent: %s", action, host.hostname, exc)
            return None
        now = utcnow()
        row = FenceAttempt(host_id=host.id, episode=host.fence_episode, action=action,
                           number=self._count(s, host, action) + 1, holder=self.lease.holder, term=term, sent_at=now,
                           result=FenceResult.PENDING, note="")  # fmt: skip
        s.add(row)
        s.flush()
        return Attempt(host.id, host.hostname, row.id, action, now)

    def _power(self, attempt: Attempt) -> None:
        """Send the command (unless resuming one), wait for the BMC to report it; record the outcome."""
        try:
            with session_scope(self.engine) as s:
                host = s.get(Host, attempt.host_id)
                if host is None:
                    return
                bmc = power.bmc_of(host, self.box)
            if not attempt.resume:
                log.warning("fencer: power %s of %s through its BMC %r", attempt.action, attempt.hostname, bmc)
                try:
                    self.client.send(bmc, PowerAction.OFF if attempt.action is FenceAction.OFF else PowerAction.ON)
                except DroverError as exc:  # its answer may be what was lost: the BMC's status decides below
                    log.warning("fencer: power %s of %s: %s; asking its BMC", attempt.action, attempt.hostname,
                                exc.message)  # fmt: skip
            state = self.client.status(bmc)
            # From when it was recorded: a resumed command gets what is left of its sender's window, no more.
            deadline = attempt.sent_at + timedelta(seconds=self.fc.confirm_seconds)
            while state is not attempt.want and utcnow() < deadline and not self._stop.is_set():
                time.sleep(1)
                state = self.client.status(bmc)
            if state is not attempt.want and self._stop.is_set():
                return  # stopping: left pending, so whoever fences next asks the BMC before sending anything
            if state is not attempt.want:
                raise DroverError(f"its BMC still reports power {state} {self.fc.confirm_seconds}s after power "
                                  f"{attempt.action}")  # fmt: skip
        except DroverError as exc:
            self._close(attempt, None, exc.message)
            return
        self._close(attempt, bmc, f"its BMC reports power {attempt.want}")

    def _close(self, attempt: Attempt, bmc: Bmc | None, note: str) -> None:
        """Record the outcome: confirmed (bmc given) or failed. Under the lease: a fencer that lost it leaves the
        command pending, and the process that took over looks at the BMC itself."""
        with session_scope(self.engine) as s:
            host = hosts.lock(s, attempt.host_id)
            row = s.get(FenceAttempt, attempt.attempt_id)
            if host is None or row is None or row.result is not FenceResult.PENDING:
                return
            try:
                self.lease.check(s)
            except Lost as exc:
                log.warning("fencer: outcome of power %s of %s left to the new leader: %s", attempt.action,
                            attempt.hostname, exc)  # fmt: skip
                return
            row.result = FenceResult.CONFIRMED if bmc is not None else FenceResult.FAILED
            row.finished_at, row.finished_by, row.note = utcnow(), self.lease.holder, note[:2000]
            if attempt.action is FenceAction.ON:
                if bmc is not None:
                    hosts.event(s, host, "host.power", f"powered on again after the fence ({note})")
                else:
                    hosts.event(s, host, "host.power", f"fenced, but powering it on again failed: {note}",
                                Severity.WARNING)  # fmt: skip
                return
            if host.fence_state is not FenceState.FENCING or host.fence_episode != row.episode:
                return  # an admin confirmed it meanwhile, or it came back: released once, or not at all
            host.fence_attempts += 1
            if bmc is not None:
                taken = "" if row.holder == self.lease.holder else f", sent by {row.holder} before it went away"
                fencing.release(s, host, "bmc", f"powered off through its BMC {bmc.address}:{bmc.port}, which reports "
                                f"power off{taken}")  # fmt: skip
                return
            log.error("fencing %s failed: %s (retried in %ss)", attempt.hostname, note, self.fc.retry_seconds)
            fencing.set_fence(s, host, FenceState.FENCING, f"attempt {host.fence_attempts} failed: {note}")
            hosts.event(s, host, "fence.failed", f"fence attempt {host.fence_attempts} failed: {note}; retried in "
                        f"{self.fc.retry_seconds}s; its VMs are not restarted elsewhere until a fence succeeds",
                        Severity.ERROR)  # fmt: skip
