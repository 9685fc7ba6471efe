"""Users and their global roles over the API: who am I, granting a role to a principal, disabling a user, and
a user's web UI sessions (listed and ended by a global admin: the modify privilege everywhere)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse

from appliance import permissions, quotas, websessions
from appliance.api.access import caller_roles, require_to_grant
from appliance.api.auth import caller
from appliance.api.schema import Body, Id, Query, accepts
from appliance.api.state import session
from appliance.db import access
from appliance.db.models import HardwarePool, Permission, User
from appliance.db.models.users import Role
from appliance.errors import NotFound, UsageError
from appliance.permissions import Privilege
from appliance.text import shown

# name, optional /instance, then @REALM: the API takes only fully qualified principals (no default realm).
_PRINCIPAL = re.compile(r"[^\s@/]+(/[^\s@/]+)?@[^\s@/]+")


def _principal_in_path(request: Request) -> str:
    """The {principal} of a path; one that no principal can be (control characters, no realm) names no user,
    so the lookup is never even tried (PostgreSQL refuses a NUL in a string: that was a 500)."""
    principal = str(request.path_params["principal"])
    if not _PRINCIPAL.fullmatch(principal) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in principal):
        raise NotFound(f"no user {shown(principal)}")
    return principal


def whoami(request: Request) -> JSONResponse:
    # A plain def: Starlette runs it in a worker thread, so the blocking DB query is fine here.
    with session(request) as s:
        roles = caller_roles(request, s)
    return JSONResponse({"principal": caller(request).principal, "roles": [str(r) for r in roles]})


class GrantRequest(Body):
    principal: str = Field(max_length=255, description="a fully qualified Kerberos principal, e.g. alice@DROVER.TEST")
    role: Role
    pool: str | Id | None = Field(None, description="hardware pool name or id; left out: a global role")


@accepts(body=GrantRequest)
def grant(request: Request, body: GrantRequest) -> JSONResponse:
    """POST /users {"principal", "role", "pool"?}: add the user if new and grant the role globally or in one
    hardware pool and its sub-pools (201); 409 if held."""
    principal, role = body.principal, body.role
    if not _PRINCIPAL.fullmatch(principal):
        raise UsageError(f"'principal' must be a Kerberos principal, not {principal!r}", "e.g. alice@DROVER.TEST")
    if body.pool == "":
        raise UsageError("'pool' must be a hardware pool name or id (leave it out for a global role)")
    pool = None if body.pool is None else str(body.pool)
    by = caller(request).principal
    with session(request) as s:
        if pool is None:
            require_to_grant(request, s, role)
            access.grant(s, principal, role, granted_by=by)
        else:
            row = access.find_pool(s, pool)
            require_to_grant(request, s, role, row.id)
            access.grant_in_pool(s, principal, role, str(row.id), granted_by=by)
        return JSONResponse(_roles(s, principal), status_code=201)


def _roles(s: Session, principal: str) -> dict[str, object]:
    rows = s.execute(select(Permission.role, HardwarePool.name).join(User, Permission.user_id == User.id)
                     .outerjoin(HardwarePool, Permission.hardware_pool_id == HardwarePool.id)
                     .where(User.principal == principal)).all()  # fmt: skip
    return {"principal": principal, "roles": [str(r) for r in access.roles_of(s, principal)],
            "pool_roles": sorted([{"role": str(r), "pool": p} for r, p in rows if p is not None],
                                 key=lambda g: (g["pool"], g["role"]))}  # fmt: skip


class RevokePath(Query):
    principal: str
    role: Role


class RevokeQuery(Query):
    pool: str | None = Field(None, max_length=255, description="hardware pool name or id; left out: a global role")


@accepts(query=RevokeQuery, path=RevokePath)
def revoke(request: Request, query: RevokeQuery) -> JSONResponse:
    """DELETE /users/{principal}/roles/{role}[?pool=P]: take a global role, or one held in hardware pool P."""
    role_text = request.path_params["role"]
    if role_text not in set(Role):
        raise UsageError(f"role: one of {', '.join(Role)}, not {role_text!r}")
    principal, role = _principal_in_path(request), Role(role_text)
    with session(request) as s:
        pool_id = access.find_pool(s, query.pool).id if query.pool is not None else None
        require_to_grant(request, s, role, pool_id)
        access.revoke(s, principal, role, pool_id)
        return JSONResponse(_roles(s, principal))


def _limit(key: str) -> Any:
    # The range is documented here and enforced by quotas.set_quota, whose wording the CLI shares.
    return Field(None, json_schema_extra={"minimum": 0, "maximum": quotas.LIMIT_MAX[key]})


class QuotaRequest(Body):
    """Limits left out or null are unlimited; their range is checked by quotas.set_quota (the CLI's too)."""

    pool: str | Id = Field("default", description="hardware pool name or id")
    max_vms: int | None = _limit("max_vms")
    max_vcpus: int | None = _limit("max_vcpus")
    max_memory_mib: int | None = _limit("max_memory_mib")
    max_disk_bytes: int | None = _limit("max_disk_bytes")


@accepts(body=QuotaRequest)
def set_quota(request: Request, body: QuotaRequest) -> JSONResponse:
    """PUT /users/{principal}/quota {"pool", "max_vms"?, "max_vcpus"?, "max_memory_mib"?, "max_disk_bytes"?}."""
    limits = body.given()
    limits.pop("pool", None)
    pool = body.pool
    principal = _principal_in_path(request)
    with session(request) as s:
        row = s.scalars(select(HardwarePool).where(
            HardwarePool.id == pool if isinstance(pool, int) else HardwarePool.name == pool)).first()  # fmt: skip
        if row is None:
            raise NotFound(f"hardware pool {pool!r} does not exist")
        permissions.require(s, caller(request).principal, Privilege.MODIFY, row.id,
                            f"set quotas in hardware pool {row.name}")  # fmt: skip
        return JSONResponse(quotas.describe(quotas.set_quota(s, principal, row.id, limits)))


def _require_admin(request: Request, s: Session, what: str) -> None:
    permissions.require(s, caller(request).principal, Privilege.MODIFY, None, what)


def list_sessions(request: Request) -> JSONResponse:
    """GET /users/{principal}/sessions: the user's live web UI sessions (id, how, from where, when)."""
    principal = _principal_in_path(request)
    with session(request) as s:
        _require_admin(request, s, "see users' sessions")
        return JSONResponse({"principal": principal, "sessions": [websessions.describe(w)
                                                                  for w in websessions.of(s, principal)]})  # fmt: skip


class SessionPath(Query):
    principal: str
    id: Id


def end_sessions(request: Request) -> JSONResponse:
    """DELETE /users/{principal}/sessions: end every web UI session of the user (signed out everywhere)."""
    principal = _principal_in_path(request)
    with session(request) as s:
        _require_admin(request, s, "end users' sessions")
        return JSONResponse({"principal": principal, "ended": websessions.revoke(s, principal)})


@accepts(path=SessionPath)
def end_session(request: Request) -> JSONResponse:
    """DELETE /users/{principal}/sessions/{id}: end one web UI session; 404 if the user has no such session."""
    principal = _principal_in_path(request)
    session_id = int(request.path_params["id"])
    with session(request) as s:
        _require_admin(request, s, "end users' sessions")
        return JSONResponse({"principal": principal, "ended": websessions.revoke(s, principal, session_id)})


class DisableRequest(Body):
    disabled: bool


@accepts(body=DisableRequest)
def set_disabled(request: Request, body: DisableRequest) -> JSONResponse:
    """PUT /users/{principal}/disabled {"disabled"}: a disabled user holds no role and is signed out of the UI."""
    principal = _principal_in_path(request)
    with session(request) as s:
        _require_admin(request, s, "disable users")
        if body.disabled and principal == caller(request).principal:
            raise UsageError("you cannot disable yourself", "ask another admin")
        user = websessions.set_disabled(s, principal, body.disabled)
        return JSONResponse({"principal": user.principal, "disabled": user.is_disabled})
