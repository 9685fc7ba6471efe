"""drover's configuration: one TOML file plus DROVER_* environment overrides, into frozen dataclasses.

The dataclass fields are the settings table: their names give the TOML keys and the environment
variables (`[database] url` <-> DROVER_DATABASE_URL; top-level `state_dir` <-> DROVER_STATE_DIR),
their defaults are what `drover config show` prints when nothing overrides them.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import math
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from appliance.errors import ConfigError

DEFAULT_CONFIG_FILE = Path("/etc/drover/drover.toml")
ENV_PREFIX = "DROVER_"
ENV_CONFIG_FILE = "DROVER_CONFIG"


class KerberosMode(enum.StrEnum):
    EMBEDDED = "embedded"  # an MIT KDC drover runs itself under its state dir
    EXTERNAL = "external"  # an existing MIT or FreeIPA realm, reached with an admin keytab


def _default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/drover")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "drover"


@dataclass(frozen=True)
class DatabaseConfig:
    # Empty means SQLite at <state_dir>/drover.db; PostgreSQL: postgresql+psycopg://user@host/db
    url: str = ""


@dataclass(frozen=True)
class KerberosConfig:
    mode: KerberosMode = KerberosMode.EMBEDDED
    realm: str = "DROVER.TEST"
    # The appliance's own host name: its HTTP/ and libvirt-client principals are made for it.
    hostname: str = ""
    kdc_host: str = "127.0.0.1"
    kdc_port: int = 8088
    kadmin_port: int = 8749
    admin_principal: str = "drover/admin"
    # External realms only: a keytab for admin_principal with add/get/extract rights in kadm5.acl.
    admin_keytab: str = ""


class TlsMode(enum.StrEnum):
    AUTO = "auto"  # HTTPS unless [api] listen is a loopback address
    ON = "on"  # HTTPS everywhere, loopback included
    OFF = "off"  # plain HTTP: refused at start unless [api] listen is a loopback address (tests, the demo)


def is_loopback(listen: str) -> bool:
    """A listen address no other machine can reach: 127.0.0.0/8, ::1 or localhost."""
    if listen == "localhost":
        return True
    try:
        return ipaddress.ip_address(listen).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ApiConfig:
    listen: str = "127.0.0.1"
    port: int = 8080
    # How clients reach the API; empty means https://<kerberos.hostname>:<port> (http:// when TLS is off).
    url: str = ""
    # Request bodies over this are refused (413) before authentication reads anything.
    max_body_bytes: int = 1024 * 1024
    # The web UI and REST API over HTTPS: with the appliance's own CA (<state_dir>/pki, the node service's
    # certificate) unless the admin gives a PEM certificate (chain) and its key here.
    tls: TlsMode = TlsMode.AUTO
    cert_file: str = ""
    key_file: str = ""
    # Clients (the CLI): the CA that vouches for the API's certificate. Empty: <state_dir>/pki/ca.pem when it
    # is readable (on the appliance), else the system's trusted CAs. `drover ca export` prints the appliance's.
    ca_file: str = ""


@dataclass(frozen=True)
class NodesConfig:
    """The node-facing side: HTTPS identify/heartbeat with the appliance's own CA, plain HTTP boot files."""

    # The appliance's address on the provisioning network, where nodes PXE-boot and identify. Loopback by
    # default: listening everywhere would offer enrolment on every network the appliance is on.
    listen: str = "127.0.0.1"
    port: int = 8443  # HTTPS: POST /node/v1/identify, /node/v1/heartbeat
    boot_port: int = 8081  # plain HTTP: GET /boot/ca.pem (checked by the node against drover.ca=sha256:...)
    # Extra names and addresses in the server certificate, comma separated (e.g. 10.0.2.2 for qemu user-net).
    extra_names: str = ""
    # host[:port] of the KDC as nodes should reach it; empty: the host the node used to reach us + KDC port.
    kdc_address: str = ""
    libvirt_port: int = 16509  # where nodes' libvirtd listens for qemu+tcp, unless a host row says otherwise
    heartbeat_seconds: int = 10
    # After applying a network change, a node that reaches the appliance within this long keeps it; one
    # that does not puts its previous set-up back (nodeagent/netsetup.py).
    network_rollback_seconds: int = 60
    max_body_bytes: int = 256 * 1024
    # Identify requests a minute from one source address (0: no limit); past it: 429.
    identify_per_minute: int = 60


