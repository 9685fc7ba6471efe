"""The UI's users page: roles granted everywhere or on one hardware pool (and its sub-pools), revoking them,
per-pool quotas, and each user's web UI sessions (listed and ended by a global admin, as over the API). The
checks and refusals are the API's: appliance.permissions.require_to_grant for roles (super_admin any role,
admin admin and below, each where it is held), the modify privilege in the pool for quotas
(PUT /api/v1/users/{p}/quota), appliance.quotas for the limits themselves.
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from appliance import permissions, quotas, websessions
from appliance.api.auth import caller
from appliance.api.state import session
from appliance.db import access
from appliance.db.models import HardwarePool, Permission, User
from appliance.db.models.users import Role
from appliance.errors import NotFound, UsageError
from appliance.permissions import Privilege
from appliance.text import as_id, whole
from appliance.web.access import ui_session
from appliance.web.forms import form_fields
from appliance.web.pages import flash, render

_PRINCIPAL = re.compile(r"[^\s@/]+(/[^\s@/]+)?@[^\s@/]+")


def user_list(request: Request) -> Response:
    principal = caller(request).principal
    with session(request) as s:
        permissions.require(s, principal, Privilege.VIEW, None, "see users")
        users = list(s.scalars(select(User).options(selectinload(User.permissions), selectinload(User.quotas))
                               .order_by(User.principal)))  # fmt: skip
        pools = list(s.scalars(select(HardwarePool).order_by(HardwarePool.name)))
        names = {p.id: p.name for p in pools}
        may_revoke: dict[int, bool] = {}
        for user in users:
            for grant in user.permissions:
                may_revoke[grant.id] = permissions.may_grant(s, principal, grant.role, grant.hardware_pool_id)
        usage = {q.id: quotas.owned(s, q.user_id, q.hardware_pool_id) for u in users for q in u.quotas}
        grantable = [str(r) for r in Role if permissions.may_grant(s, principal, r, None)
                     or any(permissions.may_grant(s, principal, r, p.id) for p in pools)]  # fmt: skip
        quota_pools = [p for p in pools if permissions.allowed(s, principal, Privilege.MODIFY, p.id)]
        may_end = permissions.allowed(s, principal, Privilege.MODIFY, None)
        live = {u.principal: len(websessions.of(s, u.principal)) for u in users} if may_end else {}
        return render(request, "users.html", users=users, pool_names=names, may_revoke=may_revoke, usage=usage,
                      sessions=live, may_end=may_end,
                      roles=grantable, pools=pools, quota_pools=quota_pools, below="users_form.html")  # fmt: skip


def _principal(form: dict[str, str]) -> str:
    principal = form.get("principal", "").strip()
    if len(principal) > 255 or not _PRINCIPAL.fullmatch(principal):
        raise UsageError("principal: a Kerberos principal such as alice@REALM")
    return principal


def _role(form: dict[str, str]) -> Role:
    role = form.get("role", "")
    if role not in set(Role):
        raise UsageError(f"role: one of {', '.join(Role)}")
    return Role(role)


async def grant(request: Request) -> Response:
    form = await form_fields(request)
    return await run_in_threadpool(_grant, request, form)


def _grant(request: Request, form: dict[str, str]) -> Response:
    principal, role, where = _principal(form), _role(form), form.get("pool", "").strip()
    by = caller(request).principal
    with session(request) as s:
        if not where:
            permissions.require_to_grant(s, by, role, None)
            access.grant(s, principal, role, granted_by=by)
            return flash(f"{principal} now holds {role} everywhere")
        pool = access.find_pool(s, where)
        permissions.require_to_grant(s, by, role, pool.id)
        access.grant_in_pool(s, principal, role, str(pool.id), granted_by=by)
        return flash(f"{principal} now holds {role} in hardware pool {pool.name}")


def revoke(request: Request) -> Response:
    text = str(request.path_params["id"])
    by = caller(request).principal
    with session(request) as s:
        grant_row = s.get(Permission, key) if (key := as_id(text)) is not None else None
        if grant_row is None:
            raise NotFound(f"grant {text} does not exist")
        principal, role, pool_id = grant_row.user.principal, grant_row.role, grant_row.hardware_pool_id
        pool_name = grant_row.pool.name if grant_row.pool is not None else pool_id
        permissions.require_to_grant(s, by, role, pool_id)
        access.revoke(s, principal, role, pool_id)
        where = "everywhere" if pool_id is None else f"in hardware pool {pool_name}"
        return flash(f"{principal} no longer holds {role} {where}")


async def set_quota(request: Request) -> Response:
    form = await form_fields(request)
    return await run_in_threadpool(_set_quota, request, form)


def _set_quota(request: Request, form: dict[str, str]) -> Response:
    principal = _principal(form)
    limits: dict[str, int | None] = {}
    for key in quotas.LIMITS:
        value = form.get(key, "").strip()
        number = whole(value, 2**63 - 1) if value else None
        if value and number is None:
            raise UsageError(f"{key}: a whole number >= 0, or empty for unlimited")
        limits[key] = number
    with session(request) as s:
        pool = access.find_pool(s, form.get("pool", "").strip() or "default")
        # The API's check (PUT /api/v1/users/{p}/quota): modify in that pool.
        permissions.require(s, caller(request).principal, Privilege.MODIFY, pool.id,
                            f"set quotas in hardware pool {pool.name}")  # fmt: skip
        shown = quotas.describe(quotas.set_quota(s, principal, pool.id, limits))
        text = ", ".join(f"{k.removeprefix('max_')} {v if v is not None else 'unlimited'}"
                         for k, v in shown.items() if k.startswith("max_"))  # fmt: skip
        return flash(f"quota of {principal} in {pool.name}: {text}")



def _user(s: Session, text: str) -> User:
    user = s.get(User, key) if (key := as_id(text)) is not None else None
    if user is None:
        raise NotFound(f"user {text} does not exist")
    return user


def session_list(request: Request) -> Response:
    """A user's web UI sessions (where from, since when, last seen), each with a button that ends it."""
    with session(request) as s:
        permissions.require(s, caller(request).principal, Privilege.MODIFY, None, "see users' sessions")
        user = _user(s, str(request.path_params["id"]))
        rows = websessions.of(s, user.principal)
        mine = ui_session(request).id
        return render(request, "sessions.html", user=user, sessions=rows, mine=mine)


