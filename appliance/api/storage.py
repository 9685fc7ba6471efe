"""Storage pools, volumes, templates, VM snapshots and clones over the API; each route checks the caller's
privilege on the object's hardware pool before anything is read or queued.

POST answers 202 with the row as recorded (pending) and the task that will do the work:
  GET/POST /storage/pools, GET/DELETE /storage/pools/{pool}, POST /storage/pools/{pool}/refresh,
  GET/POST /storage/pools/{pool}/volumes, DELETE /storage/pools/{pool}/volumes/{volume},
  POST /storage/pools/{pool}/volumes/{volume}/refresh,
  GET /templates, POST /templates?name=&pool=[&vcpus=&memory_mib=&description=] (body: the image's bytes),
  DELETE /templates/{template},
  GET/POST /vms/{vm}/snapshots, POST /vms/{vm}/snapshots/{snapshot}/revert, DELETE /vms/{vm}/snapshots/{snapshot},
  POST /vms/{vm}/clone {name}.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from appliance import imagefile, snapshots, storage, tasking, vms
from appliance.api.auth import caller
from appliance.api.schema import Body, Id, Query, accepts
from appliance.api.state import session, state
from appliance.db.models import Snapshot, StoragePool, StorageType, Template, Vm, VolumeFormat
from appliance.errors import Conflict
from appliance.permissions import Privilege, allowed, require

log = logging.getLogger(__name__)

# Uploads are written here (under the state dir) before the task streams them into the storage pool.
UPLOAD_DIR = "uploads"


def _who(request: Request) -> str:
    return caller(request).principal


# -- pools ---------------------------------------------------------------------------------------------


def list_pools(request: Request) -> JSONResponse:
    with session(request) as s:
        counts = storage.volume_counts(s)
        rows = s.scalars(select(StoragePool).order_by(StoragePool.name)).all()
        shown = [p for p in rows if allowed(s, _who(request), Privilege.VIEW, p.hardware_pool_id)]
        return JSONResponse({"pools": [storage.pool_summary(p, counts.get(p.id, 0)) for p in shown]})


class PoolRequest(Body):
    """A storage pool: which fields a type needs is checked by storage.PoolSpec (dir: path; nfs: server, export;
    iscsi: server, target; logical: vg_name)."""

    name: str = Field(max_length=64)
    type: StorageType
    hardware_pool: str | Id | None = None
    path: str | None = Field(None, max_length=4096)
    server: str | None = Field(None, max_length=255)
    export: str | None = Field(None, max_length=4096)
    target: str | None = Field(None, max_length=223)
    port: int | None = Field(None, ge=1, le=65535)
    initiator_iqn: str | None = Field(None, max_length=223)
    vg_name: str | None = Field(None, max_length=127)


@accepts(body=PoolRequest)
async def create_pool(request: Request, body: PoolRequest) -> JSONResponse:
    spec = storage.PoolSpec.from_request(body.given())
    return await run_in_threadpool(_create_pool, request, spec)


def _create_pool(request: Request, spec: storage.PoolSpec) -> JSONResponse:
    with session(request) as s:
        hw = storage.hardware_pool(s, spec.hardware_pool)
        require(s, _who(request), Privilege.MODIFY, hw.id, f"create storage pools in hardware pool {hw.name}")
        pool, task = storage.create_pool(s, spec, _who(request))
        return JSONResponse({"pool": storage.pool_summary(pool, 0), "task": tasking.summary(task)}, status_code=202)


def _pool(request: Request, s: Session, privilege: Privilege, what: str) -> StoragePool:
    pool = storage.find_pool(s, request.path_params["pool"])
    require(s, _who(request), privilege, pool.hardware_pool_id, f"{what} storage pool {pool.name}")
    return pool


def show_pool(request: Request) -> JSONResponse:
    with session(request) as s:
        pool = _pool(request, s, Privilege.VIEW, "see")
        out = storage.pool_summary(pool)
        out["volumes"] = [storage.volume_summary(v) for v in sorted(pool.volumes, key=lambda v: v.name)]
        return JSONResponse(out)


def refresh_pool(request: Request) -> JSONResponse:
    with session(request) as s:
        pool = _pool(request, s, Privilege.MODIFY, "refresh")
        return JSONResponse(tasking.summary(storage.refresh_pool(s, pool, _who(request))), status_code=202)


def delete_pool(request: Request) -> JSONResponse:
    with session(request) as s:
        pool = _pool(request, s, Privilege.MODIFY, "delete")
        return JSONResponse(tasking.summary(storage.delete_pool(s, pool, _who(request))), status_code=202)


# -- volumes -------------------------------------------------------------------------------------------


def list_volumes(request: Request) -> JSONResponse:
    with session(request) as s:
        pool = _pool(request, s, Privilege.VIEW, "see")
        return JSONResponse(
            {"volumes": [storage.volume_summary(v) for v in sorted(pool.volumes, key=lambda v: v.name)]}
        )


class VolumeRequest(Body):
    name: str = Field(max_length=64)
    capacity_bytes: int = Field(ge=1, le=storage.MAX_CAPACITY)
    format: VolumeFormat = VolumeFormat.RAW


@accepts(body=VolumeRequest)
def create_volume(request: Request, body: VolumeRequest) -> JSONResponse:
    with session(request) as s:
        pool = _pool(request, s, Privilege.MODIFY, "create volumes in")
        name = storage.check_name("volume", body.name)
        vol, task = storage.create_volume(s, pool, name, body.capacity_bytes, body.format, _who(request))
        return JSONResponse({"volume": storage.volume_summary(vol), "task": tasking.summary(task)}, status_code=202)


def refresh_volume(request: Request) -> JSONResponse:
    with session(request) as s:
        pool = _pool(request, s, Privilege.MODIFY, "refresh volumes in")
        vol = storage.find_volume(s, pool, request.path_params["volume"])
        return JSONResponse(tasking.summary(storage.refresh_volume(s, vol, _who(request))), status_code=202)


def delete_volume(request: Request) -> JSONResponse:
    with session(request) as s:
        pool = _pool(request, s, Privilege.MODIFY, "delete volumes in")
        vol = storage.find_volume(s, pool, request.path_params["volume"])
        return JSONResponse(tasking.summary(storage.delete_volume(s, vol, _who(request))), status_code=202)


# -- templates -----------------------------------------------------------------------------------------


def list_templates(request: Request) -> JSONResponse:
    with session(request) as s:
        rows = s.scalars(select(Template).order_by(Template.name)).all()
        # A template is seen by those who may see its base image's storage pool.
        shown = [t for t in rows if allowed(s, _who(request), Privilege.VIEW,
                                            t.volume.storage_pool.hardware_pool_id if t.volume else None)]  # fmt: skip
        return JSONResponse({"templates": [storage.template_summary(t) for t in shown]})


class TemplateQuery(Query):
    name: str = Field(max_length=64)
    pool: str = Field(min_length=1, max_length=255, description="the storage pool to import into")
    vcpus: int = Field(1, ge=1, le=512)
    memory_mib: int = Field(16, ge=1, le=1 << 24)  # the same bounds as a VM's
    description: str = Field("", max_length=snapshots.MAX_DESCRIPTION)


@accepts(query=TemplateQuery, raw_body="application/octet-stream")
async def import_template(request: Request, query: TemplateQuery) -> JSONResponse:
    """The image's bytes are the body (application/octet-stream): written under the state dir, checked to be a
    qcow2, raw or ISO image, then queued for upload into the pool. A refused file is removed at once."""
    name = storage.check_name("template", query.name)
    pool_key = query.pool
    vcpus, memory, description = query.vcpus, query.memory_mib, query.description
    # Permission and name checks before the body is read: a refused caller uploads nothing.
    await run_in_threadpool(_check_template, request, name, pool_key)
    upload_dir = state(request).cfg.state_dir / UPLOAD_DIR
    upload_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = upload_dir / f"{uuid.uuid4().hex}.upload"
    try:
        with path.open("wb") as f:
            os.chmod(path, 0o600)
            async for chunk in request.stream():
                f.write(chunk)
        kind = await run_in_threadpool(imagefile.detect, path)
        return await run_in_threadpool(_import, request, name, pool_key, path, kind, vcpus, memory, description)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def _check_template(request: Request, name: str, pool_key: str) -> None:
    with session(request) as s:
        pool = storage.find_pool(s, pool_key)
        require(s, _who(request), Privilege.MODIFY, pool.hardware_pool_id, f"import templates into {pool.name}")
        if s.scalars(select(Template.id).where(Template.name == name)).first() is not None:
            raise Conflict(f"template {name} already exists", "pick another name")


def _import(
    request: Request,
    name: str,
    pool_key: str,
    path: Path,
    kind: imagefile.ImageKind,
    vcpus: int,
    memory: int,
    description: str,
) -> JSONResponse:
    with session(request) as s:
        pool = storage.find_pool(s, pool_key)
        require(s, _who(request), Privilege.MODIFY, pool.hardware_pool_id, f"import templates into {pool.name}")
        template, _vol, task = storage.import_template(
            s, pool, name, path, kind.volume_format, _who(request), vcpus=vcpus, memory_mib=memory,
            description=description,
        )  # fmt: skip
        out = storage.template_summary(template)
        out["image"] = str(kind)
        return JSONResponse({"template": out, "task": tasking.summary(task)}, status_code=202)


def delete_template(request: Request) -> JSONResponse:
    with session(request) as s:
        template = storage.find_template(s, request.path_params["template"])
        pool_id = template.volume.storage_pool.hardware_pool_id if template.volume is not None else None
        require(s, _who(request), Privilege.MODIFY, pool_id, f"delete template {template.name}")
        task = storage.delete_template(s, template, _who(request))
        return JSONResponse({"deleted": template.name, "task": tasking.summary(task) if task else None})


# -- snapshots and clones ------------------------------------------------------------------------------


def _vm(request: Request, s: Session, privilege: Privilege, what: str) -> Vm:
    vm = vms.find(s, request.path_params["vm"])
    require(s, _who(request), privilege, vm.hardware_pool_id, f"{what} VM {vm.name}")
    return vm


def list_snapshots(request: Request) -> JSONResponse:
    with session(request) as s:
        vm = _vm(request, s, Privilege.VIEW, "see snapshots of")
        rows = s.scalars(select(Snapshot).where(Snapshot.vm_id == vm.id).order_by(Snapshot.created_at, Snapshot.id))
        return JSONResponse({"snapshots": [snapshots.snapshot_summary(x) for x in rows]})


class SnapshotRequest(Body):
    name: str = Field(max_length=64)
    description: str = Field("", max_length=snapshots.MAX_DESCRIPTION)


@accepts(body=SnapshotRequest)
def create_snapshot(request: Request, body: SnapshotRequest) -> JSONResponse:
    with session(request) as s:
        vm = _vm(request, s, Privilege.VM_CONTROL, "snapshot")
        name = storage.check_name("snapshot", body.name)
        snap, task = snapshots.create_snapshot(s, vm, name, body.description, _who(request))
        return JSONResponse({"snapshot": snapshots.snapshot_summary(snap), "task": tasking.summary(task)},
                            status_code=202)  # fmt: skip


def revert_snapshot(request: Request) -> JSONResponse:
    with session(request) as s:
        vm = _vm(request, s, Privilege.VM_CONTROL, "revert")
        snap = snapshots.find_snapshot(s, vm, request.path_params["snapshot"])
        return JSONResponse(tasking.summary(snapshots.revert_snapshot(s, snap, _who(request))), status_code=202)


def delete_snapshot(request: Request) -> JSONResponse:
    with session(request) as s:
        vm = _vm(request, s, Privilege.VM_CONTROL, "delete snapshots of")
        snap = snapshots.find_snapshot(s, vm, request.path_params["snapshot"])
        return JSONResponse(tasking.summary(snapshots.delete_snapshot(s, snap, _who(request))), status_code=202)


class CloneRequest(Body):
    name: str = Field(max_length=63)


@accepts(body=CloneRequest)
def clone_vm(request: Request, body: CloneRequest) -> JSONResponse:
    with session(request) as s:
        vm = _vm(request, s, Privilege.MODIFY, "clone")
        clone, task = snapshots.clone_vm(s, vm, body.name, _who(request))
        return JSONResponse({"vm": {"id": clone.id, "name": clone.name, "uuid": clone.uuid, "state": str(clone.state)},
                             "task": tasking.summary(task)}, status_code=202)  # fmt: skip


def routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/storage/pools", list_pools, methods=["GET"]),
        Route(f"{prefix}/storage/pools", create_pool, methods=["POST"]),
        Route(f"{prefix}/storage/pools/{{pool}}", show_pool, methods=["GET"]),
        Route(f"{prefix}/storage/pools/{{pool}}", delete_pool, methods=["DELETE"]),
        Route(f"{prefix}/storage/pools/{{pool}}/refresh", refresh_pool, methods=["POST"]),
        Route(f"{prefix}/storage/pools/{{pool}}/volumes", list_volumes, methods=["GET"]),
        Route(f"{prefix}/storage/pools/{{pool}}/volumes", create_volume, methods=["POST"]),
        Route(f"{prefix}/storage/pools/{{pool}}/volumes/{{volume}}", delete_volume, methods=["DELETE"]),
        Route(f"{prefix}/storage/pools/{{pool}}/volumes/{{volume}}/refresh", refresh_volume, methods=["POST"]),
        Route(f"{prefix}/templates", list_templates, methods=["GET"]),
        Route(f"{prefix}/templates", import_template, methods=["POST"]),
        Route(f"{prefix}/templates/{{template}}", delete_template, methods=["DELETE"]),
        Route(f"{prefix}/vms/{{vm}}/snapshots", list_snapshots, methods=["GET"]),
        Route(f"{prefix}/vms/{{vm}}/snapshots", create_snapshot, methods=["POST"]),
        Route(f"{prefix}/vms/{{vm}}/snapshots/{{snapshot}}/revert", revert_snapshot, methods=["POST"]),
        Route(f"{prefix}/vms/{{vm}}/snapshots/{{snapshot}}", delete_snapshot, methods=["DELETE"]),
        Route(f"{prefix}/vms/{{vm}}/clone", clone_vm, methods=["POST"]),
    ]
