"""A job exactly one appliance process may do at a time (the fencer), decided by a lease row in the database.

Several `drover serve` processes may share one PostgreSQL database. Each would fence a silent host on its own;
two fencers racing over one host would power it off twice and could release its VMs twice. So the fencer runs
only in the process holding the lease `fencer`:

- the holder renews the row's `expires_at` every fencer poll; a process that finds it expired takes it, with
  `term` one higher (a SIGKILLed holder is replaced within `lease_seconds` plus one poll);
- a holder acts (records a power command, releases a host's VMs) only inside a transaction that has locked the
  lease row and still sees itself there with time to spare (`check`), so a holder that lost its lease (the
  database away, the process frozen) stops before anything it does could be done twice;
- what it sends to a BMC is recorded per fence episode first (appliance.db.models.fencing), so the next holder
  resumes a fence rather than repeating it.

The holder's clock decides expiry, as for task leases: the processes' clocks must agree to well within a lease.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy.exc
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import Event, Lease, Severity

log = logging.getLogger(__name__)

FENCER = "fencer"


def process_name() -> str:
    """host:pid:random, unique per process lifetime (a pid is reused; the random part is not)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Leader:
    """What the lease row says, for `drover fencer status` and the UI."""

    name: str
    holder: str
    term: int
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime

    @property
    def expired(self) -> bool:
        return self.expires_at <= utcnow()

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "holder": self.holder, "term": self.term,
                "acquired_at": self.acquired_at.isoformat(), "renewed_at": self.renewed_at.isoformat(),
                "expires_at": self.expires_at.isoformat(), "expired": self.expired}  # fmt: skip


def current(session: Session, name: str = FENCER) -> Leader | None:
    row = session.scalars(select(Lease).where(Lease.name == name)).one_or_none()
    if row is None:
        return None
    return Leader(row.name, row.holder, row.term, row.acquired_at, row.renewed_at, row.expires_at)


class Lost(Exception):
    """The lease is not (or no longer) this process's: whatever was about to be done is not done."""


class Leadership:
    def __init__(
        self, engine: Engine, seconds: float, name: str = FENCER, holder: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.name = name
        self.seconds = seconds
        self.holder = holder or process_name()
        self.clock = clock
        self.term: int | None = None
        self.until: datetime | None = None  # the expiry this process last wrote

    def held(self, spare: float = 0) -> bool:
        """This process's own view, no database: it held the lease at its last renewal, with `spare` s left."""
        return self.term is not None and self.until is not None and self.clock() + timedelta(seconds=spare) < self.until

    def hold(self) -> bool:
        """Renew the lease if it is ours, take it if it is free or expired; True while this process holds it."""
        try:
            with session_scope(self.engine) as s:
                return self._hold(s)
        except sqlalchemy.exc.IntegrityError:  # two processes created the row at once: the other one won
            self.term = None
            return False

    def _hold(self, s: Session) -> bool:
        now = self.clock()
        until = now + timedelta(seconds=self.seconds)
        row = s.scalars(select(Lease).where(Lease.name == self.name).with_for_update()).one_or_none()
        if row is None:
            row = Lease(name=self.name, holder=self.holder, term=1, acquired_at=now, renewed_at=now, expires_at=until)
            s.add(row)
            s.flush()
            self._took(s, row, None)
        elif row.holder == self.holder:
            row.renewed_at, row.expires_at = now, until
        elif row.expires_at <= now:
            previous, overdue = row.holder, (now - row.expires_at).total_seconds()
            row.holder, row.term, row.acquired_at, row.renewed_at, row.expires_at = (
                self.holder, row.term + 1, now, now, until)  # fmt: skip
            self._took(s, row, f"{previous}, whose lease ran out {overdue:.1f}s ago")
        else:
            if self.term is not None:
                log.warning("%s lease lost to %s (term %s)", self.name, row.holder, row.term)
            self.term, self.until = None, None
            return False
        self.term, self.until = row.term, until
        return True

    def _took(self, s: Session, row: Lease, previous: str | None) -> None:
        text = f"{self.holder} leads the {self.name} (term {row.term})" + (f", taking over from {previous}"
                                                                          if previous else "")  # fmt: skip
        log.warning("%s", text)
        s.add(Event(kind=f"{self.name}.leader", subject=self.holder, message=text,
                    severity=Severity.WARNING if previous else Severity.INFO))  # fmt: skip

    def check(self, s: Session, spare: float = 0) -> int:
        """Inside the transaction about to act: lock the lease row and make sure it is still ours with `spare`
        seconds left; the term acted in, or Lost. Whoever takes the lease over must wait for this lock."""
        if self.term is None:
            raise Lost(f"this process does not hold the {self.name} lease")
        row = s.scalars(select(Lease).where(Lease.name == self.name).with_for_update()).one_or_none()
        now = self.clock()
        if row is None or row.holder != self.holder or row.term != self.term:
            self.term, self.until = None, None
            raise Lost(f"the {self.name} lease is held by {row.holder if row else 'nobody'} now")
        if row.expires_at <= now + timedelta(seconds=spare):
            raise Lost(f"the {self.name} lease runs out in {(row.expires_at - now).total_seconds():.1f}s: not "
                       "acting so close to it")  # fmt: skip
        return row.term

    def release(self) -> None:
        """A clean stop hands over at once: the lease is marked expired (the next poll of another process takes it)."""
        if self.term is None:
            return
        try:
            with session_scope(self.engine) as s:
                row = s.scalars(select(Lease).where(Lease.name == self.name).with_for_update()).one_or_none()
                if row is not None and row.holder == self.holder:
                    row.expires_at = self.clock()
        except Exception as exc:  # stopping anyway: the lease runs out by itself
            log.warning("could not hand the %s lease over: %s", self.name, exc)
        self.term, self.until = None, None
