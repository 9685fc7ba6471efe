"""Lab fixture: real libvirtd "nodes" that accept only Kerberos (SASL GSSAPI) on a loopback TCP port.

Each node is one libvirtd in its own mount + UTS namespace (`unshare -m -u`): private bind mounts
give it its own /etc/libvirt, /run, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt,
so several nodes (and their qemu guests) never share a path, and `hostname` inside is the node's
FQDN. Nothing on the real host changes. Its TCP listener takes SASL GSSAPI with a keytab for
`libvirt/<fqdn>@REALM` from the lab KDC; only the SASL usernames in `allowed_users` get in.

`libvirt_node` (node1.example.test) is shared by the whole session; `libvirt_nodes.start(fqdn)`
starts more (enrolment, migration). Clients reach a node by name through nss_wrapper
(`lab_hosts.env`), so the URI's host and the service principal match as on a real network;
`client_env()`, `virsh()` and `client_python()` run client subprocesses that way.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.kerberos.realm import APPLIANCE_CLIENT
from appliance.runner import run, spawn
from tests.lab import accel
from tests.lab.guest import GuestImage
from tests.lab.kdc import APPLIANCE_HOST, LabKdc
from tests.lab.net import etc_hosts_twin, free_port
from tests.lab.proc import terminate

log = logging.getLogger(__name__)

NSS_WRAPPER = Path("/usr/lib/x86_64-linux-gnu/libnss_wrapper.so")
ROOT = Path(__file__).resolve().parent.parent.parent
NODE1 = "node1.example.test"

# Bind-mounted over the host's paths inside the node's namespace: (host path, dir under the node root).
# /run as a whole because /run/libvirt need not exist on the host, and creating it would be a global change.
_PRIVATE_DIRS = (
    ("/etc/libvirt", "etc"),
    ("/run", "run"),
    ("/var/lib/libvirt", "lib"),
    ("/var/cache/libvirt", "cache"),
    ("/var/log/libvirt", "log"),
)


@dataclass(frozen=True)
class NodeSettings:
    """Everything that makes one lab node different from another."""

    fqdn: str
    address: str
    port: int
    allowed_users: tuple[str, ...] = (APPLIANCE_CLIENT,)
    host_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    # libvirt log levels: 1 debug, 2 info, 3 warning, 4 error.
    log_level: int = 3
    # A network namespace (`ip netns` name) to run in, reached over a veth the test made (tests/lab/fencerack.py):
    # then its link can be cut. Empty: the machine's own namespace, on a loopback alias.
    netns: str = ""

    @property
    def service_principal(self) -> str:
        return f"libvirt/{self.fqdn}"


def libvirtd_conf(s: NodeSettings, root: Path) -> str:
    users = ", ".join(f'"{u}"' for u in s.allowed_users)
    # The unix socket stays unauthenticated but lives in a 0700 dir of the test's: it is the lab's
    # back door for teardown and for asserting on node state without going through Kerberos.
    return f"""listen_tls = 0
listen_tcp = 1
listen_addr = "{s.address}"
tcp_port = "{s.port}"
auth_tcp = "sasl"
sasl_allowed_username_list = [{users}]
unix_sock_dir = "{root / "sock"}"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
host_uuid = "{s.host_uuid}"
log_outputs = "{s.log_level}:file:{root / "libvirtd.log"}"
"""


def qemu_conf(s: NodeSettings) -> str:
    # VNC on the node's own address, from a port range of its own: lab nodes share one network
    # namespace, and two libvirtds handing out 5900 each would collide (on a migration's destination).
    display = 5900 + 100 * (int(s.address.rsplit(".", 1)[1]) % 500)
    # root, no security driver, no cgroups or namespaces: the lab runs in a container without
    # systemd; stdio_handler "file" means no virtlogd; migration stays on the node's own address.
    return f"""user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
