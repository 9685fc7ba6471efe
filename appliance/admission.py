"""Who gets an enrolment token when it PXE-boots: a host already enrolled (its reboot), a machine inside an
enrolment window an admin opened, and nobody else.

A PXE client cannot prove who it is: the MAC in its request is whatever it says. So a token for an
unknown machine exists only while an admin has said "enrol what boots now" (a window: time-limited,
capped in hosts, optionally limited to MACs); everything else identifies without a token and waits as
`pending` until an admin approves it. A known host's reboot gets a token bound to its DMI UUID and MAC:
enrolment refuses it while that host's libvirt session is up (appliance.enrolment), so it can only
re-enrol the machine that has gone down, which is what a stateless reboot is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from appliance.db import tokens
from appliance.db.base import utcnow
from appliance.db.models import EnrolmentToken, EnrolmentWindow, Host, HostNic
from appliance.errors import NotFound, UsageError
from appliance.text import MAX_ID
from nodeagent import wire

log = logging.getLogger(__name__)

MAX_WINDOW = timedelta(hours=24)
MAX_HOSTS = 1000
MAX_NOTE = 255


@dataclass(frozen=True)
class BootToken:
    token: str | None  # None: the script carries no token
    detail: str  # why, for the event and the log
    host_id: int | None = None


def open_window(
    session: Session,
    *,
    by: str,
    duration: timedelta,
    max_hosts: int,
    macs: list[str] | None = None,
    note: str = "",
    now: datetime | None = None,
) -> EnrolmentWindow:
    """Open a window: for `duration`, the first `max_hosts` MACs (of `macs`, when given) that PXE-boot get a token."""
    if not timedelta(seconds=1) <= duration <= MAX_WINDOW:
        raise UsageError(f"window: must last from 1 second to {MAX_WINDOW}", "e.g. --window 30m")
    if not 1 <= max_hosts <= MAX_HOSTS:
        raise UsageError(f"count: must be from 1 to {MAX_HOSTS}")
    if len(note) > MAX_NOTE or any(ord(c) < 32 for c in note):
        raise UsageError(f"note: at most {MAX_NOTE} characters, no control characters")
    try:
        wanted = sorted({wire.normalize_mac(m) for m in macs or []})
    except wire.WireError as exc:
        raise UsageError(f"mac: {exc}") from None
    if wanted and max_hosts > len(wanted):
        max_hosts = len(wanted)
    now = now or utcnow()
    window = EnrolmentWindow(
        opened_by=by, expires_at=now + duration, max_hosts=max_hosts, macs=wanted, note=note, created_at=now
    )
    session.add(window)
    session.flush()
    log.info("enrolment window %s opened by %s until %s for %s host(s)%s", window.id, by, window.expires_at,
             max_hosts, f" ({', '.join(wanted)})" if wanted else "")  # fmt: skip
    return window


def close_windows(session: Session, *, by: str, window_id: int | None = None) -> list[EnrolmentWindow]:
    """Close one open window (or all of them): their unused tokens are deleted with them."""
    if window_id is not None and not 0 < window_id <= MAX_ID:
        # No row has such an id; asking the database would overflow its integer, not find nothing.
        raise NotFound(f"no open enrolment window {window_id}", "see `drover host enrol --list`")
    now = utcnow()
    query = select(EnrolmentWindow).where(EnrolmentWindow.closed_at.is_(None), EnrolmentWindow.expires_at > now)
    if window_id is not None:
        query = query.where(EnrolmentWindow.id == window_id)
    closed = list(session.scalars(query))
    if window_id is not None and not closed:
        raise NotFound(f"no open enrolment window {window_id}", "see `drover host enrol --list`")
    for window in closed:
        window.closed_at = now
        session.execute(
            update(EnrolmentToken)
            .where(EnrolmentToken.window_id == window.id, EnrolmentToken.used_at.is_(None))
            .values(expires_at=now)
            .execution_options(synchronize_session=False)
        )
        log.info("enrolment window %s closed by %s", window.id, by)
    tokens.purge(session, now=now)
    return closed


def windows(session: Session, *, include_closed: bool = False) -> list[EnrolmentWindow]:
    query = select(EnrolmentWindow).order_by(EnrolmentWindow.id)
    if not include_closed:
        query = query.where(EnrolmentWindow.closed_at.is_(None), EnrolmentWindow.expires_at > utcnow())
    return list(session.scalars(query))


def window_view(window: EnrolmentWindow, now: datetime | None = None) -> dict[str, object]:
    now = now or utcnow()
    state = "closed" if window.closed_at else "expired" if window.expires_at <= now else "open"
    return {
        "id": window.id,
        "state": state,
        "opened_by": window.opened_by,
        "opened_at": window.created_at.isoformat(),
        "expires_at": window.expires_at.isoformat(),
        "closed_at": window.closed_at.isoformat() if window.closed_at else None,
        "max_hosts": window.max_hosts,
        "hosts_served": window.tokens_minted,
        "macs": window.macs,
        "note": window.note,
        # The BMC of the machine it is for (appliance.power.configure_window); never the password.
        "power": {"address": window.power_address, "port": window.power_port, "user": window.power_user}
        if window.power_address is not None
        else None,
    }


def enrolled_host_for_mac(session: Session, mac: str) -> Host | None:
    return session.scalars(
        select(Host).join(HostNic, HostNic.host_id == Host.id).where(HostNic.mac == mac, Host.approved_at.is_not(None))
    ).first()


def boot_token(session: Session, mac: str, ttl: timedelta, client: str, now: datetime | None = None) -> BootToken:
    """The token for an iPXE script asked for by `mac` (None when it gets none); the caller commits."""
    now = now or utcnow()
    tokens.purge(session, now=now)
    host = enrolled_host_for_mac(session, mac)
    if host is not None:
        tokens.purge(session, mac=mac, now=now)  # this boot's token replaces the last one
        minted = tokens.mint(session, ttl=ttl, mac=mac, host_uuid=host.uuid, created_by=tokens.BOOT_SERVICE,
                             note=f"reboot of host {host.id}, iPXE script to {client}", now=now)  # fmt: skip
        return BootToken(minted.token, f"token {_selector(minted.token)} bound to enrolled host {host.id}", host.id)
    window = _admit(session, mac, now)
    if window is None:
        return BootToken(None, "no token: no enrolment window open for this MAC; it will wait for approval")
    tokens.purge(session, mac=mac, now=now)
    minted = tokens.mint(session, ttl=min(ttl, window.expires_at - now), mac=mac, created_by=tokens.BOOT_SERVICE,
                         note=f"window {window.id}, iPXE script to {client}", window_id=window.id, now=now)  # fmt: skip
    return BootToken(minted.token, f"token {_selector(minted.token)} from enrolment window {window.id}")


def _selector(token: str) -> str:
    return token.split(".")[1]


def _admit(session: Session, mac: str, now: datetime) -> EnrolmentWindow | None:
    """The open window that takes `mac`, its count updated; a MAC it already served does not count twice."""
    candidates = session.scalars(
        select(EnrolmentWindow)
        .where(EnrolmentWindow.closed_at.is_(None), EnrolmentWindow.expires_at > now)
        .order_by(EnrolmentWindow.expires_at)
    ).all()
    for window in candidates:
        if window.macs and mac not in window.macs:
            continue
        served = session.scalar(
            select(exists().where(EnrolmentToken.window_id == window.id, EnrolmentToken.mac == mac))
        )
        if served:
            return window
        # One conditional UPDATE: two boots racing for the last place cannot both get it.
        taken = session.execute(
            update(EnrolmentWindow)
            .where(EnrolmentWindow.id == window.id, EnrolmentWindow.tokens_minted < EnrolmentWindow.max_hosts)
            .values(tokens_minted=EnrolmentWindow.tokens_minted + 1)
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            session.refresh(window)
            return window
    return None