@dataclass(frozen=True)
class BootConfig:
    """The boot service on [nodes] boot_port: artifacts of one image and a per-MAC iPXE script."""

    # The image directory served (a `drover image build --out` dir with manifest.json); empty means
    # <state_dir>/images/current, the symlink `drover boot use DIR` points at the image to serve.
    image_dir: str = ""
    # Lifetime of the one-time token on an iPXE kernel line. Tokens go only to enrolled hosts rebooting
    # (bound to their DMI UUID) and to machines booting inside an enrolment window (`drover host enrol`);
    # any other machine identifies without one and waits as `pending` for `drover host approve`.
    token_ttl_seconds: int = 3600
    # Per-MAC boot scripts a minute from one source address (0: no limit); past it: 429.
    scripts_per_minute: int = 30


@dataclass(frozen=True)
class HostBrowserConfig:
    """The host browser: one libvirt connection per approved host, run as a thread of `drover serve`."""

    enabled: bool = True
    # libvirt keepalive: a ping every interval seconds, the link is dead after count unanswered ones.
    keepalive_interval: int = 2
    keepalive_count: int = 3
    reconnect_seconds: int = 2  # wait between attempts to reach an unavailable host
    scan_seconds: int = 2  # how often the DB is read for newly approved hosts
    # Connects (libvirt.open has no timeout) run in this many worker threads, at most one per host at a
    # time; one still hanging after connect_timeout_seconds is abandoned and its host reported unavailable.
    connect_workers: int = 4
    connect_timeout_seconds: int = 10
    # How often each connected host is asked for its running VMs' IP addresses (the qemu guest agent when the
    # guest runs one, else the host's neighbour table for the VM's MACs); 0: never.
    addresses_seconds: int = 15
    # Browse _libvirt._tcp (mDNS) on the interface of [nodes] listen (all when 0.0.0.0): an approved host's
    # announcement has it connected now, on the port it announces.
    zeroconf: bool = True


class CollectdSecurity(enum.StrEnum):
    # The levels of collectd's network plugin (monitor.protocol.SecurityLevel has the same values).
    NONE = "none"
    SIGN = "sign"
    ENCRYPT = "encrypt"


@dataclass(frozen=True)
class MonitorConfig:
    """The collectd receiver and the time-series engine behind it, run as threads of `drover serve`."""

    enabled: bool = True
    listen: str = "0.0.0.0"  # nodes send from the provisioning network
    port: int = 25826  # UDP, collectd's default
    # The receiver's host name or address as nodes reach it; empty: the name a node reached [nodes] by.
    node_address: str = ""
    # What nodes are told to use and what the receiver accepts: sign takes signed or encrypted packets,
    # encrypt only encrypted ones, none also plain ones (signed ones are still verified).
    security_level: CollectdSecurity = CollectdSecurity.SIGN
    receive_buffer_bytes: int = 8 << 20  # SO_RCVBUF(FORCE): what the kernel holds while the reader is busy
    queue_packets: int = 4096  # datagrams between the socket reader and the decoder; more are dropped, counted
    # An existing VictoriaMetrics (or a service with its /api/v1/import/prometheus and PromQL API);
    # empty: drover runs VictoriaMetrics itself under <state_dir>/tsdb on 127.0.0.1:tsdb_port.
    tsdb_url: str = ""
    tsdb_port: int = 8428
    tsdb_dir: str = ""  # the embedded TSDB's data; empty: <state_dir>/tsdb
    retention: str = "90d"  # the embedded TSDB's -retentionPeriod (a number alone means months)
    batch_samples: int = 20000  # samples per write
    flush_ms: int = 1000  # a write goes out at least this often while samples wait
    buffer_samples: int = 2_000_000  # held while the TSDB is down; past this the oldest are dropped, counted
    load_seconds: int = 10  # how often each host's current load is written to the database
    types_db: str = ""  # collectd's types.db; empty: the installed collectd's


