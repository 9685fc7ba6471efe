"""Who may do what: the roles a principal holds, as the API and CLI ask for them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.db.models.pools import HardwarePool
from appliance.db.models.users import Permission, Role, User
from appliance.errors import Conflict, NotFound
from appliance.text import as_id


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


def find_pool(session: Session, pool_key: str) -> HardwarePool:
    pool = session.scalars(select(HardwarePool).where(
        HardwarePool.id == row_id if (row_id := as_id(pool_key)) is not None
        else HardwarePool.name == pool_key)).first()  # fmt: skip
    if pool is None:
        raise NotFound(f"hardware pool {pool_key!r} does not exist")
    return pool


def grant_in_pool(
    session: Session, principal: str, role: Role, pool_key: str, granted_by: str | None = None
) -> tuple[User, bool]:
    """Give `principal` `role` in one hardware pool (name or id) and its sub-pools; (user, created)."""
    pool = find_pool(session, pool_key)
    user = session.scalars(select(User).where(User.principal == principal)).one_or_none()
    created = user is None
    if user is None:
        user = User(principal=principal)
        session.add(user)
        session.flush()
    elif any(p.role is role and p.hardware_pool_id == pool.id for p in user.permissions):
        raise Conflict(f"user {principal} already has the role {role} in hardware pool {pool.name}")
    session.add(Permission(user_id=user.id, role=role, hardware_pool_id=pool.id, granted_by=granted_by))
    session.flush()
    return user, created


def revoke(session: Session, principal: str, role: Role, pool_id: int | None) -> None:
    """Take `role` (global with pool_id None, else in that pool) from `principal`.

    NotFound when not held; Conflict when it is the last global super_admin (nobody could grant it back).
    """
    user = session.scalars(select(User).where(User.principal == principal)).one_or_none()
    held = None if user is None else next(
        (p for p in user.permissions if p.role is role and p.hardware_pool_id == pool_id), None)  # fmt: skip
    if user is None or held is None:
        where = "globally" if pool_id is None else f"in hardware pool {pool_id}"
        raise NotFound(f"{principal} does not hold the role {role} {where}")
    if role is Role.SUPER_ADMIN and pool_id is None:
        others = session.scalars(
            select(Permission.id).join(User, Permission.user_id == User.id).where(
                Permission.role == Role.SUPER_ADMIN, Permission.hardware_pool_id.is_(None),
                User.is_disabled.is_(False), Permission.id != held.id)
        ).first()  # fmt: skip
        if others is None:
            raise Conflict(f"{principal} is the last super_admin", "grant super_admin to someone else first")
    user.permissions.remove(held)
    session.flush()
