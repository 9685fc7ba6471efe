"""The kernel command line as the node agent reads it: appliance URL, enrolment token, CA pin, BOOTIF.

The iPXE script the appliance serves puts `drover.appliance=URL drover.token=T drover.ca=sha256:HEX`
on the command line; pxelinux/iPXE add `BOOTIF=01-aa-bb-cc-dd-ee-ff` (01: Ethernet). Nothing is read
at import time: `read()` takes the path, default /proc/cmdline.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent import wire

PROC_CMDLINE = Path("/proc/cmdline")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


class CmdlineError(ValueError):
    """A drover.* parameter is present but malformed (refused rather than ignored)."""


@dataclass(frozen=True)
class KernelCmdline:
    appliance: str = ""  # drover.appliance: the appliance's boot service URL
    token: str = ""  # drover.token: one-time enrolment token
    ca_sha256: str = ""  # drover.ca: 64 lowercase hex digits, SHA-256 of the CA certificate's DER
    boot_mac: str = ""  # from BOOTIF, normalized aa:bb:cc:dd:ee:ff
    # drover.libvirt_allow: SASL user names libvirtd lets in (the appliance's principal), so libvirtd
    # can start at boot already configured, before enrolment brings the keytab
    libvirt_allow: tuple[str, ...] = ()
    params: dict[str, str] = field(default_factory=dict)  # every key=value (last one wins)


def parse_fingerprint(value: str) -> str:
    """`sha256:<hex>` (colons between bytes allowed) -> 64 lowercase hex digits."""
    algo, sep, digest = value.partition(":")
    if not sep or algo.lower() != "sha256":
        raise CmdlineError(f"drover.ca: expected sha256:<hex>, got {value!r}")
    digest = digest.replace(":", "").lower()
    if not _FINGERPRINT.match(digest):
        raise CmdlineError(f"drover.ca: not a SHA-256 digest: {value!r}")
    return digest


def parse_bootif(value: str) -> str:
    """pxelinux's `01-aa-bb-cc-dd-ee-ff` (hardware type 01 first) or a bare MAC -> aa:bb:cc:dd:ee:ff."""
    parts = value.strip().lower().replace(":", "-").split("-")
    if len(parts) == 7 and parts[0] == "01":
        parts = parts[1:]
    try:
        return wire.normalize_mac(":".join(parts))
    except wire.WireError:
        raise CmdlineError(f"BOOTIF: not a MAC address: {value!r}") from None


def parse_users(value: str) -> tuple[str, ...]:
    users = tuple(u for u in value.split(",") if u)
    for user in users:
        if not re.fullmatch(r"[A-Za-z0-9._/@-]{1,256}", user):
            raise CmdlineError(f"drover.libvirt_allow: not a SASL user name: {user!r}")
    return users


def parse(text: str) -> KernelCmdline:
    try:
        words = shlex.split(text)  # the kernel honours double quotes around values
    except ValueError:
        words = text.split()
    params: dict[str, str] = {}
    for word in words:
        key, _, value = word.partition("=")
        params[key] = value
    appliance = params.get("drover.appliance", "")
    if appliance and not re.match(r"^https?://[^/\s]+", appliance):
        raise CmdlineError(f"drover.appliance: not an http(s) URL: {appliance!r}")
    return KernelCmdline(
        appliance=appliance.rstrip("/"),
        token=params.get("drover.token", ""),
        ca_sha256=parse_fingerprint(params["drover.ca"]) if params.get("drover.ca") else "",
        boot_mac=parse_bootif(params["BOOTIF"]) if params.get("BOOTIF") else "",
        libvirt_allow=parse_users(params.get("drover.libvirt_allow", "")),
        params=params,
    )


def read(path: Path = PROC_CMDLINE) -> KernelCmdline:
    return parse(path.read_text(errors="replace"))
