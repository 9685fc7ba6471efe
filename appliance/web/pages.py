"""The UI's pages and actions: each reads or changes state through the same domain functions and the same
permission check (appliance.permissions) as the API route that does the same thing.

A page is a frame (page.html) around one live region; the same URL asked by htmx with `HX-Target: live`
answers only that region, which is how a page refreshes itself when the event stream says something changed.
Actions answer with a flash message for #flash and `HX-Trigger-After-Settle: drover:event`, so the open page
refreshes once the action's request is over.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from appliance import (
    admission,
    enrolment,
    fencing,
    hosts,
    leadership,
    lifecycle,
    permissions,
    power,
    quotas,
    tasking,
    vmpools,
    vms,
)
from appliance.api.auth import caller
from appliance.api.state import session, state
from appliance.api.vms import _may_see as may_see_task
from appliance.db.models import (
    Cluster,
    Event,
    HardwarePool,
    Host,
    Network,
    StoragePool,
    StorageVolume,
    TargetKind,
    Task,
    TaskState,
    User,
    Vm,
    VmState,
)
from appliance.errors import DroverError, NotFound, UsageError
from appliance.ipmi import IpmiClient, PowerAction
from appliance.kerberos.realm import Realm
from appliance.permissions import Privilege
from appliance.secretbox import SecretBox
from appliance.text import as_id, shown, whole
from appliance.web.access import PREFIX, ui_session
from appliance.web.forms import form_fields, form_pairs

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
LIVE = "live"
EVENTS_SHOWN = 50
PAGE_SIZE = 100


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """The whole page, or only its live region when htmx asks for it."""
    principal = caller(request).principal
    base: dict[str, Any] = {"request": request, "prefix": PREFIX, "principal": principal}
    base["csrf"] = ui_session(request).csrf
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != "page"]
    base["pager_query"] = urlencode(kept) + "&" if kept else ""  # a page link keeps the search it pages through
    with session(request) as s:
        base["is_viewer"] = permissions.allowed(s, principal, Privilege.VIEW, None)
        base["is_admin"] = permissions.allowed(s, principal, Privilege.MODIFY, None)
    base.update(context)
    name = template if request.headers.get("hx-target") == LIVE else "page.html"
    return HTMLResponse(TEMPLATES.get_template(name).render(live=template, **base), status_code=status)


def flash(message: str, status: int = 200, *, error: bool = False) -> HTMLResponse:
    html = TEMPLATES.get_template("flash.html").render(message=message, error=error)
    headers = {"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"}
    if not error:
        headers["HX-Trigger-After-Settle"] = "drover:event"
    return HTMLResponse(html, status_code=status, headers=headers)


def error_page(request: Request, exc: DroverError) -> Response:
    """A refusal as the UI shows it: in #flash for an htmx request, else a page of its own."""
    text = exc.message + (f" ({exc.hint})" if exc.hint else "")
    if request.headers.get("hx-target") == LIVE and isinstance(exc, NotFound):
        # A page refreshing itself after its object went away (removed here or elsewhere): say so in place.
        html = TEMPLATES.get_template("gone.html").render(prefix=PREFIX, message=exc.message)
        return HTMLResponse(html)
    if "hx-request" in request.headers:
        return flash(text, exc.http_status, error=True)
    html = TEMPLATES.get_template("error.html").render(prefix=PREFIX, status=exc.http_status, message=exc.message,
                                                       hint=exc.hint)  # fmt: skip
    return HTMLResponse(html, status_code=exc.http_status)


def _require_global(s: Session, request: Request, privilege: Privilege, what: str) -> None:
    permissions.require(s, caller(request).principal, privilege, None, what)


def _int_param(request: Request, name: str) -> int:
    text = request.path_params[name]
    value = as_id(str(text))
    if value is None:
        raise NotFound(f"{name} {shown(text)!r} does not exist")
    return value


# Pages -------------------------------------------------------------------------------------------------


