"""Hosts over the API: list, show; approve, maintenance, activate, remove and enrolment tokens (admin)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from appliance import enrolment, hosts, lifecycle, permissions, tasking
from appliance.api.access import caller_roles
from appliance.api.auth import caller
from appliance.api.edge import read_json
from appliance.api.state import session, state
from appliance.db import tokens
from appliance.db.models import Host, TaskType
from appliance.db.models.users import Role
from appliance.errors import Forbidden, UsageError
from appliance.kerberos.realm import Realm
from appliance.permissions import Privilege
from appliance.pki import Pki
from nodeagent import wire

MAX_TTL = timedelta(days=30)


def _require(request: Request, role: Role, what: str) -> None:
    with session(request) as s:
        held = caller_roles(request, s)
    if not any(r.includes(role) for r in held):
        raise Forbidden(f"{caller(request).principal} may not {what}", f"it needs the {role} role")


def list_hosts(request: Request) -> JSONResponse:
    _require(request, Role.MONITOR, "list hosts")
    port = state(request).cfg.nodes.libvirt_port
    with session(request) as s:
        rows = s.scalars(select(Host).order_by(Host.hostname, Host.id)).all()
        return JSONResponse({"hosts": [hosts.summary(h, port) for h in rows]})


def show_host(request: Request) -> JSONResponse:
    _require(request, Role.MONITOR, "see hosts")
    port = state(request).cfg.nodes.libvirt_port
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        return JSONResponse(hosts.detail(host, port))


def approve_host(request: Request) -> JSONResponse:
    _require(request, Role.ADMIN, "approve hosts")
    port = state(request).cfg.nodes.libvirt_port
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        enrolment.approve(s, host, caller(request).principal)
        return JSONResponse(hosts.summary(host, port))


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