remember_owner = 0
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
migration_address = "{s.address}"
migration_host = "{s.address}"
vnc_listen = "{s.address}"
remote_display_port_min = {display}
remote_display_port_max = {display + 99}
"""


def sasl_conf(keytab: Path) -> str:
    return f"mech_list: gssapi\nkeytab: {keytab}\n"


@dataclass(frozen=True)
class NodeFiles:
    """Config and key a node's libvirtd uses when something else wrote them (the real node agent):
    its libvirtd.conf, the dir holding its SASL `libvirt.conf`, its keytab and (optionally) krb5.conf."""

    libvirtd_conf: Path
    sasl_dir: Path
    keytab: Path
    krb5_conf: Path | None = None


class LabHosts:
    """An nss_wrapper hosts file: how client subprocesses resolve lab names without /etc/hosts.

    Plus a twin in /etc/hosts form (the machine's own lines first) for a process that resolves from
    several threads at once, the appliance: nss_wrapper 1.1.12 corrupts the heap when two threads look
    names up while it reloads a changed file. start_appliance bind-mounts the twin over /etc/hosts in
    the server's own mount namespace, so glibc reads it as it reads /etc/hosts, thread-safely.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.etc_hosts = etc_hosts_twin(path)
        base = Path("/etc/hosts").read_text() if Path("/etc/hosts").is_file() else ""
        self._base = base if base.endswith("\n") or not base else base + "\n"
        self._etc_text = ""
        self._names: dict[str, str] = {}
        self.add(APPLIANCE_HOST, "127.0.0.1")

    def add(self, name: str, address: str) -> None:
        self._names[name] = address
        # One name per line: with aliases on one line, canonicalisation picks the wrong name (LAB.md).
        # Written to a new file and renamed over the old one: nss_wrapper keeps the file open and
        # reloads only when its mtime second changes or the open file was unlinked, so rewriting
        # in place within the second of its last load left a running appliance with stale names.
        lines = "".join(f"{addr} {n}\n" for n, addr in self._names.items())
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.write_text(lines)
        tmp.replace(self.path)
        self._write_twin(self._base + lines)

    def _write_twin(self, text: str) -> None:
        # In place, never renamed: a bind mount follows the inode. Appended when names were only added
        # (the usual case), so a lookup meanwhile sees the old lines or more, never an emptied file.
        if self._etc_text and text.startswith(self._etc_text):
            with self.etc_hosts.open("a") as f:
                f.write(text[len(self._etc_text) :])
        else:
            self.etc_hosts.write_text(text)
        self._etc_text = text

    def address(self, name: str) -> str:
        return self._names[name]

    @property
    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": str(NSS_WRAPPER), "NSS_WRAPPER_HOSTS": str(self.path)}


@dataclass
class LabNode:
    settings: NodeSettings
    root: Path
    process: subprocess.Popen[bytes]
    kdc: LabKdc
    files: NodeFiles | None = None

    @property
    def fqdn(self) -> str:
        return self.settings.fqdn

    @property
    def address(self) -> str:
        return self.settings.address

    @property
    def port(self) -> int:
        return self.settings.port

    def uri(self, driver: str = "qemu") -> str:
        """What the appliance opens: the node's name, so the SPN is libvirt/<fqdn>."""
        path = "default" if driver == "test" else "system"
        return f"{driver}+tcp://{self.fqdn}:{self.port}/{path}"

    @property
    def local_uri(self) -> str:
        """The unauthenticated unix socket, for the lab itself (teardown, assertions)."""
        return f"qemu+unix:///system?socket={self.root / 'sock' / 'libvirt-sock'}"

    @property
    def qemu_log_dir(self) -> Path:
        return self.root / "log" / "qemu"

    def log_text(self) -> str:
        parts = []
        for name in ("libvirtd.log", "libvirtd.stdout"):
            path = self.root / name
            if path.is_file():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def guest_pids(self) -> list[int]:
        """Pids of this node's qemu guests, from the pid files libvirt keeps in the node's /run."""
        pids = []
        for pidfile in (self.root / "run" / "libvirt" / "qemu").glob("*.pid"):
            try:
                pid = int(pidfile.read_text().strip())
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if b"qemu" in cmd:  # a recycled pid is somebody else's process: leave it alone
                pids.append(pid)
        return pids

    def stop_daemon(self, timeout: float = 15) -> None:
        """Stop libvirtd only; its guests keep running, as after a crash of the daemon."""
        terminate(self.process, timeout)

    def restart(self, timeout: float = 30) -> None:
        """Start libvirtd again on the same dirs and port; it reconnects to guests still running."""
        self.stop_daemon()
        self.process = _spawn_libvirtd(self.kdc, self.settings, self.root, self.files)
        _wait_ready(self, timeout)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """libvirtd stopped dead (SIGSTOP) but its sockets open: the kernel still accepts and ACKs TCP, so a
        client notices only through libvirt keepalive. Always continued (SIGCONT) on the way out."""
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.process.pid, signal.SIGCONT)

    def stop(self, timeout: float = 15) -> None:
        """Stop libvirtd, then kill any guest it left running (libvirtd never stops its guests)."""
        self.stop_daemon(timeout)
        pids = self.guest_pids()
        for pid in pids:
            log.info("killing guest qemu %s left by %s", pid, self.fqdn)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The guests are not our children (libvirt daemonizes qemu): wait until they are dead or zombies.
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _namespace_script(settings: NodeSettings, root: Path, conf: Path) -> str:
    """The shell that runs as the namespace's first process: mounts, hostname, then exec libvirtd."""
    lines = ["set -e"]
    for host_path, sub in _PRIVATE_DIRS:
        lines.append(f"mount --bind {shlex.quote(str(root / sub))} {shlex.quote(host_path)}")
    # libvirtd looks the libvirt-qemu user up before it reads qemu.conf (LAB.md); give it one
    # in private copies of passwd/group when the host has none.
    for db, entry in (
        ("passwd", "libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin"),
        ("group", "libvirt-qemu:x:64055:"),
    ):
        if run(["getent", db, "libvirt-qemu"], check=False).returncode != 0:
            copy = root / db
            copy.write_text(Path(f"/etc/{db}").read_text() + entry + "\n")
            lines.append(f"mount --bind {shlex.quote(str(copy))} /etc/{db}")
    # Lab names for libvirtd itself (peer-to-peer migration opens the destination by name): the LabHosts
    # /etc/hosts twin, when the factory linked it as <root>/hosts.
    if (root / "hosts").exists():
        lines.append(f"mount --bind {shlex.quote(str(root / 'hosts'))} /etc/hosts")
    lines.append(f"hostname {shlex.quote(settings.fqdn)}")
    lines.append(f"exec libvirtd --listen -f {shlex.quote(str(conf))} -p {shlex.quote(str(root / 'libvirtd.pid'))}")
    return "\n".join(lines)


