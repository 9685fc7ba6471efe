"""Lab fixture: a small rack of its own for destructive fencing tests (the shared task rack is never cut or killed).

What is real: `drover serve` with its host browser, task engine and fencer threads; two lab libvirtd hosts
(fa, fb), each in a network namespace of its own reached over a veth pair the rack made, so a host's link can
really be cut (`ip link set … down`) while the host and its guests keep running; real TCG guests; one BMC per
host from virtualbmc answering IPMI over LAN on loopback (the management network, which a host's data link
cut does not touch), driven by the appliance with ipmitool; and a "power plane" libvirtd where each host's
chassis is a small qemu domain (`power-fa`) that the BMC starts and destroys.

What is simulated, and how: the wire from chassis to host. A lab host is a libvirtd in namespaces, not a
machine, so `PowerWire` watches each chassis domain and, when it goes off (or restarts), does what losing
power does to a machine: SIGKILL its libvirtd and every guest at once; when it comes on, it starts the host's
libvirtd afresh with empty state, as a stateless node boots (its Kerberos key stays: a real node would
re-enrol and get a new one).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest
from sqlalchemy import Engine, select

from appliance.db.base import utcnow
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostState, HypervisorType, Task, Vm
from appliance.hosts import default_pool
from appliance.kerberos.realm import APPLIANCE_CLIENT
from appliance.runner import run
from tests.lab import libvirtd as lablv
from tests.lab.accel import Accel
from tests.lab.appliance import ADMIN, LabAppliance, start_appliance
from tests.lab.guest import GuestImage, cmdline
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts, LabNode, NodeFactory, NodeSettings
from tests.lab.net import free_port
from tests.lab.vbmc import LabBmc, LabBmcs

HOSTS = ("fa.example.test", "fb.example.test")
HOST_MEMORY_MIB = 2048
HOST_CPUS = 4

# Short timings so a case runs in a minute or two; `drover config show` documents the real defaults.
FENCING_ENV = {
    "DROVER_FENCING_GRACE_SECONDS": "6",
    "DROVER_FENCING_SOFT_SECONDS": "10",
    "DROVER_FENCING_CONFIRM_SECONDS": "15",
    "DROVER_FENCING_RETRY_SECONDS": "4",
    "DROVER_FENCING_POLL_SECONDS": "1",
    "DROVER_HOSTBROWSER_KEEPALIVE_INTERVAL": "1",
    "DROVER_HOSTBROWSER_KEEPALIVE_COUNT": "3",
    "DROVER_HOSTBROWSER_ZEROCONF": "false",
    "DROVER_MONITOR_ENABLED": "false",
    "DROVER_TASKENGINE_POLL_MS": "100",
    "DROVER_NODES_HEARTBEAT_SECONDS": "2",  # the soft step rides on a heartbeat answer
}

POWER_DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>16</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices><serial type='null'/></devices>
</domain>"""


@dataclass
class Link:
    """A veth pair from the machine's namespace into the host's own; `cut()` takes the machine's end down."""

    netns: str
    outer: str
    outer_address: str
    inner_address: str

    @classmethod
    def make(cls, prefix: str, offset: int) -> Link:
        """A /30 at `prefix`.`offset`: .offset+1 the machine's end, .offset+2 the host's."""
        tag = os.urandom(3).hex()
        link = cls(f"drf-{tag}", f"vf{tag}", f"{prefix}.{offset + 1}", f"{prefix}.{offset + 2}")
        inner = f"vi{tag}"
        for argv in (
            ["ip", "netns", "add", link.netns],
            ["ip", "link", "add", link.outer, "type", "veth", "peer", "name", inner],
            ["ip", "link", "set", inner, "netns", link.netns],
            ["ip", "addr", "add", f"{link.outer_address}/30", "dev", link.outer],
            ["ip", "link", "set", link.outer, "up"],
            ["ip", "-n", link.netns, "addr", "add", f"{link.inner_address}/30", "dev", inner],
            ["ip", "-n", link.netns, "link", "set", inner, "up"],
            ["ip", "-n", link.netns, "link", "set", "lo", "up"],
        ):
            run(argv)
        return link

    def cut(self) -> None:
        run(["ip", "link", "set", self.outer, "down"])

    def restore(self) -> None:
        run(["ip", "link", "set", self.outer, "up"])

    def remove(self) -> None:
        run(["ip", "link", "del", self.outer], check=False)
        run(["ip", "netns", "del", self.netns], check=False)