async def session_revoke(request: Request) -> Response:
    form = await form_fields(request)
    return await run_in_threadpool(_session_revoke, request, form)


def _session_revoke(request: Request, form: dict[str, str]) -> Response:
    which = form.get("session", "").strip()
    session_id = None if which == "all" else as_id(which)
    if which != "all" and session_id is None:
        raise UsageError("session: a session id, or all")
    with session(request) as s:
        permissions.require(s, caller(request).principal, Privilege.MODIFY, None, "end users' sessions")
        user = _user(s, str(request.path_params["id"]))
        ended = websessions.revoke(s, user.principal, session_id)
        return flash(f"ended {ended} session{'s' if ended != 1 else ''} of {user.principal}")


async def set_disabled(request: Request) -> Response:
    form = await form_fields(request)
    return await run_in_threadpool(_set_disabled, request, form)


def _set_disabled(request: Request, form: dict[str, str]) -> Response:
    """Disable (every session of theirs ends) or enable a user: PUT /api/v1/users/{p}/disabled's rule."""
    wanted = form.get("disabled", "")
    if wanted not in ("true", "false"):
        raise UsageError("disabled: true or false")
    by = caller(request).principal
    with session(request) as s:
        permissions.require(s, by, Privilege.MODIFY, None, "disable users")
        user = _user(s, str(request.path_params["id"]))
        if wanted == "true" and user.principal == by:
            raise UsageError("you cannot disable yourself", "ask another admin")
        ended = len(websessions.of(s, user.principal)) if wanted == "true" else 0
        websessions.set_disabled(s, user.principal, wanted == "true")
        if wanted == "true":
            return flash(f"{user.principal} is disabled; {ended} session{'s' if ended != 1 else ''} ended")
        return flash(f"{user.principal} is enabled again")
