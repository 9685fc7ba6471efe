"""Web UI sessions, kept in the database: the browser's cookie carries only a random id.

Signing out deletes the row, so a copy of the cookie taken earlier stops working at once, in every appliance
process sharing the database; an admin can list a user's sessions and end any of them (`drover user sessions`,
DELETE /api/v1/users/{principal}/sessions[/{id}], the users page); disabling or removing a user ends theirs.
Only the id's SHA-256 is stored: the table does not let anyone sign in. Expired rows are purged whenever a
session is issued.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session

from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import User, WebSession
from appliance.errors import Forbidden, NotFound

log = logging.getLogger(__name__)

# A working day: long enough not to nag, short enough that a forgotten session ends by itself.
LIFETIME_SECONDS = 8 * 3600
# last_seen_at is written at most this often per session: a page's every fragment would otherwise be a write.
SEEN_EVERY_SECONDS = 60
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


@dataclass(frozen=True)
class UiSession:
    id: int
    principal: str
    expires: datetime
    csrf: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class Sessions:
    def __init__(self, engine: Engine, lifetime: int = LIFETIME_SECONDS) -> None:
        self.engine = engine
        self.lifetime = lifetime

    def issue(self, principal: str, method: str = "kerberos", source: str = "") -> tuple[UiSession, str]:
        """A new session for `principal` with a fresh CSRF token, and its cookie value (never stored); Forbidden
        for a disabled user (whose browser would otherwise sign in again and again, each session refused)."""
        token, now = secrets.token_urlsafe(32), utcnow()
        with session_scope(self.engine) as s:
            if s.scalar(select(User.is_disabled).where(User.principal == principal)):
                raise Forbidden(f"{principal} is disabled", "ask an admin to enable the user")
            purge(s, now)
            row = WebSession(id_hash=_hash(token), principal=principal, csrf=secrets.token_urlsafe(24), method=method,
                             source=source[:255], last_seen_at=now,
                             expires_at=now + timedelta(seconds=self.lifetime))  # fmt: skip
            s.add(row)
            s.flush()
            return UiSession(row.id, principal, row.expires_at, row.csrf), token

    def read(self, cookie: str | None) -> UiSession | None:
        """The live session a cookie names, or None: missing, malformed, unknown, ended, expired, or its user
        disabled."""
        if not cookie or not _TOKEN.fullmatch(cookie):
            return None
        now = utcnow()
        with session_scope(self.engine) as s:
            row = s.scalars(select(WebSession).where(WebSession.id_hash == _hash(cookie))).one_or_none()
            if row is None or not hmac.compare_digest(row.id_hash, _hash(cookie)):
                return None
            if row.expires_at <= now:
                s.delete(row)
                return None
            disabled = s.scalar(select(User.is_disabled).where(User.principal == row.principal))
            if disabled:
                return None
            if (now - row.last_seen_at).total_seconds() >= SEEN_EVERY_SECONDS:
                row.last_seen_at = now
            return UiSession(row.id, row.principal, row.expires_at, row.csrf)

    def end(self, cookie: str | None) -> bool:
        """Sign-out: the session is deleted (whoever holds a copy of the cookie is signed out too)."""
        if not cookie or not _TOKEN.fullmatch(cookie):
            return False
        with session_scope(self.engine) as s:
            return (s.execute(delete(WebSession).where(WebSession.id_hash == _hash(cookie))).rowcount or 0) > 0  # type: ignore[attr-defined]


def purge(s: Session, now: datetime | None = None) -> int:
    """Delete expired sessions; how many."""
    result = s.execute(delete(WebSession).where(WebSession.expires_at <= (now or utcnow())))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def of(s: Session, principal: str) -> list[WebSession]:
    """A principal's live sessions, newest first."""
    return list(s.scalars(select(WebSession).where(WebSession.principal == principal,
                                                   WebSession.expires_at > utcnow())
                          .order_by(WebSession.id.desc())))  # fmt: skip


def describe(row: WebSession) -> dict[str, object]:
    return {"id": row.id, "principal": row.principal, "method": row.method, "source": row.source,
            "created_at": row.created_at.isoformat(), "last_seen_at": row.last_seen_at.isoformat(),
            "expires_at": row.expires_at.isoformat()}  # fmt: skip


def revoke(s: Session, principal: str, session_id: int | None = None) -> int:
    """End one session of `principal` (NotFound if it has no such one) or, with None, all of them; how many."""
    query = delete(WebSession).where(WebSession.principal == principal)
    if session_id is not None:
        query = query.where(WebSession.id == session_id)
    ended = int(s.execute(query).rowcount or 0)  # type: ignore[attr-defined]
    if session_id is not None and ended == 0:
        raise NotFound(f"{principal} has no session {session_id}", f"see `drover user sessions {principal}`")
    if ended:
        log.warning("ended %d web UI session(s) of %s", ended, principal)
    return ended


def set_disabled(s: Session, principal: str, disabled: bool) -> User:
    """Disable (or enable) a user; disabling ends every session of theirs."""
    user = s.scalars(select(User).where(User.principal == principal)).one_or_none()
    if user is None:
        raise NotFound(f"no user {principal}", "see `drover user list`")
    s.execute(update(User).where(User.id == user.id).values(is_disabled=disabled))
    s.refresh(user)
    if disabled:
        revoke(s, principal)
    return user
