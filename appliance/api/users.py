"""Users and their global roles over the API: who am I, and granting a role to a principal."""

from __future__ import annotations

import re

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from appliance.api.access import caller_roles, require_to_grant
from appliance.api.auth import caller
from appliance.api.edge import read_json
from appliance.api.state import session
from appliance.db import access
from appliance.db.models.users import Role
from appliance.errors import UsageError

# name, optional /instance, then @REALM: the API takes only fully qualified principals (no default realm).
_PRINCIPAL = re.compile(r"[^\s@/]+(/[^\s@/]+)?@[^\s@/]+")


def whoami(request: Request) -> JSONResponse:
    # A plain def: Starlette runs it in a worker thread, so the blocking DB query is fine here.
    with session(request) as s:
        roles = caller_roles(request, s)
    return JSONResponse({"principal": caller(request).principal, "roles": [str(r) for r in roles]})


def _grant_request(body: dict[str, object]) -> tuple[str, Role]:
    principal, role = body.get("principal"), body.get("role")
    if not isinstance(principal, str) or not _PRINCIPAL.fullmatch(principal):
        raise UsageError(f"'principal' must be a Kerberos principal, not {principal!r}", "e.g. alice@DROVER.TEST")
    if not isinstance(role, str) or role not in set(Role):
        raise UsageError(f"'role' must be one of {', '.join(Role)}, not {role!r}")
    return principal, Role(role)


async def grant(request: Request) -> JSONResponse:
    """POST /users {"principal", "role"}: add the user if new and grant a global role (201), 409 if held."""
    principal, role = _grant_request(await read_json(request))
    # Body parsed and checked before any database work, so a bad request changes nothing; the
    # blocking DB part runs in a worker thread, off the event loop.
    return await run_in_threadpool(_grant, request, principal, role)


def _grant(request: Request, principal: str, role: Role) -> JSONResponse:
    with session(request) as s:
        require_to_grant(request, s, role)
        access.grant(s, principal, role, granted_by=caller(request).principal)
        roles = access.roles_of(s, principal)
    return JSONResponse({"principal": principal, "roles": [str(r) for r in roles]}, status_code=201)
