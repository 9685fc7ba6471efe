"""Storage pools and volumes on one host's libvirtd: define, start, refresh, remove; create, upload, delete.

Plain functions of a libvirt connection and the database's rows, so the task handlers (storagetasks)
and the tests share them. Each is idempotent where a lost lease needs it: defining a pool that is
already there, or deleting a volume that is already gone, is not an error. A pool is defined
persistent and autostarted, so the host's libvirtd keeps it across a restart of the daemon (a node
reboot forgets it: the refresh task defines it again).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import libvirt

from appliance.db.models import StoragePool, StorageType, StorageVolume, VolumeFormat
from appliance.errors import Conflict, DroverError
from taskengine import storagexml
from taskengine.storagexml import VolumeFacts

log = logging.getLogger(__name__)

# Upload chunk: big enough that the per-call overhead over Kerberos-wrapped TCP is small.
CHUNK = 1 << 20


class StorageError(DroverError):
    """libvirt refused a storage operation; the message carries libvirt's own reason."""

    exit_code = 3
    http_status = 502


@dataclass(frozen=True)
class PoolFacts:
    capacity_bytes: int
    allocation_bytes: int
    available_bytes: int
    volumes: tuple[VolumeFacts, ...]


def _libvirt_error(what: str, exc: libvirt.libvirtError) -> StorageError:
    return StorageError(f"{what}: {exc.get_error_message() or exc}")


