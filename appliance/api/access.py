"""Authorization for API handlers: the caller's global roles from the database, and the 403 when short."""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from appliance import permissions
from appliance.api.auth import caller
from appliance.api.state import session as db_session
from appliance.db.access import roles_of
from appliance.db.models.users import Role
from appliance.errors import Forbidden


def caller_roles(conn: HTTPConnection, session: Session) -> list[Role]:
    return roles_of(session, caller(conn).principal)


def require_to_grant(conn: HTTPConnection, session: Session, role: Role, pool_id: int | None = None) -> None:
    """Only super_admin grants super_admin; admin grants admin and below; nobody else grants anything."""
    permissions.require_to_grant(session, caller(conn).principal, role, pool_id)


def require_role(conn: HTTPConnection, role: Role, what: str) -> None:
    """A 403 saying which role is missing unless one of the caller's roles includes `role`."""
    with db_session(conn) as s:
        held = caller_roles(conn, s)
    if not any(r.includes(role) for r in held):
        raise Forbidden(f"{caller(conn).principal} may not {what}", f"it needs the {role} role")
