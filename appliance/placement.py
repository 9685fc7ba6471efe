"""Placement: which host a VM goes to (filters, then weights), and the moves that even a cluster out.

The algorithm is pure (dataclasses in, a choice out), so the API can answer `cluster balance --dry-run`
and the benchmark can place 10,000 VMs on 1,000 simulated hosts with the same code the task engine runs.
It lives in appliance/ rather than taskengine/ for that reason: the API may not import the task engine.

Filters: the host is available (not in maintenance, not unreachable), in the VM's hardware pool, has
the VM's networks and can reach its storage, and has the memory and vCPUs free counting every VM already
placed there. Weights spread the load: the host whose memory and CPU use (plus the load its monitor
reports, when there is one) would be lowest after the VM arrives wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import networks
from appliance.db.models import HardwarePool, Host, HostState, PlacementPolicy, Vm, VmState
from appliance.errors import Conflict

# States in which a VM holds memory and vCPUs on its host.
HOLDS_RESOURCES = frozenset(
    {VmState.CREATING, VmState.STARTING, VmState.RUNNING, VmState.STOPPING, VmState.PAUSED, VmState.SAVING,
     VmState.MIGRATING, VmState.RESTORING, VmState.UNREACHABLE}
)  # fmt: skip


@dataclass(frozen=True)
class HostLoad:
    id: int
    name: str
    memory_mib: int
    cpus: int
    used_memory_mib: int = 0
    used_vcpus: int = 0
    networks: frozenset[int] = frozenset()
    pools: frozenset[int] = frozenset()  # the hardware pool and its ancestors
    available: bool = True
    load: float | None = None  # the monitor's CPU load (0..1) when it reports one

    def fits(self, memory_mib: int, vcpus: int, cpu_overcommit: float) -> bool:
        return (self.used_memory_mib + memory_mib <= self.memory_mib
                and self.used_vcpus + vcpus <= self.cpus * cpu_overcommit)  # fmt: skip

    def score(self, memory_mib: int = 0, vcpus: int = 0) -> float:
        """How loaded the host is (lower is better) with a VM of this size added."""
        mem = (self.used_memory_mib + memory_mib) / max(1, self.memory_mib)
        cpu = (self.used_vcpus + vcpus) / max(1, self.cpus)
        if self.load is not None:
            cpu = (cpu + self.load) / 2
        return mem + cpu

    def plus(self, memory_mib: int, vcpus: int) -> HostLoad:
        return replace(self, used_memory_mib=self.used_memory_mib + memory_mib, used_vcpus=self.used_vcpus + vcpus)


@dataclass(frozen=True)
class Want:
    memory_mib: int
    vcpus: int
    pool_id: int
    networks: frozenset[int] = frozenset()
    exclude: frozenset[int] = field(default_factory=frozenset)  # hosts it may not go to (its source)
    # Hardware pools of the storage pools its disks live in: a host reaches storage defined for its own
    # hardware pool or one above it.
    storage: frozenset[int] = frozenset()


def rejections(want: Want, hosts: Iterable[HostLoad], cpu_overcommit: float) -> dict[str, str]:
    """Why each host was filtered out: {host name: reason}."""
    out: dict[str, str] = {}
    for h in hosts:
        if h.id in want.exclude:
            out[h.name] = "it is the VM's own host"
        elif not h.available:
            out[h.name] = "not available (maintenance, unreachable or pending)"
        elif want.pool_id not in h.pools:
            out[h.name] = "not in the VM's hardware pool"
        elif not want.networks <= h.networks:
            out[h.name] = "lacks one of the VM's networks"
        elif not want.storage <= h.pools:
            out[h.name] = "cannot reach the VM's storage"
        elif h.used_memory_mib + want.memory_mib > h.memory_mib:
            out[h.name] = f"{h.memory_mib - h.used_memory_mib} MiB free, {want.memory_mib} needed"
        elif h.used_vcpus + want.vcpus > h.cpus * cpu_overcommit:
            out[h.name] = f"{int(h.cpus * cpu_overcommit) - h.used_vcpus} vCPUs free, {want.vcpus} needed"
    return out


def best(want: Want, hosts: Sequence[HostLoad], cpu_overcommit: float = 1.0) -> HostLoad | None:
    """The host `want` goes to, or None if every host is filtered out."""
    chosen: HostLoad | None = None
    chosen_score = 0.0
    # The filters and HostLoad.score() written out inline: this loop runs hosts x VMs times.
    m, c, pool, exclude, nets, storage = want.memory_mib, want.vcpus, want.pool_id, want.exclude, want.networks, \
        want.storage  # fmt: skip
    for h in hosts:
        if h.used_memory_mib + m > h.memory_mib or h.used_vcpus + c > h.cpus * cpu_overcommit or not h.available:
            continue
        if h.id in exclude or pool not in h.pools or (nets and not nets <= h.networks):
            continue
        if storage and not storage <= h.pools:
            continue
        cpu = (h.used_vcpus + c) / (h.cpus or 1)
        if h.load is not None:
            cpu = (cpu + h.load) / 2
        score = (h.used_memory_mib + m) / (h.memory_mib or 1) + cpu
        if chosen is None or score < chosen_score or (score == chosen_score and h.id < chosen.id):
            chosen, chosen_score = h, score
    return chosen


def place_all(wants: Sequence[Want], hosts: Sequence[HostLoad], cpu_overcommit: float = 1.0) -> list[int | None]:
    """Place many VMs one after the other, each counting those placed before it; host ids (None: no fit)."""
    by_id = {h.id: h for h in hosts}
    out: list[int | None] = []
    for want in wants:
        host = best(want, list(by_id.values()), cpu_overcommit)
        if host is None:
            out.append(None)
            continue
        by_id[host.id] = host.plus(want.memory_mib, want.vcpus)
        out.append(host.id)
    return out


# -- inputs from the database ------------------------------------------------------------------------------


def _ancestors(session: Session) -> dict[int, frozenset[int]]:
    parents = dict(session.execute(select(HardwarePool.id, HardwarePool.parent_id)).tuples().all())
    out: dict[int, frozenset[int]] = {}
    for pool_id in parents:
        chain: set[int] = set()
        cur: int | None = pool_id
        while cur is not None and cur not in chain:
            chain.add(cur)
            cur = parents.get(cur)
        out[pool_id] = frozenset(chain)
    return out


def loads(session: Session, hosts: Sequence[Host] | None = None) -> list[HostLoad]:
    """Every host's capacity and what the VMs on it hold, as placement sees them."""
    rows = list(hosts) if hosts is not None else list(session.scalars(select(Host).order_by(Host.id)))
    pools = _ancestors(session)
    used: dict[int, tuple[int, int]] = {}
    for host_id, mem, cpus in session.execute(
        select(Vm.host_id, Vm.memory_mib, Vm.vcpus).where(Vm.host_id.is_not(None), Vm.state.in_(HOLDS_RESOURCES))
    ).tuples():
        m, c = used.get(host_id or 0, (0, 0))
        used[host_id or 0] = (m + mem, c + cpus)
    carried = networks.carried_ids(session, rows)
    out = []
    for h in rows:
        m, c = used.get(h.id, (0, 0))
        # The monitor writes each host's CPU busy % every [monitor] load_seconds (None until it reports).
        load = h.cpu_busy_percent / 100 if h.cpu_busy_percent is not None else None
        out.append(HostLoad(h.id, h.hostname, h.memory_mib, h.cpu_count, m, c,
                            carried[h.id],
                            pools.get(h.hardware_pool_id, frozenset({h.hardware_pool_id})),
                            h.state is HostState.AVAILABLE, float(load) if load is not None else None))  # fmt: skip
    return out


