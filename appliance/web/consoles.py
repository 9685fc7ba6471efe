"""The console pages: noVNC (graphics) and xterm.js (serial) in a window of their own, and their WebSocket.

GET /ui/vms/{id}/console/{kind} is the page; it asks POST /ui/vms/{id}/console (CSRF token, session cookie)
for a one-time ticket and opens WS /ui/vms/{id}/console/{kind}/ws?ticket=T, which must carry the session
cookie of the user the ticket was issued to (appliance.console.proxy does the rest).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from anyio import to_thread
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.websockets import WebSocket

from appliance.api.auth import caller
from appliance.api.consoles import ticket_json
from appliance.api.state import session, state
from appliance.console import proxy, tickets
from appliance.db.models import Vm
from appliance.errors import NotFound
from appliance.text import as_id
from appliance.web.access import PREFIX, ui_session, web_state
from appliance.web.forms import form_fields
from appliance.web.pages import TEMPLATES
from appliance.web.session import COOKIE


def console_page(request: Request) -> Response:
    kind = tickets.parse_kind(request.path_params["kind"])
    principal = caller(request).principal
    with session(request) as s:
        text = str(request.path_params["id"])
        vm = s.get(Vm, key) if (key := as_id(text)) is not None else None
        if vm is None:
            raise NotFound(f"VM {text!r} does not exist")
        # The page itself needs the right a ticket needs: a user who may not open the console sees why here.
        tickets.require_console(s, principal, vm)
        html = TEMPLATES.get_template(f"console_{kind}.html").render(
            prefix=PREFIX, vm=vm, kind=str(kind), csrf=ui_session(request).csrf, principal=principal
        )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


async def console_ticket(request: Request) -> Response:
    form = await form_fields(request)
    return await run_in_threadpool(_issue, request, form.get("kind"))


def _issue(request: Request, kind_text: str | None) -> Response:
    kind = tickets.parse_kind(kind_text)
    api = state(request)
    with session(request) as s:
        text = str(request.path_params["id"])
        vm = s.get(Vm, key) if (key := as_id(text)) is not None else None
        if vm is None:
            raise NotFound(f"VM {text!r} does not exist")
        issued = tickets.issue(s, vm, caller(request).principal, kind, api.cfg.console.ticket_seconds,
                               tickets.session_key(ui_session(request).csrf))  # fmt: skip
        out = ticket_json(issued, vm.name)
    out["websocket"] = f"{PREFIX}/vms/{issued.vm_id}/console/{issued.kind}/ws"
    return JSONResponse(out, status_code=201, headers={"Cache-Control": "no-store"})


async def _signed_in(conn: HTTPConnection) -> tuple[str | None, str | None]:
    """The session cookie's user and session key, if the upgrade came from a page of this origin."""
    origin = conn.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != conn.headers.get("host"):
        return None, None  # another site's page: its WebSocket would carry our cookie only if SameSite failed
    found = await to_thread.run_sync(web_state(conn).sessions.read, conn.cookies.get(COOKIE))
    return (found.principal, tickets.session_key(found.csrf)) if found is not None else (None, None)


async def console_socket(websocket: WebSocket) -> None:
    principal, ui_session_key = await _signed_in(websocket)
    await proxy.serve(websocket, state(websocket), principal, ui_session_key)
