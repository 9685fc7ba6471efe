"""VMs, tasks and cluster balance over the API; every route checks the caller's privilege on the object.

POST /vms {name, vcpus, memory_mib, ...} -> 202 {vm, task}; POST /vms/{key}/{verb} -> 202 task;
GET /tasks[?state=&limit=], GET /tasks/{id}, POST /tasks/{id}/cancel; POST /cluster/balance {dry_run?}.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from appliance import permissions, tasking, vms
from appliance.api.auth import caller
from appliance.api.edge import read_json
from appliance.api.state import session, state
from appliance.api.storage import UPLOAD_DIR
from appliance.db.models import TargetKind, Task, TaskState, Vm
from appliance.errors import NotFound, UsageError
from appliance.permissions import Privilege


async def _body(request: Request, fields: frozenset[str]) -> dict[str, Any]:
    if not (await request.body()).strip():
        return {}
    body = await read_json(request)
    unknown = sorted(set(body) - fields)
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown field", f"fields: {', '.join(sorted(fields))}" if fields else "")
    return body


async def create_vm(request: Request) -> JSONResponse:
    body = await read_json(request)
    return await run_in_threadpool(_create, request, body)


def _create(request: Request, body: dict[str, Any]) -> JSONResponse:
    with session(request) as s:
        seeds = state(request).cfg.state_dir / UPLOAD_DIR
        created = vms.create(s, body, caller(request).principal, seeds)
        s.flush()
        return JSONResponse({"vm": vms.summary(created.vm), "task": tasking.summary(created.task)}, status_code=202)


def list_vms(request: Request) -> JSONResponse:
    with session(request) as s:
        rows = vms.visible(s, caller(request).principal)
        return JSONResponse({"vms": [vms.summary(v) for v in rows]})


def show_vm(request: Request) -> JSONResponse:
    with session(request) as s:
        vm = vms.find(s, request.path_params["key"])
        permissions.require(s, caller(request).principal, Privilege.VIEW, vm.hardware_pool_id, f"see VM {vm.name}")
        out = vms.detail(vm)
        out["tasks"] = [tasking.summary(t) for t in tasking.pending_for(s, TargetKind.VM, vm.id)]
        return JSONResponse(out)


async def vm_action(request: Request) -> JSONResponse:
    body = await _body(request, frozenset({"host", "timeout", "bandwidth_mib"}))
    return await run_in_threadpool(_act, request, body)


def _act(request: Request, body: dict[str, Any]) -> JSONResponse:
    with session(request) as s:
        vm = vms.find(s, request.path_params["key"])
        task = vms.act(s, vm, request.path_params["verb"], caller(request).principal, body)
        return JSONResponse(tasking.summary(task), status_code=202)


def _task_pool(s: Any, task: Task) -> int | None:
    if task.target_kind is TargetKind.VM:
        vm = s.get(Vm, task.target_id)
        return vm.hardware_pool_id if vm is not None else None
    return None


def _may_see(s: Any, principal: str, task: Task) -> bool:
    return task.created_by == principal or permissions.allowed(s, principal, Privilege.VIEW, _task_pool(s, task))


_STATES = {state.value for state in TaskState}


def list_tasks(request: Request) -> JSONResponse:
    unknown = sorted(set(request.query_params) - {"state", "limit", "vm"})
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown query parameter", "state, limit, vm")
    state = request.query_params.get("state")
    if state is not None and state not in _STATES:
        raise UsageError(f"state: {state!r} is not one of {', '.join(sorted(_STATES))}")
    limit_text = request.query_params.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 10000:
        raise UsageError("limit: must be an integer from 1 to 10000")
    principal = caller(request).principal
    with session(request) as s:
        query = select(Task).order_by(Task.id.desc()).limit(int(limit_text))
        if state is not None:
            query = query.where(Task.state == TaskState(state))
        if request.query_params.get("vm"):
            vm = vms.find(s, request.query_params["vm"])
            query = query.where(Task.target_kind == TargetKind.VM, Task.target_id == vm.id)
        rows = [t for t in s.scalars(query) if _may_see(s, principal, t)]
        return JSONResponse({"tasks": [tasking.summary(t) for t in rows]})


def _task_id(request: Request) -> int:
    text = request.path_params["id"]
    if not text.isdigit():
        raise UsageError(f"task id {text!r} is not a number")
    return int(text)


def show_task(request: Request) -> JSONResponse:
    principal = caller(request).principal
    with session(request) as s:
        task = tasking.get(s, _task_id(request))
        if not _may_see(s, principal, task):
            raise NotFound(f"task {task.id} does not exist", "see `drover task list`")
        return JSONResponse(tasking.summary(task))


async def cancel_task(request: Request) -> JSONResponse:
    await _body(request, frozenset())
    return await run_in_threadpool(_cancel, request)


def _cancel(request: Request) -> JSONResponse:
    principal = caller(request).principal
    with session(request) as s:
        task = tasking.get(s, _task_id(request))
        if task.created_by != principal:
            permissions.require(s, principal, Privilege.VM_CONTROL, _task_pool(s, task), f"cancel task {task.id}")
        return JSONResponse(tasking.summary(tasking.cancel(s, task.id, principal)))


async def balance(request: Request) -> JSONResponse:
    body = await _body(request, frozenset({"dry_run", "cluster", "threshold", "max_moves"}))
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise UsageError("dry_run: must be true or false")
    threshold = body.get("threshold", 0.05)
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0 < threshold < 2:
        raise UsageError("threshold: must be a number between 0 and 2")
    max_moves = body.get("max_moves", 20)
    if not isinstance(max_moves, int) or isinstance(max_moves, bool) or not 1 <= max_moves <= 1000:
        raise UsageError("max_moves: must be an integer from 1 to 1000")
    cluster = body.get("cluster")
    if cluster is not None and (not isinstance(cluster, int) or isinstance(cluster, bool)):
        raise UsageError("cluster: must be a cluster id")
    return await run_in_threadpool(_balance, request, dry_run, cluster, float(threshold), max_moves)


def _balance(request: Request, dry_run: bool, cluster: int | None, threshold: float, max_moves: int) -> JSONResponse:
    with session(request) as s:
        moves = vms.balance(s, caller(request).principal, dry_run=dry_run, cluster_id=cluster, threshold=threshold,
                            max_moves=max_moves)  # fmt: skip
        return JSONResponse({"dry_run": dry_run, "moves": moves}, status_code=200 if dry_run else 202)
