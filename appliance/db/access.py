"""Who may do what: the roles a principal holds, as the API and CLI ask for them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.db.models.users import Permission, Role, User


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