def want_of(vm: Vm, exclude: Iterable[int] = ()) -> Want:
    return Want(vm.memory_mib, vm.vcpus, vm.hardware_pool_id,
                frozenset(n.network_id for n in vm.nics if n.network_id is not None), frozenset(exclude),
                frozenset(d.volume.storage_pool.hardware_pool_id for d in vm.disks))  # fmt: skip


def choose(session: Session, vm: Vm, *, exclude: Iterable[int] = (), cpu_overcommit: float = 1.0) -> Host:
    """The host `vm` should go to; Conflict naming why every host was refused when none fits."""
    if vm.placement_policy is PlacementPolicy.PINNED and vm.host is not None:
        return vm.host
    hosts = loads(session)
    # The VM's own current use does not count against a host it is being moved to or restarted on.
    want = want_of(vm, exclude)
    if vm.host_id is not None and vm.state in HOLDS_RESOURCES:
        hosts = [h.plus(-vm.memory_mib, -vm.vcpus) if h.id == vm.host_id else h for h in hosts]
    found = best(want, hosts, cpu_overcommit)
    if found is None:
        why = rejections(want, hosts, cpu_overcommit)
        detail = "; ".join(f"{name}: {reason}" for name, reason in sorted(why.items())) or "there are no hosts"
        raise Conflict(f"no host can take VM {vm.name} ({vm.memory_mib} MiB, {vm.vcpus} vCPUs): {detail}",
                       "free memory, add hosts, or end maintenance")  # fmt: skip
    host = session.get(Host, found.id)
    if host is None:  # removed since loads() read it, in another transaction
        raise Conflict(f"host {found.name} was removed meanwhile", "try again")
    return host


