"""Graphs over the API, as the UI draws them: every series of a chart on one time grid, rates computed.

  GET /api/v1/hosts/{key}/graphs?span=1h|6h|1d   CPU busy, load, memory, network, disk
  GET /api/v1/vms/{key}/graphs?span=...          CPU, memory, disk, network (the virt plugin's)
  GET /api/v1/graphs/fleet?span=...              fleet CPU and memory, VMs running, tasks ended
A chart the TSDB could not answer carries its `error`; the answer is still 200 (the others may have data).
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from appliance import graphs
from appliance.api.auth import caller
from appliance.api.state import session, state
from appliance.errors import UsageError


def span_of(conn: HTTPConnection) -> graphs.Span:
    unknown = sorted(set(conn.query_params) - {"span"})
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown parameter", "parameters: span (1h, 6h or 1d)")
    return graphs.Span.parse(conn.query_params.get("span"))


def host_graphs(conn: HTTPConnection, key: str) -> dict[str, Any]:
    span = span_of(conn)
    with session(conn) as s:
        return graphs.for_host(s, state(conn).cfg.tsdb_url, caller(conn).principal, key, span)


def vm_graphs(conn: HTTPConnection, key: str) -> dict[str, Any]:
    span = span_of(conn)
    with session(conn) as s:
        return graphs.for_vm(s, state(conn).cfg.tsdb_url, caller(conn).principal, key, span)


def fleet_graphs(conn: HTTPConnection) -> dict[str, Any]:
    span = span_of(conn)
    with session(conn) as s:
        return graphs.for_fleet(s, state(conn).cfg.tsdb_url, caller(conn).principal, span)


async def host(request: Request) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(host_graphs, request, request.path_params["key"]))


async def vm(request: Request) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(vm_graphs, request, request.path_params["key"]))


async def fleet(request: Request) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(fleet_graphs, request))


def routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/hosts/{{key}}/graphs", host, methods=["GET"]),
        Route(f"{prefix}/vms/{{key}}/graphs", vm, methods=["GET"]),
        Route(f"{prefix}/graphs/fleet", fleet, methods=["GET"]),
    ]