def dashboard(request: Request) -> Response:
    principal = caller(request).principal
    with session(request) as s:
        global_view = permissions.allowed(s, principal, Privilege.VIEW, None)
        visible = vms.visible(s, principal)
        vm_states = Counter(str(v.state) for v in visible)
        host_states: Counter[str] = Counter()
        events: list[Event] = []
        leader = None
        if global_view:
            host_states = Counter(str(st) for st in s.scalars(select(Host.state)))
            events = list(s.scalars(select(Event).order_by(Event.id.desc()).limit(15)))
            leader = leadership.current(s)
        live = select(Task).where(Task.state.in_([TaskState.RUNNING, TaskState.QUEUED])).order_by(Task.id)
        running = [t for t in s.scalars(live) if may_see_task(s, principal, t)]
        return render(request, "dashboard.html", host_states=sorted(host_states.items()),
                      vm_states=sorted(vm_states.items()), hosts_total=sum(host_states.values()),
                      vms_total=len(visible), running=running, events=events, global_view=global_view,
                      fencer=leader, below="graphs.html" if global_view else None,
                      graphs_src="fleet" if global_view else None)  # fmt: skip


def host_list(request: Request) -> Response:
    with session(request) as s:
        _require_global(s, request, Privilege.VIEW, "list hosts")
        pager = _pager(request, int(s.scalar(select(func.count()).select_from(Host)) or 0))
        rows = list(s.scalars(select(Host).order_by(Host.hostname, Host.id).offset(pager.offset).limit(PAGE_SIZE)))
        windows = [admission.window_view(w) for w in admission.windows(s)]
        return render(request, "hosts.html", hosts=rows, windows=windows, pager=pager, below="hosts_form.html")


def host_detail(request: Request) -> Response:
    port = state(request).cfg.nodes.libvirt_port
    with session(request) as s:
        _require_global(s, request, Privilege.VIEW, "see hosts")
        host = s.get(Host, _int_param(request, "id"))
        if host is None:
            raise NotFound(f"host {request.path_params['id']} does not exist")
        events = list(s.scalars(select(Event).where(Event.host_id == host.id).order_by(Event.id.desc()).limit(20)))
        return render(request, "host.html", host=host, info=hosts.detail(host, port), events=events,
                      below="graphs.html", graphs_src=f"hosts/{host.id}")  # fmt: skip


@dataclass(frozen=True)
class Pager:
    page: int
    pages: int
    total: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * PAGE_SIZE


