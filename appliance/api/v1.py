"""Version 1 of the REST API: the routes under /api/v1 and their handlers."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute

from appliance.api import (
    consoles,
    graphs,
    hosts,
    metrics,
    networks,
    openapi,
    power,
    realm,
    storage,
    users,
    vmpools,
    vms,
)

PREFIX = "/api/v1"
# Reachable without a ticket: load balancers and `drover serve`'s own readiness check use it.
# /metrics too: a Prometheus scraper has no Kerberos ticket, and it shows counts and counters only.
# The API's description is public as well: it is the same for every caller and holds no data.
PUBLIC = frozenset({f"{PREFIX}/health", "/metrics", f"{PREFIX}/openapi.json", f"{PREFIX}/docs"})
# Routes whose body is a file streamed to disk (not JSON in memory): not held to the API's body limit.
STREAMED = frozenset({f"{PREFIX}/templates", "/ui/templates/import"})


def health(request: Request) -> JSONResponse:
    """Whether the API answers (no ticket needed)."""
    return JSONResponse({"status": "ok"})


@functools.cache
def _document() -> dict[str, Any]:
    try:
        version = package_version("drover")
    except PackageNotFoundError:
        version = "0"
    return openapi.document(routes, PUBLIC, version=version)


def openapi_json(request: Request) -> JSONResponse:
    """This API's OpenAPI 3.1 document, generated from its routes and request types."""
    return JSONResponse(_document())


def docs(request: Request) -> HTMLResponse:
    """This API's reference as one readable page."""
    return HTMLResponse(openapi.reference(_document()))


routes = [
    Route(f"{PREFIX}/health", health, methods=["GET"]),
    Route(f"{PREFIX}/openapi.json", openapi_json, methods=["GET"]),
    Route(f"{PREFIX}/docs", docs, methods=["GET"]),
    Route(f"{PREFIX}/whoami", users.whoami, methods=["GET"]),
    Route(f"{PREFIX}/users", users.grant, methods=["POST"]),
    Route(f"{PREFIX}/users/{{principal}}/quota", users.set_quota, methods=["PUT"]),
    Route(f"{PREFIX}/users/{{principal}}/roles/{{role}}", users.revoke, methods=["DELETE"]),
    Route(f"{PREFIX}/users/{{principal}}/disabled", users.set_disabled, methods=["PUT"]),
    Route(f"{PREFIX}/users/{{principal}}/sessions", users.list_sessions, methods=["GET"]),
    Route(f"{PREFIX}/users/{{principal}}/sessions", users.end_sessions, methods=["DELETE"]),
    Route(f"{PREFIX}/users/{{principal}}/sessions/{{id:int}}", users.end_session, methods=["DELETE"]),
    Route(f"{PREFIX}/hosts", hosts.list_hosts, methods=["GET"]),
    Route(f"{PREFIX}/hosts/tokens", hosts.mint_token, methods=["POST"]),
    Route(f"{PREFIX}/hosts/{{key}}", hosts.show_host, methods=["GET"]),
    Route(f"{PREFIX}/hosts/{{key}}", hosts.remove_host, methods=["DELETE"]),
    Route(f"{PREFIX}/hosts/{{key}}/approve", hosts.approve_host, methods=["POST"]),
    Route(f"{PREFIX}/hosts/{{key}}/maintenance", hosts.maintenance_host, methods=["POST"]),
    Route(f"{PREFIX}/hosts/{{key}}/activate", hosts.activate_host, methods=["POST"]),
    Route(f"{PREFIX}/enrolment/windows", hosts.open_window, methods=["POST"]),
    Route(f"{PREFIX}/enrolment/windows", hosts.list_windows, methods=["GET"]),
    Route(f"{PREFIX}/enrolment/windows", hosts.close_windows, methods=["DELETE"]),
    Route(f"{PREFIX}/enrolment/windows/{{id:int}}", hosts.close_windows, methods=["DELETE"]),
    Route(f"{PREFIX}/realm/check", realm.check_realm, methods=["POST"]),
    Route(f"{PREFIX}/hosts/{{key}}/clear", hosts.clear_host, methods=["POST"]),
    *power.routes(PREFIX),
    # Before /vms/{key}/{verb}, which would otherwise take POST /vms/X/snapshots and /vms/X/clone.
    *storage.routes(PREFIX),
    *vmpools.routes(PREFIX),
    *networks.routes(PREFIX),
    Route(f"{PREFIX}/vms", vms.list_vms, methods=["GET"]),
    Route(f"{PREFIX}/vms", vms.create_vm, methods=["POST"]),
    Route(f"{PREFIX}/vms/{{key}}", vms.show_vm, methods=["GET"]),
    # Before /vms/{key}/{verb}, which would otherwise take it as a verb.
    Route(f"{PREFIX}/vms/{{key}}/console", consoles.ask_ticket, methods=["POST"]),
    WebSocketRoute(f"{PREFIX}/vms/{{id}}/console/{{kind}}", consoles.console_socket),
    Route(f"{PREFIX}/vms/{{key}}/{{verb}}", vms.vm_action, methods=["POST"]),
    Route(f"{PREFIX}/tasks", vms.list_tasks, methods=["GET"]),
    Route(f"{PREFIX}/tasks/{{id}}", vms.show_task, methods=["GET"]),
    Route(f"{PREFIX}/tasks/{{id}}/cancel", vms.cancel_task, methods=["POST"]),
    Route(f"{PREFIX}/cluster/balance", vms.balance, methods=["POST"]),
    Route(f"{PREFIX}/hosts/{{key}}/metrics", metrics.host_metrics, methods=["GET"]),
    *graphs.routes(PREFIX),
    Route(f"{PREFIX}/vms/{{key}}/metrics", metrics.vm_metrics, methods=["GET"]),
    Route("/metrics", metrics.prometheus, methods=["GET"]),
]
