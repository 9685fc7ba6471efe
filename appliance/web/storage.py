"""The UI's storage page: storage pools with their volumes; create, refresh and delete pools, create and delete
volumes. Each action is the API's (appliance.api.storage): the same domain function, the same privilege on
the pool's hardware pool, the same refusals (a pool or volume in use, a pool being deleted, an iSCSI LUN).

Logical networks are shown read-only on the inventory page; creating them is another issue's work.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from appliance import permissions, storage, tasking
from appliance.api.auth import caller
from appliance.api.state import session
from appliance.cli.storage_cmd import parse_size
from appliance.db.models import HardwarePool, StoragePool, StorageType, StorageVolume, TargetKind, VolumeFormat
from appliance.errors import NotFound, UsageError
from appliance.permissions import Privilege
from appliance.text import as_id, whole
from appliance.web.forms import form_fields
from appliance.web.pages import Allowed, flash, render

POOL_FIELDS = ("path", "server", "export", "target", "port", "initiator_iqn", "vg_name")


def storage_page(request: Request) -> Response:
    principal = caller(request).principal
    with session(request) as s:
        allowed = Allowed(s, principal)
        pools = [p for p in s.scalars(select(StoragePool).order_by(StoragePool.name))
                 if allowed(Privilege.VIEW, p.hardware_pool_id)]  # fmt: skip
        volumes: dict[int, list[StorageVolume]] = {}
        for vol in s.scalars(select(StorageVolume).where(StorageVolume.storage_pool_id.in_([p.id for p in pools]))
                             .order_by(StorageVolume.name)):  # fmt: skip
            volumes.setdefault(vol.storage_pool_id, []).append(vol)
        used = {v: storage.volume_users(s, [v]) for vs in volumes.values() for v in (x.id for x in vs)}
        busy = _busy(s, [p.id for p in pools])
        hw = [p for p in s.scalars(select(HardwarePool).order_by(HardwarePool.name)) if allowed(Privilege.MODIFY, p.id)]
        may_modify = {p.id: allowed(Privilege.MODIFY, p.hardware_pool_id) for p in pools}
        return render(request, "storage.html", pools=pools, volumes=volumes, used=used, busy=busy,
                      may_modify=may_modify, hardware_pools=hw, types=[str(t) for t in StorageType],
                      formats=[str(f) for f in VolumeFormat], below="storage_form.html" if hw else None)  # fmt: skip


def _busy(s: Session, pool_ids: list[int]) -> dict[int, str]:
    """A task queued or running on each pool, as a person reads it."""
    out: dict[int, str] = {}
    for pool_id in pool_ids:
        pending = tasking.pending_for(s, TargetKind.STORAGE_POOL, pool_id)
        if pending:
            out[pool_id] = f"task {pending[0].id} {pending[0].type} {pending[0].state}"
    return out


def _pool(request: Request, s: Session, privilege: Privilege, what: str) -> StoragePool:
    text = str(request.path_params["id"])
    pool = s.get(StoragePool, key) if (key := as_id(text)) is not None else None
    if pool is None:
        raise NotFound(f"storage pool {text} does not exist")
    permissions.require(s, caller(request).principal, privilege, pool.hardware_pool_id,
                        f"{what} storage pool {pool.name}")  # fmt: skip
    return pool


async def pool_create(request: Request) -> Response:
    form = await form_fields(request)
    return await run_in_threadpool(_pool_create, request, form)


def _pool_create(request: Request, form: dict[str, str]) -> Response:
    body: dict[str, Any] = {"name": form.get("name", "").strip(), "type": form.get("type", "")}
    if form.get("hardware_pool"):
        body["hardware_pool"] = form["hardware_pool"]
    for key in POOL_FIELDS:
        value = form.get(key, "").strip()
        if value:
            if key == "port":
                port = whole(value, 65535)
                if port is None:
                    raise UsageError("port: must be a number from 1 to 65535")
                body[key] = port
            else:
                body[key] = value
    spec = storage.PoolSpec.from_request(body)
    principal = caller(request).principal
    with session(request) as s:
        hw = storage.hardware_pool(s, spec.hardware_pool)
        permissions.require(s, principal, Privilege.MODIFY, hw.id, f"create storage pools in hardware pool {hw.name}")
        pool, task = storage.create_pool(s, spec, principal)
        return flash(f"storage pool {pool.name} recorded: task {task.id} defines it on the hosts")


def pool_refresh(request: Request) -> Response:
    with session(request) as s:
        pool = _pool(request, s, Privilege.MODIFY, "refresh")
        task = storage.refresh_pool(s, pool, caller(request).principal)
        return flash(f"storage pool {pool.name}: refresh queued (task {task.id})")


def pool_delete(request: Request) -> Response:
    with session(request) as s:
        pool = _pool(request, s, Privilege.MODIFY, "delete")
        task = storage.delete_pool(s, pool, caller(request).principal)
        return flash(f"storage pool {pool.name}: delete queued (task {task.id})")


async def volume_create(request: Request) -> Response:
    form = await form_fields(request)
    return await run_in_threadpool(_volume_create, request, form)


def _volume_create(request: Request, form: dict[str, str]) -> Response:
    try:
        fmt = VolumeFormat(form.get("format", "raw"))
    except ValueError:
        raise UsageError(f"format: {form.get('format')!r} is not raw or qcow2") from None
    capacity = parse_size(form.get("size", ""))
    name = storage.check_name("volume", form.get("name", "").strip())
    with session(request) as s:
        pool = _pool(request, s, Privilege.MODIFY, "create volumes in")
        vol, task = storage.create_volume(s, pool, name, capacity, fmt, caller(request).principal)
        return flash(f"volume {vol.name} recorded in {pool.name}: task {task.id} creates it")


def volume_delete(request: Request) -> Response:
    with session(request) as s:
        pool = _pool(request, s, Privilege.MODIFY, "delete volumes in")
        vol = storage.find_volume(s, pool, str(request.path_params["volume"]))
        if vol.storage_pool_id != pool.id:
            raise NotFound(f"volume {vol.name} is not in storage pool {pool.name}")
        task = storage.delete_volume(s, vol, caller(request).principal)
        return flash(f"volume {vol.name}: delete queued (task {task.id})")


