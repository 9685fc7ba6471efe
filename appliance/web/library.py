"""The UI's templates and VM pools pages: import (upload) and delete templates, make and delete VM pools, and
take a VM from a pool (the self-service portal's verb). Each action is the API's: the same domain function
and the same permission check, so the refusals read the same.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from appliance import permissions, storage, vmpools
from appliance.api import storage as api_storage
from appliance.api.auth import caller
from appliance.api.state import session
from appliance.db.models import HardwarePool, StoragePool, Template, Vm
from appliance.errors import NotFound
from appliance.permissions import Privilege
from appliance.text import as_id, shown
from appliance.web.forms import form_fields
from appliance.web.pages import Allowed, flash, render


def _int_id(request: Request) -> str:
    text = str(request.path_params["id"])
    if as_id(text) is None:
        raise NotFound(f"{shown(text)!r} does not exist")
    return text


def template_list(request: Request) -> Response:
    principal = caller(request).principal
    with session(request) as s:
        allowed = Allowed(s, principal)
        rows = [t for t in s.scalars(select(Template).order_by(Template.name))
                if allowed(Privilege.VIEW, t.volume.storage_pool.hardware_pool_id if t.volume else None)]  # fmt: skip
        in_use: dict[int, list[str]] = {}
        made = select(Vm.template_id, Vm.name).where(Vm.template_id.in_([t.id for t in rows])).order_by(Vm.name)
        for template_id, name in s.execute(made).tuples():
            if template_id is not None:
                in_use.setdefault(template_id, []).append(name)
        may_delete = {t.id: allowed(Privilege.MODIFY, t.volume.storage_pool.hardware_pool_id if t.volume else None)
                      for t in rows}  # fmt: skip
        targets = [p for p in s.scalars(select(StoragePool).order_by(StoragePool.name))
                   if allowed(Privilege.MODIFY, p.hardware_pool_id)]  # fmt: skip
        return render(request, "templates.html", templates=rows, in_use=in_use, may_delete=may_delete,
                      targets=targets, below="templates_form.html" if targets else None)  # fmt: skip


async def template_import(request: Request) -> Response:
    """The file's bytes are the body, as the API takes them (static/library.js sends them so)."""
    answer = await api_storage.import_template(request)
    body = json.loads(bytes(answer.body))
    return flash(f"template {body['template']['name']} ({body['template']['image']}) received: "
                 f"task {body['task']['id']} uploads it into its storage pool")  # fmt: skip


def template_delete(request: Request) -> Response:
    with session(request) as s:
        template = storage.find_template(s, _int_id(request))
        pool_id = template.volume.storage_pool.hardware_pool_id if template.volume is not None else None
        permissions.require(s, caller(request).principal, Privilege.MODIFY, pool_id, f"delete template {template.name}")
        task = storage.delete_template(s, template, caller(request).principal)
        s.flush()
        return flash(f"template {template.name} deleted" + (f"; task {task.id} removes its image" if task else ""))


def pool_list(request: Request) -> Response:
    principal = caller(request).principal
    with session(request) as s:
        mine = {p.id for p in vmpools.takeable(s, principal)}
        rows = [{**vmpools.summary(s, p), "may_take": p.id in mine,
                 "may_delete": permissions.allowed(s, principal, Privilege.MODIFY, p.hardware_pool_id)}
                for p in vmpools.visible(s, principal)]  # fmt: skip
        allowed = Allowed(s, principal)
        hw = [p for p in s.scalars(select(HardwarePool).order_by(HardwarePool.name)) if allowed(Privilege.MODIFY, p.id)]
        templates = [t for t in s.scalars(select(Template).order_by(Template.name))
                     if t.volume is not None and allowed(Privilege.VIEW, t.volume.storage_pool.hardware_pool_id)]
        return render(request, "vmpools.html", pools=rows, hardware_pools=hw, templates=templates,
                      below="vmpools_form.html" if hw else None)  # fmt: skip


async def pool_create(request: Request) -> Response:
    form = await form_fields(request)
    return await run_in_threadpool(_pool_create, request, form)


def _pool_create(request: Request, form: dict[str, str]) -> Response:
    body: dict[str, Any] = {k: v.strip() for k, v in form.items() if k in ("name", "template", "pool", "size",
                                                                              "prestarted", "description")}  # fmt: skip
    body = {k: v for k, v in body.items() if v != "" or k in ("name", "template", "size")}
    spec = vmpools.PoolSpec.from_request(body)
    with session(request) as s:
        pool, tasks = vmpools.create(s, spec, caller(request).principal)
        return flash(f"VM pool {pool.name}: {pool.size} VMs defined, {len(tasks)} tasks queued")


def pool_take(request: Request) -> Response:
    with session(request) as s:
        pool = vmpools.find(s, _int_id(request))
        vm, _ = vmpools.take(s, pool, caller(request).principal)
        return flash(f"VM {vm.name} is yours ({vm.state}): see My VMs")


def pool_delete(request: Request) -> Response:
    with session(request) as s:
        pool = vmpools.find(s, _int_id(request))
        name = pool.name
        tasks = vmpools.delete(s, pool, caller(request).principal)
        return flash(f"VM pool {name} deleted; {len(tasks)} tasks remove its VMs")
