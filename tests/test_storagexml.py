"""The pool, volume and snapshot XML drover hands libvirt, read back element by element (lab tests feed it to a
real libvirtd: tests/test_storage_ops_lab.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from appliance.db.models import StoragePool, StorageType, StorageVolume, VolumeFormat
from taskengine import storagexml


def pool(**fields: object) -> ET.Element:
    return ET.fromstring(storagexml.pool_xml(StoragePool(**fields)))


def test_dir_pool() -> None:
    root = pool(name="local", type=StorageType.DIR, path="/srv/images")
    assert root.get("type") == "dir" and root.findtext("name") == "local"
    assert root.findtext("target/path") == "/srv/images" and root.find("source") is None


def test_nfs_pool_is_v4_on_its_port_mounted_under_var_lib() -> None:
    root = pool(name="shared", type=StorageType.NFS, server="10.0.2.2", export="/export", port=20490)
    assert root.get("type") == "netfs"
    assert root.find("source/host").get("name") == "10.0.2.2"  # type: ignore[union-attr]
    assert root.find("source/dir").get("path") == "/export"  # type: ignore[union-attr]
    assert root.find("source/format").get("type") == "nfs"  # type: ignore[union-attr]
    assert root.find("source/protocol").get("ver") == "4"  # type: ignore[union-attr]
    assert root.findtext("target/path") == "/var/lib/drover/storage/shared"
    opts = root.find(f"{{{storagexml.FS_NS}}}mount_opts")
    assert opts is not None and [o.get("name") for o in opts] == ["port=20490"]
    # Without a port, no mount options at all (the NFS default, 2049).
    assert (
        pool(name="p", type=StorageType.NFS, server="s", export="/e").find(f"{{{storagexml.FS_NS}}}mount_opts") is None
    )


def test_iscsi_pool() -> None:
    root = pool(name="san", type=StorageType.ISCSI, server="san.example.test", target="iqn.2026-01.test:t1",
                initiator_iqn="iqn.2026-01.test:node")  # fmt: skip
    assert root.get("type") == "iscsi"
    host = root.find("source/host")
    assert host is not None and (host.get("name"), host.get("port")) == ("san.example.test", "3260")
    assert root.find("source/device").get("path") == "iqn.2026-01.test:t1"  # type: ignore[union-attr]
    assert root.find("source/initiator/iqn").get("name") == "iqn.2026-01.test:node"  # type: ignore[union-attr]
    assert root.findtext("target/path") == "/dev/disk/by-path"


def test_logical_pool() -> None:
    root = pool(name="lvm", type=StorageType.LOGICAL, vg_name="vg0")
    assert root.get("type") == "logical" and root.findtext("source/name") == "vg0"
    assert root.find("source/format").get("type") == "lvm2"  # type: ignore[union-attr]
    assert root.findtext("target/path") == "/dev/vg0"


def test_volumes() -> None:
    vol = StorageVolume(name="d.qcow2", capacity_bytes=10 << 30, format=VolumeFormat.QCOW2)
    root = ET.fromstring(storagexml.volume_xml(vol, StorageType.DIR))
    assert root.findtext("capacity") == str(10 << 30) and root.findtext("allocation") == "0"
    assert root.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]
    lv = ET.fromstring(storagexml.volume_xml(StorageVolume(name="lv", capacity_bytes=1 << 30), StorageType.LOGICAL))
    assert lv.findtext("allocation") == str(1 << 30) and lv.find("target") is None  # an LV is allocated whole
    assert root.find("backingStore") is None


def test_overlay_names_its_base_and_the_base_format() -> None:
    base = StorageVolume(name="tpl.img", capacity_bytes=12 << 20, format=VolumeFormat.RAW, path="/srv/p/tpl.img")
    overlay = StorageVolume(name="vm-vda.qcow2", capacity_bytes=12 << 20, format=VolumeFormat.QCOW2)
    root = ET.fromstring(storagexml.volume_xml(overlay, StorageType.NFS, base))
    assert root.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert root.findtext("backingStore/path") == "/srv/p/tpl.img"
    assert root.find("backingStore/format").get("type") == "raw"  # type: ignore[union-attr]
    # A base not yet uploaded has no path: no overlay can point at it.
    base.path = None
    with pytest.raises(ValueError, match=r"its base tpl\.img has no path"):
        storagexml.volume_xml(overlay, StorageType.DIR, base)


def test_volume_facts_and_luns() -> None:
    xml = """<volume type='block'><name>unit:0:0:3</name><capacity unit='bytes'>67108864</capacity>
    <allocation unit='bytes'>67108864</allocation><target><path>/dev/disk/by-path/x-lun-3</path>
    <format type='raw'/></target></volume>"""
    facts = storagexml.parse_volume(xml)
    assert (facts.lun, facts.capacity_bytes, facts.format) == (3, 64 << 20, VolumeFormat.RAW)
    assert facts.path == "/dev/disk/by-path/x-lun-3"
    assert (
        storagexml.parse_volume("<volume><name>a.qcow2</name><target><format type='qcow2'/></target></volume>").lun
        is None
    )


def test_snapshot_xml_escapes() -> None:
    root = ET.fromstring(storagexml.snapshot_xml("s1", "<before> & after"))
    assert root.findtext("name") == "s1" and root.findtext("description") == "<before> & after"
