"""VMs as users drive them: create (a row + a create task), find, describe, and every action as a task.

The API and the CLI call these; each checks the caller's privilege on the VM's hardware pool first
(appliance.permissions) and raises before writing anything.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from appliance import cloudinit, hosts, permissions, placement, quotas, storage, tasking
from appliance.db.models import (
    Cluster,
    DiskBus,
    Firmware,
    HardwarePool,
    Host,
    Network,
    NicModel,
    PlacementPolicy,
    StorageState,
    StorageType,
    StorageVolume,
    Task,
    TaskType,
    Template,
    User,
    Vm,
    VmDisk,
    VmNic,
    VmState,
)
from appliance.errors import Conflict, NotFound, UsageError
from appliance.permissions import Privilege
from appliance.text import MAX_ID, as_id

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_VCPUS = 512
MAX_MEMORY_MIB = 16 * 1024 * 1024

# The verbs users call (`drover vm <verb>`), the task each queues and the privilege it needs.
ACTIONS: dict[str, tuple[TaskType, Privilege]] = {
    "start": (TaskType.VM_START, Privilege.VM_CONTROL),
    "shutdown": (TaskType.VM_SHUTDOWN, Privilege.VM_CONTROL),
    "poweroff": (TaskType.VM_POWEROFF, Privilege.VM_CONTROL),
    "suspend": (TaskType.VM_SUSPEND, Privilege.VM_CONTROL),
    "resume": (TaskType.VM_RESUME, Privilege.VM_CONTROL),
    "save": (TaskType.VM_SAVE, Privilege.VM_CONTROL),
    "restore": (TaskType.VM_RESTORE, Privilege.VM_CONTROL),
    "update-state": (TaskType.VM_UPDATE_STATE, Privilege.VM_CONTROL),
    "migrate": (TaskType.VM_MIGRATE, Privilege.MODIFY),
    "delete": (TaskType.VM_DELETE, Privilege.MODIFY),
}


def find(session: Session, key: str) -> Vm:
    """A VM by id, UUID or name (a name must be unique)."""
    key = key.strip()
    if (row_id := as_id(key)) is not None:
        vm = session.get(Vm, row_id)
        if vm is not None:
            return vm
    rows = session.scalars(select(Vm).where((Vm.uuid == key.lower()) | (Vm.name == key))).all()
    if not rows:
        raise NotFound(f"VM {key!r} does not exist", "see `drover vm list`")
    if len(rows) > 1:
        raise Conflict(f"{len(rows)} VMs are called {key!r}", "use its id or UUID")
    return rows[0]


def _pool(session: Session, value: object) -> HardwarePool:
    if value is None:
        return hosts.default_pool(session)
    if isinstance(value, int) and not isinstance(value, bool):
        pool = session.get(HardwarePool, value)
    elif isinstance(value, str):
        pool = session.scalars(select(HardwarePool).where(HardwarePool.name == value)).first()
    else:
        raise UsageError("pool: must be a hardware pool id or name")
    if pool is None:
        raise NotFound(f"hardware pool {value!r} does not exist")
    return pool


def _int(body: dict[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UsageError(f"{key}: must be an integer from {low} to {high}")
    return value


def _str(body: dict[str, Any], key: str, limit: int = 255) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or any(ord(c) < 32 for c in value):
        raise UsageError(f"{key}: must be a string of at most {limit} printable characters")
    return value


def _enum(body: dict[str, Any], key: str, cls: Any, default: Any) -> Any:
    value = body.get(key, default)
    try:
        return cls(value)
    except ValueError:
        raise UsageError(f"{key}: {value!r} is not one of {', '.join(m.value for m in cls)}") from None


CREATE_FIELDS = frozenset({
    "name", "vcpus", "memory_mib", "pool", "host", "placement_policy", "firmware", "description", "kernel",
    "initrd", "cmdline", "disks", "nics", "boot_device", "uuid", "template", "ha", "ha_priority", "cloud_init",
})  # fmt: skip


@dataclass(frozen=True)
class Created:
    vm: Vm
    task: Task


def create(session: Session, body: dict[str, Any], principal: str, seed_dir: Path | None = None) -> Created:
    """Validate a create request, check privilege and quota, add the VM (pending) and queue its create task.

    `cloud_init` (a NoCloud seed made here, appliance/cloudinit.py) needs `seed_dir`, where the seed waits
    for its upload task."""
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown field", f"fields: {', '.join(sorted(CREATE_FIELDS))}")
    name = _str(body, "name", 63)
    if not name or not NAME.match(name):
        raise UsageError("name: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    pool = _pool(session, body.get("pool"))
    permissions.require(session, principal, Privilege.VM_CREATE, pool.id, f"create VMs in hardware pool {pool.name}")
    template = _template(session, body.get("template"), principal)
    vcpus = _int(body, "vcpus", 1, MAX_VCPUS, template.vcpus if template else 1)
    memory = _int(body, "memory_mib", 16, MAX_MEMORY_MIB, template.memory_mib if template else 512)
    if session.scalars(select(Vm.id).where(Vm.name == name)).first() is not None:
        raise Conflict(f"a VM called {name} already exists", "VM names are unique; pick another")
    policy = _enum(body, "placement_policy", PlacementPolicy, PlacementPolicy.LEAST_LOADED)
    host_id = None
    if body.get("host") is not None:
        host = hosts.find(session, str(body["host"]))
        if not host.state.accepts_vms():
            raise Conflict(f"host {host.hostname} is {host.state} and takes no new VMs")
        host_id = host.id
    elif policy is PlacementPolicy.PINNED:
        raise UsageError("placement_policy pinned needs a host")
    vm_uuid = _str(body, "uuid") or str(uuidlib.uuid4())
    try:
        vm_uuid = str(uuidlib.UUID(vm_uuid))
    except ValueError:
        raise UsageError(f"uuid: {vm_uuid!r} is not a UUID") from None
    ha = body.get("ha", False)
    if not isinstance(ha, bool):
        raise UsageError("ha: true or false")
    ha_priority = _int(body, "ha_priority", 0, 1000, 0)
    owner = session.scalars(select(User).where(User.principal == principal)).first()
    vm = Vm(uuid=vm_uuid, name=name, vcpus=vcpus, memory_mib=memory, hardware_pool_id=pool.id,
            placement_policy=policy, firmware=_enum(body, "firmware", Firmware, Firmware.BIOS),
            description=_str(body, "description", 1000) or "", kernel_path=_str(body, "kernel", 255),
            initrd_path=_str(body, "initrd", 255), kernel_cmdline=_str(body, "cmdline", 2000),
            owner_id=owner.id if owner else None, state=VmState.PENDING, is_ha=ha, ha_priority=ha_priority)  # fmt: skip
    if template is not None and template.volume is not None:
        vm.template_id = template.id
        base = template.volume
        if base.storage_pool.type is StorageType.LOGICAL:
            # An LV cannot back a qcow2 file: the base image itself, read-only (many VMs share it, none may
            # change it), as before overlays.
            vm.disks.append(VmDisk(volume=base, target_dev="vda", bus=DiskBus.VIRTIO, boot_order=1,
                                   read_only=True))  # fmt: skip
        else:
            # The VM's own copy-on-write overlay over the template's base image, first to boot; the VM's
            # writes go to the overlay (deleted with the VM), the base is never changed. The overlay is thin:
            # no quota is charged for it, as none is for the template's base.
            overlay_name = f"{name}-vda.qcow2"
            if not storage.NAME.match(overlay_name):  # a VM name near its 63 characters: too long for a volume
                overlay_name = f"{vm_uuid}-vda.qcow2"
            overlay = storage.new_overlay(session, base, overlay_name)
            vm.disks.append(VmDisk(volume=overlay, target_dev="vda", bus=DiskBus.VIRTIO, boot_order=1))
    disk_bytes = _disks(session, vm, body.get("disks", []), principal, first=len(vm.disks))
    _nics(session, vm, body.get("nics", []))
    quotas.check_create(session, vm.owner_id, pool.id, disk_bytes)
    session.add(vm)
    session.flush()
    args: dict[str, Any] = {"host_id": host_id} if host_id is not None else {}
    if body.get("cloud_init") is not None:
        if seed_dir is None:
            raise UsageError("cloud_init: not available here")
        # The create task uploads the seed before it defines the domain: a start can only follow it.
        args |= cloudinit.attach_seed(session, vm, body["cloud_init"], seed_dir)
    task = tasking.enqueue(session, TaskType.VM_CREATE, vm.id, args, created_by=principal)
    return Created(vm, task)


def _template(session: Session, key: object, principal: str) -> Template | None:
    """The template a VM is made from, if asked for: one whose base image is in place, visible to the caller."""
    if key is None:
        return None
    if not isinstance(key, (int, str)) or isinstance(key, bool):
        raise UsageError("template: must be a template id or name")
    template = storage.find_template(session, str(key))
    volume = template.volume
    if volume is None or volume.state is not StorageState.AVAILABLE:
        state = volume.state if volume is not None else "gone"
        raise Conflict(f"template {template.name}'s base image is {state}", "see `drover template list`")
    permissions.require(session, principal, Privilege.VIEW, volume.storage_pool.hardware_pool_id,
                        f"use template {template.name}")  # fmt: skip
    return template


def _disks(session: Session, vm: Vm, disks: object, principal: str, first: int = 0) -> int:
    if not isinstance(disks, list):
        raise UsageError("disks: must be a list of {volume, target?, bus?, boot_order?}")
    total = 0
    for n, d in enumerate(disks, first):
        at = f"disks[{n - first}]"
        if not isinstance(d, dict) or not isinstance(d.get("volume"), int) or set(d) - {"volume", "target", "bus",
                                                                                       "boot_order", "read_only"}:
            raise UsageError(f"{at}: must be {{volume: id, target?, bus?, boot_order?, read_only?}}")  # fmt: skip
        volume = session.get(StorageVolume, d["volume"])
        if volume is None:
            raise NotFound(f"{at}: storage volume {d['volume']} does not exist")
        # Any volume may hold anyone's data: attaching one needs modify where it is stored, not just the
        # right to create VMs.
        permissions.require(session, principal, Privilege.MODIFY, volume.storage_pool.hardware_pool_id,
                            f"attach volume {volume.name} to a VM")  # fmt: skip
        target = d.get("target", f"vd{chr(ord('a') + n)}")
        if not isinstance(target, str) or not re.match(r"^[a-z]{2,3}[a-z]{1,2}$", target):
            raise UsageError(f"{at}.target: {target!r} is not a device name such as vda")
        if any(have.target_dev == target for have in vm.disks):
            raise UsageError(f"{at}.target: {target} is taken", "the template's disk is vda")
        vm.disks.append(VmDisk(volume=volume, target_dev=target, bus=_enum(d, "bus", DiskBus, DiskBus.VIRTIO),
                               boot_order=d.get("boot_order"), read_only=bool(d.get("read_only", False))))  # fmt: skip
        total += volume.capacity_bytes
    return total


def _nics(session: Session, vm: Vm, nics: object) -> None:
    if not isinstance(nics, list):
        raise UsageError("nics: must be a list of {network?, mac?, model?}")
    for n, spec in enumerate(nics):
        if not isinstance(spec, dict) or set(spec) - {"network", "mac", "model"}:
            raise UsageError(f"nics[{n}]: must be {{network?: id or name, mac?, model?}}")
        network = None
        if spec.get("network") is not None:
            key = spec["network"]
            network = (session.get(Network, key) if isinstance(key, int)
                       else session.scalars(select(Network).where(Network.name == str(key))).first())  # fmt: skip
            if network is None:
                raise NotFound(f"nics[{n}]: network {key!r} does not exist")
        mac = spec.get("mac") or "52:54:00:" + ":".join(f"{b:02x}" for b in uuidlib.uuid4().bytes[:3])
        if not isinstance(mac, str) or not re.match(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$", mac.lower()):
            raise UsageError(f"nics[{n}].mac: {mac!r} is not a MAC address")
        vm.nics.append(VmNic(mac=mac.lower(), network=network, model=_enum(spec, "model", NicModel, NicModel.VIRTIO)))


def act(session: Session, vm: Vm, verb: str, principal: str, args: dict[str, Any]) -> Task:
    """Queue `verb` on `vm` after the privilege check; the state check is tasking.enqueue's."""
    if verb not in ACTIONS:
        raise UsageError(f"unknown VM action {verb!r}", f"one of: {', '.join(ACTIONS)}")
    task_type, privilege = ACTIONS[verb]
    if verb == "delete" and vm.owner is not None and vm.owner.principal == principal:
        privilege = Privilege.VM_CREATE  # one's own VM: who may make it may remove it
    permissions.require(session, principal, privilege, vm.hardware_pool_id, f"{verb} VM {vm.name}")
    task_args: dict[str, Any] = {}
    if verb == "migrate" and args.get("host") is not None:
        dest = hosts.find(session, str(args["host"]))
        if dest.id == vm.host_id:
            raise Conflict(f"VM {vm.name} is already on {dest.hostname}")
        if not dest.state.accepts_vms():
            raise Conflict(f"host {dest.hostname} is {dest.state} and takes no VMs")
        permissions.require(session, principal, Privilege.MODIFY, dest.hardware_pool_id,
                            f"migrate VMs to {dest.hostname}")  # fmt: skip
        task_args["host_id"] = dest.id
    if verb == "migrate" and args.get("bandwidth_mib") is not None:
        task_args["bandwidth_mib"] = _int(args, "bandwidth_mib", 1, 100_000)
    if verb == "shutdown" and args.get("timeout") is not None:
        task_args["timeout"] = _int(args, "timeout", 1, 3600)
    return tasking.enqueue(session, task_type, vm.id, task_args, created_by=principal)


