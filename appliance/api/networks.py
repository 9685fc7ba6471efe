"""Logical networks and host NIC assignment over the API; every route checks the caller's privilege first.

GET/POST /networks, GET/DELETE /networks/{net}, POST /networks/{net}/attach {cluster, detach?},
POST /networks/{net}/rules {match: name|mac, value}, DELETE /networks/{net}/rules/{match}/{value},
GET /hosts/{key}/networks (what the host carries, in sync or what differs),
PUT /hosts/{key}/networks/{net} {nics, bond_mode?, address?}, DELETE /hosts/{key}/networks/{net}.

Networks are global objects: changing one needs `modify` globally; assigning NICs needs `modify` on the
host's hardware pool; seeing them needs any role anywhere.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from appliance import hosts, networks
from appliance.api.auth import caller
from appliance.api.edge import read_json
from appliance.api.state import session
from appliance.db.models import Host, Network
from appliance.errors import Forbidden, UsageError
from appliance.permissions import Privilege, require, visible_pools


def _who(request: Request) -> str:
    return caller(request).principal


def _fields(body: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    unknown = sorted(set(body) - fields)
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown field", f"fields: {', '.join(sorted(fields))}")
    return body


def _may_see(request: Request, s: Session) -> None:
    pools = visible_pools(s, _who(request))
    if pools is not None and not pools:
        raise Forbidden(f"{_who(request)} may not see networks", "it needs a role in some hardware pool")


def list_networks(request: Request) -> JSONResponse:
    with session(request) as s:
        _may_see(request, s)
        rows = s.scalars(select(Network).order_by(Network.name)).all()
        return JSONResponse({"networks": [networks.summary(n) for n in rows]})


def show_network(request: Request) -> JSONResponse:
    with session(request) as s:
        _may_see(request, s)
        return JSONResponse(networks.detail(networks.find_network(s, request.path_params["net"])))


async def create_network(request: Request) -> JSONResponse:
    spec = networks.NetworkSpec.from_request(await read_json(request))
    return await run_in_threadpool(_create, request, spec)


def _create(request: Request, spec: networks.NetworkSpec) -> JSONResponse:
    with session(request) as s:
        require(s, _who(request), Privilege.MODIFY, None, "create networks")
        return JSONResponse(networks.summary(networks.create_network(s, spec)), status_code=201)


def delete_network(request: Request) -> Response:
    with session(request) as s:
        require(s, _who(request), Privilege.MODIFY, None, "delete networks")
        networks.delete_network(s, networks.find_network(s, request.path_params["net"]))
        return Response(status_code=204)


async def attach_network(request: Request) -> JSONResponse:
    body = _fields(await read_json(request), frozenset({"cluster", "detach"}))
    cluster, detach = body.get("cluster"), body.get("detach", False)
    if not isinstance(cluster, str | int) or isinstance(cluster, bool) or not isinstance(detach, bool):
        raise UsageError("cluster: give a cluster's name or id; detach: true or false")
    return await run_in_threadpool(_attach, request, str(cluster), detach)


def _attach(request: Request, cluster: str, detach: bool) -> JSONResponse:
    with session(request) as s:
        require(s, _who(request), Privilege.MODIFY, None, "attach networks to clusters")
        net = networks.find_network(s, request.path_params["net"])
        networks.attach(s, net, cluster, detach)
        return JSONResponse(networks.summary(net))


async def add_rule(request: Request) -> JSONResponse:
    body = _fields(await read_json(request), frozenset({"match", "value"}))
    match, value = body.get("match"), body.get("value")
    if not isinstance(match, str) or not isinstance(value, str):
        raise UsageError("match (name or mac) and value (a NIC name or MAC) are needed")
    return await run_in_threadpool(_rule, request, match, value)


def _rule(request: Request, match: str, value: str) -> JSONResponse:
    with session(request) as s:
        require(s, _who(request), Privilege.MODIFY, None, "change network rules")
        net = networks.find_network(s, request.path_params["net"])
        networks.add_rule(s, net, match, value)
        return JSONResponse(networks.summary(net), status_code=201)


def delete_rule(request: Request) -> JSONResponse:
    with session(request) as s:
        require(s, _who(request), Privilege.MODIFY, None, "change network rules")
        net = networks.find_network(s, request.path_params["net"])
        match, value = request.path_params["match"], request.path_params["value"].lower()
        rule = next((r for r in net.rules if str(r.match) == match and r.value.lower() == value), None)
        if rule is None:
            raise UsageError(f"network {net.name} has no rule {match} {value}")
        net.rules.remove(rule)
        s.flush()
        return JSONResponse(networks.summary(net))


def _host(request: Request, s: Session, privilege: Privilege, what: str) -> Host:
    host = hosts.find(s, request.path_params["key"])
    require(s, _who(request), privilege, host.hardware_pool_id, f"{what} {host.hostname}")
    return host


def host_networks(request: Request) -> JSONResponse:
    with session(request) as s:
        host = _host(request, s, Privilege.VIEW, "see the networks of")
        return JSONResponse({"host": host.hostname, **networks.sync(s, host)})


async def assign(request: Request) -> JSONResponse:
    body = _fields(await read_json(request), frozenset({"nics", "bond_mode", "address"}))
    nics, mode, address = body.get("nics"), body.get("bond_mode"), body.get("address")
    if not isinstance(nics, list) or not all(isinstance(n, str) for n in nics):
        raise UsageError("nics: a list of NIC names or MACs (two or more make a bond)")
    if (mode is not None and not isinstance(mode, str)) or (address is not None and not isinstance(address, str)):
        raise UsageError("bond_mode and address: strings")
    return await run_in_threadpool(_assign, request, nics, mode, address)


def _assign(request: Request, nics: list[str], mode: str | None, address: str | None) -> JSONResponse:
    with session(request) as s:
        host = _host(request, s, Privilege.MODIFY, "assign networks on")
        net = networks.find_network(s, request.path_params["net"])
        networks.assign(s, host, net, nics, mode, address)
        hosts.event(s, host, "host.network", f"network {net.name} on {'+'.join(sorted(nics))} by {_who(request)}")
        return JSONResponse({"host": host.hostname, **networks.sync(s, host)})


def unassign(request: Request) -> JSONResponse:
    with session(request) as s:
        host = _host(request, s, Privilege.MODIFY, "remove networks from")
        net = networks.find_network(s, request.path_params["net"])
        networks.unassign(s, host, net)
        hosts.event(s, host, "host.network", f"network {net.name} removed by {_who(request)}")
        return JSONResponse({"host": host.hostname, **networks.sync(s, host)})


def routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/networks", list_networks, methods=["GET"]),
        Route(f"{prefix}/networks", create_network, methods=["POST"]),
        Route(f"{prefix}/networks/{{net}}", show_network, methods=["GET"]),
        Route(f"{prefix}/networks/{{net}}", delete_network, methods=["DELETE"]),
        Route(f"{prefix}/networks/{{net}}/attach", attach_network, methods=["POST"]),
        Route(f"{prefix}/networks/{{net}}/rules", add_rule, methods=["POST"]),
        Route(f"{prefix}/networks/{{net}}/rules/{{match}}/{{value}}", delete_rule, methods=["DELETE"]),
        Route(f"{prefix}/hosts/{{key}}/networks", host_networks, methods=["GET"]),
        Route(f"{prefix}/hosts/{{key}}/networks/{{net}}", assign, methods=["PUT"]),
        Route(f"{prefix}/hosts/{{key}}/networks/{{net}}", unassign, methods=["DELETE"]),
    ]
