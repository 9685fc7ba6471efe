"""Power management and fencing over the API: a host's BMC settings, power actions, an admin's fence confirmation,
and a VM's HA flag.

GET    /hosts/{key}/power                 settings (never the password) and fence progress    monitor role
PUT    /hosts/{key}/power                 {address, port?, user, password}                      admin
DELETE /hosts/{key}/power                 forget the settings                                   admin
POST   /hosts/{key}/power/{action}        on | off | cycle | status (the BMC's answer)          admin (status: monitor)
POST   /enrolment/windows/{id}/power/{action}  on | off | status of the one machine a window is for  admin
POST   /hosts/{key}/confirm-rebooted      the admin vouches the host was rebooted: its VMs are released
PUT    /vms/{key}/ha                      {ha, priority?}                                       modify on the VM's pool
GET    /fencer                            which appliance process fences, fences under way      monitor role
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from appliance import fencing, hosts, permissions, power, vms
from appliance.api.access import require_role
from appliance.api.auth import caller
from appliance.api.schema import Body, Empty, Query, accepts
from appliance.api.state import session, state
from appliance.db.models.users import Role
from appliance.errors import UsageError
from appliance.ipmi import DEFAULT_PORT, IpmiClient, PowerAction
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
        Route(f"{prefix}/enrolment/windows/{{id:int}}/power/{{action}}", window_power_action, methods=["POST"]),
        Route(f"{prefix}/vms/{{key}}/ha", set_ha, methods=["PUT"]),
        Route(f"{prefix}/fencer", show_fencer, methods=["GET"]),
    ]


def _box(request: Request) -> SecretBox:
    return SecretBox.under(state(request).cfg.state_dir)


def show_fencer(request: Request) -> JSONResponse:
    """The fencer's lease (which `drover serve` process fences, since when, until when), the hosts with a fence
    under way and the latest power commands recorded for fences, newest first."""
    require_role(request, Role.MONITOR, "see the fencer")
    with session(request) as s:
        return JSONResponse(fencing.status(s))


def show_power(request: Request) -> JSONResponse:
    require_role(request, Role.MONITOR, "see hosts' power management")
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        return JSONResponse({"host": host.hostname, **power.describe(host)})


class PowerRequest(Body):
    """The BMC's settings; their form (an address or host name, a user ipmitool passes unharmed) is checked by
    power.check_settings, which the web UI's form goes through too."""

    address: str = Field(max_length=253, description="the BMC's IP address or host name")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="IPMI over LAN (RMCP+) port")
    user: str = Field(max_length=64)
    password: str = Field(max_length=power.MAX_PASSWORD, description="stored encrypted, never returned")


@accepts(body=PowerRequest)
def set_power(request: Request, body: PowerRequest) -> JSONResponse:
    """PUT /hosts/{key}/power {address, port?, user, password}."""
    settings = power.check_settings(body.given())
    require_role(request, Role.ADMIN, "set hosts' power management")
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        power.configure(s, host, settings, _box(request), caller(request).principal)
        return JSONResponse({"host": host.hostname, **power.describe(host)})


@accepts(body=Empty, optional_body=True)
def remove_power(request: Request, body: Empty) -> JSONResponse:
    """DELETE /hosts/{key}/power (no body)."""
    return _remove(request)


def _remove(request: Request) -> JSONResponse:
    require_role(request, Role.ADMIN, "remove hosts' power management")
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        power.unconfigure(s, host, caller(request).principal)
        return JSONResponse({"host": host.hostname, **power.describe(host)})


class PowerPath(Query):
    key: str
    action: PowerAction


@accepts(body=Empty, optional_body=True, path=PowerPath)
def power_action(request: Request, body: Empty) -> JSONResponse:
    """POST /hosts/{key}/power/{action} (no body): on | off | cycle | status through the BMC."""
    raw = request.path_params["action"]
    try:
        action = PowerAction(raw)
    except ValueError:
        raise UsageError(f"power action {raw!r}: one of {', '.join(a.value for a in PowerAction)}") from None
    return _act(request, action)


def _act(request: Request, action: PowerAction) -> JSONResponse:
    if action is PowerAction.STATUS:
        require_role(request, Role.MONITOR, "read hosts' power state")
    else:
        require_role(request, Role.ADMIN, f"power hosts {action}")
    client = IpmiClient(state(request).cfg.power)
    outcome = power.act(lambda: session(request), request.path_params["key"], action, client, _box(request),
                        caller(request).principal)  # fmt: skip
    return JSONResponse(outcome.as_dict())


class WindowAction(enum.StrEnum):
    """A host's power actions but cycle: the machine of a window is either still off or booting into it."""

    ON = "on"
    OFF = "off"
    STATUS = "status"


class WindowPowerPath(Query):
    id: int
    action: WindowAction


@accepts(body=Empty, optional_body=True, path=WindowPowerPath)
def window_power_action(request: Request, body: Empty) -> JSONResponse:
    """POST /enrolment/windows/{id}/power/{action} (no body): on | off | status of the machine a window is for,
    through the BMC given when it was opened: provisioning from cold, before any host record exists."""
    raw = request.path_params["action"]
    try:
        action = PowerAction(WindowAction(raw))
    except ValueError:
        raise UsageError(f"power action {raw!r} on an enrolment window: one of {', '.join(WindowAction)}") from None
    require_role(request, Role.MONITOR if action is PowerAction.STATUS else Role.ADMIN,
                 "power machines of enrolment windows")  # fmt: skip
    client = IpmiClient(state(request).cfg.power)
    out = power.act_window(lambda: session(request), request.path_params["id"], action, client, _box(request),
                           caller(request).principal)  # fmt: skip
    return JSONResponse(out)


@accepts(body=Empty, optional_body=True)
def confirm_rebooted(request: Request, body: Empty) -> JSONResponse:
    """POST /hosts/{key}/confirm-rebooted (no body)."""
    return _confirm(request)


def _confirm(request: Request) -> JSONResponse:
    require_role(request, Role.ADMIN, "confirm hosts were rebooted")
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        queued = fencing.confirm_rebooted(s, host, caller(request).principal)
        return JSONResponse({"host": host.hostname, **power.describe(host), "ha_restart_tasks": queued})


class HaRequest(Body):
    ha: bool
    priority: int = Field(0, ge=0, le=MAX_HA_PRIORITY, description="higher restarts first")


@accepts(body=HaRequest)
def set_ha(request: Request, body: HaRequest) -> JSONResponse:
    """PUT /vms/{key}/ha {ha, priority?}."""
    return _set_ha(request, body.ha, body.priority)


def _set_ha(request: Request, ha: bool, priority: int) -> JSONResponse:
    with session(request) as s:
        vm = vms.find(s, request.path_params["key"])
        permissions.require(s, caller(request).principal, Privilege.MODIFY, vm.hardware_pool_id,
                            f"change VM {vm.name}")  # fmt: skip
        vm.is_ha, vm.ha_priority = ha, priority
        out: dict[str, Any] = vms.summary(vm)
        return JSONResponse(out)
