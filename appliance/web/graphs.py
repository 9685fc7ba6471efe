"""The graphs' data for the UI's pages (/ui/graphs/...): the API's answers (appliance.api.graphs, the same
domain function and permission check), reached with the session cookie; drawn by static/graphs.js."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from appliance.api import graphs as api_graphs
from appliance.api.edge import error_response
from appliance.errors import DroverError


async def _json(request: Request, what: str) -> JSONResponse:
    def answer() -> dict[str, Any]:
        if what == "fleet":
            return api_graphs.fleet_graphs(request)
        key = request.path_params["id"]
        return api_graphs.host_graphs(request, key) if what == "host" else api_graphs.vm_graphs(request, key)

    try:
        return JSONResponse(await run_in_threadpool(answer), headers={"Cache-Control": "no-store"})
    except DroverError as exc:
        return error_response(exc)


async def host(request: Request) -> JSONResponse:
    return await _json(request, "host")


async def vm(request: Request) -> JSONResponse:
    return await _json(request, "vm")


async def fleet(request: Request) -> JSONResponse:
    return await _json(request, "fleet")