def _pager(request: Request, total: int) -> Pager:
    text = request.query_params.get("page", "1")
    pages = max(1, -(-total // PAGE_SIZE))
    page = whole(text) or 1
    return Pager(min(page, pages), pages, total)


def vm_list(request: Request) -> Response:
    principal = caller(request).principal
    with session(request) as s:
        # The rows vms.visible() gives the API (the pools permissions.visible_pools allows), one page of them.
        query = select(Vm)
        pools_seen = permissions.visible_pools(s, principal)
        if pools_seen is not None:
            query = query.where(Vm.hardware_pool_id.in_(sorted(pools_seen)))
        search, state_wanted = request.query_params.get("q", "").strip()[:64], request.query_params.get("state", "")
        if search:
            query = query.where(Vm.name.contains(search, autoescape=True))
        if state_wanted:
            if state_wanted not in set(VmState):
                raise UsageError(f"state: one of {', '.join(VmState)}")
            query = query.where(Vm.state == VmState(state_wanted))
        total = int(s.scalar(select(func.count()).select_from(query.subquery())) or 0)
        pager = _pager(request, total)
        rows = list(s.scalars(query.options(selectinload(Vm.host), selectinload(Vm.pool))
                              .order_by(Vm.name, Vm.id).offset(pager.offset).limit(PAGE_SIZE)))  # fmt: skip
        allowed = Allowed(s, principal)
        pools = [p for p in s.scalars(select(HardwarePool).order_by(HardwarePool.name))
                 if allowed(Privilege.VM_CREATE, p.id)]  # fmt: skip
        return render(request, "vms.html", vms=rows, pools=pools, actions=_actions(allowed, rows), pager=pager,
                      above="vms_filter.html", below="vms_form.html", search=search, state_wanted=state_wanted,
                      states=[str(v) for v in VmState], quotas=_quotas(s, principal),
                      take_from=[vmpools.summary(s, p) for p in vmpools.takeable(s, principal)])  # fmt: skip


@dataclass(frozen=True)
class QuotaLeft:
    """One quota of the caller's and what their VMs hold of it (appliance.quotas counts the same way)."""

    pool: str
    vms: tuple[int, int | None]  # held, limit (None: no limit)
    vcpus: tuple[int, int | None]
    memory_mib: tuple[int, int | None]


def _quotas(s: Session, principal: str) -> list[QuotaLeft]:
    user = s.scalars(select(User).where(User.principal == principal)).one_or_none()
    if user is None:
        return []
    out = []
    for quota in sorted(user.quotas, key=lambda q: q.pool.name):
        used = quotas.owned(s, user.id, quota.hardware_pool_id)
        out.append(QuotaLeft(quota.pool.name, (used.vms, quota.max_vms), (used.vcpus, quota.max_vcpus),
                             (used.memory_mib, quota.max_memory_mib)))  # fmt: skip
    return out


class Allowed:
    """permissions.allowed() once per (privilege, pool) in a request: a page of VMs shares a few pools."""

    def __init__(self, s: Session, principal: str) -> None:
        self.s, self.principal = s, principal
        self.known: dict[tuple[Privilege, int | None], bool] = {}

    def __call__(self, privilege: Privilege, pool_id: int | None) -> bool:
        key = (privilege, pool_id)
        if key not in self.known:
            self.known[key] = permissions.allowed(self.s, self.principal, privilege, pool_id)
        return self.known[key]


def _actions(allowed: Allowed, rows: list[Vm]) -> dict[int, list[str]]:
    """The verbs each VM offers this user now: its state allows them and the user holds the privilege."""
    return {vm.id: [v for v in _STATE_VERBS.get(vm.state, ()) if allowed(vms.ACTIONS[v][1], vm.hardware_pool_id)]
            for vm in rows}  # fmt: skip


_STATE_VERBS: dict[VmState, tuple[str, ...]] = {
    VmState.STOPPED: ("start", "delete"),
    VmState.RUNNING: ("shutdown", "poweroff", "suspend", "save", "migrate"),
    VmState.PAUSED: ("resume", "poweroff"),
    VmState.SAVED: ("restore", "delete"),
    VmState.CRASHED: ("poweroff", "start"),
    VmState.PENDING: ("delete",),
}


def vm_detail(request: Request) -> Response:
    principal = caller(request).principal
    with session(request) as s:
        vm = s.get(Vm, _int_param(request, "id"))
        if vm is None:
            raise NotFound(f"VM {request.path_params['id']} does not exist")
        permissions.require(s, principal, Privilege.VIEW, vm.hardware_pool_id, f"see VM {vm.name}")
        tasks = list(s.scalars(select(Task).where(Task.target_kind == TargetKind.VM, Task.target_id == vm.id)
                               .order_by(Task.id.desc()).limit(20)))  # fmt: skip
        events = list(s.scalars(select(Event).where(Event.vm_id == vm.id).order_by(Event.id.desc()).limit(20)))
        return render(request, "vm.html", vm=vm, info=vms.detail(vm), tasks=tasks, events=events,
                      actions=_actions(Allowed(s, principal), [vm])[vm.id], below="graphs.html",
                      graphs_src=f"vms/{vm.id}")  # fmt: skip


def targets(s: Session, tasks: list[Task]) -> dict[int, str]:
    """What each task acts on, as a person reads it (a VM's or host's name)."""
    out: dict[int, str] = {}
    for task in tasks:
        kind = task.target_kind.value
        row = s.get(Vm, task.target_id) if kind == "vm" else s.get(Host, task.target_id) if kind == "host" else None
        name = row.name if isinstance(row, Vm) else row.hostname if isinstance(row, Host) else f"#{task.target_id}"
        out[task.id] = f"{kind.replace('_', ' ')} {name}"
    return out


def task_list(request: Request) -> Response:
    principal = caller(request).principal
    with session(request) as s:
        rows = [t for t in s.scalars(select(Task).order_by(Task.id.desc()).limit(200)) if may_see_task(s, principal, t)]
        return render(request, "tasks.html", tasks=rows, targets=targets(s, rows))


def task_panel(request: Request) -> Response:
    """The always-visible panel: queued and running tasks with progress, and the last few that failed."""
    principal = caller(request).principal
    with session(request) as s:
        live = select(Task).where(Task.state.in_([TaskState.RUNNING, TaskState.QUEUED])).order_by(Task.id.desc())
        active = [t for t in s.scalars(live.limit(50)) if may_see_task(s, principal, t)]
        failed_q = select(Task).where(Task.state == TaskState.FAILED).order_by(Task.id.desc())
        failed = [t for t in s.scalars(failed_q.limit(5)) if may_see_task(s, principal, t)]
        html = TEMPLATES.get_template("taskpanel.html").render(prefix=PREFIX, active=active, failed=failed,
                                                               targets=targets(s, active + failed))  # fmt: skip
        return HTMLResponse(html)


@dataclass(frozen=True)
class PoolNode:
    pool: HardwarePool
    depth: int
    hosts: int
    vms: int
    clusters: list[str]


def inventory(request: Request) -> Response:
    """Hardware pools as a tree (with their clusters, host and VM counts), storage pools, networks."""
    with session(request) as s:
        _require_global(s, request, Privilege.VIEW, "see the inventory")
        pools = list(s.scalars(select(HardwarePool).order_by(HardwarePool.name)))
        hosts_in = dict(s.execute(select(Host.hardware_pool_id, func.count()).group_by(Host.hardware_pool_id))
                        .tuples().all())  # fmt: skip
        vms_in = dict(s.execute(select(Vm.hardware_pool_id, func.count()).group_by(Vm.hardware_pool_id)).tuples().all())
        clusters: dict[int, list[str]] = {}
        for cluster in s.scalars(select(Cluster).order_by(Cluster.name)):
            clusters.setdefault(cluster.hardware_pool_id, []).append(cluster.name)
        children: dict[int | None, list[HardwarePool]] = {}
        for pool in pools:
            children.setdefault(pool.parent_id, []).append(pool)
        tree: list[PoolNode] = []

        def walk(parent: int | None, depth: int) -> None:
            for pool in children.get(parent, []):
                tree.append(PoolNode(pool, depth, hosts_in.get(pool.id, 0), vms_in.get(pool.id, 0),
                                     clusters.get(pool.id, [])))  # fmt: skip
                if depth < 32:  # a cycle cannot be made through the API; never loop on one anyway
                    walk(pool.id, depth + 1)

        walk(None, 0)
        names = {p.id: p.name for p in pools}
        storage = list(s.scalars(select(StoragePool).order_by(StoragePool.name)))
        volumes = dict(s.execute(select(StorageVolume.storage_pool_id, func.count())
                                 .group_by(StorageVolume.storage_pool_id)).tuples().all())  # fmt: skip
        networks = list(s.scalars(select(Network).order_by(Network.name)))
        return render(request, "inventory.html", tree=tree, storage=storage, volumes=volumes, networks=networks,
                      pool_names=names)  # fmt: skip


# Actions -----------------------------------------------------------------------------------------------


async def host_action(request: Request) -> Response:
    form = await form_fields(request)
    return await run_in_threadpool(_host_action, request, form)


def _host_action(request: Request, form: dict[str, str]) -> Response:
    verb = request.path_params["verb"]
    st = state(request)
    principal = caller(request).principal
    if verb in _POWER:
        return _power_action(request, _POWER[verb])
    with session(request) as s:
        host = s.get(Host, _int_param(request, "id"))
        if host is None:
            raise NotFound(f"host {request.path_params['id']} does not exist")
        name = host.hostname
        if verb == "approve":
            _require_global(s, request, Privilege.MODIFY, "approve hosts")
            claim = form.get("claim") or None
            claim_id = as_id(claim) if claim is not None else None
            if claim is not None and claim_id is None:
                raise UsageError("claim: must be a claim id")
            enrolment.approve(s, host, principal, st.cfg.nodes.heartbeat_seconds, claim_id)
        elif verb == "maintenance":
            _require_global(s, request, Privilege.MODIFY, "put hosts into maintenance")
            lifecycle.maintenance(s, host, principal, lifecycle.check_reason(form.get("reason", "")))
        elif verb == "activate":
            _require_global(s, request, Privilege.MODIFY, "activate hosts")
            lifecycle.activate(s, host, principal)
        elif verb == "remove":
            _require_global(s, request, Privilege.MODIFY, "remove hosts")
            lifecycle.remove(s, host, principal, Realm.from_config(st.cfg), force=form.get("force") == "true")
        elif verb == "confirm-rebooted":
            _require_global(s, request, Privilege.MODIFY, "confirm hosts were rebooted")
            queued = fencing.confirm_rebooted(s, host, principal)
            return flash(f"{name}: fenced on your word; HA restarts queued: {len(queued)}")
        else:
            raise NotFound(f"no host action {verb!r}", "approve, maintenance, activate, remove, confirm-rebooted, "
                           "power-on, power-off, power-cycle or power-status")  # fmt: skip
    if verb == "remove" and st.browser is not None:
        st.browser.wake()
    return flash(f"{name}: {verb} done")


_POWER = {f"power-{a.value}": a for a in PowerAction}


def _power_action(request: Request, action: PowerAction) -> Response:
    """A BMC call from the host page: permission checked in one transaction, ipmitool outside any."""
    st = state(request)
    with session(request) as s:
        if action is PowerAction.STATUS:
            _require_global(s, request, Privilege.VIEW, "read hosts' power state")
        else:
            _require_global(s, request, Privilege.MODIFY, f"power hosts {action}")
    outcome = power.act(lambda: session(request), request.path_params["id"], action, IpmiClient(st.cfg.power),
                        SecretBox.under(st.cfg.state_dir), caller(request).principal)  # fmt: skip
    done = "" if action is PowerAction.STATUS else f"power {action} done, "
    return flash(f"{outcome.hostname}: {done}the BMC reports power {outcome.state}")


async def open_window(request: Request) -> Response:
    form = await form_fields(request)
    return await run_in_threadpool(_open_window, request, form)


def _open_window(request: Request, form: dict[str, str]) -> Response:
    minutes, count = whole(form.get("minutes", "")), whole(form.get("count", "1"))
    if minutes is None or count is None:
        raise UsageError("minutes and hosts must be whole numbers")
    macs = [m for m in form.get("macs", "").replace(",", " ").split() if m]
    with session(request) as s:
        _require_global(s, request, Privilege.MODIFY, "open enrolment windows")
        window = admission.open_window(s, by=caller(request).principal, duration=timedelta(minutes=minutes),
                                       max_hosts=count, macs=macs, note=form.get("note", "")[:200])  # fmt: skip
        s.flush()
        return flash(f"enrolment window {window.id} open until {window.expires_at:%H:%M:%S} UTC")


def close_window(request: Request) -> Response:
    with session(request) as s:
        _require_global(s, request, Privilege.MODIFY, "close enrolment windows")
        closed = admission.close_windows(s, by=caller(request).principal, window_id=_int_param(request, "id"))
        return flash(f"closed {len(closed)} enrolment window(s)")


async def vm_action(request: Request) -> Response:
    form = await form_fields(request)
    return await run_in_threadpool(_vm_action, request, form)


def _vm_action(request: Request, form: dict[str, str]) -> Response:
    args: dict[str, Any] = {}
    if form.get("host"):
        args["host"] = form["host"]
    with session(request) as s:
        vm = s.get(Vm, _int_param(request, "id"))
        if vm is None:
            raise NotFound(f"VM {request.path_params['id']} does not exist")
        # vms.act checks the privilege first (not found and forbidden look alike to the caller only in
        # what they say: a user without view rights learns nothing but that they may not act).
        task = vms.act(s, vm, request.path_params["verb"], caller(request).principal, args)
        s.flush()
        return flash(f"{request.path_params['verb']} {vm.name}: task {task.id} queued")


BULK_VERBS = ("start", "shutdown", "poweroff")
BULK_MAX = 100


async def vm_bulk(request: Request) -> Response:
    """POST /ui/vms/bulk verb=start|shutdown|poweroff&vm=ID&vm=ID...: each VM on its own, as vms.act decides."""
    pairs = await form_pairs(request, BULK_MAX + 5)
    verbs = [v for k, v in pairs if k == "verb"]
    ids = [v for k, v in pairs if k == "vm"]
    if len(verbs) != 1 or verbs[0] not in BULK_VERBS:
        raise UsageError(f"verb: one of {', '.join(BULK_VERBS)}")
    parsed = [as_id(i) for i in ids]
    if not parsed or len(parsed) > BULK_MAX or any(i is None for i in parsed):
        raise UsageError(f"vm: select 1 to {BULK_MAX} VMs")
    return await run_in_threadpool(_vm_bulk, request, verbs[0], [i for i in dict.fromkeys(parsed) if i is not None])


def _vm_bulk(request: Request, verb: str, ids: list[int]) -> Response:
    principal = caller(request).principal
    queued, refused = [], []
    for vm_id in ids:
        try:
            # One transaction per VM: a refusal of one leaves the others' tasks queued.
            with session(request) as s:
                vm = s.get(Vm, vm_id)
                if vm is None:
                    raise NotFound(f"VM {vm_id} does not exist")
                vms.act(s, vm, verb, principal, {})
                queued.append(vm.name)
        except DroverError as exc:
            refused.append(exc.message)
    text = f"{verb}: {len(queued)} queued" + (f" ({', '.join(queued)})" if queued else "")
    if refused:
        text += f"; {len(refused)} refused: " + "; ".join(refused[:5])
    response = flash(text, error=bool(refused) and not queued)
    response.headers["HX-Trigger-After-Settle"] = "drover:event"
    return response


async def vm_create(request: Request) -> Response:
    form = await form_fields(request)
    return await run_in_threadpool(_vm_create, request, form)


def _vm_create(request: Request, form: dict[str, str]) -> Response:
    body: dict[str, Any] = {"name": form.get("name", "")}
    for key in ("vcpus", "memory_mib", "pool"):
        value = form.get(key, "").strip()
        if value:
            number = whole(value)
            if number is None:
                raise UsageError(f"{key}: must be a whole number")
            body[key] = number
    with session(request) as s:
        created = vms.create(s, body, caller(request).principal)
        s.flush()
        return flash(f"VM {created.vm.name} defined: task {created.task.id} creates it")


def task_cancel(request: Request) -> Response:
    principal = caller(request).principal
    with session(request) as s:
        task = tasking.get(s, _int_param(request, "id"))
        if not may_see_task(s, principal, task):
            raise NotFound(f"task {task.id} does not exist")
        if task.created_by != principal:
            permissions.require(s, principal, Privilege.VM_CONTROL, _task_pool(s, task), f"cancel task {task.id}")
        tasking.cancel(s, task.id, principal)
        return flash(f"task {task.id}: cancel asked for")


def _task_pool(s: Session, task: Task) -> int | None:
    if task.target_kind.value == "vm":
        vm = s.get(Vm, task.target_id)
        return vm.hardware_pool_id if vm is not None else None
    return None