def start_node(
    kdc: LabKdc, settings: NodeSettings, root: Path, timeout: float = 30, files: NodeFiles | None = None
) -> LabNode:
    """Lay out the node's private dirs and config, start its libvirtd and wait for its TCP port.

    With `files`, libvirtd.conf, SASL config and keytab are those (written by the node agent), not the lab's.
    """
    t0 = time.monotonic()
    for _, sub in _PRIVATE_DIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "sock").mkdir(mode=0o700, exist_ok=True)
    (root / "log" / "qemu").mkdir(exist_ok=True)  # /var/log/libvirt/qemu, as the package makes it
    # /var/lock (-> /run/lock, private here): libvirt locks a pty there while a console stream holds it.
    (root / "run" / "lock").mkdir(exist_ok=True)
    (root / "sasl").mkdir(exist_ok=True)
    if files is None:
        keytab = kdc.keytab(settings.service_principal, root / "libvirtd.keytab")
        keytab.chmod(0o600)
        (root / "sasl" / "libvirt.conf").write_text(sasl_conf(keytab))
        (root / "etc" / "libvirtd.conf").write_text(libvirtd_conf(settings, root))
    (root / "etc" / "qemu.conf").write_text(qemu_conf(settings))
    node = LabNode(settings, root, _spawn_libvirtd(kdc, settings, root, files), kdc, files)
    try:
        _wait_ready(node, timeout)
    except BaseException:
        node.stop()
        raise
    log.info(
        "libvirtd %s on %s:%s ready in %.2fs", settings.fqdn, settings.address, settings.port, time.monotonic() - t0
    )
    return node


