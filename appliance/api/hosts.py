"""Hosts over the API: list, show; approve, maintenance, activate, remove and enrolment tokens (admin)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse

from appliance import admission, enrolment, hosts, lifecycle, permissions, power, tasking
from appliance.api.access import require_role as _require
from appliance.api.auth import caller
from appliance.api.power import PowerRequest
from appliance.api.schema import Body, Empty, Id, Query, accepts
from appliance.api.state import session, state
from appliance.db import tokens
from appliance.db.models import Host, TaskType
from appliance.db.models.users import Role
from appliance.errors import UsageError
from appliance.kerberos.realm import Realm
from appliance.paging import Page
from appliance.permissions import Privilege
from appliance.pki import Pki
from appliance.secretbox import SecretBox
from nodeagent import wire

MAX_TTL = timedelta(days=30)


def list_hosts(request: Request) -> JSONResponse:
    _require(request, Role.MONITOR, "list hosts")
    port = state(request).cfg.nodes.libvirt_port
    page = Page.from_query(request.query_params)
    with session(request) as s:
        rows, total = page.rows(s, select(Host).order_by(Host.hostname, Host.id))
        return JSONResponse(page.answer("hosts", [hosts.summary(h, port) for h in rows], total))


def show_host(request: Request) -> JSONResponse:
    _require(request, Role.MONITOR, "see hosts")
    port = state(request).cfg.nodes.libvirt_port
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        return JSONResponse(hosts.detail(host, port))


class ApproveRequest(Body):
    claim: Id | None = Field(None, description="which machine, when several claim the host (`host show`)")


@accepts(body=ApproveRequest, optional_body=True)
def approve_host(request: Request, body: ApproveRequest) -> JSONResponse:
    """POST /hosts/{key}/approve {"claim"?}: which machine, when several claim the host (`host show`)."""
    claim = body.claim
    _require(request, Role.ADMIN, "approve hosts")
    cfg = state(request).cfg
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        enrolment.approve(s, host, caller(request).principal, cfg.nodes.heartbeat_seconds, claim)
        return JSONResponse(hosts.summary(host, cfg.nodes.libvirt_port))


_WINDOW_SECONDS = int(admission.MAX_WINDOW.total_seconds())


class WindowRequest(Body):
    """The bounds shown here are checked by admission.open_window, whose wording the CLI shares."""

    seconds: int = Field(description="how long it stays open", json_schema_extra={"minimum": 1,
                                                                                  "maximum": _WINDOW_SECONDS})
    count: int = Field(1, description="how many hosts may enrol through it",
                       json_schema_extra={"minimum": 1, "maximum": admission.MAX_HOSTS})
    macs: list[str] = Field(default_factory=list, max_length=admission.MAX_HOSTS)
    note: str = ""
    power: PowerRequest | None = Field(
        None, description="the BMC of the one machine (exactly one MAC) it is for: power it on from cold; the host "
        "it enrols as inherits these settings")


@accepts(body=WindowRequest)
def open_window(request: Request, body: WindowRequest) -> JSONResponse:
    """POST /enrolment/windows {"seconds", "count"?, "macs"?, "note"?, "power"?}: PXE boots get tokens for a while."""
    settings = power.check_settings(body.power.given()) if body.power is not None else None
    _require(request, Role.ADMIN, "open enrolment windows")
    with session(request) as s:
        # Past the longest window by one second at most: timedelta overflows on 10^20 seconds, while the domain
        # refuses anything over MAX_WINDOW with its own reason.
        duration = timedelta(seconds=max(min(body.seconds, _WINDOW_SECONDS + 1), -1))
        window = admission.open_window(s, by=caller(request).principal, duration=duration,
                                       max_hosts=body.count, macs=body.macs, note=body.note)  # fmt: skip
        if settings is not None:  # refused (a window for several machines): rolled back with the window
            power.configure_window(window, settings, SecretBox.under(state(request).cfg.state_dir))
        return JSONResponse(admission.window_view(window), status_code=201)


class WindowQuery(Query):
    all: bool = Field(False, description="closed and expired windows too")


@accepts(query=WindowQuery)
def list_windows(request: Request, query: WindowQuery) -> JSONResponse:
    """GET /enrolment/windows[?all=true]: open windows (all=true: closed and expired ones too)."""
    _require(request, Role.MONITOR, "see enrolment windows")
    with session(request) as s:
        rows = admission.windows(s, include_closed=query.all)
        return JSONResponse({"windows": [admission.window_view(w) for w in rows]})


def close_windows(request: Request) -> JSONResponse:
    """DELETE /enrolment/windows[/{id}]: close one or every open window; their unused tokens die with them."""
    _require(request, Role.ADMIN, "close enrolment windows")
    raw = request.path_params.get("id")
    with session(request) as s:
        closed = admission.close_windows(s, by=caller(request).principal, window_id=int(raw) if raw else None)
        return JSONResponse({"closed": [admission.window_view(w) for w in closed]})


class MaintenanceRequest(Body):
    reason: str = Field("", max_length=lifecycle.MAX_REASON)


@accepts(body=MaintenanceRequest, optional_body=True)
def maintenance_host(request: Request, body: MaintenanceRequest) -> JSONResponse:
    """POST /hosts/{key}/maintenance {"reason"?}: no new VMs; the host browser keeps following it."""
    reason = lifecycle.check_reason(body.reason)
    _require(request, Role.ADMIN, "put hosts into maintenance")
    port = state(request).cfg.nodes.libvirt_port
    with session(request) as s:
        host = lifecycle.maintenance(s, hosts.find(s, request.path_params["key"]), caller(request).principal, reason)
        return JSONResponse(hosts.summary(host, port))


@accepts(body=Empty, optional_body=True)
def activate_host(request: Request, body: Empty) -> JSONResponse:
    """POST /hosts/{key}/activate (no body): out of maintenance, available or unavailable as libvirt is."""
    _require(request, Role.ADMIN, "activate hosts")
    port = state(request).cfg.nodes.libvirt_port
    with session(request) as s:
        host = lifecycle.activate(s, hosts.find(s, request.path_params["key"]), caller(request).principal)
        return JSONResponse(hosts.summary(host, port))


@accepts(body=Empty, optional_body=True)
def clear_host(request: Request, body: Empty) -> JSONResponse:
    """POST /hosts/{key}/clear (no body): queue a clear host task (migrate every running VM off it)."""
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        permissions.require(s, caller(request).principal, Privilege.MODIFY, host.hardware_pool_id,
                            f"clear host {host.hostname}")  # fmt: skip
        task = tasking.enqueue(s, TaskType.HOST_CLEAR, host.id, {}, created_by=caller(request).principal)
        return JSONResponse(tasking.summary(task), status_code=202)


class RemoveQuery(Query):
    force: bool = Field(False, description="remove it even while VMs run there")


@accepts(body=Empty, optional_body=True, query=RemoveQuery)
def remove_host(request: Request, body: Empty, query: RemoveQuery) -> JSONResponse:
    """DELETE /hosts/{key}[?force=true]: the row, its principal, its tokens; refused while VMs run unless force."""
    force = query.force
    _require(request, Role.ADMIN, "remove hosts")
    st = state(request)
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        removed = lifecycle.remove(s, host, caller(request).principal, Realm.from_config(st.cfg), force=force)
    if st.browser is not None:
        st.browser.wake()  # committed: the browser's next scan drops the session, now rather than later
    return JSONResponse(removed.as_dict())


class TokenRequest(Body):
    ttl_seconds: int = Field(int(tokens.DEFAULT_TTL.total_seconds()), ge=1, le=int(MAX_TTL.total_seconds()))
    mac: str | None = Field(None, max_length=64, description="bind the token to this MAC")
    uuid: str | None = Field(None, max_length=64, description="bind the token to this DMI UUID")
    note: str = Field("", max_length=255)


@accepts(body=TokenRequest)
def mint_token(request: Request, body: TokenRequest) -> JSONResponse:
    """POST /hosts/tokens {"ttl_seconds"?, "mac"?, "uuid"?, "note"?}: the token is in this answer only."""
    try:
        mac = wire.normalize_mac(body.mac) if body.mac else None
        uuid = wire.normalize_uuid(body.uuid) if body.uuid else None
    except wire.WireError as exc:
        raise UsageError(f"mac/uuid: {exc}") from None
    ttl, note = timedelta(seconds=body.ttl_seconds), body.note
    _require(request, Role.ADMIN, "mint enrolment tokens")
    cfg = state(request).cfg
    with session(request) as s:
        minted = tokens.mint(s, ttl=ttl, mac=mac, host_uuid=uuid, created_by=caller(request).principal, note=note)
    pki = Pki(cfg.pki_dir)
    fingerprint = pki.fingerprint() if pki.ca_cert.is_file() else ""
    return JSONResponse(
        {
            "id": minted.id,
            "token": minted.token,
            "expires_at": minted.expires_at.isoformat(),
            "mac": mac,
            "uuid": uuid,
            "kernel_args": f"drover.token={minted.token}" + (f" drover.ca={fingerprint}" if fingerprint else ""),
        },
        status_code=201,
    )
