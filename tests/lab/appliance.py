"""Lab fixture: the real appliance server (`drover serve`) as a child process, on the lab KDC's realm.

`appliance` is session-scoped; `start_appliance()` gives a test its own server when it needs to stop
or break one. `appliance.drover(...)` runs the CLI as a subprocess under a principal's ticket, with
appliance.example.test resolving to 127.0.0.1 through nss_wrapper, so the URL's host and the
service principal HTTP/appliance.example.test match exactly as they would on a real network.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from appliance.db.engine import make_engine
from tests.lab.kdc import APPLIANCE_HOST, LabKdc
from tests.lab.net import etc_hosts_twin, free_port, free_udp_port
from tests.lab.proc import terminate

DROVER = [sys.executable, "-m", "appliance.cli"]
NSS_WRAPPER = Path("/usr/lib/x86_64-linux-gnu/libnss_wrapper.so")
ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class LabAppliance:
    kdc: LabKdc
    port: int
    state_dir: Path
    database_url: str
    process: subprocess.Popen[bytes]
    log: Path
    node_port: int = 0  # HTTPS identify/heartbeat
    boot_port: int = 0  # plain HTTP /boot/ca.pem
    monitor_port: int = 0  # UDP: the collectd receiver
    tsdb_port: int = 0  # the embedded VictoriaMetrics (under state_dir/tsdb)
    # DROVER_* settings over config_env's, for the server and every CLI run (an external realm's state dir).
    settings: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)  # how it was started, for restart()
    env: dict[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        """https when the test asked for TLS on loopback (DROVER_API_TLS=on), else the loopback default http."""
        return "https" if self.settings.get("DROVER_API_TLS") == "on" else "http"

    @property
    def ca_file(self) -> Path:
        """The CA clients verify the API against: DROVER_API_CA_FILE when the test gave the server a certificate
        of its own, else the appliance's CA (made by `drover serve` under the state dir, the lab KDC's root)."""
        given = self.settings.get("DROVER_API_CA_FILE")
        return Path(given) if given else self.kdc.root / "pki" / "ca.pem"

    @property
    def url(self) -> str:
        """The URL clients use: the appliance's name, as in the HTTP/ service principal."""
        return f"{self.scheme}://{APPLIANCE_HOST}:{self.port}"

    @property
    def local_url(self) -> str:
        """The same server by address, for clients in this process (no nss_wrapper here)."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def config_env(self) -> dict[str, str]:
        """DROVER_* settings that point a drover process at this appliance and the lab realm."""
        return {**config_env(self.kdc, self.port, self.database_url), **self.node_env, **self.settings}

    @property
    def node_env(self) -> dict[str, str]:
        return {"DROVER_NODES_PORT": str(self.node_port), "DROVER_NODES_BOOT_PORT": str(self.boot_port)}

    @property
    def node_url(self) -> str:
        return f"https://127.0.0.1:{self.node_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def cli_env(self, principal: str | None) -> dict[str, str]:
        """Environment of a CLI process: config, a ticket for `principal` (None: no ticket), name resolution."""
        hosts = self.state_dir / "nss_hosts"
        if not hosts.is_file():
            hosts.write_text(f"127.0.0.1 {APPLIANCE_HOST}\n")  # one name per line, see LAB.md
        ticket = self.kdc.ticket(principal) if principal is not None else self.kdc.no_ticket()
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.state_dir),
            "PYTHONPATH": str(ROOT),
            "LD_PRELOAD": str(NSS_WRAPPER),
            "NSS_WRAPPER_HOSTS": str(hosts),
            **self.config_env,
            **ticket,
        }

    def drover(
        self, *argv: str, principal: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `drover ARGV...` as `principal` (a fresh ticket) or, with None, without any ticket."""
        full_env = {**self.cli_env(principal), **(env or {})}
        return subprocess.run(
            [*DROVER, *argv],
            env=full_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def stop(self, timeout: float = 15) -> int:
        return terminate(self.process, timeout)

    def restart(self, timeout: float = 30) -> None:
        """Start it again on the same ports, database and state (after stop() or a kill)."""
        if self.process.poll() is None:
            self.stop()
        self.process = _spawn(self.argv, self.env, self.log)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"drover serve exited with {self.process.returncode}:\n{self.log_text()[-4000:]}")
            try:
                # The CA is made by the server's first start: until then there is nothing to verify against.
                verify: ssl.SSLContext | bool = (
                    ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file.is_file() else True
                )
                if httpx.get(f"{self.local_url}/api/v1/health", timeout=1, verify=verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"drover serve not ready after {timeout}s:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def config_env(kdc: LabKdc, port: int, database_url: str) -> dict[str, str]:
    spec = kdc.realm.spec
    return {
        "DROVER_STATE_DIR": str(kdc.root),  # the realm lives in <state_dir>/realm, as the lab made it
        "DROVER_KERBEROS_REALM": spec.realm,
        "DROVER_KERBEROS_HOSTNAME": APPLIANCE_HOST,
        "DROVER_KERBEROS_KDC_PORT": str(spec.kdc_port),
        "DROVER_KERBEROS_KADMIN_PORT": str(spec.kadmin_port),
        "DROVER_API_LISTEN": "127.0.0.1",
        "DROVER_API_PORT": str(port),
        "DROVER_DATABASE_URL": database_url,
        # The node service: loopback only in the lab, and a certificate valid for 127.0.0.1.
        "DROVER_NODES_LISTEN": "127.0.0.1",
        "DROVER_NODES_EXTRA_NAMES": "127.0.0.1",
    }


def own_resolver(argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The server resolves lab names from LabHosts' /etc/hosts twin, bind-mounted in its own mount namespace.

    nss_wrapper (what `extra_env=lab_hosts.env` asks for) corrupts the heap when two threads resolve while it
    reloads a changed hosts file, and the host browser connects from several threads; glibc reading
    /etc/hosts is thread-safe. Without a twin beside NSS_WRAPPER_HOSTS, nss_wrapper stays as it was.
    """
    hosts = env.get("NSS_WRAPPER_HOSTS", "")
    twin = etc_hosts_twin(Path(hosts)) if hosts else None
    if env.get("LD_PRELOAD") != str(NSS_WRAPPER) or twin is None or not twin.is_file():
        return argv, env
    env = {k: v for k, v in env.items() if k not in ("LD_PRELOAD", "NSS_WRAPPER_HOSTS")}
    # unshare without --fork and sh's exec: the pid the caller holds is the server's own.
    mount = 'mount --bind "$0" /etc/hosts && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, str(twin), *argv], env


def start_appliance(
    kdc: LabKdc,
    state_dir: Path,
    timeout: float = 30,
    extra_env: dict[str, str] | None = None,
    settings: dict[str, str] | None = None,
) -> LabAppliance:
    """Start `drover serve` on free ports and wait until /api/v1/health answers.

    `extra_env` is added to the server's environment (e.g. nss_wrapper so its host browser resolves lab nodes);
    `settings` (DROVER_*) to the server's and to every CLI run's through this LabAppliance.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "serve.log"
    # A PostgreSQL URL in `settings` is the server's database (and the LabAppliance's); else SQLite in state_dir.
    port = free_port()
    database_url = (settings or {}).get("DROVER_DATABASE_URL") or f"sqlite:///{state_dir / 'drover.db'}"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(state_dir), "PYTHONPATH": str(ROOT)}
    env["PYTHONFAULTHANDLER"] = "1"  # a crash in C (libvirt, krb5) leaves every thread's stack in serve.log
    node_port, boot_port = free_port(), free_port()
    nodes = {"DROVER_NODES_PORT": str(node_port), "DROVER_NODES_BOOT_PORT": str(boot_port)}
    # The monitor: its own UDP port and its own embedded TSDB (the lab's state dir is the realm's, shared).
    monitor_port, tsdb_port = free_udp_port(), free_port()
    nodes |= {
        "DROVER_MONITOR_LISTEN": "127.0.0.1",
        "DROVER_MONITOR_PORT": str(monitor_port),
        "DROVER_MONITOR_TSDB_PORT": str(tsdb_port),
        "DROVER_MONITOR_TSDB_DIR": str(state_dir / "tsdb"),
    }
    server_env = {**env, **config_env(kdc, port, database_url), **nodes, **(settings or {}), **(extra_env or {})}
    argv, server_env = own_resolver([*DROVER, "-v", "serve"], server_env)
    lab = LabAppliance(
        kdc, port, state_dir, database_url, _spawn(argv, server_env, log), log, node_port, boot_port, monitor_port,
        tsdb_port, dict(settings or {}), argv, server_env,
    )  # fmt: skip
    lab.wait_healthy(timeout)
    return lab


@pytest.fixture(scope="session")
def appliance(kdc: LabKdc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabAppliance]:
    lab = start_appliance(kdc, tmp_path_factory.mktemp("appliance"))
    yield lab
    lab.stop()


ADMIN = "boss"  # the lab's admin principal in appliances started by admin_appliance()


@contextmanager
def admin_appliance(kdc: LabKdc, state_dir: Path, extra_env: dict[str, str]) -> Iterator[LabAppliance]:
    """start_appliance() with ADMIN holding the admin role, stopped at the end of the block."""
    lab = start_appliance(kdc, state_dir, extra_env=extra_env)
    try:
        added = lab.drover("user", "add", ADMIN, "--role", "admin")
        assert added.returncode == 0, added.stdout + added.stderr
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def db(served: LabAppliance) -> Iterator[Engine]:
    """The database of the module's own `served` appliance."""
    engine = make_engine(served.database_url)
    yield engine
    engine.dispose()
