"""Who may do what: the roles a principal holds, as the API and CLI ask for them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.db.models.users import Permission, Role, User
from appliance.errors import Conflict


def roles_of(session: Session, principal: str) -> list[Role]:
    """The global roles of `principal`, most powerful first; [] for an unknown or disabled user.

    Roles granted on a hardware pool are not included: they only apply inside that pool.
    """
    rows = session.scalars(
        select(Permission.role)
        .join(User, Permission.user_id == User.id)
        .where(User.principal == principal, User.is_disabled.is_(False), Permission.hardware_pool_id.is_(None))
        .distinct()
    ).all()
    return sorted(rows, key=lambda role: role.rank)


def grant(session: Session, principal: str, role: Role, granted_by: str | None = None) -> tuple[User, bool]:
    """Give `principal` the global `role`, creating the user if needed; (user, created).

    Holding the role already is a Conflict: the caller decides whether that is an error (API, CLI)
    or the expected answer of a repeated set-up step.
    """
    user = session.scalars(select(User).where(User.principal == principal)).one_or_none()
    created = user is None
    if user is None:
        user = User(principal=principal)
        session.add(user)
        session.flush()
    elif any(p.role is role and p.is_global for p in user.permissions):
        raise Conflict(f"user {principal} already has the global role {role}")
    session.add(Permission(user_id=user.id, role=role, granted_by=granted_by))
    session.flush()
    return user, created
