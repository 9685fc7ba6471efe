"""One-time console tickets: issued to a user who may control a VM, redeemed once by the console WebSocket.

A ticket is `<selector>.<secret>`: the selector finds the row, only the secret's SHA-256 is stored. It is bound
to the user it was issued to, one VM and one kind (VNC or serial), and must be used within
[console] ticket_seconds. The right is the one appliance.permissions gives for every VM action (vm_control on
the VM's pool), checked when the ticket is issued, again when it is redeemed, and while the console is open.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from appliance import permissions
from appliance.db.base import utcnow
from appliance.db.models import ConsoleKind, ConsoleTicket, Vm, VmState
from appliance.errors import Conflict, Forbidden, UsageError
from appliance.permissions import Privilege

# States in which the VM runs in a qemu process on its host: there is a console to show.
LIVE_STATES = frozenset({VmState.RUNNING, VmState.PAUSED, VmState.STOPPING})
# Used or expired tickets are kept this long (they say who opened which console when), then deleted.
KEEP = timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    ticket: str
    kind: ConsoleKind
    expires: datetime
    vm_id: int


@dataclass(frozen=True)
class Grant:
    """A redeemed ticket: who may now hold which console of which VM, on the host it ran on then."""

    principal: str
    vm_id: int
    kind: ConsoleKind
    host_id: int


class TicketRefused(Forbidden):
    """No ticket, a wrong, expired or used one, or one for another user, VM or kind: nothing is opened."""


def parse_kind(value: object) -> ConsoleKind:
    if value is None:
        return ConsoleKind.VNC
    if not isinstance(value, str) or value not in set(ConsoleKind):
        raise UsageError(f"kind: one of {', '.join(ConsoleKind)}", "vnc (graphics, noVNC) or serial (a terminal)")
    return ConsoleKind(value)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def require_console(s: Session, principal: str, vm: Vm) -> int:
    """The host whose qemu runs `vm`, if `principal` may control it and it runs: else Forbidden or Conflict."""
    permissions.require(s, principal, Privilege.VM_CONTROL, vm.hardware_pool_id, f"open the console of VM {vm.name}")
    if vm.state not in LIVE_STATES or vm.host_id is None:
        raise Conflict(f"VM {vm.name} is {vm.state}: it has no console now", "start it first")
    return vm.host_id


def session_key(session_secret: str) -> str:
    """What binds a ticket to one web UI session: a hash of that session's own secret (its CSRF token)."""
    return _hash("ui-session:" + session_secret)


def issue(s: Session, vm: Vm, principal: str, kind: ConsoleKind, lifetime_seconds: int,
          session: str | None = None) -> Issued:  # fmt: skip
    """A ticket for `principal`; `session` (session_key()) binds it to one web UI session as well."""
    require_console(s, principal, vm)
    now = utcnow()
    s.execute(delete(ConsoleTicket).where(ConsoleTicket.expires_at < now - KEEP))
    selector, secret = secrets.token_hex(8), secrets.token_urlsafe(24)
    expires = now + timedelta(seconds=lifetime_seconds)
    s.add(ConsoleTicket(selector=selector, secret_hash=_hash(secret), principal=principal, vm_id=vm.id, kind=kind,
                        expires_at=expires, session_hash=session))  # fmt: skip
    return Issued(f"{selector}.{secret}", kind, expires, vm.id)


def redeem(s: Session, ticket: str, vm_id: int, kind: ConsoleKind, caller: str | None,
           session: str | None = None) -> Grant:  # fmt: skip
    """Use a ticket up for the console of `vm_id` of `kind`; `caller` is who the connection says it is (its
    session cookie or Kerberos ticket; None: nobody, refused), `session` its web UI session's session_key().

    A ticket presented by someone else, or for another VM or kind, is refused without being used up: its owner
    may still use it. Every refusal says only "refused" to the caller; the log says why.
    """
    selector, _, secret = ticket.partition(".")
    row = None
    if selector and secret and len(ticket) <= 128:
        row = s.scalars(select(ConsoleTicket).where(ConsoleTicket.selector == selector)).one_or_none()
    if row is None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
        raise TicketRefused("console ticket refused: unknown ticket", "ask for a new one")
    if caller is None or caller != row.principal:
        raise TicketRefused("console ticket refused: it was issued to another user", "ask for one of your own")
    if row.session_hash is not None and (session is None or not hmac.compare_digest(row.session_hash, session)):
        raise TicketRefused("console ticket refused: it was issued to another sign-in", "ask for one in this one")
    if row.vm_id != vm_id or row.kind is not kind:
        raise TicketRefused("console ticket refused: it is for another console", "ask for a ticket for this one")
    now = utcnow()
    # One UPDATE decides: of two connections racing with one ticket (here or in another process), one wins.
    used = s.execute(
        update(ConsoleTicket)
        .where(ConsoleTicket.id == row.id, ConsoleTicket.used_at.is_(None), ConsoleTicket.expires_at > now)
        .values(used_at=now)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        why = "used already" if row.used_at is not None else "expired"
        raise TicketRefused(f"console ticket refused: {why}", "ask for a new one")
    vm = s.get(Vm, vm_id)
    if vm is None:
        raise TicketRefused("console ticket refused: the VM is gone")
    host_id = require_console(s, row.principal, vm)
    return Grant(row.principal, vm_id, kind, host_id)


def still_open(s: Session, grant: Grant) -> str | None:
    """Why an open console must close now (right revoked, VM stopped or moved), or None while all is well."""
    vm = s.get(Vm, grant.vm_id)
    if vm is None:
        return "the VM was deleted"
    if not permissions.allowed(s, grant.principal, Privilege.VM_CONTROL, vm.hardware_pool_id):
        return f"{grant.principal} may no longer control VM {vm.name}"
    if vm.state not in LIVE_STATES:
        return f"VM {vm.name} is {vm.state}"
    if vm.host_id != grant.host_id:
        return f"VM {vm.name} moved to another host"
    return None
