"""Console tickets and the console WebSocket over the API: what `drover vm console` uses.

POST /api/v1/vms/{key}/console {"kind": "vnc"|"serial"} -> 201 {ticket, kind, expires, vm, websocket, page}
WS   /api/v1/vms/{id}/console/{kind}?ticket=T (with a Negotiate Authorization header of the ticket's user)
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from appliance import vms
from appliance.api.auth import caller
from appliance.api.edge import read_json
from appliance.api.negotiate import Acceptor
from appliance.api.state import session, state
from appliance.console import proxy, tickets
from appliance.console.tickets import Issued
from appliance.db.models import ConsoleKind
from appliance.errors import AuthError, UsageError

PREFIX = "/api/v1"


def ticket_json(issued: Issued, vm_name: str) -> dict[str, Any]:
    return {"ticket": issued.ticket, "kind": str(issued.kind), "expires": issued.expires.isoformat(),
            "vm": {"id": issued.vm_id, "name": vm_name},
            "websocket": f"{PREFIX}/vms/{issued.vm_id}/console/{issued.kind}",
            "page": f"/ui/vms/{issued.vm_id}/console/{issued.kind}"}  # fmt: skip


async def ask_ticket(request: Request) -> JSONResponse:
    body: dict[str, Any] = await read_json(request) if (await request.body()).strip() else {}
    unknown = sorted(set(body) - {"kind"})
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown field", "fields: kind")
    kind = tickets.parse_kind(body.get("kind"))
    return await run_in_threadpool(_issue, request, kind)


def _issue(request: Request, kind: ConsoleKind) -> JSONResponse:
    api = state(request)
    with session(request) as s:
        vm = vms.find(s, request.path_params["key"])
        issued = tickets.issue(s, vm, caller(request).principal, kind, api.cfg.console.ticket_seconds)
        return JSONResponse(ticket_json(issued, vm.name), status_code=201)


def _negotiated(conn: HTTPConnection) -> str | None:
    """Who the upgrade request's Negotiate header says is calling (None: no header or a bad one)."""
    acceptor = getattr(conn.app.state, "acceptor", None)
    header = conn.headers.get("authorization")
    if not isinstance(acceptor, Acceptor) or not header:
        return None
    try:
        return acceptor.accept(header).principal
    except AuthError:
        return None


async def console_socket(websocket: WebSocket) -> None:
    principal = await run_in_threadpool(_negotiated, websocket)
    await proxy.serve(websocket, state(websocket), principal)