def _spawn_libvirtd(
    kdc: LabKdc, settings: NodeSettings, root: Path, files: NodeFiles | None = None
) -> subprocess.Popen[bytes]:
    if files is None:
        files = NodeFiles(root / "etc" / "libvirtd.conf", root / "sasl", root / "libvirtd.keytab")
    env = {**kdc.env, "SASL_CONF_PATH": str(files.sasl_dir), "KRB5_KTNAME": f"FILE:{files.keytab}",
           # As a client (peer-to-peer migration to another node) libvirtd authenticates as its own
           # libvirt/<fqdn> principal, from its keytab into a ccache of its own.
           "KRB5_CLIENT_KTNAME": f"FILE:{files.keytab}", "KRB5CCNAME": f"FILE:{root / 'client.ccache'}"}  # fmt: skip
    if files.krb5_conf is not None:
        env["KRB5_CONFIG"] = str(files.krb5_conf)
    script = _namespace_script(settings, root, files.libvirtd_conf)
    # unshare without --fork execs in place: the pid we hold is libvirtd's, so terminate() reaches it
    # (nsenter without --fork execs in place too).
    netns = ["nsenter", f"--net=/run/netns/{settings.netns}"] if settings.netns else []
    return spawn(
        [*netns, "unshare", "-m", "-u", "--propagation", "private", "sh", "-c", script],
        env=env,
        log_file=root / "libvirtd.stdout",
    )


def _wait_ready(node: LabNode, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if node.process.poll() is not None:
            raise RuntimeError(
                f"libvirtd for {node.fqdn} exited with {node.process.returncode}:\n{node.log_text()[-4000:]}"
            )
        try:
            with socket.create_connection((node.address, node.port), timeout=0.2):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"libvirtd for {node.fqdn} not listening after {timeout}s:\n{node.log_text()[-4000:]}")
        time.sleep(0.02)


class NodeFactory:
    """Starts lab nodes on distinct loopback addresses and stops every one of them at the end."""

    def __init__(self, kdc: LabKdc, hosts: LabHosts, base: Path, caps_cache: Path | None = None) -> None:
        self.kdc = kdc
        self.hosts = hosts
        self.base = base
        self.caps_cache = caps_cache
        self.nodes: list[LabNode] = []
        # 127.0.0.1 stays the appliance's; nodes get .11, .12, ... (ports keep parallel runs apart).
        self._addresses = (f"127.0.0.{n}" for n in itertools.count(11))

    def plan(
        self, fqdn: str, allowed_users: tuple[str, ...] = (APPLIANCE_CLIENT,), *, port: int = 0, log_level: int = 3
    ) -> NodeSettings:
        """Settings for a node on the next loopback address (its name resolvable at once), not started yet."""
        address = next(self._addresses)
        self.hosts.add(fqdn, address)
        return NodeSettings(fqdn, address, port or free_port(address), allowed_users, log_level=log_level)

    def root_for(self, settings: NodeSettings) -> Path:
        return self.base / f"{settings.fqdn}-{settings.port}"

    def start(
        self,
        fqdn: str,
        allowed_users: tuple[str, ...] = (APPLIANCE_CLIENT,),
        *,
        log_level: int = 3,
        settings: NodeSettings | None = None,
        files: NodeFiles | None = None,
    ) -> LabNode:
        """Start a node; `settings` from plan(), `files` when the node agent wrote its config and keytab."""
        settings = settings or self.plan(fqdn, allowed_users, log_level=log_level)
        root = self.root_for(settings)
        root.mkdir(parents=True, exist_ok=True)
        if self.hosts.etc_hosts.is_file() and not (root / "hosts").exists():
            (root / "hosts").symlink_to(self.hosts.etc_hosts)
        self._share_caps(root)
        node = start_node(self.kdc, settings, root, files=files)
        self.nodes.append(node)
        self.hosts.add(settings.fqdn, settings.address)
        return node

    def _share_caps(self, new_root: Path | None) -> None:
        """Hand qemu capabilities probed by earlier nodes (or runs) to a new node.

        Probing qemu costs each fresh libvirtd 4-8 s on its first qemu call. libvirt re-validates a
        cached file (qemu's and libvirtd's ctimes, kernel, microcode) and re-probes if stale, so
        sharing the cache is safe, and it lives in pytest's cache dir so later runs reuse it too.
        """
        if self.caps_cache is None:
            return
        self.caps_cache.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            for xml in (node.root / "cache" / "qemu" / "capabilities").glob("*.xml"):
                tmp = self.caps_cache / f".{xml.name}.{os.getpid()}"
                shutil.copyfile(xml, tmp)
                os.replace(tmp, self.caps_cache / xml.name)  # atomic: parallel sessions share the dir
        if new_root is not None:
            dest = new_root / "cache" / "qemu" / "capabilities"
            dest.mkdir(parents=True, exist_ok=True)
            for xml in self.caps_cache.glob("*.xml"):
                shutil.copyfile(xml, dest / xml.name)

    def stop_all(self) -> None:
        self._share_caps(None)
        for node in reversed(self.nodes):
            node.stop()
            shutil.rmtree(node.root, ignore_errors=True)
        self.nodes.clear()