def summary(vm: Vm) -> dict[str, Any]:
    return {
        "id": vm.id,
        "uuid": vm.uuid,
        "name": vm.name,
        "state": str(vm.state),
        "state_reason": vm.state_reason,
        "state_changed_at": vm.state_changed_at.isoformat(),
        "vcpus": vm.vcpus,
        "memory_mib": vm.memory_mib,
        "host": vm.host.hostname if vm.host is not None else None,
        "host_id": vm.host_id,
        "pool": vm.pool.name,
        "placement_policy": str(vm.placement_policy),
        "ha": vm.is_ha,
        "ha_priority": vm.ha_priority,
        "owner": vm.owner.principal if vm.owner is not None else None,
    }


def detail(vm: Vm) -> dict[str, Any]:
    return {
        **summary(vm),
        "description": vm.description,
        "firmware": str(vm.firmware),
        "arch": str(vm.arch),
        "kernel": vm.kernel_path,
        "initrd": vm.initrd_path,
        "cmdline": vm.kernel_cmdline,
        "template": vm.template.name if vm.template is not None else None,
        "disks": [{"target": d.target_dev, "volume": d.volume.name, "volume_id": d.storage_volume_id,
                   "bus": str(d.bus), "path": d.volume.path, "read_only": d.read_only}
                  for d in sorted(vm.disks, key=lambda d: d.target_dev)],
        "nics": [{"mac": n.mac, "network": n.network.name if n.network else None, "model": str(n.model)}
                 for n in sorted(vm.nics, key=lambda n: n.mac)],
        "addresses": list(vm.addresses or []),
        "addresses_source": vm.addresses_source or None,
    }  # fmt: skip


