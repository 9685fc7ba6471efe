"""GET /ui/stream: Server-Sent Events fed by the events table, each one only to users allowed to see it.

The events table is the one record of every change (hosts, VMs, tasks), written by whichever appliance
process made it; reading it by id works on SQLite and PostgreSQL alike and feeds every browser from every
process. One Hub per process reads it (every POLL_SECONDS while anyone listens) and hands each new event,
with the pool and task creator it concerns, to every open stream; each stream filters with what its user
may see (appliance.permissions, re-read every VIEW_SECONDS). So 200 open tabs cost one query, not 200.

Each stream lives at most MAX_SECONDS and then ends: EventSource reconnects by itself with Last-Event-ID,
and a shutting-down server is never held open by a browser tab.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

import psycopg
from sqlalchemy import Engine, func, select
from starlette.requests import Request
from starlette.responses import StreamingResponse

from appliance import permissions
from appliance.api.auth import caller
from appliance.db.engine import session_scope
from appliance.db.models import Event, TargetKind, Task, Vm
from appliance.db.models.events import NOTIFY_CHANNEL
from appliance.permissions import Privilege
from appliance.text import whole

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
# On PostgreSQL the hub wakes on NOTIFY (appliance.db.models.events); this poll is only the safety net.
NOTIFIED_POLL_SECONDS = 2.0
MAX_SECONDS = 20.0
VIEW_SECONDS = 5.0  # a revoked role stops a stream's events at most this late (the stream ends by 20 s anyway)
BATCH = 500
# Set when the server stops (serve_cmd): every open stream ends at once.
STOPPING = threading.Event()


@dataclass(frozen=True)
class Item:
    """An event as streams get it, with what deciding who may see it needs."""

    id: int
    kind: str
    subject: str
    severity: str
    vm_id: int | None
    host_id: int | None
    task_id: int | None
    pool_id: int | None  # the VM's pool (for a task's event: its VM's), None for hosts and the appliance
    creator: str | None  # a task's event: who queued the task


def read_after(engine: Engine, after: int, limit: int = BATCH) -> list[Item]:
    with session_scope(engine) as s:
        rows = list(s.scalars(select(Event).where(Event.id > after).order_by(Event.id).limit(limit)))
        vm_ids = {e.vm_id for e in rows if e.vm_id is not None}
        task_ids = {e.task_id for e in rows if e.task_id is not None}
        tasks = {t.id: t for t in s.scalars(select(Task).where(Task.id.in_(task_ids)))} if task_ids else {}
        vm_ids |= {t.target_id for t in tasks.values() if t.target_kind is TargetKind.VM}
        pool_of = select(Vm.id, Vm.hardware_pool_id).where(Vm.id.in_(vm_ids))
        pools = dict(s.execute(pool_of).tuples().all()) if vm_ids else {}
        out = []
        for e in rows:
            task = tasks.get(e.task_id) if e.task_id is not None else None
            vm_id = e.vm_id if e.vm_id is not None else (
                task.target_id if task is not None and task.target_kind is TargetKind.VM else None)  # fmt: skip
            out.append(Item(e.id, e.kind, e.subject, str(e.severity), e.vm_id, e.host_id, e.task_id,
                            pools.get(vm_id) if vm_id is not None else None,
                            task.created_by if task is not None else None))  # fmt: skip
        return out


def last_id(engine: Engine) -> int:
    with session_scope(engine) as s:
        return int(s.scalar(select(func.max(Event.id))) or 0)


class Viewer:
    """What one user may see, as appliance.permissions says, re-read now and then."""

    def __init__(self, engine: Engine, principal: str) -> None:
        self.engine, self.principal = engine, principal
        self.global_view = False
        self.pools: set[int] = set()
        self.read_at = -VIEW_SECONDS

    def refresh(self) -> None:
        with session_scope(self.engine) as s:
            self.global_view = permissions.allowed(s, self.principal, Privilege.VIEW, None)
            self.pools = set(permissions.visible_pools(s, self.principal) or ())
        self.read_at = time.monotonic()

    def stale(self) -> bool:
        return time.monotonic() - self.read_at > VIEW_SECONDS

    def may_see(self, item: Item) -> bool:
        """The pages' rule: a VM's event needs view on its pool; a task's event, view on its VM's pool or
        having queued it; anything else (hosts, enrolment, the appliance) view everywhere."""
        if self.global_view:
            return True
        if item.pool_id is not None and item.pool_id in self.pools:
            return True
        return item.task_id is not None and item.host_id is None and item.creator == self.principal


class Hub:
    """Reads new events once for every stream of this process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queues: set[asyncio.Queue[list[Item]]] = set()
        self.last = -1
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._listener: threading.Thread | None = None
        self.notified = engine.dialect.name == "postgresql"

    async def subscribe(self) -> tuple[asyncio.Queue[list[Item]], int]:
        """A queue of the events after the returned id (the hub's position when it was subscribed)."""
        if self.last < 0:
            self.last = await asyncio.to_thread(last_id, self.engine)
        queue: asyncio.Queue[list[Item]] = asyncio.Queue()
        self.queues.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        if self.notified and (self._listener is None or not self._listener.is_alive()):
            loop = asyncio.get_running_loop()
            self._listener = threading.Thread(target=self._listen, args=(loop,), name="ui-events-listen", daemon=True)
            self._listener.start()
        return queue, self.last

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """LISTEN on a connection of its own while anyone is subscribed; each NOTIFY wakes the hub."""
        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                while self.queues and not STOPPING.is_set():
                    for _ in conn.notifies(timeout=1.0, stop_after=1):
                        loop.call_soon_threadsafe(self._wake.set)
        except (psycopg.Error, RuntimeError) as exc:  # RuntimeError: the loop closed under us at shutdown
            log.warning("event stream LISTEN stopped (%s); polling every %ss", exc, NOTIFIED_POLL_SECONDS)

    def unsubscribe(self, queue: asyncio.Queue[list[Item]]) -> None:
        self.queues.discard(queue)

    async def _run(self) -> None:
        while self.queues and not STOPPING.is_set():
            items = await asyncio.to_thread(read_after, self.engine, self.last)
            if items:
                self.last = items[-1].id
                for queue in list(self.queues):
                    queue.put_nowait(items)
            if len(items) == BATCH:
                continue
            if not self.notified:
                await asyncio.sleep(POLL_SECONDS)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), NOTIFIED_POLL_SECONDS)
            self._wake.clear()


