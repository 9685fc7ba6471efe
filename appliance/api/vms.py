"""VMs, tasks and cluster balance over the API; every route checks the caller's privilege on the object.

GET /vms[?limit=&offset=] -> {vms, total, offset, limit};
POST /vms {name, vcpus, memory_mib, ...} -> 202 {vm, task}; POST /vms/{key}/{verb} -> 202 task;
GET /tasks[?state=&limit=], GET /tasks/{id}, POST /tasks/{id}/cancel; POST /cluster/balance {dry_run?}.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import Field
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse

from appliance import cloudinit, permissions, tasking, vms
from appliance.api.auth import caller
from appliance.api.schema import Body, Empty, Id, Query, accepts
from appliance.api.state import session, state
from appliance.api.storage import UPLOAD_DIR
from appliance.db.models import (
    BootDevice,
    DiskBus,
    Firmware,
    NicModel,
    PlacementPolicy,
    TargetKind,
    Task,
    TaskState,
    Vm,
)
from appliance.errors import NotFound, UsageError
from appliance.paging import Page
from appliance.permissions import Privilege
from appliance.text import as_id, shown


class DiskSpec(Body):
    volume: Id = Field(description="a storage volume id")
    target: str | None = Field(None, max_length=5, description="vda, sdb, ...")
    bus: DiskBus = DiskBus.VIRTIO
    boot_order: int | None = Field(None, ge=1, le=64)
    read_only: bool = False


class NicSpec(Body):
    network: Id | str | None = Field(None, description="a logical network id or name")
    mac: str | None = Field(None, max_length=17)
    model: NicModel = NicModel.VIRTIO


class CloudInit(Body):
    """First-boot configuration (appliance/cloudinit.py checks the keys' form)."""

    user_data: str | None = Field(None, max_length=cloudinit.MAX_USER_DATA, description="cloud-init user data")
    ssh_keys: list[str] | None = Field(None, max_length=32, description="OpenSSH public key lines")
    network_config: str | None = Field(None, max_length=cloudinit.MAX_USER_DATA,
                                       description="cloud-init network config (YAML, version 1 or 2)")  # fmt: skip


class VmRequest(Body):
    """A new VM; the name must be unique, the rest fits the caller's quota in the pool (vms.create checks)."""

    name: str = Field(max_length=63)
    vcpus: int | None = Field(None, ge=1, le=vms.MAX_VCPUS)
    memory_mib: int | None = Field(None, ge=16, le=vms.MAX_MEMORY_MIB)
    pool: Id | str | None = Field(None, description="hardware pool id or name (default: the root pool)")
    host: Id | str | None = Field(None, description="pin or place on this host")
    placement_policy: PlacementPolicy | None = None
    firmware: Firmware | None = None
    description: str | None = Field(None, max_length=1000)
    kernel: str | None = Field(None, max_length=255)
    initrd: str | None = Field(None, max_length=255)
    cmdline: str | None = Field(None, max_length=2000)
    disks: list[DiskSpec] = Field(default_factory=list, max_length=64)
    nics: list[NicSpec] = Field(default_factory=list, max_length=32)
    boot_device: BootDevice | None = None
    uuid: str | None = Field(None, max_length=36)
    template: Id | str | None = Field(None, description="template id or name")
    ha: bool | None = Field(None, description="restarted elsewhere once its host is fenced")
    ha_priority: int | None = Field(None, ge=0, le=1000, description="higher restarts first")
    cloud_init: CloudInit | None = Field(None, description="a NoCloud seed attached read-only at first boot")


@accepts(body=VmRequest)
def create_vm(request: Request, body: VmRequest) -> JSONResponse:
    with session(request) as s:
        seeds = state(request).cfg.state_dir / UPLOAD_DIR
        created = vms.create(s, body.given(), caller(request).principal, seeds)
        s.flush()
        return JSONResponse({"vm": vms.summary(created.vm), "task": tasking.summary(created.task)}, status_code=202)


def list_vms(request: Request) -> JSONResponse:
    """GET /vms[?limit=&offset=]: {vms, total, offset, limit}; by name, only those the caller may see."""
    page = Page.from_query(request.query_params)
    with session(request) as s:
        rows, total = page.rows(s, vms.visible_query(s, caller(request).principal))
        return JSONResponse(page.answer("vms", [vms.summary(v) for v in rows], total))


def show_vm(request: Request) -> JSONResponse:
    with session(request) as s:
        vm = vms.find(s, request.path_params["key"])
        permissions.require(s, caller(request).principal, Privilege.VIEW, vm.hardware_pool_id, f"see VM {vm.name}")
        out = vms.detail(vm)
        out["tasks"] = [tasking.summary(t) for t in tasking.pending_for(s, TargetKind.VM, vm.id)]
        return JSONResponse(out)


# The verbs of POST /vms/{key}/{verb}, from the domain's table (the document shows them as a closed set).
VmVerb = enum.StrEnum("VmVerb", {verb.replace("-", "_"): verb for verb in vms.ACTIONS})  # type: ignore[misc]


class ActionPath(Query):
    key: str
    verb: VmVerb


class ActionRequest(Body):
    """Arguments of the actions that take any: migrate (host, bandwidth_mib) and shutdown (timeout)."""

    host: Id | str | None = Field(None, description="migrate: the destination (default: placement picks)")
    timeout: int | None = Field(None, ge=1, le=3600, description="shutdown: seconds before the task fails")
    bandwidth_mib: int | None = Field(None, ge=1, le=100_000, description="migrate: MiB/s at most")


@accepts(body=ActionRequest, optional_body=True, path=ActionPath)
def vm_action(request: Request, body: ActionRequest) -> JSONResponse:
    """POST /vms/{key}/{verb}: verb is one of start, shutdown, poweroff, suspend, resume, save, restore,
    update-state, migrate, delete."""
    with session(request) as s:
        vm = vms.find(s, request.path_params["key"])
        task = vms.act(s, vm, request.path_params["verb"], caller(request).principal, body.given())
        return JSONResponse(tasking.summary(task), status_code=202)


def _task_pool(s: Any, task: Task) -> int | None:
    if task.target_kind is TargetKind.VM:
        vm = s.get(Vm, task.target_id)
        return vm.hardware_pool_id if vm is not None else None
    return None


def _may_see(s: Any, principal: str, task: Task) -> bool:
    return task.created_by == principal or permissions.allowed(s, principal, Privilege.VIEW, _task_pool(s, task))


class TaskQuery(Query):
    state: TaskState | None = None
    limit: int = Field(100, ge=1, le=10000)
    vm: str | None = Field(None, max_length=255, description="only this VM's tasks (id, UUID or name)")


@accepts(query=TaskQuery)
def list_tasks(request: Request, query: TaskQuery) -> JSONResponse:
    principal = caller(request).principal
    with session(request) as s:
        rows_query = select(Task).order_by(Task.id.desc()).limit(query.limit)
        if query.state is not None:
            rows_query = rows_query.where(Task.state == query.state)
        if query.vm:
            vm = vms.find(s, query.vm)
            rows_query = rows_query.where(Task.target_kind == TargetKind.VM, Task.target_id == vm.id)
        rows = [t for t in s.scalars(rows_query) if _may_see(s, principal, t)]
        return JSONResponse({"tasks": [tasking.summary(t) for t in rows]})


def _task_id(request: Request) -> int:
    text = request.path_params["id"]
    task_id = as_id(text)
    if task_id is None:
        raise UsageError(f"{shown(text, 40)} is not a task id (a number)")
    return task_id


def show_task(request: Request) -> JSONResponse:
    principal = caller(request).principal
    with session(request) as s:
        task = tasking.get(s, _task_id(request))
        if not _may_see(s, principal, task):
            raise NotFound(f"task {task.id} does not exist", "see `drover task list`")
        return JSONResponse(tasking.summary(task))


@accepts(body=Empty, optional_body=True)
def cancel_task(request: Request, body: Empty) -> JSONResponse:
    principal = caller(request).principal
    with session(request) as s:
        task = tasking.get(s, _task_id(request))
        if task.created_by != principal:
            permissions.require(s, principal, Privilege.VM_CONTROL, _task_pool(s, task), f"cancel task {task.id}")
        return JSONResponse(tasking.summary(tasking.cancel(s, task.id, principal)))


class BalanceRequest(Body):
    dry_run: bool = False
    cluster: Id | None = Field(None, description="only this cluster's hosts")
    threshold: float = Field(0.05, gt=0, lt=2, description="least gain in load spread worth a move")
    max_moves: int = Field(20, ge=1, le=1000)


@accepts(body=BalanceRequest, optional_body=True)
def balance(request: Request, body: BalanceRequest) -> JSONResponse:
    with session(request) as s:
        moves = vms.balance(s, caller(request).principal, dry_run=body.dry_run, cluster_id=body.cluster,
                            threshold=body.threshold, max_moves=body.max_moves)  # fmt: skip
        return JSONResponse({"dry_run": body.dry_run, "moves": moves}, status_code=200 if body.dry_run else 202)
