"""Lab helper: two users in two hardware pools, each with objects of every kind the API serves, written
straight into a test appliance's database (no libvirt: the rows are what the API reads and refuses on).

`seed(db, realm)` gives bob a host, a VM with a snapshot and a queued task, a storage pool with a volume and
a template on it; alice a VM of her own. `Tenants.objects` maps the API's path parameters to bob's keys.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import Engine

from appliance import tasking
from appliance.db.engine import session_scope
from appliance.db.models import (
    HardwarePool,
    Host,
    HostState,
    Permission,
    Snapshot,
    StoragePool,
    StorageState,
    StorageType,
    StorageVolume,
    TaskType,
    Template,
    User,
    Vm,
    VmState,
    VolumeFormat,
)
from appliance.db.models.users import Role
from appliance.hosts import default_pool

ALICE, BOB = "sec-alice", "sec-bob"


@dataclass
class Tenants:
    realm: str
    objects: dict[str, str] = field(default_factory=dict)  # path parameter -> one of bob's keys
    secrets: list[str] = field(default_factory=list)  # bob's names and UUIDs: never in an answer to alice

    def principal(self, name: str) -> str:
        return f"{name}@{self.realm}"


def seed(db: Engine, realm: str) -> Tenants:
    tenants = Tenants(realm)
    with session_scope(db) as s:
        root = default_pool(s)
        pools = {ALICE: HardwarePool(name="sec-a", parent=root), BOB: HardwarePool(name="sec-b", parent=root)}
        s.add_all(pools.values())
        users = {}
        for name, pool in pools.items():
            user = User(principal=tenants.principal(name))
            s.add(user)
            s.flush()
            s.add(Permission(user=user, role=Role.USER, hardware_pool_id=pool.id))
            users[name] = user
        host = Host(uuid=str(uuid.uuid4()), hostname="sec-host-b.example.test", state=HostState.AVAILABLE,
                    hardware_pool_id=pools[BOB].id, cpu_count=4, memory_mib=8192)  # fmt: skip
        s.add(host)
        s.flush()
        vm_b = Vm(uuid=str(uuid.uuid4()), name="sec-vm-bob", vcpus=1, memory_mib=64, pool=pools[BOB],
                  state=VmState.STOPPED, owner=users[BOB], host_id=host.id)  # fmt: skip
        vm_a = Vm(uuid=str(uuid.uuid4()), name="sec-vm-alice", vcpus=1, memory_mib=64, pool=pools[ALICE],
                  state=VmState.STOPPED, owner=users[ALICE])  # fmt: skip
        s.add_all([vm_b, vm_a])
        storage_pool = StoragePool(name="sec-sp-bob", type=StorageType.DIR, state=StorageState.AVAILABLE,
                                   hardware_pool_id=pools[BOB].id, path="/srv/sec-bob")  # fmt: skip
        s.add(storage_pool)
        s.flush()
        volume = StorageVolume(storage_pool=storage_pool, name="sec-vol-bob", state=StorageState.AVAILABLE,
                               capacity_bytes=1 << 20, format=VolumeFormat.QCOW2)  # fmt: skip
        s.add(volume)
        s.flush()
        template = Template(uuid=str(uuid.uuid4()), name="sec-tpl-bob", storage_volume_id=volume.id)
        snapshot = Snapshot(vm=vm_b, name="sec-snap-bob")
        s.add_all([template, snapshot])
        s.flush()
        task = tasking.enqueue(s, TaskType.VM_START, vm_b.id, {}, created_by=tenants.principal(BOB))
        s.flush()
        tenants.objects = {
            "hosts.key": str(host.id),
            "vms.key": str(vm_b.id),
            "vms.vm": str(vm_b.id),
            "snapshots.snapshot": str(snapshot.id),
            "pools.pool": str(storage_pool.id),
            "volumes.volume": str(volume.id),
            "templates.template": str(template.id),
            "tasks.id": str(task.id),
            "users.principal": tenants.principal(BOB),
        }
        tenants.secrets = ["sec-vm-bob", vm_b.uuid, "sec-sp-bob", "sec-vol-bob", "sec-tpl-bob", template.uuid,
                           "sec-snap-bob", "sec-host-b", host.uuid]  # fmt: skip
    return tenants
