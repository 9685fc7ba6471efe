"""GET /ui/stream: Server-Sent Events fed by the events table, each one only to users allowed to see it.

The events table is the one record of every change (hosts, VMs, tasks), written by whichever appliance
process made it; polling it by id works on SQLite and PostgreSQL alike and feeds every browser from every
process. Each stream lives at most MAX_SECONDS and then ends: EventSource reconnects by itself with
Last-Event-ID, and a shutting-down server is never held open by a browser tab.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import StreamingResponse

from appliance import permissions
from appliance.api.auth import caller
from appliance.api.state import session
from appliance.api.vms import _may_see as may_see_task
from appliance.db.models import Event, Task, Vm
from appliance.permissions import Privilege

POLL_SECONDS = 0.5
MAX_SECONDS = 20.0
BATCH = 200
# Set when the server stops (serve_cmd): every open stream ends at its next poll.
STOPPING = threading.Event()


def may_see(s: Session, principal: str, event: Event, global_view: bool) -> bool:
    """The same rule as the pages: an event about a VM needs view on its pool, a task's event its task's
    visibility, anything else (hosts, enrolment, the appliance) the view privilege everywhere."""
    if global_view:
        return True
    if event.vm_id is not None:
        vm = s.get(Vm, event.vm_id)
        return vm is not None and permissions.allowed(s, principal, Privilege.VIEW, vm.hardware_pool_id)
    if event.task_id is not None and event.host_id is None:
        task = s.get(Task, event.task_id)
        return task is not None and may_see_task(s, principal, task)
    return False


def _last_id(s: Session) -> int:
    return int(s.scalar(select(func.max(Event.id))) or 0)


def _after(request: Request) -> int | None:
    text = request.headers.get("last-event-id") or request.query_params.get("after") or ""
    return int(text) if text.isdigit() else None


def _batch(request: Request, principal: str, after: int) -> tuple[int, list[dict[str, object]]]:
    with session(request) as s:
        rows = list(s.scalars(select(Event).where(Event.id > after).order_by(Event.id).limit(BATCH)))
        if not rows:
            return after, []
        global_view = permissions.allowed(s, principal, Privilege.VIEW, None)
        out: list[dict[str, object]] = [
            {"id": e.id, "kind": e.kind, "subject": e.subject, "severity": str(e.severity), "vm_id": e.vm_id,
             "host_id": e.host_id, "task_id": e.task_id}
            for e in rows if may_see(s, principal, e, global_view)
        ]  # fmt: skip
        return rows[-1].id, out


async def _events(request: Request, principal: str, after: int) -> AsyncIterator[str]:
    yield f"retry: 2000\nid: {after}\n\n"
    deadline = time.monotonic() + MAX_SECONDS
    while time.monotonic() < deadline and not STOPPING.is_set():
        after, items = await asyncio.to_thread(_batch, request, principal, after)
        for item in items:
            yield f"id: {item['id']}\nevent: drover\ndata: {json.dumps(item)}\n\n"
        if not items:
            yield ": idle\n\n"  # a comment: finds a closed connection, keeps proxies from timing out
        await asyncio.sleep(POLL_SECONDS)
    # The last id seen (even of events this user may not see) so the reconnect starts after them.
    yield f"id: {after}\n\n"


async def stream(request: Request) -> StreamingResponse:
    principal = caller(request).principal
    after = _after(request)
    if after is None:
        after = await asyncio.to_thread(_start, request)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(_events(request, principal, after), media_type="text/event-stream", headers=headers)


def _start(request: Request) -> int:
    with session(request) as s:
        return _last_id(s)