@dataclass(frozen=True)
class TaskEngineConfig:
    """The task engine: worker threads of `drover serve` (or `drover taskengine run`) claiming tasks under a lease."""

    enabled: bool = True  # run it inside `drover serve`
    workers: int = 4  # threads per process; tasks on different VMs run in parallel, one at a time per VM
    # A claim's lease; the worker renews it every third of this. A worker killed holding a task loses it
    # after this long, and the next one reconciles the task with libvirt before finishing or re-running it.
    lease_seconds: int = 30
    poll_ms: int = 500  # how often an idle worker looks for tasks (one in the same process is woken at once)
    # Transient libvirt errors (connection lost, host briefly away): this many attempts in all, waiting
    # retry_base_ms, then twice that, ... up to retry_max_seconds between them.
    retries: int = 5
    retry_base_ms: int = 500
    retry_max_seconds: int = 30
    # libvirt keepalive on the engine's connections: a host that stops answering fails the call after about
    # interval * count seconds (a transient error: retried), instead of holding a worker for ever.
    keepalive_interval: int = 5
    keepalive_count: int = 3
    shutdown_timeout_seconds: int = 120  # how long an ACPI shutdown may take before the task fails
    # Live migration: at most this many at once per host (as source or destination); the allowed downtime
    # starts at downtime_start_ms and rises by downtime_step_ms each time the migration stalls for
    # stall_seconds, up to downtime_max_ms; still stalled after that, the migration is aborted.
    migrations_per_host: int = 2
    downtime_start_ms: int = 100
    downtime_step_ms: int = 100
    downtime_max_ms: int = 1000
    stall_seconds: int = 5
    # Peer to peer: the source libvirtd connects to the destination itself (with its own host principal).
    migration_p2p: bool = True
    # Placement lets the vCPUs of a host's VMs add up to this many times its CPUs (memory is never
    # overcommitted). 1.0: one vCPU per CPU; the default 4.0 is what most sites run (idle VMs share cores).
    cpu_overcommit: float = 4.0


@dataclass(frozen=True)
class ConsoleConfig:
    """In-browser and CLI consoles: one-time tickets and the appliance's proxy to a VM's VNC or serial console."""

    ticket_seconds: int = 60  # a ticket must be used (the console connected) within this long
    # An open console re-reads its user's right and its VM's state this often; a revoked right, a stopped or
    # migrated VM closes it at most this late.
    check_seconds: int = 2
    buffer_bytes: int = 256 * 1024  # held per direction while the other side is slow; then the reader waits


@dataclass(frozen=True)
class PowerConfig:
    """How the appliance talks to hosts' BMCs: IPMI over LAN with ipmitool."""

    interface: str = "lanplus"  # ipmitool -I: lanplus (IPMI 2.0, RMCP+) or lan (1.5)
    timeout_seconds: int = 15  # one ipmitool call; a BMC that does not answer by then has failed
    retries: int = 2  # ipmitool -R for status queries; power on and off are sent once (appliance.ipmi)


@dataclass(frozen=True)
class FencingConfig:
    """The fencer (threads of `drover serve`): an unavailable host's grace, soft step, power-off and retries."""

    enabled: bool = True
    # Nothing is fenced this long after the appliance starts: it has not seen the fleet answer yet.
    quiet_seconds: int = 300
    grace_seconds: int = 30  # unavailable this long before anything is done (a blip is not a dead host)
    # Soft step, when the node still heartbeats: its agent restarts libvirtd; back within this long, no fence.
    soft_seconds: int = 30
    confirm_seconds: int = 30  # after power off, the BMC must report "off" within this long
    retry_seconds: int = 30  # between failed fence attempts (each one is an error event)
    poll_seconds: int = 2  # how often the fencer looks at the hosts
    # Several appliance processes on one database: one fences, the holder of a lease it renews every third of
    # this; a holder that stopped (SIGKILL, frozen, cut off) is replaced after at most this long.
    lease_seconds: int = 30
    power_on_after: bool = True  # power a fenced host on again (a stateless node PXE-boots and re-enrols)


