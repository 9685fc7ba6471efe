"""Task handlers for storage: pool create / refresh / delete, volume create (and template upload) / refresh / delete.

A storage pool belongs to a hardware pool, and is defined on every available host in it (and its
sub-pools), so placement finds the VM's storage wherever it puts the VM; for a dir pool that is the same
path on each host (shared storage mounted there, or a stand-in for it). Volume work runs on one of those
hosts. Every handler is idempotent against libvirt (taskengine.storage), so after a lost lease the
reconciler answers RERUN: the re-run finds what the dead worker already did and finishes the rows.

A failure that will not be retried leaves nothing half-done: a pool defined on some hosts is removed from
them again and marked failed; a volume that could not be made is forgotten (and its template with it).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.db.base import utcnow
from appliance.db.models import (
    HardwarePool,
    Host,
    HostState,
    StoragePool,
    StorageState,
    StorageVolume,
    TaskType,
    Template,
    VmDisk,
)
from appliance.errors import Conflict, DroverError, NotFound
from taskengine import storage
from taskengine.actions import Deferred, LeaseLost, Reconciled, TaskContext, Verdict, action, reconciler
from taskengine.connections import is_transient
from taskengine.storagexml import VolumeFacts, parse_volume

log = logging.getLogger(__name__)


class NoHost(DroverError):
    """No available host can reach the storage pool: the task waits for none, it fails with this."""

    exit_code = 5
    http_status = 409


def subtree(s: Session, root_id: int) -> set[int]:
    """The hardware pool and every pool below it."""
    parents = dict(s.execute(select(HardwarePool.id, HardwarePool.parent_id)).tuples().all())
    out = {root_id}
    grew = True
    while grew:
        grew = False
        for pool_id, parent in parents.items():
            if parent in out and pool_id not in out:
                out.add(pool_id)
                grew = True
    return out


def pool_hosts(s: Session, pool: StoragePool, *, required: bool = True) -> list[Host]:
    """The available hosts that should see `pool`, in a stable order (the first one does volume work);
    NoHost if there are none and `required`."""
    rows = s.scalars(
        select(Host)
        .where(Host.hardware_pool_id.in_(subtree(s, pool.hardware_pool_id)), Host.state == HostState.AVAILABLE)
        .order_by(Host.id)
    ).all()
    if not rows and required:
        raise NoHost(f"no available host in the hardware pool of storage pool {pool.name}",
                     "a host must be up (drover host list) to reach its storage")  # fmt: skip
    return list(rows)


def _pool(s: Session, pool_id: int) -> StoragePool:
    pool = s.get(StoragePool, pool_id)
    if pool is None:
        raise NotFound(f"storage pool {pool_id} no longer exists")
    return pool


def _volume(s: Session, volume_id: int) -> StorageVolume:
    vol = s.get(StorageVolume, volume_id)
    if vol is None:
        raise NotFound(f"volume {volume_id} no longer exists")
    return vol


def final_failure(ctx: TaskContext, exc: BaseException) -> bool:
    """Whether the worker will record this failure for good: not a transient error it retries, and not a lost
    lease (another worker runs the task now, and its rows are that worker's)."""
    if isinstance(exc, LeaseLost | Deferred):
        return False
    retries = getattr(ctx.settings, "retries", 1)
    return not is_transient(exc) or ctx.task.attempts >= retries


def apply_facts(vol: StorageVolume, facts: VolumeFacts) -> None:
    vol.path = facts.path
    vol.capacity_bytes = facts.capacity_bytes
    vol.allocation_bytes = facts.allocation_bytes
    vol.format = facts.format
    vol.lun = facts.lun
    vol.state = StorageState.AVAILABLE


def sync_pool(s: Session, pool: StoragePool, facts: storage.PoolFacts) -> dict[str, int]:
    """Make the pool's volume rows say what libvirt found: new ones added, vanished ones unavailable."""
    pool.capacity_bytes = facts.capacity_bytes
    pool.allocation_bytes = facts.allocation_bytes
    pool.available_bytes = facts.available_bytes
    pool.refreshed_at = utcnow()
    pool.state = StorageState.AVAILABLE
    rows = {v.name: v for v in pool.volumes}
    added = gone = 0
    for found in facts.volumes:
        row = rows.pop(found.name, None)
        if row is None:
            row = StorageVolume(storage_pool_id=pool.id, name=found.name, capacity_bytes=found.capacity_bytes)
            s.add(row)
            added += 1
        if row.state in (StorageState.PENDING, StorageState.DELETING):
            continue  # a task of its own is on it
        apply_facts(row, found)
    for row in rows.values():
        if row.state is StorageState.AVAILABLE:
            row.state = StorageState.UNAVAILABLE
            gone += 1
    return {"volumes": len(facts.volumes), "added": added, "vanished": gone}


# -- pools ---------------------------------------------------------------------------------------------


@action(TaskType.STORAGE_POOL_CREATE)
def pool_create(ctx: TaskContext) -> dict[str, Any]:
    try:
        return _pool_create(ctx)
    except Exception as exc:
        if final_failure(ctx, exc):
            _mark_failed(ctx)
        raise


def _pool_create(ctx: TaskContext) -> dict[str, Any]:
    with ctx.session() as s:
        pool = _pool(s, ctx.task.target_id)
        hosts = pool_hosts(s, pool)
        done: list[Host] = []
        try:
            for n, host in enumerate(hosts):
                conn = ctx.connect(host)
                existed = storage.find_pool(conn, pool.name) is not None
                storage.ensure_pool(conn, pool)
                if not existed:
                    done.append(host)
                ctx.progress((n + 1) / (len(hosts) + 1), f"defined on {host.hostname}")
            facts = storage.refresh_pool(ctx.connect(hosts[0]), pool)
        except Exception as exc:
            if final_failure(ctx, exc):
                for host in done:
                    with contextlib.suppress(Exception):
                        storage.remove_pool(ctx.connect(host), pool.name)
            raise
        summary = sync_pool(s, pool, facts)
        return {"hosts": [h.hostname for h in hosts], **summary, "capacity_bytes": facts.capacity_bytes}


def _mark_failed(ctx: TaskContext) -> None:
    with ctx.session() as s:
        pool = s.get(StoragePool, ctx.task.target_id)
        if pool is not None and pool.state is StorageState.PENDING:
            pool.state = StorageState.FAILED


@action(TaskType.STORAGE_POOL_REFRESH)
def pool_refresh(ctx: TaskContext) -> dict[str, Any]:
    with ctx.session() as s:
        pool = _pool(s, ctx.task.target_id)
        hosts = pool_hosts(s, pool)
        # A rebooted (stateless) node has forgotten the pool: defining it again is part of a refresh.
        for host in hosts[1:]:
            storage.ensure_pool(ctx.connect(host), pool)
        facts = storage.refresh_pool(ctx.connect(hosts[0]), pool)
        return {"hosts": [h.hostname for h in hosts], **sync_pool(s, pool, facts)}


@action(TaskType.STORAGE_POOL_DELETE)
def pool_delete(ctx: TaskContext) -> dict[str, Any]:
    with ctx.session() as s:
        pool = _pool(s, ctx.task.target_id)
        ids = [v.id for v in pool.volumes]
        if ids and s.scalars(select(VmDisk.id).where(VmDisk.storage_volume_id.in_(ids))).first() is not None:
            raise Conflict(f"storage pool {pool.name} came into use by a VM after the delete was asked for")
        if ids and s.scalars(select(Template.id).where(Template.storage_volume_id.in_(ids))).first() is not None:
            raise Conflict(f"storage pool {pool.name} came into use by a template after the delete was asked for")
        removed = []
        # No host up is no obstacle: an unavailable stateless node forgets the pool when it boots again.
        for host in pool_hosts(s, pool, required=False):
            if storage.remove_pool(ctx.connect(host), pool.name):
                removed.append(host.hostname)
        name = pool.name
        for vol in list(pool.volumes):
            s.delete(vol)
        s.flush()
        s.delete(pool)
        return {"pool": name, "removed_from": removed}


def _rerun(_ctx: TaskContext) -> Reconciled:
    # Every handler here first looks at what libvirt already has (pool defined? volume there?), so running
    # it again after a lost lease finishes the work without doing any side effect twice.
    return Reconciled(Verdict.RERUN)


for _type in (
    TaskType.STORAGE_POOL_CREATE,
    TaskType.STORAGE_POOL_REFRESH,
    TaskType.STORAGE_POOL_DELETE,
    TaskType.VOLUME_CREATE,
    TaskType.VOLUME_REFRESH,
    TaskType.VOLUME_DELETE,
):
    reconciler(_type)(_rerun)


# -- volumes -------------------------------------------------------------------------------------------


def _forget_volume(ctx: TaskContext) -> None:
    """The volume could not be made: drop its row (and the template waiting for it)."""
    with ctx.session() as s:
        vol = s.get(StorageVolume, ctx.task.target_id)
        template_id = ctx.task.args.get("template_id")
        template = s.get(Template, int(template_id)) if template_id is not None else None
        if template is not None:
            s.delete(template)
            s.flush()
        if vol is not None and vol.state is StorageState.PENDING:
            s.delete(vol)


@action(TaskType.VOLUME_CREATE)
def volume_create(ctx: TaskContext) -> dict[str, Any]:
    upload = ctx.task.args.get("upload")
    try:
        result = _upload(ctx, Path(upload)) if upload else _create(ctx)
    except Exception as exc:
        if final_failure(ctx, exc):
            _forget_volume(ctx)
            if upload:
                Path(upload).unlink(missing_ok=True)
        raise
    if upload:
        Path(upload).unlink(missing_ok=True)  # the appliance's copy of what the user sent
    return result


def _create(ctx: TaskContext) -> dict[str, Any]:
    with ctx.session() as s:
        vol = _volume(s, ctx.task.target_id)
        pool = vol.storage_pool
        host = pool_hosts(s, pool)[0]
        facts = storage.create_volume(ctx.connect(host), pool, vol)
        apply_facts(vol, facts)
        return {"host": host.hostname, "path": facts.path, "capacity_bytes": facts.capacity_bytes}


def _upload(ctx: TaskContext, source: Path) -> dict[str, Any]:
    # The stream may take minutes: read what it needs, then let the transaction go before sending.
    with ctx.session() as s:
        vol = _volume(s, ctx.task.target_id)
        pool = vol.storage_pool
        host = pool_hosts(s, pool)[0]
        s.expunge_all()
    facts = storage.upload_volume(ctx.connect(host), pool, vol, source, ctx.progress)
    with ctx.session() as s:
        row = _volume(s, ctx.task.target_id)
        apply_facts(row, facts)
        return {"host": host.hostname, "path": facts.path, "capacity_bytes": facts.capacity_bytes,
                "format": str(facts.format), "template_id": ctx.task.args.get("template_id")}  # fmt: skip


@action(TaskType.VOLUME_REFRESH)
def volume_refresh(ctx: TaskContext) -> dict[str, Any]:
    with ctx.session() as s:
        vol = _volume(s, ctx.task.target_id)
        pool = vol.storage_pool
        conn = ctx.connect(pool_hosts(s, pool)[0])
        lv_pool = storage.ensure_pool(conn, pool)
        lv_pool.refresh(0)
        found = storage.find_volume(lv_pool, vol.name)
        if found is None:
            vol.state = StorageState.UNAVAILABLE
            return {"found": False}
        apply_facts(vol, parse_volume(found.XMLDesc(0)))
        return {"found": True, "path": vol.path, "allocation_bytes": vol.allocation_bytes}


@action(TaskType.VOLUME_DELETE)
def volume_delete(ctx: TaskContext) -> dict[str, Any]:
    with ctx.session() as s:
        vol = _volume(s, ctx.task.target_id)
        pool = vol.storage_pool
        if s.scalars(select(VmDisk.id).where(VmDisk.storage_volume_id == vol.id)).first() is not None:
            raise Conflict(f"volume {vol.name} came into use by a VM after the delete was asked for")
        host = pool_hosts(s, pool)[0]
        deleted = storage.delete_volume(ctx.connect(host), pool, vol.name)
        name = vol.name
        s.delete(vol)
        return {"volume": name, "deleted": deleted, "host": host.hostname}
