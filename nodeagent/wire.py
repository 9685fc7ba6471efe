"""The node <-> appliance wire format: plain JSON, described here once and validated on both ends.

Every message is a frozen dataclass with `to_dict()`/`from_dict()`. `from_dict()` is strict: unknown
or missing fields, wrong types, oversized strings and lists, malformed MACs and UUIDs raise WireError
naming the field, so the appliance can refuse bad input before it touches the database. Standard
library only: this module ships inside the node image.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
import json
import re
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024  # an identify with 64 NICs and 64 disks is ~20 KiB
_MAX_STR = 512
_MAX_LIST = 256
_MAX_FLAG_LIST = 512

MAX_DEPTH = 32  # the deepest real message is 4 levels; a deeper body is an attack on the parser
# fullmatch everywhere: `$` would also match before a trailing newline.
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# RFC 1123 host name: labels of 1-63 letters, digits and inner hyphens; 253 characters in all; one
# trailing dot (the root) allowed, it is folded away wherever names are compared.
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\.?$){_LABEL}(?:\.{_LABEL})*\.?", re.ASCII)
# Text the appliance stores, logs and prints: no C0/C1 control characters, no DEL. Multi-line fields
# (krb5.conf, a message) may carry newlines and tabs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_MULTILINE = ("krb5_conf", "keytab_b64", "message")


class WireError(ValueError):
    """A message that does not match the wire format; the text names the offending field."""


class IdentifyStatus(enum.StrEnum):
    ACCEPTED = "accepted"  # credentials are in the response
    PENDING = "pending"  # recorded; an admin must approve before credentials are issued


def normalize_mac(value: str) -> str:
    mac = value.strip().lower().replace("-", ":")
    if not _MAC.fullmatch(mac):
        raise WireError(f"not a MAC address: {value!r}")
    return mac


def normalize_uuid(value: str) -> str:
    uuid = value.strip().lower()
    if not _UUID.fullmatch(uuid):
        raise WireError(f"not a UUID: {value!r}")
    return uuid


def check_hostname(value: str) -> str:
    """An RFC 1123 host name (or FQDN) as it is, or WireError."""
    if not _HOSTNAME.fullmatch(value):
        raise WireError(f"not an RFC 1123 host name: {value!r}")
    return value


def fold_hostname(value: str) -> str:
    """The form host names are compared and stored in: lower case, no trailing dot."""
    return value.lower().rstrip(".")


# Counts the appliance keeps in 32-bit columns (PostgreSQL INTEGER): CPUs, cores, sockets, link speed.
MAX_COUNT = 2**31 - 1


def _port_or_zero(value: int) -> int:
    if not 0 <= value <= 65535:
        raise WireError("not a TCP port (1-65535, or 0: not said)")
    return value


def _at_most_count(value: int) -> int:
    if value > MAX_COUNT:
        raise WireError(f"more than {MAX_COUNT}")
    return value


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str = field(metadata={"check": normalize_mac})
    speed_mbps: int = field(default=0, metadata={"check": _at_most_count})  # 0: unknown or link down
    addresses: tuple[str, ...] = ()
    boot: bool = False  # the NIC the node PXE-booted from (BOOTIF)


@dataclass(frozen=True)
class Disk:
    name: str
    size_bytes: int
    model: str = ""
    serial: str = ""
    rotational: bool = False


@dataclass(frozen=True)
class Cpu:
    model: str
    count: int = field(metadata={"check": _at_most_count})  # logical CPUs
    cores: int = field(metadata={"check": _at_most_count})  # physical cores over all sockets
    sockets: int = field(metadata={"check": _at_most_count})
    flags: tuple[str, ...] = ()

    @property
    def virtualization(self) -> str:
        """'vmx' (Intel VT-x), 'svm' (AMD-V) or '' when the CPU offers neither."""
        for flag in ("vmx", "svm"):
            if flag in self.flags:
                return flag
        return ""


@dataclass(frozen=True)
class Facts:
    uuid: str = field(metadata={"check": normalize_uuid, "required": True})  # DMI system UUID: the host's identity
    hostname: str = field(metadata={"check": check_hostname, "required": True})
    fqdn: str = field(metadata={"check": check_hostname})  # "" when the node knows no domain
    arch: str
    kernel: str
    memory_bytes: int
    cpu: Cpu
    nics: tuple[Nic, ...] = ()
    disks: tuple[Disk, ...] = ()
    boot_mac: str = field(default="", metadata={"check": normalize_mac})
    agent_version: str = ""


@dataclass(frozen=True)
class IdentifyRequest:
    token: str  # one-time enrolment token from the kernel command line; "" when none was given
    facts: Facts
    version: int = WIRE_VERSION


@dataclass(frozen=True)
class Collectd:
    """Where the node's collectd sends (network plugin <Server>) and as whom: a per-host user and secret."""

    server: str  # the appliance's receiver: host name or address
    port: int
    security_level: str  # collectd's spelling: None, Sign or Encrypt
    username: str
    password: str