@dataclass(frozen=True)
class Move:
    vm_id: int
    source: int
    dest: int
    gain: float  # how much the spread of host scores drops


def spread(hosts: Iterable[HostLoad]) -> float:
    """The standard deviation of the hosts' load scores (memory + CPU): 0 when perfectly even."""
    scores = [h.score() for h in hosts if h.available]
    if len(scores) < 2:
        return 0.0
    mean = sum(scores) / len(scores)
    return float((sum((s - mean) ** 2 for s in scores) / len(scores)) ** 0.5)


def balance(
    hosts: Sequence[HostLoad],
    vms: Sequence[tuple[int, int, Want]],
    *,
    threshold: float = 0.05,
    max_moves: int = 20,
    cpu_overcommit: float = 1.0,
) -> list[Move]:
    """Greedy moves, best first, each lowering the spread by at least `threshold`; (vm id, host id, want) in."""
    by_id = {h.id: h for h in hosts}
    where = {vm_id: host_id for vm_id, host_id, _ in vms}
    wants = {vm_id: want for vm_id, _, want in vms}
    moves: list[Move] = []
    moved: set[int] = set()
    while len(moves) < max_moves:
        current = spread(by_id.values())
        found: Move | None = None
        for vm_id, want in wants.items():
            if vm_id in moved:
                continue
            src = by_id.get(where[vm_id])
            if src is None:
                continue
            lighter = src.plus(-want.memory_mib, -want.vcpus)
            for dest in by_id.values():
                if dest.id == src.id or not dest.available or want.pool_id not in dest.pools:
                    continue
                if not want.networks <= dest.networks or not want.storage <= dest.pools:
                    continue
                if not dest.fits(want.memory_mib, want.vcpus, cpu_overcommit):
                    continue
                trial = {**by_id, src.id: lighter, dest.id: dest.plus(want.memory_mib, want.vcpus)}
                gain = current - spread(trial.values())
                if gain >= threshold and (found is None or gain > found.gain):
                    found = Move(vm_id, src.id, dest.id, gain)
        if found is None:
            break
        want = wants[found.vm_id]
        by_id[found.source] = by_id[found.source].plus(-want.memory_mib, -want.vcpus)
        by_id[found.dest] = by_id[found.dest].plus(want.memory_mib, want.vcpus)
        where[found.vm_id] = found.dest
        moved.add(found.vm_id)
        moves.append(found)
    return moves
