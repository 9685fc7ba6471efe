"""The networks page: logical networks, each host's NIC assignment and whether the node is in sync; forms to
create a network and assign one on a host. Same domain functions and permission checks as /api/v1/networks.
"""

from __future__ import annotations

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from appliance import hosts, networks, permissions
from appliance.api.auth import caller
from appliance.api.state import session
from appliance.db.models import BondMode, Host, Network, NetworkRole
from appliance.errors import Forbidden
from appliance.permissions import Privilege
from appliance.web.forms import form_fields
from appliance.web.pages import flash, render


def network_list(request: Request) -> Response:
    who = caller(request).principal
    with session(request) as s:
        pools = permissions.visible_pools(s, who)
        if pools is not None and not pools:
            raise Forbidden(f"{who} may not see networks", "it needs a role in some hardware pool")
        nets = [networks.detail(n) for n in s.scalars(select(Network).order_by(Network.name))]
        rows = []
        for host in s.scalars(select(Host).where(Host.approved_at.is_not(None)).order_by(Host.hostname)):
            if pools is None or host.hardware_pool_id in pools:
                rows.append({"host": host, **networks.sync(s, host)})
        return render(request, "networks.html", networks=nets, hosts=rows, roles=[str(r) for r in NetworkRole],
                      bond_modes=[str(m) for m in BondMode], below="networks_form.html")  # fmt: skip


async def network_create(request: Request) -> Response:
    form = await form_fields(request)
    body: dict[str, object] = {k: v.strip() for k, v in form.items() if v.strip() and k != "csrf"}
    spec = networks.NetworkSpec.from_request(body)
    return await run_in_threadpool(_create, request, spec)


def _create(request: Request, spec: networks.NetworkSpec) -> Response:
    with session(request) as s:
        permissions.require(s, caller(request).principal, Privilege.MODIFY, None, "create networks")
        net = networks.create_network(s, spec)
        return flash(f"network {net.name} created: bridge {net.bridge}")


async def network_assign(request: Request) -> Response:
    return await run_in_threadpool(_assign, request, await form_fields(request))


def _assign(request: Request, form: dict[str, str]) -> Response:
    nics = [n.strip() for n in form.get("nics", "").replace(",", " ").split() if n.strip()]
    with session(request) as s:
        host = hosts.find(s, form.get("host", ""))
        permissions.require(s, caller(request).principal, Privilege.MODIFY, host.hardware_pool_id,
                            f"assign networks on {host.hostname}")  # fmt: skip
        net = networks.find_network(s, form.get("network", ""))
        networks.assign(s, host, net, nics, form.get("bond_mode") or None, form.get("address") or None)
        hosts.event(s, host, "host.network", f"network {net.name} on {'+'.join(nics)} by {caller(request).principal}")
        return flash(f"{host.hostname}: network {net.name} on {'+'.join(nics)}")
