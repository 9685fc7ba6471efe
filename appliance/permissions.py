"""Per-object permissions, as in the original server: a role held globally or on a hardware pool (and so on
its sub-pools) grants privileges there. The one check every API route, CLI verb and console ticket uses.

| privilege  | what it allows                                   | held by                  |
|------------|--------------------------------------------------|--------------------------|
| view       | see hosts, VMs, tasks in the pool                | monitor and up           |
| vm_control | start, stop, suspend, save... VMs of the pool    | user and up              |
| vm_create  | create VMs in the pool, within one's quota there; | user and up              |
|            | delete the VMs one owns                          |                          |
| modify     | delete, migrate any VM; attach existing volumes; | admin and up             |
|            | clear hosts; balance                             |                          |

Creating a VM is the original's "create VM in pool" right: a plain user makes VMs where an admin gave them
the user role, and the quota (appliance/quotas.py) bounds how many and how big.
| set_perms  | grant roles in the pool                          | super_admin              |
"""

from __future__ import annotations

import enum

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.db.models import HardwarePool, Permission, Role, User
from appliance.errors import Forbidden


class Privilege(enum.StrEnum):
    VIEW = "view"
    VM_CONTROL = "vm_control"
    VM_CREATE = "vm_create"
    MODIFY = "modify"
    SET_PERMS = "set_perms"

    @property
    def least_role(self) -> Role:
        return {
            Privilege.VIEW: Role.MONITOR,
            Privilege.VM_CONTROL: Role.USER,
            Privilege.VM_CREATE: Role.USER,
            Privilege.MODIFY: Role.ADMIN,
            Privilege.SET_PERMS: Role.SUPER_ADMIN,
        }[self]


def _pool_chain(session: Session, pool_id: int) -> set[int]:
    """The pool and every pool above it: a role on any of them applies here."""
    chain: set[int] = set()
    cur: int | None = pool_id
    while cur is not None and cur not in chain:
        chain.add(cur)
        cur = session.scalar(select(HardwarePool.parent_id).where(HardwarePool.id == cur))
    return chain


def roles_in(session: Session, principal: str, pool_id: int | None) -> list[Role]:
    """The roles `principal` holds in the pool (global ones included); none for a disabled or unknown user."""
    rows = session.execute(
        select(Permission.role, Permission.hardware_pool_id)
        .join(User, Permission.user_id == User.id)
        .where(User.principal == principal, User.is_disabled.is_(False))
    ).all()
    chain = _pool_chain(session, pool_id) if pool_id is not None else set()
    return sorted({role for role, pool in rows if pool is None or pool in chain}, key=lambda r: r.rank)


def allowed(session: Session, principal: str, privilege: Privilege, pool_id: int | None) -> bool:
    return any(r.includes(privilege.least_role) for r in roles_in(session, principal, pool_id))


def require(session: Session, principal: str, privilege: Privilege, pool_id: int | None, what: str) -> None:
    """Raise Forbidden (403) unless `principal` holds `privilege` in the hardware pool (None: globally)."""
    if allowed(session, principal, privilege, pool_id):
        return
    where = "globally"
    if pool_id is not None:
        name = session.scalar(select(HardwarePool.name).where(HardwarePool.id == pool_id))
        where = f"in hardware pool {name or pool_id}"
    raise Forbidden(
        f"{principal} may not {what}",
        f"it needs the {privilege} privilege {where} (role {privilege.least_role} or above there)",
    )


def visible_pools(session: Session, principal: str) -> set[int] | None:
    """The pools whose objects `principal` may see; None means all (a global role)."""
    rows = session.execute(
        select(Permission.hardware_pool_id)
        .join(User, Permission.user_id == User.id)
        .where(User.principal == principal, User.is_disabled.is_(False))
    ).scalars()
    pools = set(rows)
    if None in pools:
        return None
    parents = dict(session.execute(select(HardwarePool.id, HardwarePool.parent_id)).tuples().all())
    out: set[int] = set()
    for pool_id in parents:
        if _pool_chain(session, pool_id) & {p for p in pools if p is not None}:
            out.add(pool_id)
    return out


def may_grant(session: Session, principal: str, role: Role, pool_id: int | None) -> bool:
    """Granting or revoking `role` there (None: globally): super_admin any role, admin admin and below; each
    counts only where it is held (a role on a pool covers its sub-pools)."""
    held = roles_in(session, principal, pool_id)
    return any(r in (Role.SUPER_ADMIN, Role.ADMIN) and r.includes(role) for r in held)


def require_to_grant(session: Session, principal: str, role: Role, pool_id: int | None) -> None:
    """Forbidden (403) unless may_grant()."""
    if may_grant(session, principal, role, pool_id):
        return
    where = "globally"
    if pool_id is not None:
        name = session.scalar(select(HardwarePool.name).where(HardwarePool.id == pool_id))
        where = f"in hardware pool {name or pool_id}"
    raise Forbidden(
        f"{principal} may not grant or revoke the role {role} {where}",
        "it needs super_admin (any role) or admin (admin and below) there",
    )