@dataclass(frozen=True)
class Config:
    state_dir: Path = field(default_factory=_default_state_dir)
    log_level: str = "info"
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    kerberos: KerberosConfig = field(default_factory=KerberosConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    nodes: NodesConfig = field(default_factory=NodesConfig)
    hostbrowser: HostBrowserConfig = field(default_factory=HostBrowserConfig)
    boot: BootConfig = field(default_factory=BootConfig)
    taskengine: TaskEngineConfig = field(default_factory=TaskEngineConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    power: PowerConfig = field(default_factory=PowerConfig)
    fencing: FencingConfig = field(default_factory=FencingConfig)

    # Derived values: always computed from the settings above, never stored twice.
    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.state_dir / 'drover.db'}"

    @property
    def hostname(self) -> str:
        return self.kerberos.hostname or socket.getfqdn()

    @property
    def api_tls(self) -> bool:
        """Whether `drover serve` answers the API and web UI over HTTPS."""
        if self.api.tls is TlsMode.AUTO:
            return not is_loopback(self.api.listen)
        return self.api.tls is TlsMode.ON

    @property
    def api_url(self) -> str:
        return self.api.url or f"{'https' if self.api_tls else 'http'}://{self.hostname}:{self.api.port}"

    @property
    def tsdb_url(self) -> str:
        return self.monitor.tsdb_url or f"http://127.0.0.1:{self.monitor.tsdb_port}"

    @property
    def realm_dir(self) -> Path:
        return self.state_dir / "realm"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def image_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def boot_image_dir(self) -> Path:
        """The image the boot service serves: [boot] image_dir, else <state_dir>/images/current."""
        return Path(self.boot.image_dir).expanduser() if self.boot.image_dir else self.image_dir / "current"


T = TypeVar("T")


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Turn a TOML or environment value into the field's type, or say which key is wrong."""
    try:
        if typ is Path:
            return Path(str(value)).expanduser()
        if isinstance(typ, type) and issubclass(typ, enum.Enum):
            return typ(value)
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if typ is float:  # ratios: finite and above zero
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not math.isfinite(number) or number <= 0:
                raise ValueError(value)
            return number
        if typ is str:
            if not isinstance(value, str | int | float):
                raise ValueError(value)
            return str(value)
    except ValueError:
        choices = ""
        if isinstance(typ, type) and issubclass(typ, enum.Enum):
            choices = " (one of: " + ", ".join(str(m.value) for m in typ) + ")"
        raise ConfigError(f"{where}: {value!r} is not a valid {getattr(typ, '__name__', typ)}{choices}") from None
    raise ConfigError(f"{where}: unsupported setting type {typ!r}")


def _build(cls: type[T], table: Mapping[str, Any], env: Mapping[str, str], prefix: str, where: str) -> T:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in known:
            raise ConfigError(
                f"{where}: unknown setting {prefix.lower()}{key!s}",
                "see `drover config show` for every valid key",
            )
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        typ = hints[f.name]
        if isinstance(typ, type) and dataclasses.is_dataclass(typ):
            sub = table.get(f.name, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{where}: [{f.name}] must be a table")
            values[f.name] = _build(typ, sub, env, f"{prefix}{f.name}.", where)
            continue
        env_name = ENV_PREFIX + (prefix + f.name).replace(".", "_").upper()
        if env_name in env:
            values[f.name] = _coerce(env[env_name], typ, env_name)
        elif f.name in table:
            values[f.name] = _coerce(table[f.name], typ, f"{where}: {prefix}{f.name}")
    return cls(**values)


def env_names(cls: type[Any] = Config, prefix: str = "") -> set[str]:
    names: set[str] = set()
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            names |= env_names(hints[f.name], f"{prefix}{f.name}.")
        else:
            names.add(ENV_PREFIX + (prefix + f.name).replace(".", "_").upper())
    return names


def config_file(env: Mapping[str, str]) -> Path | None:
    """The TOML file in force: $DROVER_CONFIG, else <$DROVER_STATE_DIR>/drover.toml, else /etc/drover."""
    if env.get(ENV_CONFIG_FILE):
        path = Path(env[ENV_CONFIG_FILE])
        if not path.is_file():
            raise ConfigError(f"config file {path} (from {ENV_CONFIG_FILE}) does not exist")
        return path
    if env.get("DROVER_STATE_DIR"):
        candidate = Path(env["DROVER_STATE_DIR"]) / "drover.toml"
        if candidate.is_file():
            return candidate
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in env_names() | {ENV_CONFIG_FILE})
    if unknown:
        raise ConfigError(f"unknown environment setting {unknown[0]}", "see `drover config show` for valid names")
    path = path or config_file(env)
    table: dict[str, Any] = {}
    where = "environment"
    if path is not None:
        where = str(path)
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return _build(Config, table, env, "", where)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(cfg: Config, source: Path | None = None) -> str:
    """The effective configuration as TOML, with the derived values shown as comments."""
    lines = [f"# drover configuration (file: {source or 'none, defaults and environment only'})"]
    sections: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            sections.append((f.name, value))
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    derived = {
        "database": [("effective url", cfg.database_url)],
        "kerberos": [("effective hostname", cfg.hostname)],
        "api": [("effective url", cfg.api_url)],
        "boot": [("effective image_dir", str(cfg.boot_image_dir))],
        "monitor": [("effective tsdb_url", cfg.tsdb_url)],
    }
    for name, section in sections:
        lines += ["", f"[{name}]"]
        for f in dataclasses.fields(section):
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
        for label, value in derived.get(name, []):
            lines.append(f"# {label}: {value}")
    return "\n".join(lines) + "\n"
