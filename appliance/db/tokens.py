"""Enrolment tokens: mint one (the plain secret is returned once, only its hash is kept) and consume it once."""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from appliance.db.base import utcnow
from appliance.db.models.enrolment import EnrolmentToken
from appliance.errors import AuthError, UsageError
from appliance.text import shown

log = logging.getLogger(__name__)

PREFIX = "drv1"  # lets a later token format coexist, and makes a token recognisable in a log or a paste
DEFAULT_TTL = timedelta(hours=24)
BOOT_SERVICE = "boot service"  # created_by of the tokens the boot service puts on iPXE kernel lines


class Refusal(enum.StrEnum):
    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    WRONG_SECRET = "wrong secret"
    EXPIRED = "expired"
    USED = "already used"
    WRONG_HOST = "bound to another host"


class TokenRefused(AuthError):
    """The token cannot enrol this node; `reason` is for logs, the message a client sees is the same for all."""

    def __init__(self, reason: Refusal) -> None:
        super().__init__("enrolment token refused", "ask an admin for a new token")
        self.reason = reason


@dataclass(frozen=True)
class MintedToken:
    id: int
    token: str  # the only time the full secret exists outside the node: show it, never store it
    expires_at: datetime


def _hash(secret: str) -> str:
    # A plain SHA-256 is enough: the secret is 256 random bits, so there is nothing to brute-force that a
    # slow password hash would protect.
    return hashlib.sha256(secret.encode()).hexdigest()


def _normal_mac(mac: str | None) -> str | None:
    return mac.strip().lower().replace("-", ":") if mac else None


def _normal_uuid(uuid: str | None) -> str | None:
    return uuid.strip().lower() if uuid else None


def mint(
    session: Session,
    *,
    ttl: timedelta = DEFAULT_TTL,
    host_uuid: str | None = None,
    mac: str | None = None,
    created_by: str | None = None,
    note: str = "",
    window_id: int | None = None,
    now: datetime | None = None,
) -> MintedToken:
    """Store a new token and return its plain text, `drv1.<selector>.<secret>`; the caller commits."""
    if ttl <= timedelta(0):
        raise UsageError(f"token lifetime must be positive, got {ttl}")
    now = now or utcnow()
    # The selector finds the row without comparing secrets in SQL; the secret is then compared in constant time.
    selector = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = EnrolmentToken(
        selector=selector,
        secret_hash=_hash(secret),
        created_at=now,
        expires_at=now + ttl,
        host_uuid=_normal_uuid(host_uuid),
        mac=_normal_mac(mac),
        created_by=created_by,
        note=note,
        window_id=window_id,
    )
    session.add(row)
    session.flush()
    log.info("minted enrolment token %s (id %s) expiring %s", selector, row.id, row.expires_at)
    return MintedToken(row.id, f"{PREFIX}.{selector}.{secret}", row.expires_at)


def purge(session: Session, *, mac: str | None = None, now: datetime | None = None) -> int:
    """Delete unused tokens that can no longer be used (expired), and with `mac` the unused tokens the boot
    service minted for that MAC (a new boot script replaces the last one: a MAC holds one live boot token;
    tokens an admin minted are left alone)."""
    now = now or utcnow()
    gone = session.execute(
        delete(EnrolmentToken)
        .where(EnrolmentToken.used_at.is_(None), EnrolmentToken.expires_at <= now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if mac is not None:
        gone += session.execute(
            delete(EnrolmentToken)
            .where(
                EnrolmentToken.used_at.is_(None),
                EnrolmentToken.mac == _normal_mac(mac),
                EnrolmentToken.created_by == BOOT_SERVICE,
            )
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    return int(gone)


def consume(
    session: Session,
    token: str,
    *,
    host_uuid: str | None = None,
    mac: str | None = None,
    host_id: int | None = None,
    now: datetime | None = None,
) -> EnrolmentToken:
    """Use the token for the node with `host_uuid`/`mac`, or raise TokenRefused; the caller commits.

    Marking it used is one conditional UPDATE, so two nodes racing with the same token cannot both win.
    """
    now = now or utcnow()
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise _refuse(Refusal.MALFORMED, "?")
    _, selector, secret = parts
    row = session.scalars(select(EnrolmentToken).where(EnrolmentToken.selector == selector)).one_or_none()
    if row is None:
        raise _refuse(Refusal.UNKNOWN, selector)
    if not hmac.compare_digest(_hash(secret), row.secret_hash):
        raise _refuse(Refusal.WRONG_SECRET, selector)
    if row.used_at is not None:
        raise _refuse(Refusal.USED, selector)
    if now >= row.expires_at:
        raise _refuse(Refusal.EXPIRED, selector)
    if (row.host_uuid and row.host_uuid != _normal_uuid(host_uuid)) or (row.mac and row.mac != _normal_mac(mac)):
        raise _refuse(Refusal.WRONG_HOST, selector)
    claimed = session.execute(
        update(EnrolmentToken)
        .where(EnrolmentToken.id == row.id, EnrolmentToken.used_at.is_(None))
        .values(used_at=now, used_by_host_id=host_id)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise _refuse(Refusal.USED, selector)
    session.refresh(row)
    log.info("enrolment token %s used by host %s", selector, host_uuid or mac or host_id)
    return row


def _refuse(reason: Refusal, selector: str) -> TokenRefused:
    # Log the selector only: it is public, and the secret half must never reach a log. It is whatever the
    # client sent, so it is cut and escaped.
    log.warning("enrolment token %s refused: %s", shown(selector, 32), reason)
    return TokenRefused(reason)
