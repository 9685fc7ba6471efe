"""The web UI as a Starlette app mounted at /ui in the API's app: its own routes, session middleware and
error pages, sharing the API's state (configuration, database, host browser) and Kerberos acceptor."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from appliance.api.negotiate import Acceptor
from appliance.api.state import ApiState
from appliance.errors import DroverError
from appliance.web import consoles, events, graphs, library, login, networkpages, pages, storage, stream, users
from appliance.web.access import SessionMiddleware, WebState, is_loopback
from appliance.web.session import Sessions

STATIC = Path(__file__).parent / "static"

routes = [
    Route("/", pages.dashboard),
    Route("/login", login.login_page, methods=["GET"]),
    Route("/login", login.password_login, methods=["POST"]),
    Route("/login/negotiate", login.negotiate),
    Route("/logout", login.logout, methods=["POST"]),
    Route("/hosts", pages.host_list),
    Route("/hosts/{id}", pages.host_detail),
    Route("/hosts/{id}/{verb}", pages.host_action, methods=["POST"]),
    Route("/enrolment/windows", pages.open_window, methods=["POST"]),
    Route("/enrolment/windows/{id}/close", pages.close_window, methods=["POST"]),
    Route("/vms", pages.vm_list),
    Route("/vms", pages.vm_create, methods=["POST"]),
    Route("/vms/bulk", pages.vm_bulk, methods=["POST"]),
    Route("/vms/{id}", pages.vm_detail),
    # Before /vms/{id}/{verb}, which would otherwise take "console" as a VM action.
    Route("/vms/{id}/console", consoles.console_ticket, methods=["POST"]),
    Route("/vms/{id}/console/{kind}", consoles.console_page),
    WebSocketRoute("/vms/{id}/console/{kind}/ws", consoles.console_socket),
    Route("/vms/{id}/{verb}", pages.vm_action, methods=["POST"]),
    Route("/tasks", pages.task_list),
    Route("/tasks/panel", pages.task_panel),
    Route("/tasks/{id}/cancel", pages.task_cancel, methods=["POST"]),
    Route("/events", events.event_list),
    Route("/templates", library.template_list),
    Route("/templates/import", library.template_import, methods=["POST"]),
    Route("/templates/{id}/delete", library.template_delete, methods=["POST"]),
    Route("/pools", library.pool_list),
    Route("/pools", library.pool_create, methods=["POST"]),
    Route("/pools/{id}/take", library.pool_take, methods=["POST"]),
    Route("/pools/{id}/delete", library.pool_delete, methods=["POST"]),
    Route("/storage", storage.storage_page),
    Route("/storage/pools", storage.pool_create, methods=["POST"]),
    Route("/storage/pools/{id}/refresh", storage.pool_refresh, methods=["POST"]),
    Route("/storage/pools/{id}/delete", storage.pool_delete, methods=["POST"]),
    Route("/storage/pools/{id}/volumes", storage.volume_create, methods=["POST"]),
    Route("/storage/pools/{id}/volumes/{volume}/delete", storage.volume_delete, methods=["POST"]),
    Route("/inventory", pages.inventory),
    Route("/users", users.user_list),
    Route("/users", users.grant, methods=["POST"]),
    Route("/users/grants/{id}/revoke", users.revoke, methods=["POST"]),
    Route("/users/quota", users.set_quota, methods=["POST"]),
    Route("/users/{id}/sessions", users.session_list),
    Route("/users/{id}/sessions/revoke", users.session_revoke, methods=["POST"]),
    Route("/users/{id}/disabled", users.set_disabled, methods=["POST"]),
    Route("/graphs/hosts/{id}", graphs.host),
    Route("/graphs/vms/{id}", graphs.vm),
    Route("/graphs/fleet", graphs.fleet),
    Route("/networks", networkpages.network_list),
    Route("/networks", networkpages.network_create, methods=["POST"]),
    Route("/networks/assign", networkpages.network_assign, methods=["POST"]),
    Route("/stream", stream.stream),
    Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
]


def _error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, DroverError):
        raise exc
    return pages.error_page(request, exc)


def create_web_app(api: ApiState, acceptor: Acceptor) -> Starlette:
    sessions = Sessions(api.engine)
    app = Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, sessions=sessions)],
                    exception_handlers={DroverError: _error})  # fmt: skip
    app.state.drover = api
    app.state.hub = stream.Hub(api.engine)
    app.state.web = WebState(acceptor, sessions, secure_cookie=api.cfg.api_tls or not is_loopback(api.cfg.api.listen))
    return app
