"""libvirt storage pool and volume XML, built from the database's rows with an XML library, and read back.

One pool type per branch of pool_xml(); where a network pool is mounted or seen on a host is the row's
`path`, or a default under MOUNT_ROOT (NFS), /dev/disk/by-path (iSCSI), /dev/<vg> (LVM).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from appliance.db.models import StoragePool, StorageType, StorageVolume, VolumeFormat

# Where a host mounts an NFS pool when the row names no path: under /var/lib, which a stateless node
# keeps in RAM like everything else, beside libvirt's own default images dir.
MOUNT_ROOT = "/var/lib/drover/storage"
ISCSI_PORT = 3260
# libvirt's namespace for a netfs pool's extra mount options (here: the NFS server's port).
FS_NS = "http://libvirt.org/schemas/storagepool/fs/1.0"


def target_path(pool: StoragePool) -> str:
    if pool.path:
        return pool.path
    if pool.type is StorageType.NFS:
        return f"{MOUNT_ROOT}/{pool.name}"
    if pool.type is StorageType.ISCSI:
        return "/dev/disk/by-path"
    if pool.type is StorageType.LOGICAL:
        return f"/dev/{pool.vg_name}"
    raise ValueError(f"a {pool.type} pool needs a path")


def pool_xml(pool: StoragePool) -> str:
    kind = {StorageType.DIR: "dir", StorageType.NFS: "netfs", StorageType.ISCSI: "iscsi",
            StorageType.LOGICAL: "logical"}[pool.type]  # fmt: skip
    if pool.type is StorageType.NFS:
        ET.register_namespace("fs", FS_NS)
    root = ET.Element("pool", type=kind)
    ET.SubElement(root, "name").text = pool.name
    source = ET.SubElement(root, "source")
    if pool.type is StorageType.NFS:
        ET.SubElement(source, "host", name=str(pool.server))
        ET.SubElement(source, "dir", path=str(pool.export))
        ET.SubElement(source, "format", type="nfs")
        # NFSv4 only: one TCP port, no rpcbind or mountd on the server (what nfs-ganesha runs in the lab).
        ET.SubElement(source, "protocol", ver="4")
    elif pool.type is StorageType.ISCSI:
        ET.SubElement(source, "host", name=str(pool.server), port=str(pool.port or ISCSI_PORT))
        ET.SubElement(source, "device", path=str(pool.target))
        if pool.initiator_iqn:
            ET.SubElement(ET.SubElement(source, "initiator"), "iqn", name=pool.initiator_iqn)
    elif pool.type is StorageType.LOGICAL:
        ET.SubElement(source, "name").text = pool.vg_name
        ET.SubElement(source, "format", type="lvm2")
    if not len(source):
        root.remove(source)
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "path").text = target_path(pool)
    if pool.type is StorageType.NFS and pool.port:
        opts = ET.SubElement(root, f"{{{FS_NS}}}mount_opts")
        ET.SubElement(opts, f"{{{FS_NS}}}option", name=f"port={pool.port}")
    return ET.tostring(root, encoding="unicode")


def volume_xml(volume: StorageVolume, pool_type: StorageType, backing: StorageVolume | None = None) -> str:
    """A volume to create; with `backing`, a copy-on-write overlay reading what it has not written from it."""
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = volume.name
    ET.SubElement(root, "capacity", unit="bytes").text = str(volume.capacity_bytes)
    # Thin: nothing allocated up front (a raw file is sparse, a qcow2 grows); an LV is always whole.
    allocation = volume.capacity_bytes if pool_type is StorageType.LOGICAL else 0
    ET.SubElement(root, "allocation", unit="bytes").text = str(allocation)
    if pool_type is not StorageType.LOGICAL:
        target = ET.SubElement(root, "target")
        ET.SubElement(target, "format", type=str(volume.format))
    base = backing
    if base is not None:
        # A copy-on-write overlay: libvirt has qemu-img write the base's path and format into the qcow2 header.
        if not base.path:
            raise ValueError(f"volume {volume.name}: its base {base.name} has no path yet")
        store = ET.SubElement(root, "backingStore")
        ET.SubElement(store, "path").text = base.path
        ET.SubElement(store, "format", type=str(base.format))
    return ET.tostring(root, encoding="unicode")


@dataclass(frozen=True)
class VolumeFacts:
    """A volume as libvirt describes it."""

    name: str
    path: str
    capacity_bytes: int
    allocation_bytes: int
    format: VolumeFormat
    lun: int | None = None


def parse_volume(xml: str) -> VolumeFacts:
    root = ET.fromstring(xml)
    fmt = root.find("target/format")
    kind = fmt.get("type", "raw") if fmt is not None else "raw"
    name = root.findtext("name", "")
    return VolumeFacts(
        name=name,
        path=root.findtext("target/path", ""),
        capacity_bytes=int(root.findtext("capacity", "0")),
        allocation_bytes=int(root.findtext("allocation", "0")),
        # An ISO, an iSCSI LUN, an LV: all read as raw by a guest.
        format=VolumeFormat.QCOW2 if kind == "qcow2" else VolumeFormat.RAW,
        lun=_lun(name),
    )


def _lun(name: str) -> int | None:
    # libvirt names an iSCSI pool's volumes unit:bus:target:lun (e.g. "unit:0:0:1").
    parts = name.split(":")
    if len(parts) == 4 and parts[0] == "unit" and parts[3].isdigit():
        return int(parts[3])
    return None


def snapshot_xml(name: str, description: str) -> str:
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "description").text = description
    return ET.tostring(root, encoding="unicode")
