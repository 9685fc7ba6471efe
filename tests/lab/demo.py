"""`make demo`: the appliance with its embedded defaults, and PXE-booted qemu nodes that enrol themselves.

What it runs is what an admin would type: `drover image build`, `drover realm init`, `drover boot use`,
`drover serve`, `drover host list`. The nodes are the lab's (tests/lab/pxe.py): qemu guests on user
networking that PXE-boot from the appliance's boot service; their names resolve to loopback
addresses through an nss_wrapper hosts file, so nothing on this machine (/etc/hosts, bridges,
firewall) changes. Everything lives under --dir; running it again reuses the image, the realm and
the database, and the nodes (same MACs and DMI UUIDs) come back as the same hosts.

Once the nodes are enrolled, the admin's `drover` commands (printed as typed) make an NFS storage pool on an
nfs-ganesha export of --dir (shared by the nodes and outliving them: they keep nothing across a reboot), import
the lab guest as a template (a hybrid ISO built once under --dir), create a VM that boots from it on node1 and
start it through the task engine; the guest's serial console, read over node1's libvirt with the appliance's
ticket, shows it running. A rerun finds the pool, the template and the VM again and starts the VM.

Ctrl-C (SIGINT) or SIGTERM stops the nodes, the appliance, the NFS server and the KDC it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from playwright.sync_api import Error as PlaywrightError
from sqlalchemy import Engine, select

from appliance.config import Config, load
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostState
from appliance.errors import DroverError
from appliance.kerberos.realm import APPLIANCE_CLIENT, FIRST_ADMIN, Realm
from tests.lab import accel
from tests.lab.appliance import own_resolver
from tests.lab.guest import PING, TICK, build_iso, iso_path, link_local
from tests.lab.libvirtd import LabHosts
from tests.lab.net import free_port
from tests.lab.nfs import EXPORT_PATH, LabNfs, start_nfs
from tests.lab.proc import terminate
from tests.lab.pxe import Phase, PxeNode, boot, phase
from tests.lab.qemu import HOST_FROM_GUEST, Guest
from tests.lab.screenshots import Shot, take
from tests.lab.segment import Segment

ROOT = Path(__file__).resolve().parent.parent.parent
VENV_BIN = Path(sys.executable).parent
DOMAIN = "drover.test"
BOOT_TIMEOUT = 900.0  # per node, TCG on a busy 2-core machine takes 1.5-3 minutes
QUIET_REPORT = 20.0  # with nothing new, say what we are waiting for this often
# The demo's storage pool, template and VMs (names a rerun finds again).
POOL, TEMPLATE, VM = "demo-pool", "demo-guest", "demo-vm"
PEER, OTHER = "demo-peer", "demo-other"  # with two nodes: demo-vm's neighbour on its network, and one on another
# With two nodes: logical networks on the nodes' second NIC (an L2 segment of the demo's own): the VMs' network,
# another VLAN, and a migration network with static addresses that carries demo-vm's live migration.
VM_NET, OTHER_NET, MIG_NET = "demo-net", "demo-lab", "demo-mig"
VLANS = {VM_NET: 60, OTHER_NET: 61, MIG_NET: 50}
MIG_SUBNET = "10.50.0"
VM_MEMORY_MIB = 96
# A guest inside a TCG node is emulated twice over: grub and the kernel take minutes, not seconds.
GUEST_BOOT_TIMEOUT = 900.0
NETWORK_TIMEOUT = 300.0  # the agents apply an assignment at their next heartbeat


class DemoError(RuntimeError):
    pass


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


@dataclass(frozen=True)
class Demo:
    dir: Path
    nodes: tuple[PxeNode, ...]

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def hosts_file(self) -> Path:
        return self.dir / "hosts"

    def env(self) -> dict[str, str]:
        """DROVER_* for every drover process of the demo; the caller's own DROVER_* win (tests pick ports)."""
        chosen = {
            "DROVER_STATE_DIR": str(self.state_dir),
            "DROVER_KERBEROS_HOSTNAME": "localhost",
            # qemu's user network hands the guests' connections to 10.0.2.2 to this machine's loopback.
            "DROVER_NODES_LISTEN": "127.0.0.1",
            "DROVER_NODES_EXTRA_NAMES": HOST_FROM_GUEST,
        }
        chosen.update({k: v for k, v in os.environ.items() if k.startswith("DROVER_")})
        return chosen

    def config(self) -> Config:
        return load(env=self.env())