@dataclass
class RackHost:
    fqdn: str
    node: LabNode
    link: Link
    chassis: str  # the power plane's domain standing for its chassis
    bmc: LabBmc
    host_id: int = 0


@dataclass(frozen=True)
class SlowStatus:
    """The `ipmitool` the rack's appliances find first on their PATH: the real one, except that a power status
    query answers `seconds` late while set (real BMCs take seconds to answer). A test can then act between a
    power command taking effect and the fencer learning it, however loaded the machine is."""

    bin_dir: Path
    delay: Path  # holds the seconds, or is empty

    @classmethod
    def make(cls, bin_dir: Path) -> SlowStatus:
        bin_dir.mkdir(parents=True, exist_ok=True)
        real = shutil.which("ipmitool")
        assert real is not None, "ipmitool is not installed (make setup installs it)"
        slow = cls(bin_dir, bin_dir / "status-delay")
        slow.delay.write_text("")
        wrapper = bin_dir / "ipmitool"
        wrapper.write_text(
            "#!/bin/sh\n"
            f'case " $* " in *" power status "*) d=$(cat "{slow.delay}"); [ -n "$d" ] && sleep "$d";; esac\n'
            f'exec {real} "$@"\n'
        )
        wrapper.chmod(0o755)
        return slow

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    @contextlib.contextmanager
    def delayed(self, seconds: float) -> Iterator[None]:
        self.delay.write_text(f"{seconds}")
        try:
            yield
        finally:
            self.delay.write_text("")


class PowerWire:
    """The simulated wire from each chassis domain to its host (module docstring): polls the power plane every
    50 ms through its unix socket; records every power loss and power-up with the time it saw it."""

    def __init__(self, plane_uri: str, hosts: list[RackHost]) -> None:
        self.plane_uri = plane_uri
        self.hosts = hosts
        self.log: list[tuple[float, str, str]] = []  # (time.time(), fqdn, "off"|"on")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="powerwire", daemon=True)
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        conn = libvirt.open(self.plane_uri)
        seen: dict[str, int] = {h.fqdn: conn.lookupByName(h.chassis).ID() for h in self.hosts}
        try:
            while not self._stop.wait(0.05):
                for host in self.hosts:
                    dom = conn.lookupByName(host.chassis)
                    now_id = dom.ID() if dom.isActive() else -1
                    was = seen[host.fqdn]
                    if now_id == was:
                        continue
                    seen[host.fqdn] = now_id
                    try:
                        if was != -1:  # it was on: off now, or off and on again between two looks
                            self._power_loss(host)
                        if now_id != -1:
                            self._power_up(host)
                    except Exception as exc:  # the test reads these: a wire that failed silently proves nothing
                        self.errors.append(f"{host.fqdn}: {exc!r}")
        finally:
            conn.close()

    def _power_loss(self, host: RackHost) -> None:
        node = host.node
        victims = [node.process.pid, *node.guest_pids()] if node.process.poll() is None else node.guest_pids()
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(10)
        self.log.append((time.time(), host.fqdn, "off"))

    def _power_up(self, host: RackHost) -> None:
        # A stateless node boots with nothing defined: no domain definitions, no runtime state, no saved images.
        root = host.node.root
        for sub in ("etc/qemu", "run", "lib/qemu"):
            path = root / sub
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
        (root / "run").mkdir(exist_ok=True)
        host.node.process = lablv._spawn_libvirtd(host.node.kdc, host.node.settings, root, host.node.files)
        # Ready when its unix socket answers: its TCP port may be behind a cut link.
        sock, deadline = root / "sock" / "libvirt-sock", time.monotonic() + 30
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(sock))
                break
            except OSError:
                if host.node.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"libvirtd of {host.fqdn} did not come up after power on") from None
                time.sleep(0.05)
        self.log.append((time.time(), host.fqdn, "on"))


