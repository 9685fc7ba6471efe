"""Storage pools, volumes and templates as the API and CLI ask for them: checked, recorded, then queued.

Every request is checked here before anything is written (a bad name, a duplicate, a pool in use is
refused with the reason and nothing changes); the row is recorded `pending` and its task queued in the
same transaction. The task engine (taskengine/storagetasks.py) does the libvirt side and moves the rows on.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance import hosts, tasking
from appliance.db.models import (
    HardwarePool,
    Host,
    StoragePool,
    StorageState,
    StorageType,
    StorageVolume,
    TargetKind,
    Task,
    TaskState,
    TaskType,
    Template,
    Vm,
    VmDisk,
    VolumeFormat,
)
from appliance.errors import Conflict, NotFound, UsageError
from appliance.text import as_id

# libvirt takes almost any name, but a pool's name becomes a mount point and a volume's a file name:
# keep both to what is safe in a path and on a command line.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
IQN = re.compile(r"^(iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:.+)?|eui\.[0-9A-Fa-f]{16})$")
HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
VG_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
MAX_CAPACITY = 1 << 50  # 1 PiB: a typo, not a disk

_FIELDS: dict[StorageType, tuple[str, ...]] = {
    StorageType.DIR: ("path",),
    StorageType.NFS: ("server", "export"),
    StorageType.ISCSI: ("server", "target"),
    StorageType.LOGICAL: ("vg_name",),
}
_OPTIONAL: dict[StorageType, tuple[str, ...]] = {
    StorageType.DIR: (),
    StorageType.NFS: ("port", "path"),
    StorageType.ISCSI: ("port", "initiator_iqn"),
    StorageType.LOGICAL: (),
}


def check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise UsageError(
            f"{what} name {name!r} is not valid",
            "1-64 characters: letters, digits, '_', '.', '+', '-'; starting with a letter or digit",
        )
    return name


@dataclass(frozen=True)
class PoolSpec:
    """A storage pool as asked for: its type and the fields that type needs (and no others)."""

    name: str
    type: StorageType
    hardware_pool: str | None = None  # name or id; None: the default pool
    path: str | None = None
    server: str | None = None
    export: str | None = None
    target: str | None = None
    port: int | None = None
    initiator_iqn: str | None = None
    vg_name: str | None = None

    @classmethod
    def from_request(cls, body: dict[str, Any]) -> PoolSpec:
        """Validate a request body (API or CLI); UsageError naming the first bad field."""
        kind = body.get("type")
        try:
            stype = StorageType(str(kind))
        except ValueError:
            raise UsageError(f"type: {kind!r} is not a storage type", "one of: dir, nfs, iscsi, logical") from None
        name = check_name("storage pool", body.get("name"))
        allowed = {"name", "type", "hardware_pool", *_FIELDS[stype], *_OPTIONAL[stype]}
        unknown = sorted(k for k, v in body.items() if k not in allowed and v is not None)
        if unknown:
            raise UsageError(f"{unknown[0]}: not a field of a {stype} pool", f"fields: {', '.join(sorted(allowed))}")
        missing = [f for f in _FIELDS[stype] if not body.get(f)]
        if missing:
            raise UsageError(f"{missing[0]}: a {stype} pool needs it")
        for key in ("path", "server", "export", "target", "initiator_iqn", "vg_name", "hardware_pool"):
            if body.get(key) is not None and not isinstance(body[key], str | int):
                raise UsageError(f"{key}: must be a string")
        for key in ("path", "export"):
            value = body.get(key)
            if value is not None and (not str(value).startswith("/") or ".." in Path(str(value)).parts):
                raise UsageError(f"{key}: {value!r} must be an absolute path without '..'")
        server = body.get("server")
        if server is not None and not HOSTNAME.match(str(server)):
            raise UsageError(f"server: {server!r} is not a host name or address")
        target = body.get("target")
        if target is not None and not IQN.match(str(target)):
            raise UsageError(f"target: {target!r} is not an iSCSI name", "e.g. iqn.2026-01.com.example:storage")
        iqn = body.get("initiator_iqn")
        if iqn is not None and not IQN.match(str(iqn)):
            raise UsageError(f"initiator_iqn: {iqn!r} is not an iSCSI name")
        vg = body.get("vg_name")
        if vg is not None and not VG_NAME.match(str(vg)):
            raise UsageError(f"vg_name: {vg!r} is not an LVM volume group name")
        port = body.get("port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535):
            raise UsageError(f"port: {port!r} must be a number from 1 to 65535")
        hw = body.get("hardware_pool")
        return cls(
            name=name,
            type=stype,
            hardware_pool=str(hw) if hw is not None else None,
            path=body.get("path"),
            server=server,
            export=body.get("export"),
            target=target,
            port=port,
            initiator_iqn=iqn,
            vg_name=vg,
        )


def hardware_pool(session: Session, key: str | None) -> HardwarePool:
    if key is None:
        return hosts.default_pool(session)
    found = session.get(HardwarePool, row_id) if (row_id := as_id(key)) is not None else None
    if found is None:
        rows = session.scalars(select(HardwarePool).where(HardwarePool.name == key)).all()
        if len(rows) > 1:
            raise Conflict(f"more than one hardware pool is called {key}", "give its id")
        found = rows[0] if rows else None
    if found is None:
        raise NotFound(f"hardware pool {key} does not exist")
    return found


def find_pool(session: Session, key: str) -> StoragePool:
    """A storage pool by name or id."""
    pool = session.scalars(select(StoragePool).where(StoragePool.name == key)).one_or_none()
    if pool is None and (row_id := as_id(key)) is not None:
        pool = session.get(StoragePool, row_id)
    if pool is None:
        raise NotFound(f"storage pool {key} does not exist", "see `drover storage pool list`")
    return pool


def find_volume(session: Session, pool: StoragePool, key: str) -> StorageVolume:
    vol = session.scalars(
        select(StorageVolume).where(StorageVolume.storage_pool_id == pool.id, StorageVolume.name == key)
    ).one_or_none()
    if vol is None and (row_id := as_id(key)) is not None:
        vol = session.get(StorageVolume, row_id)
        if vol is not None and vol.storage_pool_id != pool.id:
            vol = None
    if vol is None:
        raise NotFound(f"volume {key} is not in storage pool {pool.name}", f"drover storage volume list {pool.name}")
    return vol


def _busy(session: Session, kind: TargetKind, target_id: int) -> Task | None:
    pending = tasking.pending_for(session, kind, target_id)
    return pending[0] if pending else None


def create_pool(session: Session, spec: PoolSpec, by: str | None) -> tuple[StoragePool, Task]:
    if session.scalars(select(StoragePool.id).where(StoragePool.name == spec.name)).first() is not None:
        raise Conflict(f"storage pool {spec.name} already exists", "pick another name")
    hw = hardware_pool(session, spec.hardware_pool)
    pool = StoragePool(
        name=spec.name,
        type=spec.type,
        hardware_pool_id=hw.id,
        path=spec.path,
        server=spec.server,
        export=spec.export,
        target=spec.target,
        port=spec.port,
        initiator_iqn=spec.initiator_iqn,
        vg_name=spec.vg_name,
        state=StorageState.PENDING,
    )
    session.add(pool)
    session.flush()
    task = tasking.enqueue(session, TaskType.STORAGE_POOL_CREATE, pool.id, {}, created_by=by)
    return pool, task


def refresh_pool(session: Session, pool: StoragePool, by: str | None) -> Task:
    return tasking.enqueue(session, TaskType.STORAGE_POOL_REFRESH, pool.id, {}, created_by=by)


def refresh_volume(session: Session, volume: StorageVolume, by: str | None) -> Task:
    """Queue re-reading one volume from libvirt; refused while the volume is being made or deleted."""
    pending = _busy(session, TargetKind.STORAGE_VOLUME, volume.id)
    if pending is not None and pending.type is not TaskType.VOLUME_REFRESH:
        raise Conflict(f"volume {volume.name} has task {pending.id} ({pending.type}) queued or running",
                       "wait for it (drover task wait)")  # fmt: skip
    return tasking.enqueue(session, TaskType.VOLUME_REFRESH, volume.id, {}, created_by=by)


def give_pools(session: Session, host: Host) -> list[Task]:
    """A host just became available: queue a refresh of every storage pool it should see (its hardware pool's
    and those of the pools above it), which defines the pool there; the task engine does it, not the caller.
    Pools not (yet) available, or with a task of their own queued, are left to that task."""
    chain: set[int] = set()
    cur: int | None = host.hardware_pool_id
    while cur is not None and cur not in chain:
        chain.add(cur)
        cur = session.scalar(select(HardwarePool.parent_id).where(HardwarePool.id == cur))
    pools = session.scalars(
        select(StoragePool).where(StoragePool.hardware_pool_id.in_(chain), StoragePool.state == StorageState.AVAILABLE)
        .order_by(StoragePool.id)
    ).all()  # fmt: skip
    queued = []
    for pool in pools:
        if _busy(session, TargetKind.STORAGE_POOL, pool.id) is None:
            why = {"reason": f"host {host.hostname} became available"}
            queued.append(tasking.enqueue(session, TaskType.STORAGE_POOL_REFRESH, pool.id, why, created_by=None))
    return queued


def volume_users(session: Session, volume_ids: list[int]) -> list[str]:
    """What holds these volumes: 'VM x' for a disk, 'template y' for a base image."""
    if not volume_ids:
        return []
    users = [
        f"VM {disk.vm.name}"
        for disk in session.scalars(select(VmDisk).where(VmDisk.storage_volume_id.in_(volume_ids))).all()
    ]
    users += [
        f"template {t.name}"
        for t in session.scalars(select(Template).where(Template.storage_volume_id.in_(volume_ids))).all()
    ]
    users += [
        f"overlay {v.name}"
        for v in session.scalars(
            select(StorageVolume).where(StorageVolume.backing_volume_id.in_(volume_ids),
                                        StorageVolume.id.not_in(volume_ids))
        ).all()
    ]  # fmt: skip
    return sorted(set(users))


def delete_pool(session: Session, pool: StoragePool, by: str | None) -> Task:
    """Queue removing the pool from its hosts; refused while a VM disk or a template uses one of its volumes."""
    users = volume_users(session, [v.id for v in pool.volumes])
    if users:
        shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        raise Conflict(f"storage pool {pool.name} is in use by {shown}", "delete or detach those first")
    pending = _busy(session, TargetKind.STORAGE_POOL, pool.id)
    for vol in pool.volumes:
        pending = pending or _busy(session, TargetKind.STORAGE_VOLUME, vol.id)
    if pending is not None:
        raise Conflict(f"storage pool {pool.name} has task {pending.id} ({pending.type}) queued or running",
                       "wait for it (drover task wait) or cancel it")  # fmt: skip
    # No state set here: a queued task can be canceled, and the pending task itself is what marks the pool
    # as going (checked by every request that would add to it).
    return tasking.enqueue(session, TaskType.STORAGE_POOL_DELETE, pool.id, {}, created_by=by)


def _usable(session: Session, pool: StoragePool) -> None:
    if pool.state is not StorageState.AVAILABLE:
        raise Conflict(f"storage pool {pool.name} is {pool.state}", "it must be available (drover storage pool show)")
    going = [t for t in tasking.pending_for(session, TargetKind.STORAGE_POOL, pool.id)
             if t.type is TaskType.STORAGE_POOL_DELETE]  # fmt: skip
    if going:
        raise Conflict(f"storage pool {pool.name} is being deleted by task {going[0].id}")


def new_volume(session: Session, pool: StoragePool, name: str, capacity: int, fmt: VolumeFormat) -> StorageVolume:
    """A pending volume row after the checks (name, duplicate, pool type and state); nothing queued."""
    check_name("volume", name)
    _usable(session, pool)
    if pool.type is StorageType.ISCSI:
        raise Conflict(f"storage pool {pool.name} is iSCSI: its volumes are the target's LUNs",
                       "make LUNs on the target, then drover storage pool refresh")  # fmt: skip
    if pool.type is StorageType.LOGICAL and fmt is not VolumeFormat.RAW:
        raise UsageError("a logical (LVM) pool holds raw volumes only", "use --format raw")
    if not isinstance(capacity, int) or isinstance(capacity, bool) or not 0 < capacity <= MAX_CAPACITY:
        raise UsageError(f"capacity {capacity!r} must be a number of bytes from 1 to {MAX_CAPACITY}")
    exists = session.scalars(
        select(StorageVolume.id).where(StorageVolume.storage_pool_id == pool.id, StorageVolume.name == name)
    ).first()
    if exists is not None:
        raise Conflict(f"volume {name} already exists in storage pool {pool.name}")
    vol = StorageVolume(storage_pool_id=pool.id, name=name, capacity_bytes=capacity, format=fmt,
                        state=StorageState.PENDING)  # fmt: skip
    session.add(vol)
    session.flush()
    return vol


def new_overlay(session: Session, base: StorageVolume, name: str) -> StorageVolume:
    """A pending qcow2 volume over `base` in base's pool, the same virtual size: what the VM writes goes there,
    the base stays as it is. The task that defines the VM creates it on a host (taskengine.vmlife)."""
    vol = new_volume(session, base.storage_pool, name, base.capacity_bytes, VolumeFormat.QCOW2)
    vol.backing_volume_id = base.id
    vol.backing = base
    return vol


def create_volume(
    session: Session, pool: StoragePool, name: str, capacity: int, fmt: VolumeFormat, by: str | None
) -> tuple[StorageVolume, Task]:
    vol = new_volume(session, pool, name, capacity, fmt)
    return vol, tasking.enqueue(session, TaskType.VOLUME_CREATE, vol.id, {}, created_by=by)


def delete_volume(session: Session, volume: StorageVolume, by: str | None) -> Task:
    users = volume_users(session, [volume.id])
    if users:
        raise Conflict(f"volume {volume.name} is in use by {', '.join(users)}", "delete or detach those first")
    if volume.storage_pool.type is StorageType.ISCSI:
        raise Conflict(f"volume {volume.name} is an iSCSI LUN", "LUNs are removed on the target")
    pending = _busy(session, TargetKind.STORAGE_VOLUME, volume.id)
    if pending is not None:
        raise Conflict(f"volume {volume.name} has task {pending.id} ({pending.type}) queued or running")
    return tasking.enqueue(session, TaskType.VOLUME_DELETE, volume.id, {}, created_by=by)


def import_template(
    session: Session,
    pool: StoragePool,
    name: str,
    upload: Path,
    fmt: VolumeFormat,
    by: str | None,
    *,
    vcpus: int = 1,
    memory_mib: int = 512,
    description: str = "",
) -> tuple[Template, StorageVolume, Task]:
    """Record a template whose base image is `upload` (a file on the appliance, already checked by imagefile),
    and queue its upload into `pool`. The volume is named after the template."""
    check_name("template", name)
    if session.scalars(select(Template.id).where(Template.name == name)).first() is not None:
        raise Conflict(f"template {name} already exists", "pick another name")
    if pool.type is StorageType.ISCSI:
        raise Conflict(f"storage pool {pool.name} is iSCSI: its LUNs cannot take an upload here",
                       "import into a dir, NFS or logical pool")  # fmt: skip
    suffix = {VolumeFormat.QCOW2: ".qcow2", VolumeFormat.RAW: ".img"}[fmt]
    size = upload.stat().st_size
    vol = new_volume(session, pool, name + suffix, max(size, 1), fmt)
    template = Template(uuid=str(uuid.uuid4()), name=name, description=description, vcpus=vcpus,
                        memory_mib=memory_mib, storage_volume_id=vol.id)  # fmt: skip
    session.add(template)
    session.flush()
    task = tasking.enqueue(session, TaskType.VOLUME_CREATE, vol.id,
                           {"upload": str(upload), "template_id": template.id}, created_by=by)  # fmt: skip
    return template, vol, task


def pool_summary(pool: StoragePool, volumes: int | None = None) -> dict[str, Any]:
    return {
        "id": pool.id,
        "name": pool.name,
        "type": str(pool.type),
        "state": str(pool.state),
        "hardware_pool_id": pool.hardware_pool_id,
        "path": pool.path,
        "server": pool.server,
        "export": pool.export,
        "target": pool.target,
        "port": pool.port,
        "initiator_iqn": pool.initiator_iqn,
        "vg_name": pool.vg_name,
        "capacity_bytes": pool.capacity_bytes,
        "allocation_bytes": pool.allocation_bytes,
        "available_bytes": pool.available_bytes,
        "refreshed_at": pool.refreshed_at.isoformat() if pool.refreshed_at else None,
        "volumes": volumes if volumes is not None else len(pool.volumes),
    }


def volume_summary(vol: StorageVolume) -> dict[str, Any]:
    return {
        "id": vol.id,
        "pool": vol.storage_pool.name,
        "name": vol.name,
        "state": str(vol.state),
        "format": str(vol.format),
        "capacity_bytes": vol.capacity_bytes,
        "allocation_bytes": vol.allocation_bytes,
        "path": vol.path,
        "lun": vol.lun,
    }


def volume_counts(session: Session) -> dict[int, int]:
    rows = session.execute(
        select(StorageVolume.storage_pool_id, func.count()).group_by(StorageVolume.storage_pool_id)
    ).all()
    return {pool_id: int(n) for pool_id, n in rows}


def find_template(session: Session, key: str) -> Template:
    template = session.scalars(select(Template).where(Template.name == key)).one_or_none()
    if template is None and (row_id := as_id(key)) is not None:
        template = session.get(Template, row_id)
    if template is None:
        raise NotFound(f"template {key} does not exist", "see `drover template list`")
    return template


def delete_template(session: Session, template: Template, by: str | None) -> Task | None:
    """Forget the template and queue deleting its base image; refused while VMs were made from it."""
    users = session.scalars(select(Vm.name).where(Vm.template_id == template.id).order_by(Vm.name)).all()
    if users:
        raise Conflict(f"template {template.name} is used by VM {', '.join(users[:5])}", "delete those VMs first")
    volume = template.volume
    if volume is not None:
        pending = _busy(session, TargetKind.STORAGE_VOLUME, volume.id)
        if pending is not None:
            raise Conflict(f"template {template.name} is still being imported by task {pending.id}",
                           "wait for it, or cancel it")  # fmt: skip
        _drop_canceled_uploads(session, volume.id)
    session.delete(template)
    session.flush()
    if volume is None or volume_users(session, [volume.id]):
        return None
    return delete_volume(session, volume, by)


def _drop_canceled_uploads(session: Session, volume_id: int) -> None:
    """The appliance's copy of an upload whose import was canceled before it ran: nobody will read it now."""
    rows = session.scalars(
        select(Task).where(
            Task.target_kind == TargetKind.STORAGE_VOLUME,
            Task.target_id == volume_id,
            Task.type == TaskType.VOLUME_CREATE,
            Task.state == TaskState.CANCELED,
        )
    ).all()
    for task in rows:
        upload = task.args.get("upload")
        if isinstance(upload, str):
            Path(upload).unlink(missing_ok=True)


def template_summary(template: Template) -> dict[str, Any]:
    vol = template.volume
    return {
        "id": template.id,
        "name": template.name,
        "uuid": template.uuid,
        "description": template.description,
        "vcpus": template.vcpus,
        "memory_mib": template.memory_mib,
        "volume": volume_summary(vol) if vol is not None else None,
    }
