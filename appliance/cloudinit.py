"""First-boot configuration: a cloud-init NoCloud seed made by the appliance and attached to a new VM.

The seed is a small ISO 9660 image labelled `cidata` holding `meta-data` (instance id = the VM's UUID, host
name = its name, the SSH keys) and `user-data` as given; cloud-init finds it on any block device by that
label. It is uploaded into the storage pool of the VM's template (or first disk) as `<vm>-seed.iso` by the
same volume task a template import uses, and attached read-only as the VM's last virtio disk.
"""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from appliance import storage, tasking
from appliance.db.models import DiskBus, StoragePool, StorageType, TaskType, Vm, VmDisk, VolumeFormat
from appliance.errors import Conflict, UsageError
from appliance.runner import run

MAX_USER_DATA = 64 * 1024  # cloud-init's own limit for NoCloud user-data is far above; a seed stays small
SEED_DISK = "vdz"
_KEY = re.compile(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( [^\n]*)?$")
FIELDS = frozenset({"user_data", "ssh_keys"})


def check(spec: object) -> tuple[str, list[str]]:
    """(user-data, SSH keys) from a request's `cloud_init` object, or UsageError naming what is wrong."""
    if not isinstance(spec, dict) or set(spec) - FIELDS:
        raise UsageError("cloud_init: must be {user_data?: text, ssh_keys?: [public key, ...]}")
    user_data = spec.get("user_data") or ""
    if not isinstance(user_data, str) or len(user_data.encode()) > MAX_USER_DATA:
        raise UsageError(f"cloud_init.user_data: text of at most {MAX_USER_DATA} bytes")
    keys = spec.get("ssh_keys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(keys) > 32:
        raise UsageError("cloud_init.ssh_keys: a list of at most 32 OpenSSH public keys")
    keys = [k.strip() for k in keys]
    for k in keys:
        if not _KEY.match(k):
            raise UsageError(f"cloud_init.ssh_keys: {k[:40]!r}… is not an OpenSSH public key line")
    if not user_data and not keys:
        raise UsageError("cloud_init: give user_data, ssh_keys or both")
    return user_data, keys


def meta_data(vm: Vm, keys: list[str]) -> str:
    # JSON is YAML: no YAML writer needed, and no quoting surprises in host names or key comments.
    data: dict[str, Any] = {"instance-id": vm.uuid, "local-hostname": vm.name}
    if keys:
        data["public-keys"] = keys
    return json.dumps(data, indent=1) + "\n"


def make_seed(out: Path, meta: str, user_data: str) -> Path:
    """Write the NoCloud ISO (volume label cidata) to `out` with xorriso."""
    with tempfile.TemporaryDirectory(prefix="seed-") as tmp:
        root = Path(tmp)
        (root / "meta-data").write_text(meta)
        (root / "user-data").write_text(user_data or "#cloud-config\n{}\n")
        run(["xorriso", "-as", "mkisofs", "-quiet", "-output", str(out), "-volid", "cidata", "-joliet", "-rock",
             str(root / "user-data"), str(root / "meta-data")])  # fmt: skip
    out.chmod(0o600)
    return out


def _pool_for(vm: Vm) -> StoragePool:
    for disk in sorted(vm.disks, key=lambda d: d.target_dev):
        pool = disk.volume.storage_pool
        if pool.type is not StorageType.ISCSI:
            return pool
    raise Conflict(
        "cloud_init: the seed goes into the storage pool of the VM's template or first disk, and it has none",
        "create it from a template (--template) or with a disk in a dir, NFS or logical pool",
    )


def attach_seed(session: Session, vm: Vm, spec: object, seed_dir: Path, by: str) -> None:
    """Make the seed, record its volume and disk on `vm` and queue its upload (before the VM's create task)."""
    user_data, keys = check(spec)
    pool = _pool_for(vm)
    if any(d.target_dev == SEED_DISK for d in vm.disks):
        raise UsageError(f"disks: {SEED_DISK} is where the cloud-init seed goes")
    seed_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = make_seed(seed_dir / f"{uuid.uuid4().hex}.upload", meta_data(vm, keys), user_data)
    vol = storage.new_volume(session, pool, f"{vm.name}-seed.iso", path.stat().st_size, VolumeFormat.RAW)
    vm.disks.append(VmDisk(volume=vol, target_dev=SEED_DISK, bus=DiskBus.VIRTIO, read_only=True))
    session.flush()
    tasking.enqueue(session, TaskType.VOLUME_CREATE, vol.id, {"upload": str(path)}, created_by=by)
