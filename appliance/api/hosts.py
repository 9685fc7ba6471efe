"""Hosts over the API: list, show; approve, maintenance, activate, remove and enrolment tokens (admin)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from appliance import admission, enrolment, hosts, lifecycle, permissions, tasking
from appliance.api.access import require_role as _require
from appliance.api.auth import caller
from appliance.api.edge import read_json
from appliance.api.state import session, state
from appliance.db import tokens
from appliance.db.models import Host, TaskType
from appliance.db.models.users import Role
from appliance.errors import UsageError
from appliance.kerberos.realm import Realm
from appliance.paging import Page
from appliance.permissions import Privilege
from appliance.pki import Pki
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


async def approve_host(request: Request) -> JSONResponse:
    """POST /hosts/{key}/approve {"claim"?}: which machine, when several claim the host (`host show`)."""
    body = await _optional_body(request, frozenset({"claim"}))
    claim = body.get("claim")
    if claim is not None and (not isinstance(claim, int) or isinstance(claim, bool) or claim < 1):
        raise UsageError("claim: must be a claim id (a positive integer)", "`drover host show HOST` lists claims")
    return await run_in_threadpool(_approve, request, claim)


def _approve(request: Request, claim: int | None) -> JSONResponse:
    _require(request, Role.ADMIN, "approve hosts")
    cfg = state(request).cfg
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        enrolment.approve(s, host, caller(request).principal, cfg.nodes.heartbeat_seconds, claim)
        return JSONResponse(hosts.summary(host, cfg.nodes.libvirt_port))


async def open_window(request: Request) -> JSONResponse:
    """POST /enrolment/windows {"seconds", "count"?, "macs"?, "note"?}: PXE boots get tokens for a while."""
    body = await read_json(request)
    unknown = sorted(set(body) - {"seconds", "count", "macs", "note"})
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown field", "fields: seconds, count, macs, note")
    seconds, count = body.get("seconds"), body.get("count", 1)
    for name, value in (("seconds", seconds), ("count", count)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise UsageError(f"{name}: must be an integer")
    macs = body.get("macs", [])
    if not isinstance(macs, list) or not all(isinstance(m, str) for m in macs) or len(macs) > admission.MAX_HOSTS:
        raise UsageError(f"macs: must be a list of at most {admission.MAX_HOSTS} MAC addresses")
    note = body.get("note", "")
    if not isinstance(note, str):
        raise UsageError("note: must be a string")
    assert isinstance(seconds, int) and isinstance(count, int)
    return await run_in_threadpool(_open_window, request, timedelta(seconds=seconds), count, macs, note)


def _open_window(request: Request, duration: timedelta, count: int, macs: list[str], note: str) -> JSONResponse:
    _require(request, Role.ADMIN, "open enrolment windows")
    with session(request) as s:
        window = admission.open_window(
            s, by=caller(request).principal, duration=duration, max_hosts=count, macs=macs, note=note
        )
        return JSONResponse(admission.window_view(window), status_code=201)


def list_windows(request: Request) -> JSONResponse:
    """GET /enrolment/windows[?all=true]: open windows (all=true: closed and expired ones too)."""
    _require(request, Role.MONITOR, "see enrolment windows")
    every = _BOOLEAN.get(request.query_params.get("all", "false").lower())
    if every is None:
        raise UsageError("all: must be true or false")
    with session(request) as s:
        rows = admission.windows(s, include_closed=every)
        return JSONResponse({"windows": [admission.window_view(w) for w in rows]})


def close_windows(request: Request) -> JSONResponse:
    """DELETE /enrolment/windows[/{id}]: close one or every open window; their unused tokens die with them."""
    _require(request, Role.ADMIN, "close enrolment windows")
    raw = request.path_params.get("id")
    with session(request) as s:
        closed = admission.close_windows(s, by=caller(request).principal, window_id=int(raw) if raw else None)
        return JSONResponse({"closed": [admission.window_view(w) for w in closed]})


async def _optional_body(request: Request, fields: frozenset[str]) -> dict[str, Any]:
    """The body as a JSON object with no fields but `fields`; no body at all is {}."""
    if not (await request.body()).strip():
        return {}
    body = await read_json(request)
    unknown = sorted(set(body) - fields)
    if unknown:
        raise UsageError(
            f"{unknown[0]}: unknown field", f"fields: {', '.join(sorted(fields))}" if fields else "send no body"
        )
    return body


async def maintenance_host(request: Request) -> JSONResponse:
    """POST /hosts/{key}/maintenance {"reason"?}: no new VMs; the host browser keeps following it."""
    body = await _optional_body(request, frozenset({"reason"}))
    reason = lifecycle.check_reason(body.get("reason", ""))
    return await run_in_threadpool(_maintenance, request, reason)


def _maintenance(request: Request, reason: str) -> JSONResponse:
    _require(request, Role.ADMIN, "put hosts into maintenance")
    port = state(request).cfg.nodes.libvirt_port
    with session(request) as s:
        host = lifecycle.maintenance(s, hosts.find(s, request.path_params["key"]), caller(request).principal, reason)
        return JSONResponse(hosts.summary(host, port))


async def activate_host(request: Request) -> JSONResponse:
    """POST /hosts/{key}/activate (no body): out of maintenance, available or unavailable as libvirt is."""
    await _optional_body(request, frozenset())
    return await run_in_threadpool(_activate, request)


def _activate(request: Request) -> JSONResponse:
    _require(request, Role.ADMIN, "activate hosts")
    port = state(request).cfg.nodes.libvirt_port
    with session(request) as s:
        host = lifecycle.activate(s, hosts.find(s, request.path_params["key"]), caller(request).principal)
        return JSONResponse(hosts.summary(host, port))


async def clear_host(request: Request) -> JSONResponse:
    """POST /hosts/{key}/clear (no body): queue a clear host task (migrate every running VM off it)."""
    await _optional_body(request, frozenset())
    return await run_in_threadpool(_clear, request)


def _clear(request: Request) -> JSONResponse:
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        permissions.require(s, caller(request).principal, Privilege.MODIFY, host.hardware_pool_id,
                            f"clear host {host.hostname}")  # fmt: skip
        task = tasking.enqueue(s, TaskType.HOST_CLEAR, host.id, {}, created_by=caller(request).principal)
        return JSONResponse(tasking.summary(task), status_code=202)


_BOOLEAN = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


async def remove_host(request: Request) -> JSONResponse:
    """DELETE /hosts/{key}[?force=true]: the row, its principal, its tokens; refused while VMs run unless force."""
    await _optional_body(request, frozenset())
    unknown = sorted(set(request.query_params) - {"force"})
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown query parameter", "the only one is force=true|false")
    force = _BOOLEAN.get(request.query_params.get("force", "false").lower())
    if force is None:
        raise UsageError(f"force: {request.query_params['force']!r} is not true or false")
    return await run_in_threadpool(_remove, request, force)


def _remove(request: Request, force: bool) -> JSONResponse:
    _require(request, Role.ADMIN, "remove hosts")
    st = state(request)
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        removed = lifecycle.remove(s, host, caller(request).principal, Realm.from_config(st.cfg), force=force)
    if st.browser is not None:
        st.browser.wake()  # committed: the browser's next scan drops the session, now rather than later
    return JSONResponse(removed.as_dict())


async def mint_token(request: Request) -> JSONResponse:
    """POST /hosts/tokens {"ttl_seconds"?, "mac"?, "uuid"?, "note"?}: the token is in this answer only."""
    body = await read_json(request)
    unknown = sorted(set(body) - {"ttl_seconds", "mac", "uuid", "note"})
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown field", "fields: ttl_seconds, mac, uuid, note")
    ttl = body.get("ttl_seconds", int(tokens.DEFAULT_TTL.total_seconds()))
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL.total_seconds():
        raise UsageError(f"ttl_seconds: must be an integer from 1 to {int(MAX_TTL.total_seconds())}")
    try:
        mac = wire.normalize_mac(body["mac"]) if body.get("mac") else None
        uuid = wire.normalize_uuid(body["uuid"]) if body.get("uuid") else None
    except (wire.WireError, AttributeError) as exc:
        raise UsageError(f"mac/uuid: {exc}") from None
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > 255:
        raise UsageError("note: must be a string of at most 255 characters")
    return await run_in_threadpool(_mint, request, timedelta(seconds=ttl), mac, uuid, note)


def _mint(request: Request, ttl: timedelta, mac: str | None, uuid: str | None, note: str) -> JSONResponse:
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
