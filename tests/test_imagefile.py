"""appliance.imagefile on real files made by qemu-img (qcow2, raw, vmdk) and an ISO 9660 header; the CLI's sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli.storage_cmd import parse_size
from appliance.db.models import VolumeFormat
from appliance.errors import UsageError
from appliance.imagefile import ISO_MAGIC, ISO_MAGIC_OFFSET, ImageKind, detect
from appliance.runner import run


def test_qcow2_raw_and_iso_are_told_apart(tmp_path: Path) -> None:
    qcow2 = tmp_path / "disk.img"  # the name says nothing: the bytes do
    run(["qemu-img", "create", "-f", "qcow2", str(qcow2), "8M"])
    raw = tmp_path / "disk.qcow2"
    run(["qemu-img", "create", "-f", "raw", str(raw), "1M"])
    iso = tmp_path / "disc.bin"
    with iso.open("wb") as f:
        f.truncate(64 * 1024)
        f.seek(ISO_MAGIC_OFFSET)
        f.write(ISO_MAGIC)
    assert detect(qcow2) is ImageKind.QCOW2 and ImageKind.QCOW2.volume_format is VolumeFormat.QCOW2
    assert detect(raw) is ImageKind.RAW
    assert detect(iso) is ImageKind.ISO and ImageKind.ISO.volume_format is VolumeFormat.RAW


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("hello, not a disk\n"), "not a qcow2, raw or ISO image"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: run(["qemu-img", "create", "-f", "vmdk", str(p), "8M"]), "is a vmdk image"),
        (lambda p: run(["qemu-img", "create", "-f", "vdi", str(p), "8M"]), "is a vdi image"),
        (lambda p: p.write_bytes(b"QFI\xfb" + b"\0" * 100), "qcow2"),
    ],
)
def test_anything_else_is_refused(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "upload"
    make(path)  # type: ignore[operator]
    with pytest.raises(UsageError, match=message):
        detect(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        detect(tmp_path / "absent.qcow2")


def test_sizes() -> None:
    assert parse_size("10G") == 10 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("4096") == 4096
    assert parse_size("1t") == 1 << 40
    for bad in ("", "ten", "1.5G", "-1G", "10X"):
        with pytest.raises(UsageError, match="not understood"):
            parse_size(bad)