def visible_query(session: Session, principal: str) -> Select[tuple[Vm]]:
    """The VMs `principal` may see, by name (the API pages through it)."""
    pools = permissions.visible_pools(session, principal)
    query = select(Vm).options(selectinload(Vm.host), selectinload(Vm.pool), selectinload(Vm.owner))
    query = query.order_by(Vm.name, Vm.id)
    if pools is not None:
        query = query.where(Vm.hardware_pool_id.in_(sorted(pools)))
    return query


def visible(session: Session, principal: str) -> list[Vm]:
    return list(session.scalars(visible_query(session, principal)))


def balance(session: Session, principal: str, *, dry_run: bool, cluster_id: int | None = None,
            threshold: float = 0.05, max_moves: int = 20) -> list[dict[str, Any]]:  # fmt: skip
    """Moves that reduce the spread of memory+CPU load; queued as migrations unless `dry_run`."""
    pool_id = None
    if cluster_id is not None:
        # An id past what the database holds would overflow in the query: it names no cluster.
        cluster = session.get(Cluster, cluster_id) if 0 < cluster_id <= MAX_ID else None
        if cluster is None:
            raise NotFound(f"cluster {cluster_id} does not exist")
        pool_id = cluster.hardware_pool_id
    permissions.require(session, principal, Privilege.MODIFY, pool_id, "balance VMs across hosts")
    host_rows = list(session.scalars(select(Host).order_by(Host.id)))
    if cluster_id is not None:
        host_rows = [h for h in host_rows if h.cluster_id == cluster_id]
    loads = {h.id: h for h in placement.loads(session, host_rows)}
    movable = [vm for vm in session.scalars(select(Vm).where(Vm.host_id.in_(list(loads)), Vm.state == VmState.RUNNING))
               if vm.placement_policy is not PlacementPolicy.PINNED]  # fmt: skip
    moves = placement.balance(list(loads.values()), [(vm.id, vm.host_id or 0, placement.want_of(vm)) for vm in movable],
                              threshold=threshold, max_moves=max_moves)  # fmt: skip
    names = {vm.id: vm.name for vm in movable}
    out: list[dict[str, Any]] = []
    for move in moves:
        entry: dict[str, Any] = {"vm": names[move.vm_id], "vm_id": move.vm_id, "from": loads[move.source].name,
                                 "to": loads[move.dest].name, "gain": round(move.gain, 4)}  # fmt: skip
        if not dry_run:
            task = tasking.enqueue(session, TaskType.VM_MIGRATE, move.vm_id, {"host_id": move.dest},
                                   created_by=principal)  # fmt: skip
            entry["task"] = task.id
        out.append(entry)
    return out
