"""What the host browser writes: host states and VM rows, applied by one writer thread in batches.

libvirt callbacks run in the event loop thread, which also answers keepalive pings; a slow database
there would make healthy hosts look dead. So callbacks only queue a change, and this thread applies
them, many per transaction when they arrive in bursts.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, select, update
from sqlalchemy.orm import Session

from appliance import hosts, storage
from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import Event, Host, HostState, Severity, Vm, VmState
from appliance.errors import DroverError

log = logging.getLogger(__name__)

BATCH = 500
_LIVE = frozenset({VmState.RUNNING, VmState.PAUSED})


@dataclass(frozen=True)
class Domain:
    """A domain as libvirt reported it; `state` None means it no longer exists on the host."""

    uuid: str
    name: str
    state: VmState | None
    vcpus: int = 1
    memory_mib: int = 1


@dataclass(frozen=True)
class DomainChanged:
    host_id: int
    domain: Domain


@dataclass(frozen=True)
class HostUp:
    """Connected: the host is available and these are all of its domains (a full re-sync)."""

    host_id: int
    domains: tuple[Domain, ...]


@dataclass(frozen=True)
class HostDown:
    host_id: int
    reason: str


@dataclass(frozen=True)
class Addresses:
    """The IP addresses seen on the host's running domains: UUID -> (CIDRs, source)."""

    host_id: int
    found: tuple[tuple[str, tuple[str, ...], str], ...]


Change = DomainChanged | HostUp | HostDown | Addresses


def apply(session: Session, change: Change) -> None:
    """One change in its own view of the database (see apply_all for many)."""
    apply_all(session, [change])


def apply_all(session: Session, changes: list[Change]) -> None:
    """Apply changes in order inside one transaction, reading what they name once rather than per change."""
    view = _View(session, changes)
    for change in changes:
        host = view.hosts.get(change.host_id)
        if host is None:  # removed meanwhile: whatever its session still reports is about nothing
            continue
        if isinstance(change, DomainChanged):
            _domain(view, host, change.domain)
        elif isinstance(change, HostUp):
            _host_up(view, host, change)
        elif isinstance(change, Addresses):
            _addresses(session, host, change)
        else:
            _host_down(session, host, change)


class _View:
    """The hosts a batch names, locked, and the VMs it names, read in one query per 500.

    The host rows are locked first, always, in id order: the API's maintenance/activate/remove lock
    them too, so both sides take a host before its VMs, see what the other committed, and two
    batches never wait on each other crosswise. Reading the VMs once instead of per change matters:
    a per-change SELECT also flushed the previous change's UPDATE and INSERT (autoflush), and that
    round trip per change was what limited a reconnecting fleet's re-sync.
    """

    def __init__(self, session: Session, changes: list[Change]) -> None:
        self.session = session
        self.hosts = {hid: hosts.lock(session, hid) for hid in sorted({c.host_id for c in changes})}
        named = {c.domain.uuid for c in changes if isinstance(c, DomainChanged)}
        named |= {d.uuid for c in changes if isinstance(c, HostUp) for d in c.domains}
        self.vms: dict[str, Vm] = {}
        ordered = sorted(named)
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            self.vms.update((vm.uuid, vm) for vm in session.scalars(select(Vm).where(Vm.uuid.in_(chunk))))


def _domain(view: _View, host: Host, dom: Domain) -> None:
    session = view.session
    vm = view.vms.get(dom.uuid)
    if dom.state is None:
        if vm is not None and vm.host_id == host.id:
            vm.host_id = None
            _vm_state(session, vm, VmState.STOPPED, "undefined on its host")
        return
    if vm is None:
        vm = Vm(uuid=dom.uuid, name=dom.name, vcpus=max(dom.vcpus, 1), memory_mib=max(dom.memory_mib, 1),
                hardware_pool_id=host.hardware_pool_id, host_id=host.id, state=dom.state)  # fmt: skip
        session.add(vm)
        session.flush()  # its id, for the event (discovery is rare: a VM drover did not make)
        view.vms[dom.uuid] = vm
        session.add(Event(kind="vm.discovered", subject=dom.name, message=f"on {host.hostname}: {dom.state}",
                          host_id=host.id, vm_id=vm.id))  # fmt: skip
        return
    if vm.host_id is not None and vm.host_id != host.id:
        if vm.state is VmState.MIGRATING:
            return  # the incoming copy on the destination: the task engine moves the row when it is done
        if dom.state not in _LIVE and vm.state in _LIVE:
            # The leftover of a migration (the source's stopped copy, reported late): the VM lives on the
            # host its row names; a stopped copy elsewhere must not pull it back.
            return
    if vm.host_id != host.id:
        vm.host_id = host.id
    vm.name, vm.vcpus, vm.memory_mib = dom.name, max(dom.vcpus, 1), max(dom.memory_mib, 1)
    _vm_state(session, vm, dom.state, f"on {host.hostname}")


