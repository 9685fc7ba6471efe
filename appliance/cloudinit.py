"""First-boot configuration: a cloud-init NoCloud seed made by the appliance and attached to a new VM.

The seed is a small ISO 9660 image labelled `cidata` holding `meta-data` (instance id = the VM's UUID, host
name = its name, the SSH keys), `user-data` as given and, when given, `network-config` (cloud-init's network
configuration, version 1 or 2: static addresses where no DHCP serves); cloud-init finds it on any block
device by that label. User data and network config are checked here, because cloud-init skips what it cannot
read without a word on any console: #cloud-config must be a YAML mapping, other user data must start with a
header cloud-init knows. The seed is uploaded into the storage pool of the VM's template (or first disk) as
`<vm>-seed.iso` by the VM's own create task, before the domain is defined (taskengine.vmlife): a start queued
after the create can never find the seed missing. It is attached read-only as the VM's last virtio disk, and
deleted with the VM.
"""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import Session

from appliance import storage
from appliance.db.models import DiskBus, StoragePool, StorageType, Vm, VmDisk, VolumeFormat
from appliance.errors import Conflict, UsageError
from appliance.runner import run

MAX_USER_DATA = 64 * 1024  # cloud-init's own limit for NoCloud user-data is far above; a seed stays small
SEED_DISK = "vdz"
_KEY = re.compile(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( [^\n]*)?$")
FIELDS = frozenset({"user_data", "ssh_keys", "network_config"})
# The first line of user data cloud-init acts on (its user-data formats); anything else it ignores silently.
USER_DATA_HEADERS = ("#cloud-config", "#!", "#include", "#cloud-boothook", "#part-handler", "#upstart-job",
                     "#cloud-config-archive", "#cloud-config-jsonp", "## template: jinja",
                     "Content-Type: multipart/")  # fmt: skip
# What the task that defines the VM reads: the seed file waiting in the appliance's upload directory.
SEED_ARG = "seed_upload"


@dataclass(frozen=True)
class Seed:
    user_data: str
    ssh_keys: tuple[str, ...]
    network_config: str  # "" when none: cloud-init then asks DHCP on the first NIC


def _yaml(text: str, field: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"cloud_init.{field}: not valid YAML: {problem}{where}") from None


def check_user_data(text: str) -> None:
    """Refuse user data cloud-init would skip or fail on: an unknown header, #cloud-config that is no mapping."""
    if not text:
        return
    first = text.lstrip("\ufeff").split("\n", 1)[0].rstrip()
    if not first.startswith(USER_DATA_HEADERS):
        raise UsageError("cloud_init.user_data: cloud-init ignores user data whose first line is not "
                         "#cloud-config, a #! script or another cloud-init header",
                         f"it starts with {first[:40]!r}")  # fmt: skip
    if first.startswith("#cloud-config") and first.split()[0] == "#cloud-config":
        data = _yaml(text, "user_data")
        if data is not None and not isinstance(data, dict):
            raise UsageError("cloud_init.user_data: #cloud-config must be a YAML mapping (key: value lines), "
                             f"not a {type(data).__name__}")  # fmt: skip


def check_network_config(text: str) -> None:
    """cloud-init's network config, version 1 or 2 (optionally under a top-level `network:` key)."""
    if not text:
        return
    data = _yaml(text, "network_config")
    if isinstance(data, dict) and set(data) == {"network"}:
        data = data["network"]
    if not isinstance(data, dict) or data.get("version") not in (1, 2):
        raise UsageError("cloud_init.network_config: a mapping with version: 1 or version: 2 (cloud-init's formats)")
    if data["version"] == 1 and not isinstance(data.get("config"), list):
        raise UsageError("cloud_init.network_config: version 1 needs config: [list of interfaces and routes]")
    if data["version"] == 2:
        known = {"version", "renderer", "ethernets", "bonds", "bridges", "vlans", "wifis"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"cloud_init.network_config: version 2 has no {unknown[0]!r}", ", ".join(sorted(known)))
        for section in known - {"version", "renderer"}:
            if section in data and not isinstance(data[section], dict):
                raise UsageError(f"cloud_init.network_config: {section} must be a mapping of names to settings")


def check(spec: object) -> Seed:
    """The seed a request's `cloud_init` object asks for, or UsageError naming what is wrong."""
    if not isinstance(spec, dict) or set(spec) - FIELDS:
        raise UsageError("cloud_init: must be {user_data?: text, ssh_keys?: [public key, ...], network_config?: text}")
    user_data = spec.get("user_data") or ""
    if not isinstance(user_data, str) or len(user_data.encode()) > MAX_USER_DATA:
        raise UsageError(f"cloud_init.user_data: text of at most {MAX_USER_DATA} bytes")
    network = spec.get("network_config") or ""
    if not isinstance(network, str) or len(network.encode()) > MAX_USER_DATA:
        raise UsageError(f"cloud_init.network_config: text of at most {MAX_USER_DATA} bytes")
    keys = spec.get("ssh_keys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(keys) > 32:
        raise UsageError("cloud_init.ssh_keys: a list of at most 32 OpenSSH public keys")
    keys = [k.strip() for k in keys]
    for k in keys:
        if not _KEY.match(k):
            raise UsageError(f"cloud_init.ssh_keys: {k[:40]!r}… is not an OpenSSH public key line")
    if not user_data and not keys and not network:
        raise UsageError("cloud_init: give user_data, ssh_keys, network_config or more than one")
    check_user_data(user_data)
    check_network_config(network)
    return Seed(user_data, tuple(keys), network)


def meta_data(vm: Vm, keys: tuple[str, ...] | list[str]) -> str:
    # JSON is YAML: no YAML writer needed, and no quoting surprises in host names or key comments.
    data: dict[str, Any] = {"instance-id": vm.uuid, "local-hostname": vm.name}
    if keys:
        data["public-keys"] = list(keys)
    return json.dumps(data, indent=1) + "\n"


def make_seed(out: Path, meta: str, user_data: str, network_config: str = "") -> Path:
    """Write the NoCloud ISO (volume label cidata) to `out` with xorriso."""
    with tempfile.TemporaryDirectory(prefix="seed-") as tmp:
        root = Path(tmp)
        (root / "meta-data").write_text(meta)
        (root / "user-data").write_text(user_data or "#cloud-config\n{}\n")
        files = [root / "user-data", root / "meta-data"]
        if network_config:
            (root / "network-config").write_text(network_config)
            files.append(root / "network-config")
        run(["xorriso", "-as", "mkisofs", "-quiet", "-output", str(out), "-volid", "cidata", "-joliet", "-rock",
             *map(str, files)])  # fmt: skip
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


def attach_seed(session: Session, vm: Vm, spec: object, seed_dir: Path) -> dict[str, str]:
    """Make the seed, record its volume and disk on `vm`; returns what the VM's create task needs to upload it."""
    seed = check(spec)
    pool = _pool_for(vm)
    if any(d.target_dev == SEED_DISK for d in vm.disks):
        raise UsageError(f"disks: {SEED_DISK} is where the cloud-init seed goes")
    seed_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = seed_name(vm)
    path = make_seed(seed_dir / f"{uuid.uuid4().hex}.upload", meta_data(vm, seed.ssh_keys), seed.user_data,
                     seed.network_config)  # fmt: skip
    vol = storage.new_volume(session, pool, name, path.stat().st_size, VolumeFormat.RAW)
    vm.disks.append(VmDisk(volume=vol, target_dev=SEED_DISK, bus=DiskBus.VIRTIO, read_only=True))
    session.flush()
    return {SEED_ARG: str(path)}


def seed_name(vm: Vm) -> str:
    name = f"{vm.name}-seed.iso"
    return name if storage.NAME.match(name) else f"{vm.uuid}-seed.iso"  # a VM name near 63 characters


def seed_volume(vm: Vm) -> VmDisk | None:
    """The VM's seed disk, if it was made with one: the read-only vdz by the name attach_seed gave it (a
    volume the user attached is never taken for it, so never deleted with the VM)."""
    for disk in vm.disks:
        if disk.target_dev == SEED_DISK and disk.read_only and disk.volume.name == seed_name(vm):
            return disk
    return None