def client_env(kdc: LabKdc, hosts: LabHosts, principal: str | None) -> dict[str, str]:
    """A client subprocess's environment: a fresh ticket for `principal` (None: none) + lab names."""
    ticket = kdc.ticket(principal) if principal is not None else kdc.no_ticket()
    return {"PYTHONPATH": str(ROOT), **hosts.env, **ticket}


def virsh(env: dict[str, str], uri: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`virsh -c URI ARGV...` under `env`; output is stdout and stderr together, never raises on exit."""
    return run(["virsh", "-q", "-c", uri, *argv], env=env, check=False, timeout=timeout)


def client_python(
    env: dict[str, str], snippet: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet (the venv's interpreter, libvirt importable) as a client under `env`.

    `args` become sys.argv[1:]. Output is stdout and stderr together; a non-zero exit never raises.
    """
    return run([sys.executable, "-c", snippet, *args], env=env, check=False, timeout=timeout)


def _pytest_cache(request: pytest.FixtureRequest) -> pytest.Cache | None:
    """pytest's cross-run cache (.pytest_cache), or None when run with `-p no:cacheprovider`."""
    cache: pytest.Cache | None = getattr(request.config, "cache", None)
    return cache


@pytest.fixture(scope="session")
def lab_hosts(tmp_path_factory: pytest.TempPathFactory) -> LabHosts:
    return LabHosts(tmp_path_factory.mktemp("hosts") / "nss_hosts")


@pytest.fixture(scope="session")
def libvirt_nodes(
    kdc: LabKdc, lab_hosts: LabHosts, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[NodeFactory]:
    cache = _pytest_cache(request)
    caps = cache.mkdir("drover-qemu-caps") if cache else tmp_path_factory.mktemp("qemu-caps")
    # Short: a unix socket path holds at most 107 bytes, and pytest-xdist's worker dirs (popen-gwN) made
    # <basetemp>/popen-gw1/nodes0/<fqdn>-<port>/sock/libvirt-sock-ro longer than that.
    base = Path(tempfile.mkdtemp(prefix="lv-", dir="/tmp"))
    factory = NodeFactory(kdc, lab_hosts, base, caps)
    try:
        yield factory
    finally:
        factory.stop_all()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def libvirt_node(libvirt_nodes: NodeFactory) -> LabNode:
    return libvirt_nodes.start(NODE1)


@pytest.fixture(scope="session")
def guest_image(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    """Kernel + busybox initramfs for lab guests (see tests/lab/guest.py)."""
    return GuestImage.build(tmp_path_factory.mktemp("guest"))


@pytest.fixture(scope="session")
def guest_accel(guest_image: GuestImage, request: pytest.FixtureRequest) -> accel.Accel:
    """KVM or TCG for lab guests: probed once per host boot (pytest's cache), then per process."""
    cache = _pytest_cache(request)
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    key = f"drover/accel/{boot_id}/{guest_image.kernel.name}"
    known = cache.get(key, None) if cache else None
    if known in {a.value for a in accel.Accel} and not os.environ.get(accel.OVERRIDE_ENV):
        accel.remember(accel.Accel(known))
    found = accel.detect(guest_image)
    if cache:
        cache.set(key, found.value)
    return found
