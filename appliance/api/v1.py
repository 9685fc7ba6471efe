"""Version 1 of the REST API: the routes under /api/v1 and their handlers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from appliance.api import hosts, metrics, networks, realm, storage, users, vms

PREFIX = "/api/v1"
# Reachable without a ticket: load balancers and `drover serve`'s own readiness check use it.
# /metrics too: a Prometheus scraper has no Kerberos ticket, and it shows counts and counters only.
PUBLIC = frozenset({f"{PREFIX}/health", "/metrics"})
# Routes whose body is a file streamed to disk (not JSON in memory): not held to the API's body limit.
STREAMED = frozenset({f"{PREFIX}/templates"})


def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


routes = [
    Route(f"{PREFIX}/health", health, methods=["GET"]),
    Route(f"{PREFIX}/whoami", users.whoami, methods=["GET"]),
    Route(f"{PREFIX}/users", users.grant, methods=["POST"]),
    Route(f"{PREFIX}/users/{{principal}}/quota", users.set_quota, methods=["PUT"]),
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
    # Before /vms/{key}/{verb}, which would otherwise take POST /vms/X/snapshots and /vms/X/clone.
    *storage.routes(PREFIX),
    *networks.routes(PREFIX),
    Route(f"{PREFIX}/vms", vms.list_vms, methods=["GET"]),
    Route(f"{PREFIX}/vms", vms.create_vm, methods=["POST"]),
    Route(f"{PREFIX}/vms/{{key}}", vms.show_vm, methods=["GET"]),
    Route(f"{PREFIX}/vms/{{key}}/{{verb}}", vms.vm_action, methods=["POST"]),
    Route(f"{PREFIX}/tasks", vms.list_tasks, methods=["GET"]),
    Route(f"{PREFIX}/tasks/{{id}}", vms.show_task, methods=["GET"]),
    Route(f"{PREFIX}/tasks/{{id}}/cancel", vms.cancel_task, methods=["POST"]),
    Route(f"{PREFIX}/cluster/balance", vms.balance, methods=["POST"]),
    Route(f"{PREFIX}/hosts/{{key}}/metrics", metrics.host_metrics, methods=["GET"]),
    Route(f"{PREFIX}/vms/{{key}}/metrics", metrics.vm_metrics, methods=["GET"]),
    Route("/metrics", metrics.prometheus, methods=["GET"]),
]