@dataclass(frozen=True)
class Credentials:
    principal: str  # libvirt/<fqdn>@REALM
    realm: str
    krb5_conf: str
    keytab_b64: str
    allowed_users: tuple[str, ...]  # SASL user names libvirtd must accept (the appliance's client)
    collectd: Collectd | None = None  # None: the appliance runs no monitor


class NetworkApply(enum.StrEnum):
    """Where the node's last network set-up ended (nodeagent/netsetup.py)."""

    APPLIED = "applied"  # written, applied, and a heartbeat reached the appliance afterwards
    ROLLED_BACK = "rolled_back"  # the appliance was lost after applying: the previous set-up is back
    FAILED = "failed"  # could not be written or applied (the text says why); the previous set-up is back


_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


def check_ifname(value: str) -> str:
    """A Linux interface name: 1-15 bytes, no '/', no spaces (what `ip link` and networkd accept)."""
    if not _IFNAME.fullmatch(value):
        raise WireError(f"not an interface name: {value!r}")
    return value


def check_ifnames(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        raise WireError("needs at least one interface")
    return tuple(check_ifname(v) for v in values)


def check_vlan(value: int) -> int:
    if not 0 <= value <= 4094:
        raise WireError(f"VLAN {value} is not 0 (untagged) or 1-4094")
    return value


def check_mtu(value: int) -> int:
    if value and not 68 <= value <= 65535:
        raise WireError(f"MTU {value} is not 68-65535")
    return value


def check_cidr(value: str) -> str:
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        raise WireError(f"not an address with a prefix length: {value!r}") from None
    if "/" not in value:
        raise WireError(f"{value!r} has no prefix length")
    return value


def check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise WireError(f"not an IP address: {value!r}") from None
    return value


def check_boot_protocol(value: str) -> str:
    if value not in ("dhcp", "static", "none"):
        raise WireError(f"{value!r} is not dhcp, static or none")
    return value


@dataclass(frozen=True)
class NetworkPort:
    """One logical network on one host: the bridge it ends in and the NICs (one, or a bond) carrying it."""

    name: str
    bridge: str = field(metadata={"check": check_ifname, "required": True})
    nics: tuple[str, ...] = field(metadata={"check": check_ifnames})  # kernel names; two or more: a bond
    vlan: int = field(default=0, metadata={"check": check_vlan})  # 0: untagged
    mtu: int = field(default=0, metadata={"check": check_mtu})  # 0: the default
    bond: str = field(default="", metadata={"check": check_ifname})  # the bond's device name when it is one
    bond_mode: str = ""
    # dhcp | static | none: the host's own address on the bridge
    boot_protocol: str = field(default="none", metadata={"check": check_boot_protocol})
    address: str = field(default="", metadata={"check": check_cidr})  # with static
    gateway: str = field(default="", metadata={"check": check_ip})
    role: str = "vm"


@dataclass(frozen=True)
class NetworkSetup:
    """The host's whole network set-up as the appliance wants it; `generation` names this exact content."""

    generation: str
    networks: tuple[NetworkPort, ...] = ()
    rollback_seconds: int = 60  # how long the node may go without reaching the appliance after applying


@dataclass(frozen=True)
class NetworkLink:
    """A link as the node saw it after applying: what the appliance compares with what it asked for."""

    name: str
    kind: str = ""  # bridge, vlan, bond, "" for a NIC
    master: str = ""
    up: bool = False
    mtu: int = 0
    vlan: int = 0
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkReport:
    generation: str
    state: NetworkApply
    message: str = ""
    links: tuple[NetworkLink, ...] = ()


@dataclass(frozen=True)
class IdentifyResponse:
    status: IdentifyStatus
    host_id: int
    heartbeat_seconds: int
    credentials: Credentials | None = None
    message: str = ""
    # Per-boot secret the agent sends back in every heartbeat: a DMI UUID is not a secret, so it alone
    # must never be enough to collect a host's keytab after an admin approves it.
    agent_token: str = ""
    network: NetworkSetup | None = None  # None: the appliance asks nothing of the node's links


@dataclass(frozen=True)
class Heartbeat:
    uuid: str = field(metadata={"check": normalize_uuid, "required": True})
    libvirt_ready: bool = False  # libvirtd configured with our keytab and answering
    has_credentials: bool = False
    uptime_seconds: int = 0
    version: int = WIRE_VERSION
    agent_token: str = ""  # from the IdentifyResponse of this boot
    network: NetworkReport | None = None  # the last network set-up the node reached (None: none asked yet)
    # The port its libvirtd listens on, said over this authenticated channel: what the appliance connects to
    # (an unauthenticated mDNS announcement cannot change it). 0: not said (an older agent).
    libvirt_port: int = field(default=0, metadata={"check": _port_or_zero})


@dataclass(frozen=True)
class HeartbeatResponse:
    status: IdentifyStatus
    heartbeat_seconds: int
    credentials: Credentials | None = None  # set once, when a pending host has just been approved
    # The appliance lost this node's libvirtd while the node still beats: restart it (fencing's soft step).
    restart_libvirtd: bool = False
    network: NetworkSetup | None = None


M = TypeVar("M")


def _check_str(value: Any, path: str, limit: int = _MAX_STR) -> str:
    if not isinstance(value, str):
        raise WireError(f"{path}: expected a string")
    if len(value) > limit:
        raise WireError(f"{path}: longer than {limit} characters")
    control = _CONTROL_MULTILINE if path.endswith(_MULTILINE) else _CONTROL
    bad = control.search(value)
    if bad:
        raise WireError(f"{path}: control character U+{ord(bad.group()):04X} at offset {bad.start()}")
    return value


def _decode(typ: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is typing.Union or isinstance(typ, type(int | None)):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return None if value is None else _decode(args[0], value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise WireError(f"{path}: expected a list")
        limit = _MAX_FLAG_LIST if path.endswith("flags") else _MAX_LIST
        if len(value) > limit:
            raise WireError(f"{path}: more than {limit} items")
        (item,) = [a for a in typing.get_args(typ) if a is not Ellipsis]
        return tuple(_decode(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(typ):
        return _from_dict(typ, value, path)  # type: ignore[arg-type]
    if isinstance(typ, type) and issubclass(typ, enum.Enum):
        try:
            return typ(_check_str(value, path))
        except ValueError:
            raise WireError(f"{path}: {value!r} is not one of {[m.value for m in typ]}") from None
    if typ is bool:
        if not isinstance(value, bool):
            raise WireError(f"{path}: expected true or false")
        return value
    if typ is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise WireError(f"{path}: expected an integer")
        if not 0 <= value < 2**63:
            raise WireError(f"{path}: out of range")
        return value
    if typ is str:
        limit = 64 * 1024 if path.endswith(("keytab_b64", "krb5_conf")) else _MAX_STR
        return _check_str(value, path, limit)
    raise WireError(f"{path}: unsupported type {typ!r}")


@functools.cache
def _shape(cls: Any) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """A message class's field types and fields, read once: get_type_hints evaluates every annotation again
    on each call (a twentieth of the appliance's time under 100 heartbeats a second)."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _from_dict(cls: type[M], data: Any, path: str) -> M:
    if not isinstance(data, dict):
        raise WireError(f"{path or 'message'}: expected an object")
    hints, fields = _shape(cast(Any, cls))
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise WireError(f"{path}{'.' if path else ''}{unknown[0]}: unknown field")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise WireError(f"{where}: missing")
            continue
        value = _decode(hints[name], data[name], where)
        check = f.metadata.get("check")
        if value == "" and f.metadata.get("required"):
            raise WireError(f"{where}: must not be empty")
        if check is not None and value != "":
            try:
                value = check(value)
            except WireError as exc:
                raise WireError(f"{where}: {exc}") from None
        values[name] = value
    return cls(**values)


def from_dict(cls: type[M], data: Any) -> M:
    return _from_dict(cls, data, "")


def to_dict(message: Any) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    result: dict[str, Any] = plain(dataclasses.asdict(message))
    return result


def encode(message: Any) -> bytes:
    return json.dumps(to_dict(message), separators=(",", ":")).encode()


def decode(cls: type[M], body: bytes) -> M:
    if len(body) > MAX_MESSAGE_BYTES:
        raise WireError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
    return from_dict(cls, loads(body))


def loads(body: bytes | str) -> Any:
    """JSON, nested at most MAX_DEPTH deep, or WireError (never RecursionError: that is a 500 waiting to happen)."""
    try:
        text = body.decode() if isinstance(body, bytes) else body
    except UnicodeDecodeError as exc:
        raise WireError(f"not JSON (not UTF-8): {exc}") from None
    if _depth(text) > MAX_DEPTH:
        raise WireError(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"not JSON: {exc}") from None


def _depth(text: str) -> int:
    """How deep brackets nest, outside strings: counted before parsing, in one linear pass."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def valid_hostname(name: str) -> bool:
    return bool(_HOSTNAME.fullmatch(name))
