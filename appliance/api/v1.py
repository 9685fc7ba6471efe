"""Version 1 of the REST API: the routes under /api/v1 and their handlers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from appliance.api.auth import caller
from appliance.api.state import state

PREFIX = "/api/v1"
# Reachable without a ticket: load balancers and `drover serve`'s own readiness check use it.
PUBLIC = frozenset({f"{PREFIX}/health"})


def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def whoami(request: Request) -> JSONResponse:
    # A plain def: Starlette runs it in a worker thread, so the blocking DB query is fine here.
    who = caller(request)
    roles = state(request).roles_of(who.principal)
    return JSONResponse({"principal": who.principal, "roles": roles})


routes = [
    Route(f"{PREFIX}/health", health, methods=["GET"]),
    Route(f"{PREFIX}/whoami", whoami, methods=["GET"]),
]