def find_pool(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool | None:
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return None
        raise


def find_volume(lv_pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    try:
        return lv_pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def ensure_pool(conn: libvirt.virConnect, pool: StoragePool) -> libvirt.virStoragePool:
    """The pool defined, built (dir, NFS mount point), autostarted and running on this host.

    A pool this call defined and could not start is undefined again, so a failure leaves the host
    as it was; one that was there before is left alone.
    """
    lv = find_pool(conn, pool.name)
    defined_here = lv is None
    try:
        if lv is None:
            lv = conn.storagePoolDefineXML(storagexml.pool_xml(pool), 0)
            if pool.type in (StorageType.DIR, StorageType.NFS):
                # Makes the directory (dir) or the mount point (NFS); never formats anything.
                lv.build(0)
            lv.setAutostart(1)
        if not lv.isActive():
            lv.create(0)
    except libvirt.libvirtError as exc:
        if defined_here and lv is not None:
            _undefine(lv)
        raise _libvirt_error(f"storage pool {pool.name} on {conn.getHostname()}", exc) from None
    return lv


def _undefine(lv: libvirt.virStoragePool) -> None:
    try:
        if lv.isActive():
            lv.destroy()
        lv.undefine()
    except libvirt.libvirtError as exc:
        log.warning("could not undefine storage pool %s: %s", lv.name(), exc)


def refresh_pool(conn: libvirt.virConnect, pool: StoragePool) -> PoolFacts:
    """Re-scan the pool on this host (started first if needed) and say what is in it."""
    lv = ensure_pool(conn, pool)
    try:
        lv.refresh(0)
        _state, capacity, allocation, available = lv.info()
        volumes = tuple(
            sorted((storagexml.parse_volume(v.XMLDesc(0)) for v in lv.listAllVolumes(0)), key=lambda v: v.name)
        )
    except libvirt.libvirtError as exc:
        raise _libvirt_error(f"refreshing storage pool {pool.name}", exc) from None
    return PoolFacts(capacity, allocation, available, volumes)


def remove_pool(conn: libvirt.virConnect, name: str) -> bool:
    """Stop and undefine the pool on this host (its data stays on the storage); False if it was not there."""
    lv = find_pool(conn, name)
    if lv is None:
        return False
    try:
        if lv.isActive():
            lv.destroy()
        lv.undefine()
    except libvirt.libvirtError as exc:
        raise _libvirt_error(f"removing storage pool {name}", exc) from None
    return True


def create_volume(
    conn: libvirt.virConnect, pool: StoragePool, volume: StorageVolume, backing: StorageVolume | None = None
) -> VolumeFacts:
    """Create the volume (or find it, made by an earlier run of the same task) and describe it; with `backing`,
    as a copy-on-write overlay over that volume."""
    lv_pool = ensure_pool(conn, pool)
    existing = find_volume(lv_pool, volume.name)
    if existing is not None:
        return storagexml.parse_volume(existing.XMLDesc(0))
    try:
        made = lv_pool.createXML(storagexml.volume_xml(volume, pool.type, backing), 0)
        return storagexml.parse_volume(made.XMLDesc(0))
    except libvirt.libvirtError as exc:
        raise _libvirt_error(f"creating volume {volume.name} in {pool.name}", exc) from None


def clone_volume(
    conn: libvirt.virConnect, pool: StoragePool, source: StorageVolume, volume: StorageVolume
) -> VolumeFacts:
    """A full copy of `source` as `volume` in the same pool (libvirt copies; qemu-img for file pools)."""
    lv_pool = ensure_pool(conn, pool)
    existing = find_volume(lv_pool, volume.name)
    if existing is not None:
        # A copy interrupted half-way leaves a volume of the right name: start it again from scratch.
        try:
            existing.delete(0)
        except libvirt.libvirtError as exc:
            raise _libvirt_error(f"removing the half-made copy {volume.name}", exc) from None
    src = find_volume(lv_pool, source.name)
    if src is None:
        raise Conflict(f"volume {source.name} is not in storage pool {pool.name} on {conn.getHostname()}",
                       f"refresh the pool: drover storage pool refresh {pool.name}")  # fmt: skip
    try:
        made = lv_pool.createXMLFrom(storagexml.volume_xml(volume, pool.type), src, 0)
        return storagexml.parse_volume(made.XMLDesc(0))
    except libvirt.libvirtError as exc:
        raise _libvirt_error(f"copying volume {source.name} to {volume.name}", exc) from None


def delete_volume(conn: libvirt.virConnect, pool: StoragePool, name: str) -> bool:
    """Delete the volume and its data; False if it was already gone."""
    lv_pool = ensure_pool(conn, pool)
    lv_vol = find_volume(lv_pool, name)
    if lv_vol is None:
        return False
    try:
        lv_vol.delete(0)
    except libvirt.libvirtError as exc:
        raise _libvirt_error(f"deleting volume {name} in {pool.name}", exc) from None
    return True


def upload_volume(
    conn: libvirt.virConnect,
    pool: StoragePool,
    volume: StorageVolume,
    source: Path,
    progress: Callable[[float, str], None],
) -> VolumeFacts:
    """Create the volume with `source`'s bytes, streamed through libvirt (storageVolUpload), with progress.

    The bytes go as they are (a qcow2 stays qcow2).
    """
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise StorageError(f"cannot read {source}: {exc.strerror}") from None
    lv_pool = ensure_pool(conn, pool)
    stale = find_volume(lv_pool, volume.name)
    if stale is not None:
        # An earlier attempt died mid-stream: what it left is incomplete.
        stale.delete(0)
    # A raw shell of exactly the file's size: the upload overwrites it byte for byte, and the pool's
    # refresh probes the header afterwards (a qcow2 reads back as qcow2 with its virtual size).
    shell = StorageVolume(name=volume.name, capacity_bytes=size, format=VolumeFormat.RAW)
    try:
        lv_vol = lv_pool.createXML(storagexml.volume_xml(shell, pool.type), 0)
    except libvirt.libvirtError as exc:
        raise _libvirt_error(f"creating volume {volume.name} in {pool.name}", exc) from None
    stream = conn.newStream(0)
    try:
        lv_vol.upload(stream, 0, size, 0)
        sent = 0
        step = max(size // 20, CHUNK)
        next_report = step
        with source.open("rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    n = stream.send(view.tobytes())
                    if n < 0:
                        raise StorageError(f"uploading {source.name}: the stream refused data")
                    view = view[n:]
                    sent += n
                if sent >= next_report:
                    progress(sent / size if size else 1.0, f"uploaded {sent >> 20} of {size >> 20} MiB")
                    next_report += step
        stream.finish()
    except (libvirt.libvirtError, OSError, StorageError) as exc:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        try:
            lv_vol.delete(0)
        except libvirt.libvirtError as cleanup:
            log.warning("could not delete the half-uploaded volume %s: %s", volume.name, cleanup)
        if isinstance(exc, libvirt.libvirtError):
            raise _libvirt_error(f"uploading {source.name} to {pool.name}/{volume.name}", exc) from None
        raise StorageError(f"uploading {source.name} to {pool.name}/{volume.name}: {exc}") from None
    progress(1.0, f"uploaded {size >> 20} MiB")
    try:
        lv_pool.refresh(0)
        return storagexml.parse_volume(lv_pool.storageVolLookupByName(volume.name).XMLDesc(0))
    except libvirt.libvirtError as exc:
        raise _libvirt_error(f"reading back volume {volume.name}", exc) from None