def _addresses(session: Session, host: Host, change: Addresses) -> None:
    found = {uuid: (list(addrs), source) for uuid, addrs, source in change.found}
    for vm in session.scalars(select(Vm).where(Vm.host_id == host.id)):
        addrs, source = found.get(vm.uuid, ([], ""))
        if (vm.addresses, vm.addresses_source) != (addrs, source):  # written only when it changed
            vm.addresses, vm.addresses_source = addrs, source


def _vm_state(session: Session, vm: Vm, state: VmState, why: str) -> None:
    if vm.state is state:
        return
    session.add(Event(kind="vm.state", subject=vm.name, message=f"{vm.state} -> {state} {why}", vm_id=vm.id,
                      host_id=vm.host_id))  # fmt: skip
    vm.state = state
    vm.state_changed_at = utcnow()


def _host_up(view: _View, host: Host, change: HostUp) -> None:
    session = view.session
    seen = {d.uuid for d in change.domains}
    for dom in change.domains:
        _domain(view, host, dom)
    # Anything the DB placed here that the host no longer has went away while we were not looking.
    for vm in session.scalars(select(Vm).where(Vm.host_id == host.id)).all():
        if vm.uuid not in seen:
            vm.host_id = None
            _vm_state(session, vm, VmState.STOPPED, f"not on {host.hostname} any more")
    host.libvirt_connected = True
    # Maintenance is the admin's to end (`drover host activate`); the connection is still recorded.
    up = host.state is not HostState.MAINTENANCE
    if up and hosts.set_state(session, host, HostState.AVAILABLE, f"libvirt connected, {len(seen)} domains"):
        # A (stateless) node that just came up has no storage pools defined: the task engine gives it the
        # cluster's, without waiting for someone's `storage pool refresh`.
        storage.give_pools(session, host)


def _host_down(session: Session, host: Host, change: HostDown) -> None:
    host.libvirt_connected = False
    if host.state is HostState.AVAILABLE:
        hosts.set_state(session, host, HostState.UNAVAILABLE, change.reason)
    elif host.state is HostState.UNAVAILABLE:
        host.state_reason = change.reason  # why the latest attempt failed, for `drover host show`
    # The real state of its guests is unknown now; they are not stopped, nor running for all we know. What each
    # was is kept (SET reads the old row): fencing restarts an HA VM only if it was live, never a stopped one.
    marked = session.execute(
        update(Vm).where(Vm.host_id == host.id, Vm.state != VmState.UNREACHABLE)
        .values(state=VmState.UNREACHABLE, state_changed_at=utcnow(), lost_state=Vm.state)
    )  # fmt: skip
    lost = cast("CursorResult[Any]", marked).rowcount
    # Only when something changed: a host that stays down is retried every few seconds, and an event
    # per failed attempt would bury everything else (some 1,800 rows an hour per dead host).
    if lost:
        session.add(Event(kind="vm.unreachable", subject=host.hostname, message=f"{lost} VMs: {change.reason}",
                          host_id=host.id, severity=Severity.WARNING))  # fmt: skip


class Writer:
    """One thread applying queued changes; `flush()` waits until everything queued so far is written."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: queue.Queue[Change | threading.Event | None] = queue.Queue()
        self.applied = 0
        self._thread = threading.Thread(target=self._run, name="hostbrowser-db", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, change: Change) -> None:
        self.queue.put(change)

    def flush(self, timeout: float = 30) -> None:
        done = threading.Event()
        self.queue.put(done)
        done.wait(timeout)

    def stop(self) -> None:
        self.queue.put(None)
        self._thread.join(30)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            batch: list[Change | threading.Event | None] = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            changes = [c for c in batch if c is not None and not isinstance(c, threading.Event)]
            if changes:
                self._write(changes)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            if any(item is None for item in batch):
                return

    def _write(self, changes: list[Change]) -> None:
        try:
            with session_scope(self.engine) as session:
                apply_all(session, changes)
            self.applied += len(changes)
        except DroverError as exc:
            # A daemon logs and carries on: the next (re)connect re-syncs whatever was lost here.
            log.error("could not write %d host browser changes: %s", len(changes), exc)
        except Exception:  # a constraint we did not foresee must not kill the only writer
            log.exception("could not write %d host browser changes", len(changes))
