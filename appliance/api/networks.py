"""Logical networks and host NIC assignment over the API; every route checks the caller's privilege first.

GET/POST /networks, GET/DELETE /networks/{net}, POST /networks/{net}/attach {cluster, detach?},
POST /networks/{net}/rules {match: name|mac, value}, DELETE /networks/{net}/rules/{match}/{value},
GET /hosts/{key}/networks (what the host carries, in sync or what differs),
PUT /hosts/{key}/networks/{net} {nics, bond_mode?, address?}, DELETE /hosts/{key}/networks/{net}.

Networks are global objects: changing one needs `modify` globally; assigning NICs needs `modify` on the
host's hardware pool; seeing them needs any role anywhere.
"""

from __future__ import annotations

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from appliance import hosts, networks
from appliance.api.auth import caller
from appliance.api.schema import Body, Id, accepts
from appliance.api.state import session
from appliance.db.models import BondMode, BootProtocol, Host, Network, NetworkRole, RuleMatch
from appliance.errors import Forbidden, UsageError
from appliance.permissions import Privilege, require, visible_pools


def _who(request: Request) -> str:
    return caller(request).principal


class NetworkRequest(Body):
    """A logical network; names, the subnet and the gateway are checked by networks.NetworkSpec (the UI's too)."""

    name: str = Field(max_length=64)
    description: str | None = Field(None, max_length=1000)
    # Ranges documented here and enforced by NetworkSpec, whose wording the CLI and the UI share.
    vlan: int | None = Field(None, description="802.1Q id; left out: untagged",
                             json_schema_extra={"minimum": 1, "maximum": 4094})  # fmt: skip
    mtu: int | None = Field(None, json_schema_extra={"minimum": 68, "maximum": 65535})
    role: NetworkRole | None = None
    boot_protocol: BootProtocol | None = Field(None, description="how hosts get their address on it")
    bridge: str | None = Field(None, max_length=255, description="the bridge's name on every host (at most 15)")
    subnet: str | None = Field(None, max_length=64, description="CIDR")
    gateway: str | None = Field(None, max_length=64)


class AttachRequest(Body):
    cluster: Id | str = Field(description="cluster name or id")
    detach: bool = False


class RuleRequest(Body):
    match: RuleMatch
    value: str = Field(max_length=64, description="a NIC name, or a MAC")


class AssignRequest(Body):
    nics: list[str] = Field(max_length=16, description="NIC names or MACs; two or more make a bond")
    bond_mode: BondMode | None = None
    address: str | None = Field(None, max_length=64, description="the host's address on the network (CIDR)")


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


@accepts(body=NetworkRequest)
def create_network(request: Request, body: NetworkRequest) -> JSONResponse:
    spec = networks.NetworkSpec.from_request(body.given())
    with session(request) as s:
        require(s, _who(request), Privilege.MODIFY, None, "create networks")
        return JSONResponse(networks.summary(networks.create_network(s, spec)), status_code=201)


def delete_network(request: Request) -> Response:
    with session(request) as s:
        require(s, _who(request), Privilege.MODIFY, None, "delete networks")
        networks.delete_network(s, networks.find_network(s, request.path_params["net"]))
        return Response(status_code=204)


@accepts(body=AttachRequest)
def attach_network(request: Request, body: AttachRequest) -> JSONResponse:
    return _attach(request, str(body.cluster), body.detach)


def _attach(request: Request, cluster: str, detach: bool) -> JSONResponse:
    with session(request) as s:
        require(s, _who(request), Privilege.MODIFY, None, "attach networks to clusters")
        net = networks.find_network(s, request.path_params["net"])
        networks.attach(s, net, cluster, detach)
        return JSONResponse(networks.summary(net))


@accepts(body=RuleRequest)
def add_rule(request: Request, body: RuleRequest) -> JSONResponse:
    return _rule(request, str(body.match), body.value)


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


@accepts(body=AssignRequest)
def assign(request: Request, body: AssignRequest) -> JSONResponse:
    if any(len(n) > 64 for n in body.nics):
        raise UsageError("nics: NIC names or MACs of at most 64 characters")
    return _assign(request, body.nics, None if body.bond_mode is None else str(body.bond_mode), body.address)


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