def drover(demo: Demo, *argv: str, extra_env: dict[str, str] | None = None, capture: bool = False) -> str:
    """Run the CLI as a user would; its output goes to ours unless captured."""
    env = {"PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(demo.dir)}
    env.update(demo.env())
    env.update(extra_env or {})
    done = subprocess.run(
        [str(VENV_BIN / "drover"), *argv],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=capture,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise DemoError(
            f"`drover {shlex.join(argv)}` failed (exit {done.returncode}){': ' + done.stderr if capture else ''}"
        )
    return done.stdout if capture else ""


class Appliance:
    """`drover -v serve` in its own session (Ctrl-C reaches the demo, which stops it in order)."""

    def __init__(self, demo: Demo, cfg: Config, lab_hosts: LabHosts) -> None:
        self.demo, self.cfg = demo, cfg
        self.log = demo.dir / "serve.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(demo.dir), **demo.env(), **lab_hosts.env}
        env["PYTHONFAULTHANDLER"] = "1"  # a crash in C (libvirt, krb5) leaves every thread's stack in serve.log
        # Node names from an /etc/hosts twin in the server's own mount namespace, not nss_wrapper (not
        # thread-safe, and the host browser connects from several threads).
        argv, env = own_resolver([str(VENV_BIN / "drover"), "-v", "serve"], env)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        url = f"http://127.0.0.1:{self.cfg.api.port}/api/v1/health"
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise DemoError(f"drover serve exited ({self.process.returncode}); its log ends:\n{self.tail()}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise DemoError(f"drover serve not answering {url} after {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        terminate(self.process, 30)


@dataclass(frozen=True)
class HostRow:
    id: int
    state: HostState
    approved: bool


def host_states(db: Engine, nodes: Sequence[PxeNode]) -> dict[str, HostRow]:
    with session_scope(db) as s:
        rows = s.execute(
            select(Host.uuid, Host.id, Host.state, Host.approved_at).where(Host.uuid.in_([n.uuid for n in nodes]))
        ).all()
    return {u: HostRow(i, st, approved is not None) for u, i, st, approved in rows}


def describe(guest: Guest, row: HostRow | None) -> str:
    if row is None:
        reached = phase(guest.serial())
        return reached.label if reached < Phase.AGENT else "identifying"
    if row.state is HostState.AVAILABLE:
        return f"enrolled: host {row.id} available"
    if row.state is HostState.PENDING and row.approved:
        return f"host {row.id} approved (boot token): keytab installed, appliance connecting to its libvirtd"
    if row.state is HostState.PENDING:
        return f"host {row.id} pending: `drover host approve {row.id}` lets it in"
    return f"host {row.id} {row.state}"


def watch(demo: Demo, db: Engine, guests: dict[str, Guest], appliance: Appliance, stop: threading.Event) -> bool:
    """Progress lines until every node is available; False if stopped or a node died first."""
    started = time.monotonic()
    last: dict[str, str] = {}
    said = started
    while not stop.is_set():
        rows = host_states(db, demo.nodes)
        now = time.monotonic()
        for node in demo.nodes:
            guest = guests[node.name]
            if guest.proc.poll() is not None:
                say(f"{node.name}: qemu exited ({guest.proc.returncode}); its log: {guest.qemu_log}")
                say(guest.qemu_log.read_text(errors="replace")[-1500:] or guest.serial()[-1500:])
                return False
            text = describe(guest, rows.get(node.uuid))
            if last.get(node.name) != text:
                last[node.name] = text
                said = now
                say(f"[{now - started:4.0f}s] {node.name}: {text}")
        if all((r := rows.get(n.uuid)) is not None and r.state is HostState.AVAILABLE for n in demo.nodes):
            return True
        if now - said >= QUIET_REPORT:
            said = now
            say(f"[{now - started:4.0f}s] waiting: " + ", ".join(f"{n}: {t}" for n, t in last.items()))
        if now - started > BOOT_TIMEOUT:
            say(f"nodes not enrolled after {BOOT_TIMEOUT:.0f}s; appliance log ends:\n{appliance.tail()}")
            return False
        stop.wait(1.0)
    return False


def typed(demo: Demo, env: dict[str, str], *argv: str) -> str:
    """A `drover` command the demo runs as the admin: shown first as typed, its output shown as it comes."""
    say(f"$ drover {shlex.join(argv)}")
    out = drover(demo, *argv, extra_env=env, capture=True)
    print(out, end="", flush=True)
    return out


def looked_up(demo: Demo, env: dict[str, str], *argv: str) -> Any:
    """`drover ... --json`, quietly: what exists already (None if the object does not)."""
    try:
        return json.loads(drover(demo, *argv, "--json", extra_env=env, capture=True))
    except DemoError:
        return None


def start_storage_server(demo: Demo) -> LabNfs:
    """The demo's shared storage: an NFSv4 export (nfs-ganesha, userspace) of .demo/nfs/export on this machine's
    loopback, which the nodes mount as 10.0.2.2. It outlives the nodes (stateless, RAM only): a rerun finds the
    template there, and a VM's disk is on the same path on every node. Same port every run (the pool records it)."""
    root = demo.dir / "nfs"
    root.mkdir(parents=True, exist_ok=True)
    port_file = root / "port"
    port = int(port_file.read_text()) if port_file.is_file() else free_port()
    port_file.write_text(f"{port}\n")
    with socket.socket() as probe:
        # As ganesha binds: connections the last run's server left in TIME_WAIT do not count, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DemoError(f"port {port} for the NFS server (recorded in the storage pool) is taken: {exc}; stop "
                            f"what holds it, or rm -rf {os.path.relpath(demo.dir)} to start over") from exc  # fmt: skip
    try:
        return start_nfs(root, port=port)
    except (RuntimeError, TimeoutError) as exc:
        raise DemoError(f"the NFS server did not start ({exc}); its log: {os.path.relpath(root)}/ganesha.log") from exc


def storage(demo: Demo, admin_env: dict[str, str], nfs: LabNfs) -> None:
    """The storage pool and the template, each reused when a former run made it."""
    pool = looked_up(demo, admin_env, "storage", "pool", "show", POOL)
    if pool is not None:
        say(f"storage pool {POOL}: reusing it (state {pool['state']}); the nodes booted fresh: define it there again")
        typed(demo, admin_env, "storage", "pool", "refresh", POOL, "--wait")
    else:
        say(f"storage pool {POOL}: NFS export of {os.path.relpath(nfs.export_dir)} (nfs-ganesha on port {nfs.port}),"
            " mounted by every node")  # fmt: skip
        typed(demo, admin_env, "storage", "pool", "create", POOL, "--type", "nfs", "--server", HOST_FROM_GUEST,
              "--export", EXPORT_PATH, "--port", str(nfs.port), "--wait")  # fmt: skip
    templates = {t["name"]: t for t in looked_up(demo, admin_env, "template", "list") or []}
    if TEMPLATE in templates and (templates[TEMPLATE]["volume"] or {}).get("state") == "available":
        say(f"template {TEMPLATE}: reusing it (its base image is on the NFS export)")
    else:
        iso_dir = demo.dir / "guest"
        cached = iso_path(iso_dir).is_file()
        iso = build_iso(iso_dir)
        say(f"template {TEMPLATE}: {'reusing' if cached else 'built'} {os.path.relpath(iso)} "
            f"({iso.stat().st_size >> 20} MiB: grub, this machine's kernel, a busybox initramfs; boots as CD or disk)")
        typed(demo, admin_env, "template", "import", str(iso), "--pool", POOL, "--name", TEMPLATE,
              "--memory", str(VM_MEMORY_MIB), "--wait")  # fmt: skip


def vm_up(demo: Demo, admin_env: dict[str, str], name: str, node: PxeNode, network: str | None) -> str:
    """A VM through the task engine, reused when a former run made it; returns its host."""
    vm = looked_up(demo, admin_env, "vm", "show", name)
    if vm is not None:
        say(f"VM {name}: reusing it (state {vm['state']} on {vm['host'] or 'no host'})")
        if vm["state"] != "stopped":
            say("its node rebooted (stateless): re-read its real state from libvirt")
            typed(demo, admin_env, "vm", "update-state", name, "--wait")
    else:
        on = f", a NIC on network {network}" if network else ""
        say(f"VM {name}: 1 vCPU, {VM_MEMORY_MIB} MiB, booting from template {TEMPLATE} (its own overlay){on}, "
            f"on {node.name}")  # fmt: skip
        nic = ("--network", network) if network else ()
        typed(demo, admin_env, "vm", "create", name, "--template", TEMPLATE, "--host", node.fqdn, *nic, "--wait")
    vm = looked_up(demo, admin_env, "vm", "show", name) or {}
    if vm.get("state") != "running":
        typed(demo, admin_env, "vm", "start", name, "--wait")
    vm = looked_up(demo, admin_env, "vm", "show", name) or {}
    return str(vm.get("host") or node.fqdn)


def console(demo: Demo, appliance_env: dict[str, str], host: str, vm: str, text: str, timeout: float,
            line: str | None = None) -> list[str]:  # fmt: skip
    """The VM's serial console over its node's libvirt (as drover@, the nodes' only client) until `text` shows:
    its DROVER- lines. `line`: typed into the console first."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(demo.dir), **appliance_env}
    argv = [sys.executable, "-m", "tests.lab.vmconsole", f"qemu+tcp://{host}/system", vm, text, str(timeout)]
    done = subprocess.run(argv + ([line] if line else []), env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise DemoError(f"{vm} did not show {text} on its console: {done.stderr.strip()[-1500:]}")
    return done.stdout.splitlines()


def booted(demo: Demo, appliance_env: dict[str, str], host: str, vm: str) -> None:
    say(f"waiting for {vm} to boot on {host}: a guest inside a TCG node is emulated twice over "
        f"(about 20 s on a loaded 2-core machine; its serial console, read over libvirt as {APPLIANCE_CLIENT}@, "
        f"up to {GUEST_BOOT_TIMEOUT:.0f}s)")  # fmt: skip
    for shown in console(demo, appliance_env, host, vm, TICK, GUEST_BOOT_TIMEOUT):
        say(f"{vm} console: {shown}")


def ping(demo: Demo, admin_env: dict[str, str], appliance_env: dict[str, str], hosts: dict[str, str], src: str,
         dst: str) -> bool:  # fmt: skip
    """Type `ping <dst's IPv6 link-local address>` into `src`'s serial console; what the guest answered."""
    mac = (looked_up(demo, admin_env, "vm", "show", dst) or {})["nics"][0]["mac"]
    address = f"{link_local(mac)}%eth0"
    answer = f"{PING} {address}"
    said = console(demo, appliance_env, hosts[src], src, answer, 60, f"ping {address}")
    reached = any(line.strip() == f"{answer} ok" for line in said)
    say(f"{src} (on {hosts[src]}) pings {dst} (on {hosts[dst]}) at {address}: "
        f"{'answered' if reached else 'no answer'}")  # fmt: skip
    return reached


def networks(demo: Demo, admin_env: dict[str, str]) -> None:
    """Three logical networks on every node's second NIC (on the demo's L2 segment), each a VLAN: the VMs' own,
    another one, and a migration network with a static address per node. The node agents apply them."""
    for name, role in ((VM_NET, "vm"), (OTHER_NET, "vm"), (MIG_NET, "migration")):
        if looked_up(demo, admin_env, "network", "show", name) is not None:
            say(f"network {name}: reusing it")
            continue
        subnet = ("--subnet", f"{MIG_SUBNET}.0/24") if role == "migration" else ()
        typed(demo, admin_env, "network", "create", name, "--vlan", str(VLANS[name]), "--role", role, *subnet)
    for n, node in enumerate(demo.nodes, 1):
        status = looked_up(demo, admin_env, "host", "network", node.fqdn) or {}
        have = {a["network"] for a in status.get("networks", [])}
        for name in (VM_NET, OTHER_NET, MIG_NET):
            if name in have:
                continue
            address = ("--address", f"{MIG_SUBNET}.{n}/24") if name == MIG_NET else ()
            typed(demo, admin_env, "host", "network", node.fqdn, "--set", name, "--nic", node.segment_mac(1),
                  *address)  # fmt: skip
    started = time.monotonic()
    for node in demo.nodes:
        while not (looked_up(demo, admin_env, "host", "network", node.fqdn) or {}).get("in_sync"):
            if time.monotonic() - started > NETWORK_TIMEOUT:
                raise DemoError(f"{node.name} did not apply its networks within {NETWORK_TIMEOUT:.0f}s: "
                                f"drover host network {node.fqdn}")  # fmt: skip
            time.sleep(2)
        say(f"{node.name}: networks in sync ({time.monotonic() - started:.0f}s): bridges on VLANs "
            f"{', '.join(str(v) for v in VLANS.values())} of its NIC {node.segment_mac(1)}, written by its agent")
    typed(demo, admin_env, "host", "network", demo.nodes[0].fqdn)


def run_vms(demo: Demo, admin_env: dict[str, str], appliance_env: dict[str, str]) -> str:
    """demo-vm on node1; with two nodes also demo-peer (same network) and demo-other (another VLAN) on node2,
    pings across the nodes, and demo-vm's live migration to the other node. Returns demo-vm's host."""
    started = time.monotonic()
    two = len(demo.nodes) >= 2
    hosts = {VM: vm_up(demo, admin_env, VM, demo.nodes[0], VM_NET if two else None)}
    if two:
        hosts[PEER] = vm_up(demo, admin_env, PEER, demo.nodes[1], VM_NET)
        hosts[OTHER] = vm_up(demo, admin_env, OTHER, demo.nodes[1], OTHER_NET)
    typed(demo, admin_env, "task", "list")
    typed(demo, admin_env, "vm", "show", VM)
    for name, host in hosts.items():
        booted(demo, appliance_env, host, name)
    say(f"VM {VM} is running on {hosts[VM]} ({time.monotonic() - started:.0f}s for pool, template, VM and boot)")
    if not two:
        return hosts[VM]
    say(f"{VM} and {PEER} share network {VM_NET} (VLAN {VLANS[VM_NET]}); {OTHER} is on {OTHER_NET} "
        f"(VLAN {VLANS[OTHER_NET]}): from {VM}'s console, ping each at its IPv6 link-local address")  # fmt: skip
    if not ping(demo, admin_env, appliance_env, hosts, VM, PEER):
        raise DemoError(f"{VM} does not reach {PEER} on {VM_NET}")
    if ping(demo, admin_env, appliance_env, hosts, VM, OTHER):
        raise DemoError(f"{VM} reaches {OTHER} across VLANs: the networks are not isolated")
    target = next(node.fqdn for node in demo.nodes if node.fqdn != hosts[VM])
    say(f"live migration of {VM} from {hosts[VM]} to {target}: its memory crosses network {MIG_NET} "
        f"(VLAN {VLANS[MIG_NET]}, {MIG_SUBNET}.0/24), the guest keeps counting")  # fmt: skip
    typed(demo, admin_env, "vm", "migrate", VM, "--host", target, "--wait")
    hosts[VM] = str((looked_up(demo, admin_env, "vm", "show", VM) or {}).get("host"))
    if hosts[VM] != target:
        raise DemoError(f"{VM} is on {hosts[VM]} after its migration to {target}")
    for shown in console(demo, appliance_env, hosts[VM], VM, TICK, 60):
        say(f"{VM} console on {target}: {shown}")
    if not ping(demo, admin_env, appliance_env, hosts, VM, PEER):
        raise DemoError(f"{VM} does not reach {PEER} after its migration")
    say(f"VM {VM} migrated to {hosts[VM]}, still counting and on its network")
    return hosts[VM]


# A chart that has drawn points (graphs.js counts them into data-points); a console page that has connected and
# shows the guest's counter (serial) or drew its screen (graphics).
GRAPHS_DRAWN = "#graphs figure[data-chart='cpu']:not([data-points='0'])[data-points]"
SERIAL_SHOWS = f".xterm-rows:has-text('{TICK}')"
VNC_DRAWN = "body[data-state='connected'] #screen canvas"
NETWORKS_IN_SYNC = "#host-networks tbody:not(:has(.badge.warn)) tr:nth-child(2) .badge.sync"  # both nodes in sync


def screenshots(demo: Demo, cfg: Config, realm: Realm, admin_env: dict[str, str], vm_host: str | None) -> None:
    """PNGs of the web UI as the admin sees it, for users without a desktop: dashboard, a host with its graphs,
    the VM, its serial and graphical consoles."""
    shots = [Shot("dashboard", "/ui/", "#live", "the dashboard")]
    if demo.nodes:
        host = looked_up(demo, admin_env, "host", "show", (vm_host or demo.nodes[0].fqdn))
        if host is not None:
            shots.append(Shot("host", f"/ui/hosts/{host['id']}", GRAPHS_DRAWN,
                              f"host {host['hostname']} with its graphs"))  # fmt: skip
    if len(demo.nodes) >= 2:
        shots.append(Shot("networks", "/ui/networks", NETWORKS_IN_SYNC, "the logical networks, applied on the nodes"))
    vm = looked_up(demo, admin_env, "vm", "show", VM) if vm_host else None
    if vm is not None:
        shots += [
            Shot("vm", f"/ui/vms/{vm['id']}", "#vm-state", f"VM {VM}"),
            Shot("console-serial", f"/ui/vms/{vm['id']}/console/serial", SERIAL_SHOWS, f"{VM}'s serial console"),
            Shot("console-vnc", f"/ui/vms/{vm['id']}/console/vnc", VNC_DRAWN, f"{VM}'s graphical console"),
        ]
    out = demo.dir / "screenshots"
    say(f"screenshots of the web UI (headless Chromium, signed in with the admin's ticket) into {os.path.relpath(out)}")
    base = f"http://{cfg.hostname}:{cfg.api.port}"
    try:
        # Graphs need the monitor's first samples (collectd sends every 10 s): a minute or two after enrolment.
        taken = take(base, shots, out, realm.files.krb5_conf, admin_env, cfg.hostname, timeout_s=180)
    except (PlaywrightError, OSError) as exc:  # no browser must not end the demo: the fleet is up
        say(f"no screenshots: {str(exc).splitlines()[0]}")
        return
    for done in taken:
        state = "" if done.complete else f" (incomplete: {done.note})"
        say(f"  {os.path.relpath(done.file)}: {done.shot.what}{state}")


def write_env(demo: Demo, cfg: Config, lab_hosts: LabHosts) -> Path:
    """A file to source in another shell: the demo's config, realm and node names."""
    path = demo.dir / "env"
    exports = {
        **demo.env(),
        "KRB5_CONFIG": str(cfg.realm_dir / "krb5.conf"),
        "KRB5CCNAME": f"FILE:{demo.dir / 'ccache'}",
        "PATH": f"{VENV_BIN}:$PATH",
        **lab_hosts.env,
    }
    lines = ["# . this file: the drover demo's appliance, realm and node names (nss_wrapper) in this shell"]
    lines += [f"export {k}={v if k == 'PATH' else shlex.quote(v)}" for k, v in exports.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def instructions(demo: Demo, cfg: Config, realm: Realm, env_file: Path, vm_host: str | None) -> None:
    rel = os.path.relpath(env_file)
    keytabs = os.path.relpath(realm.files.root)
    node = demo.nodes[0] if demo.nodes else PxeNode.numbered(1, DOMAIN, "")
    appliance_kinit = (f"  kinit -k -t {keytabs}/appliance.keytab {APPLIANCE_CLIENT}@{realm.name}"
                       "     # nodes let only the appliance in")  # fmt: skip
    stops = "demo: Ctrl-C stops the nodes, the appliance and the NFS server"
    print(
        f"""
demo: ready. In another shell:
  . {rel}
  kinit -k -t {keytabs}/admin.keytab {FIRST_ADMIN}@{realm.name}      # the realm's first admin (super_admin)
  drover host list; drover host show {node.fqdn}
  drover host metrics {node.fqdn}       # collectd on the node, signed, into VictoriaMetrics (values every 10 s)
  Prometheus: http://localhost:{cfg.api.port}/metrics   TSDB (PromQL): {cfg.tsdb_url}
  API: http://localhost:{cfg.api.port}/api/v1/hosts   (SPNEGO: curl --negotiate -u : URL)
  Web UI: http://{cfg.hostname}:{cfg.api.port}/ui/   with the ticket above (README "Web UI"):
    chromium --auth-server-allowlist='{cfg.hostname}' http://{cfg.hostname}:{cfg.api.port}/ui/
    (no ticket: the page asks for a realm user's password instead)
{vm_lines(vm_host, demo.nodes)}{appliance_kinit}
  virsh -c {node.uri} list --all
{console_lines(vm_host)}{stops} (state stays in {os.path.relpath(demo.dir)}; rm -rf it to start over).
""",
        flush=True,
    )


def vm_lines(vm_host: str | None, nodes: Sequence[PxeNode]) -> str:
    if vm_host is None:
        return ""
    lines = f"""  drover vm list; drover vm show {VM}; drover task list
  drover vm shutdown {VM} --wait; drover vm start {VM} --wait      # through the task engine
"""
    back = next((node.fqdn for node in nodes if node.fqdn != vm_host), None)
    if back is not None:
        lines += f"""  drover network list; drover host network {vm_host}      # VLANs the node agents applied
  drover vm migrate {VM} --host {back} --wait      # live, over network {MIG_NET}
"""
    return lines


def console_lines(vm_host: str | None) -> str:
    if vm_host is None:
        return ""
    uri = f"qemu+tcp://{vm_host}/system"
    return f"""  drover vm console {VM}          # its serial console through the appliance (Ctrl-] leaves)
  drover vm console {VM} --vnc    # the address of its graphical console (noVNC) in the web UI
  virsh -c {uri} console {VM}      # the same serial console straight from the node's libvirt
"""


def run_demo(demo: Demo, stop: threading.Event) -> int:
    demo.dir.mkdir(parents=True, exist_ok=True)
    say("node image: building it, or reusing the cached build")
    drover(demo, "image", "build", "--flavor", "debian", "--profile", "hypervisor", "--out", str(demo.dir / "image"))
    drover(demo, "realm", "init")
    drover(demo, "boot", "use", str(demo.dir / "image"))
    cfg = demo.config()
    realm = Realm.from_config(cfg)
    lab_hosts = LabHosts(demo.hosts_file)
    lab_hosts.add("localhost", "127.0.0.1")
    for node in demo.nodes:
        lab_hosts.add(node.fqdn, node.address)
    say(f"starting the appliance: drover serve (log: {os.path.relpath(demo.dir / 'serve.log')})")
    appliance = Appliance(demo, cfg, lab_hosts)
    guests: dict[str, Guest] = {}
    db = make_engine(cfg.database_url)
    nfs: LabNfs | None = None
    vm_host: str | None = None
    # Two nodes or more share an L2 segment of the demo's own (a network namespace with a bridge, the nodes'
    # second NICs as taps): the logical networks' wire. Nothing on this machine's own network changes.
    seg = Segment(name=f"drover-demo-{os.getpid()}") if len(demo.nodes) >= 2 else None
    try:
        appliance.wait_ready()
        say(f"appliance up: API http://localhost:{cfg.api.port}, boot service http://127.0.0.1:{cfg.nodes.boot_port}")
        admin = {"KRB5CCNAME": f"FILE:{demo.dir / 'admin.ccache'}", **realm.env()}
        subprocess.run(
            ["kinit", "-k", "-t", str(realm.files.admin_keytab), f"{FIRST_ADMIN}@{realm.name}"],
            env={**admin, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            check=True,
        )
        admin_env = {**admin, **lab_hosts.env}
        if demo.nodes:
            # Nobody else gets a token: a window for exactly these machines, the way an admin enrols a rack.
            macs = [arg for node in demo.nodes for arg in ("--mac", node.mac)]
            say(f"opening an enrolment window for the demo's {len(demo.nodes)} node(s): drover host enrol "
                f"--window 15m --count {len(demo.nodes)} {' '.join(macs)}")  # fmt: skip
            drover(demo, "host", "enrol", "--window", "15m", "--count", str(len(demo.nodes)), *macs,
                   extra_env=admin_env, capture=True)  # fmt: skip
            chosen = accel.detect()
            note = "" if chosen is accel.Accel.KVM else " (no KVM that boots guests here: expect 1.5-3 min per boot)"
            say(f"PXE-booting {len(demo.nodes)} node(s) in qemu, accelerator {chosen}{note}")
            for node in demo.nodes:
                guests[node.name] = boot(node, demo.dir / "nodes", cfg.nodes.boot_port, chosen, segment=seg)
                say(f"{node.name}: powered on (MAC {node.mac}, DMI UUID {node.uuid}, serial log "
                    f"{os.path.relpath(guests[node.name].serial_log)})")  # fmt: skip
            if not watch(demo, db, guests, appliance, stop):
                return 1 if not stop.is_set() else 0
            drover(demo, "host", "enrol", "--close", extra_env=admin_env, capture=True)
            say("enrolment window closed: their reboots get tokens bound to them; any other machine waits as pending")
        say("drover host list")
        print(drover(demo, "host", "list", extra_env=admin_env, capture=True), end="", flush=True)
        if demo.nodes and not stop.is_set():
            appliance_env = {"KRB5CCNAME": f"FILE:{demo.dir / 'appliance.ccache'}", **realm.env(), **lab_hosts.env}
            subprocess.run(
                ["kinit", "-k", "-t", str(realm.files.appliance_keytab), f"{APPLIANCE_CLIENT}@{realm.name}"],
                env={**appliance_env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                check=True,
            )
            if seg is not None:
                networks(demo, admin_env)
            nfs = start_storage_server(demo)
            storage(demo, admin_env, nfs)
            vm_host = run_vms(demo, admin_env, appliance_env)
        if not stop.is_set():
            screenshots(demo, cfg, realm, admin_env, vm_host)
        instructions(demo, cfg, realm, write_env(demo, cfg, lab_hosts), vm_host)
        # Keep watching: a node that goes away or comes back is worth a line.
        last = host_states(db, demo.nodes)
        while not stop.wait(1.0):
            now = host_states(db, demo.nodes)
            for node in demo.nodes:
                row = now.get(node.uuid)
                if row is not None and row != last.get(node.uuid):
                    say(f"{node.name}: host {row.id} {row.state}")
            last = now
        return 0
    finally:
        say("stopping: nodes, appliance, NFS server, KDC")
        for guest in guests.values():
            guest.kill()
        appliance.stop()
        if nfs is not None:
            nfs.stop()
        if seg is not None:
            seg.close()
        db.dispose()
        try:
            if realm.pid() is not None:
                drover(demo, "realm", "stop", capture=True)
        except DemoError as exc:
            say(str(exc))
        say("stopped")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--dir", type=Path, default=ROOT / ".demo", help="where everything lives (default: .demo)")
    p.add_argument("--nodes", type=int, default=2, help="how many qemu nodes to PXE-boot (default: 2, max 50)")
    p.add_argument(
        "--first-address", type=int, default=201, help="node N's libvirtd is forwarded to 127.0.0.(first+N-1)"
    )
    a = p.parse_args(argv)
    if not 0 <= a.nodes <= 50 or not 2 <= a.first_address <= 254 - a.nodes:
        p.error("--nodes must be 0..50 and the node addresses must fit in 127.0.0.2..254")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    nodes = tuple(PxeNode.numbered(n, DOMAIN, f"127.0.0.{a.first_address + n - 1}") for n in range(1, a.nodes + 1))
    demo = Demo(a.dir.resolve(), nodes)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return run_demo(demo, stop)
    except (DemoError, DroverError, subprocess.CalledProcessError) as exc:
        if stop.is_set():  # Ctrl-C reached the command under way too: not a failure
            return 0
        say(f"failed: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
