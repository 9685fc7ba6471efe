"""VM pools over the API: list, create, delete, and take a VM (the self-service portal's verb).

  GET /vmpools                    the pools the caller may see, with how many VMs are free
  POST /vmpools {name, template, pool?, size, prestarted?, description?}   202 with the tasks queued
  DELETE /vmpools/{pool}          409 while a user holds one of its VMs
  POST /vmpools/{pool}/take       the VM the caller now owns
"""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from appliance import vmpools, vms
from appliance.api.auth import caller
from appliance.api.schema import Body, Empty, Id, accepts
from appliance.api.state import session


def list_pools(request: Request) -> JSONResponse:
    principal = caller(request).principal
    with session(request) as s:
        mine = {p.id for p in vmpools.takeable(s, principal)}
        rows = [{**vmpools.summary(s, p), "may_take": p.id in mine} for p in vmpools.visible(s, principal)]
        return JSONResponse({"vmpools": rows})


class VmPoolRequest(Body):
    """A VM pool; its name's form, the template and the hardware pool are checked by vmpools (the UI's too)."""

    name: str = Field(max_length=40)
    template: Id | str = Field(description="template name or id")
    pool: Id | str | None = Field(None, description="hardware pool name or id (default: the template's)")
    size: int = Field(ge=1, le=vmpools.MAX_SIZE, description="VMs in the pool")
    prestarted: int | None = Field(None, ge=0, le=vmpools.MAX_SIZE, description="free VMs kept running")
    description: str | None = Field(None, max_length=1000)


@accepts(body=VmPoolRequest)
def create_pool(request: Request, body: VmPoolRequest) -> JSONResponse:
    spec = vmpools.PoolSpec.from_request(body.given())
    with session(request) as s:
        pool, tasks = vmpools.create(s, spec, caller(request).principal)
        return JSONResponse({"vmpool": vmpools.summary(s, pool), "tasks": tasks}, status_code=202)


def delete_pool(request: Request) -> JSONResponse:
    with session(request) as s:
        pool = vmpools.find(s, request.path_params["pool"])
        name = pool.name
        tasks = vmpools.delete(s, pool, caller(request).principal)
        return JSONResponse({"deleted": name, "tasks": tasks}, status_code=202)


@accepts(body=Empty, optional_body=True)
def take(request: Request, body: Empty) -> JSONResponse:
    with session(request) as s:
        pool = vmpools.find(s, request.path_params["pool"])
        vm, tasks = vmpools.take(s, pool, caller(request).principal)
        return JSONResponse({"vm": vms.summary(vm), "tasks": tasks})


def routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/vmpools", list_pools, methods=["GET"]),
        Route(f"{prefix}/vmpools", create_pool, methods=["POST"]),
        Route(f"{prefix}/vmpools/{{pool}}", delete_pool, methods=["DELETE"]),
        Route(f"{prefix}/vmpools/{{pool}}/take", take, methods=["POST"]),
    ]