class Copies:
    """Counts, every 20 ms, the qemu processes on this machine running one VM (by UUID): in any namespace, dead
    libvirtd or not. `most` is the largest count seen: 2 would be the VM running twice."""

    def __init__(self, vm_uuid: str) -> None:
        self.needle = vm_uuid.encode()
        self.most = 0
        self.samples: list[tuple[float, list[int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Copies:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def pids(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and self.needle in cmd:
                found.append(int(entry.name))
        return found

    def _run(self) -> None:
        last: list[int] | None = None
        while not self._stop.wait(0.02):
            pids = self.pids()
            self.most = max(self.most, len(pids))
            if pids != last:
                self.samples.append((time.time(), pids))
                last = pids


@dataclass
class FenceRack:
    kdc: LabKdc
    hosts_file: LabHosts
    factory: NodeFactory
    workdir: Path
    libvirt_port: int
    hosts: list[RackHost]
    plane: LabNode
    bmcs: LabBmcs
    wire: PowerWire
    image: GuestImage
    accel: Accel
    env: dict[str, str]
    served: LabAppliance | None = None
    db: Engine | None = None
    serves: int = 0
    started_at: list[float] = field(default_factory=list)
    # DROVER_* for the server and every CLI run: a PostgreSQL URL here puts the rack on it (else SQLite).
    settings: dict[str, str] = field(default_factory=dict)
    others: list[LabAppliance] = field(default_factory=list)  # more `drover serve` processes on the same database
    slow_status: SlowStatus | None = None  # the appliances' ipmitool, its status answers delayed on demand

    def start_serve(self, **settings: str) -> LabAppliance:
        extra = {**self.hosts_file.env, "DROVER_NODES_LIBVIRT_PORT": str(self.libvirt_port), **self.env, **settings}
        self.serves += 1
        self.served = start_appliance(self.kdc, self.workdir / "serve", extra_env=extra, settings=self.settings)
        self.started_at.append(time.time())
        if self.db is None:
            self.db = make_engine(self.served.database_url)
        return self.served

    def start_other(self, name: str, **settings: str) -> LabAppliance:
        """Another `drover serve` on the same database and realm (its own ports and log): a second appliance
        machine of the same site. Stopped with the rack."""
        extra = {**self.hosts_file.env, "DROVER_NODES_LIBVIRT_PORT": str(self.libvirt_port), **self.env, **settings}
        other = start_appliance(self.kdc, self.workdir / name, extra_env=extra, settings=self.settings)
        self.others.append(other)
        return other

    def stop_serve(self) -> None:
        if self.served is not None:
            self.served.stop()
            self.served = None
        for other in self.others:
            other.stop()
        self.others.clear()

    def drover(
        self, *argv: str, principal: str | None = ADMIN, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        assert self.served is not None
        return self.served.drover(*argv, principal=principal, timeout=timeout)

    def host(self, short: str) -> RackHost:
        return next(h for h in self.hosts if h.fqdn.startswith(short + "."))

    @property
    def engine(self) -> Engine:
        assert self.db is not None
        return self.db

    def chassis_on(self, host: RackHost) -> bool:
        conn = libvirt.open(self.plane.local_uri)
        try:
            return bool(conn.lookupByName(host.chassis).isActive())
        finally:
            conn.close()

    def guest_args(self, name: str, memory: int = 96) -> list[str]:
        return ["vm", "create", name, "--memory", str(memory), "--kernel", str(self.image.kernel),
                "--initrd", str(self.image.initrd), "--cmdline", cmdline()]  # fmt: skip

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{uuidlib.uuid4().hex[:6]}"

    def vm(self, name: str) -> Vm:
        with session_scope(self.engine) as s:
            vm = s.scalars(select(Vm).where(Vm.name == name)).one()
            s.expunge(vm)
            return vm

    def tasks_of(self, vm_id: int) -> list[Task]:
        with session_scope(self.engine) as s:
            rows = list(s.scalars(select(Task).where(Task.target_id == vm_id).order_by(Task.id)).all())
            for t in rows:
                s.expunge(t)
            return rows

    def host_row(self, host: RackHost) -> Host:
        with session_scope(self.engine) as s:
            row = s.get(Host, host.host_id)
            assert row is not None
            s.expunge(row)
            return row

    def wait_available(self, host: RackHost, timeout: float = 60) -> None:
        def up() -> bool:
            row = self.host_row(host)
            return row.state is HostState.AVAILABLE and row.libvirt_connected

        wait_until(f"{host.fqdn} available", up, timeout)


def wait_until(what: str, check: Callable[[], bool], timeout: float, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(every)


@pytest.fixture(scope="module")
def fence_rack(
    kdc: LabKdc,
    lab_hosts: LabHosts,
    libvirt_nodes: NodeFactory,
    guest_image: GuestImage,
    guest_accel: Accel,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FenceRack]:
    with built_rack(
        kdc, lab_hosts, libvirt_nodes, guest_image, guest_accel, tmp_path_factory.mktemp("fencerack")
    ) as rack:
        yield rack


@contextlib.contextmanager
def built_rack(
    kdc: LabKdc,
    lab_hosts: LabHosts,
    libvirt_nodes: NodeFactory,
    guest_image: GuestImage,
    guest_accel: Accel,
    workdir: Path,
    db_settings: dict[str, str] | None = None,
) -> Iterator[FenceRack]:
    """The rack: power plane, BMCs, two namespaced hosts, `drover serve` (on `settings`' database, else SQLite)."""
    port = free_port()
    subnet_base = f"10.{random.randint(100, 199)}.{random.randint(0, 255)}"
    links: list[Link] = []
    nodes: list[LabNode] = []
    bmcs = LabBmcs(Path(workdir / "vbmc"))
    wire: PowerWire | None = None
    rack: FenceRack | None = None
    try:
        # The power plane: one more lab libvirtd (loopback), holding each host's chassis as a tiny domain.
        plane = libvirt_nodes.start("power.example.test")
        nodes.append(plane)
        conn = libvirt.open(plane.local_uri)
        rack_hosts: list[RackHost] = []
        for i, fqdn in enumerate(HOSTS):
            link = Link.make(subnet_base, 4 * i)
            links.append(link)
            settings = NodeSettings(fqdn, link.inner_address, port, (APPLIANCE_CLIENT,), netns=link.netns)
            node = libvirt_nodes.start(fqdn, settings=settings)
            nodes.append(node)
            chassis = f"power-{fqdn.split('.')[0]}"
            conn.defineXML(POWER_DOMAIN.format(name=chassis)).create()
            rack_hosts.append(RackHost(fqdn, node, link, chassis, bmc=None))  # type: ignore[arg-type]
        conn.close()
        bmcs.start()
        for h in rack_hosts:
            h.bmc = bmcs.add(h.chassis, plane.local_uri)
        wire = PowerWire(plane.local_uri, rack_hosts)
        wire.start()
        slow = SlowStatus.make(workdir / "ipmitool")
        rack = FenceRack(kdc, lab_hosts, libvirt_nodes, workdir, port, rack_hosts, plane, bmcs, wire, guest_image,
                         guest_accel, {**FENCING_ENV, **slow.env}, settings=dict(db_settings or {}),
                         slow_status=slow)  # fmt: skip
        served = rack.start_serve(DROVER_FENCING_QUIET_SECONDS="2")
        added = served.drover("user", "add", ADMIN, "--role", "admin")
        assert added.returncode == 0, added.stdout + added.stderr
        with session_scope(rack.engine) as s:
            for h in rack_hosts:
                row = Host(uuid=h.node.settings.host_uuid, hostname=h.fqdn, approved_at=utcnow(), approved_by="lab",
                           credentials_issued_at=utcnow(), memory_mib=HOST_MEMORY_MIB, cpu_count=HOST_CPUS,
                           cpu_cores=HOST_CPUS,
                           hypervisor_type=HypervisorType.KVM if guest_accel is Accel.KVM else HypervisorType.QEMU,
                           hardware_pool_id=default_pool(s).id)  # fmt: skip
                s.add(row)
                s.flush()
                h.host_id = row.id
        for h in rack_hosts:
            rack.wait_available(h)
        yield rack
    finally:
        if rack is not None:
            rack.stop_serve()
            if rack.db is not None:
                rack.db.dispose()
        if wire is not None:
            wire.stop()
        bmcs.stop()
        for node in nodes:
            node.stop()
            if node in libvirt_nodes.nodes:
                libvirt_nodes.nodes.remove(node)
            shutil.rmtree(node.root, ignore_errors=True)
        for link in links:
            link.remove()
