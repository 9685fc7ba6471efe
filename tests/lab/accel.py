"""Which accelerator lab guests get: KVM where it really boots Linux, TCG everywhere else.

`/dev/kvm` existing proves nothing: a paravirtual KVM (kvm-pvm) opens fine and then hangs or dies
inside the guest kernel. So the only test that counts is booting the lab guest itself under
`-accel kvm` for a few seconds and looking for its marker on the serial port. The answer is cached
per process; the `guest_accel` fixture also caches it across runs for the same host boot.

This lives in the lab, not in the appliance: the appliance picks a domain type from each node's
libvirt capabilities, and a node's own check would belong to the node agent, which cannot import
appliance code.
"""

from __future__ import annotations

import enum
import logging
import os
import tempfile
import time
from pathlib import Path

from appliance.errors import CommandFailed
from appliance.runner import run
from tests.lab.guest import BOOT_MARKER, GuestImage, cmdline

log = logging.getLogger(__name__)

# A real KVM boots the lab kernel to /init in about a second; a loaded 2-core machine gets slack.
PROBE_TIMEOUT = 8.0
# Set to "kvm" or "tcg" to skip the probe (e.g. to force TCG on a machine with working KVM).
OVERRIDE_ENV = "DROVER_LAB_ACCEL"


class Accel(enum.StrEnum):
    KVM = "kvm"
    TCG = "tcg"

    @property
    def domain_type(self) -> str:
        """The libvirt <domain type=...> that runs a guest with this accelerator."""
        return "kvm" if self is Accel.KVM else "qemu"


_cached: Accel | None = None


def kvm_boots(image: GuestImage, workdir: Path, timeout: float = PROBE_TIMEOUT) -> bool:
    """Boot `image` under -accel kvm; True only if its /init printed the marker before `timeout`."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    serial = workdir / "kvm-probe.serial"
    argv = [
        "qemu-system-x86_64",
        "-accel", "kvm",
        "-m", "128",
        "-nodefaults",
        "-display", "none",
        "-no-reboot",  # the guest's `reboot -f` (drover.halt) then ends qemu
        "-serial", f"file:{serial}",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", cmdline("drover.halt"),
    ]  # fmt: skip
    started = time.monotonic()
    try:
        run(argv, check=False, timeout=timeout)
    except CommandFailed:
        log.info("KVM guest made no progress in %.0fs", timeout)
    output = serial.read_text(errors="replace") if serial.is_file() else ""
    ok = BOOT_MARKER in output
    log.info("KVM probe: %s after %.1fs", "booted" if ok else "failed", time.monotonic() - started)
    return ok


def detect(image: GuestImage | None = None) -> Accel:
    """KVM if a guest really boots with it, else TCG; decided once per process."""
    global _cached  # noqa: PLW0603 - a per-process cache of a slow, side-effect-free probe
    if _cached is not None:
        return _cached
    forced = os.environ.get(OVERRIDE_ENV, "")
    if forced:
        _cached = Accel(forced)
        return _cached
    with tempfile.TemporaryDirectory(prefix="drover-accel-") as tmp:
        work = Path(tmp)
        _cached = Accel.KVM if kvm_boots(image or GuestImage.build(work), work) else Accel.TCG
    return _cached


def remember(accel: Accel) -> None:
    """Seed the per-process cache (from a cross-run cache the caller trusts)."""
    global _cached  # noqa: PLW0603 - see detect()
    _cached = accel
