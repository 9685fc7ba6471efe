"""The realm over the API: the checks `drover realm status` runs, run by the server with its own config (admin)."""

from __future__ import annotations

from dataclasses import asdict

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from appliance.api.access import require_role
from appliance.api.state import state
from appliance.db.models.users import Role
from appliance.kerberos import health
from appliance.kerberos.realm import Realm


async def check_realm(request: Request) -> JSONResponse:
    """POST /realm/check: every check with its fix. A POST: the rights check adds and deletes a probe principal."""
    return await run_in_threadpool(_check, request)


def _check(request: Request) -> JSONResponse:
    require_role(request, Role.ADMIN, "check the realm")
    realm = Realm.from_config(state(request).cfg)
    checks = health.check(realm)
    return JSONResponse({
        "realm": realm.name,
        "mode": str(realm.mode),
        "ok": not health.failures(checks),
        "checks": [asdict(c) for c in checks],
    })  # fmt: skip