def _frame(item: Item) -> str:
    data = {k: v for k, v in asdict(item).items() if k not in ("pool_id", "creator")}
    return f"id: {item.id}\nevent: drover\ndata: {json.dumps(data)}\n\n"


async def _events(hub: Hub, viewer: Viewer, after: int | None) -> AsyncIterator[str]:
    queue, position = await hub.subscribe()
    try:
        await asyncio.to_thread(viewer.refresh)
        seen = position if after is None else after
        yield f"retry: 2000\nid: {seen}\n\n"
        # A reconnect's backlog (after its Last-Event-ID, up to where the hub was) is read for it alone.
        while after is not None and seen < position:
            backlog = [i for i in await asyncio.to_thread(read_after, hub.engine, seen) if i.id <= position]
            if not backlog:
                break
            for item in backlog:
                if viewer.may_see(item):
                    yield _frame(item)
            seen = backlog[-1].id
        deadline = time.monotonic() + MAX_SECONDS
        while not STOPPING.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                items = await asyncio.wait_for(queue.get(), timeout=min(left, 5.0))
            except TimeoutError:
                yield ": idle\n\n"  # a comment: finds a closed connection, keeps proxies from timing out
                continue
            if viewer.stale():
                await asyncio.to_thread(viewer.refresh)
            for item in items:
                if item.id > seen and viewer.may_see(item):
                    yield _frame(item)
            seen = max(seen, items[-1].id)
        # The last id read (events this user may not see included) so the reconnect starts after them.
        yield f"id: {max(seen, position)}\n\n"
    finally:
        hub.unsubscribe(queue)


def _after(request: Request) -> int | None:
    text = request.headers.get("last-event-id") or request.query_params.get("after") or ""
    return whole(text, 2**63 - 1)


async def stream(request: Request) -> StreamingResponse:
    hub = request.app.state.hub
    if not isinstance(hub, Hub):
        raise TypeError("the web app has no event hub")
    viewer = Viewer(hub.engine, caller(request).principal)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(_events(hub, viewer, _after(request)), media_type="text/event-stream", headers=headers)

