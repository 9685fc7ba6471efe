"""Power management and fencing over the API: a host's BMC settings, power actions, an admin's fence confirmation,
and a VM's HA flag.

GET    /hosts/{key}/power                 settings (never the password) and fence progress    monitor role
PUT    /hosts/{key}/power                 {address, port?, user, password}                      admin
DELETE /hosts/{key}/power                 forget the settings                                   admin
POST   /hosts/{key}/power/{action}        on | off | cycle | status (the BMC's answer)          admin (status: monitor)
POST   /hosts/{key}/confirm-rebooted      the admin vouches the host was rebooted: its VMs are released
PUT    /vms/{key}/ha                      {ha, priority?}                                       modify on the VM's pool
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from appliance import fencing, hosts, permissions, power, vms
from appliance.api.access import require_role
from appliance.api.auth import caller
from appliance.api.edge import read_json
from appliance.api.hosts import _optional_body
from appliance.api.state import session, state
from appliance.db.models.users import Role
from appliance.errors import UsageError
from appliance.ipmi import IpmiClient, PowerAction
from appliance.permissions import Privilege
from appliance.secretbox import SecretBox

MAX_HA_PRIORITY = 1000


def routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/hosts/{{key}}/power", show_power, methods=["GET"]),
        Route(f"{prefix}/hosts/{{key}}/power", set_power, methods=["PUT"]),
        Route(f"{prefix}/hosts/{{key}}/power", remove_power, methods=["DELETE"]),
        Route(f"{prefix}/hosts/{{key}}/power/{{action}}", power_action, methods=["POST"]),
        Route(f"{prefix}/hosts/{{key}}/confirm-rebooted", confirm_rebooted, methods=["POST"]),
        Route(f"{prefix}/vms/{{key}}/ha", set_ha, methods=["PUT"]),
    ]


def _box(request: Request) -> SecretBox:
    return SecretBox.under(state(request).cfg.state_dir)


def show_power(request: Request) -> JSONResponse:
    require_role(request, Role.MONITOR, "see hosts' power management")
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        return JSONResponse({"host": host.hostname, **power.describe(host)})


async def set_power(request: Request) -> JSONResponse:
    settings = power.check_settings(await read_json(request))
    return await run_in_threadpool(_set, request, settings)


def _set(request: Request, settings: power.PowerSettings) -> JSONResponse:
    require_role(request, Role.ADMIN, "set hosts' power management")
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        power.configure(s, host, settings, _box(request), caller(request).principal)
        return JSONResponse({"host": host.hostname, **power.describe(host)})


async def remove_power(request: Request) -> JSONResponse:
    await _optional_body(request, frozenset())
    return await run_in_threadpool(_remove, request)


def _remove(request: Request) -> JSONResponse:
    require_role(request, Role.ADMIN, "remove hosts' power management")
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        power.unconfigure(s, host, caller(request).principal)
        return JSONResponse({"host": host.hostname, **power.describe(host)})


async def power_action(request: Request) -> JSONResponse:
    await _optional_body(request, frozenset())
    raw = request.path_params["action"]
    try:
        action = PowerAction(raw)
    except ValueError:
        raise UsageError(f"power action {raw!r}: one of {', '.join(a.value for a in PowerAction)}") from None
    return await run_in_threadpool(_act, request, action)


def _act(request: Request, action: PowerAction) -> JSONResponse:
    if action is PowerAction.STATUS:
        require_role(request, Role.MONITOR, "read hosts' power state")
    else:
        require_role(request, Role.ADMIN, f"power hosts {action}")
    client = IpmiClient(state(request).cfg.power)
    outcome = power.act(lambda: session(request), request.path_params["key"], action, client, _box(request),
                        caller(request).principal)  # fmt: skip
    return JSONResponse(outcome.as_dict())


async def confirm_rebooted(request: Request) -> JSONResponse:
    await _optional_body(request, frozenset())
    return await run_in_threadpool(_confirm, request)


def _confirm(request: Request) -> JSONResponse:
    require_role(request, Role.ADMIN, "confirm hosts were rebooted")
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        queued = fencing.confirm_rebooted(s, host, caller(request).principal)
        return JSONResponse({"host": host.hostname, **power.describe(host), "ha_restart_tasks": queued})


async def set_ha(request: Request) -> JSONResponse:
    body = await read_json(request)
    unknown = sorted(set(body) - {"ha", "priority"})
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown field", "fields: ha, priority")
    ha, priority = body.get("ha"), body.get("priority", 0)
    if not isinstance(ha, bool):
        raise UsageError("ha: true or false")
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= MAX_HA_PRIORITY:
        raise UsageError(f"priority: an integer from 0 to {MAX_HA_PRIORITY} (higher restarts first)")
    return await run_in_threadpool(_set_ha, request, ha, priority)


def _set_ha(request: Request, ha: bool, priority: int) -> JSONResponse:
    with session(request) as s:
        vm = vms.find(s, request.path_params["key"])
        permissions.require(s, caller(request).principal, Privilege.MODIFY, vm.hardware_pool_id,
                            f"change VM {vm.name}")  # fmt: skip
        vm.is_ha, vm.ha_priority = ha, priority
        out: dict[str, Any] = vms.summary(vm)
        return JSONResponse(out)
