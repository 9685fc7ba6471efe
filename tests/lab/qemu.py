"""qemu guests for the lab: network boot through iPXE, boot from a USB stick or CD, serial log markers.

Reusable by any test that boots a node: `start_guest()` takes the boot source, extra kernel
arguments (for direct kernel boot) and extra qemu arguments; `Guest.wait_for()` waits for a
serial-console pattern with a timeout; `Guest.kill()` stops qemu for good. The accelerator comes
from tests/lab/accel.py: KVM when it really boots a kernel, TCG otherwise (LAB.md: the paravirtual
KVM here starts guests that then die).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.runner import spawn

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# The address qemu's user network gives the host (its loopback), as seen from the guest.
HOST_FROM_GUEST = "10.0.2.2"


@dataclass(frozen=True)
class UserNet:
    """What qemu's user network tells and gives the guest beyond an address.

    hostname/domainname go into its DHCP lease (a stateless node takes its name from there);
    each forward is (host address, host port, guest port), TCP, so loopback clients reach a guest
    service on an address of their own.
    """

    hostname: str = ""
    domainname: str = ""
    forwards: tuple[tuple[str, int, int], ...] = ()

    def options(self) -> str:
        opts = "".join(f",{k}={v}" for k, v in (("hostname", self.hostname), ("domainname", self.domainname)) if v)
        return opts + "".join(f",hostfwd=tcp:{a}:{hp}-:{gp}" for a, hp, gp in self.forwards)


@dataclass
class Guest:
    name: str
    proc: subprocess.Popen[bytes]
    serial_log: Path
    qemu_log: Path
    accel: str
    started: float = field(default_factory=time.monotonic)

    def serial(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float) -> tuple[re.Match[str], float]:
        """The first match of `pattern` on the serial console and the seconds since start."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.serial())
            if found:
                return found, time.monotonic() - self.started
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name}: qemu exited ({self.proc.returncode}) before {pattern!r}:\n"
                    f"{self.qemu_log.read_text(errors='replace')[-2000:]}\n{self.serial()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: no {pattern!r} on the serial console after {timeout:.0f}s ({self.accel});"
                    f" last output:\n{self.serial()[-3000:]}"
                )
            time.sleep(0.5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _base_argv(accel: str, memory_mb: int, serial_log: Path) -> list[str]:
    return [
        QEMU,
        "-accel",
        accel,
        "-machine",
        "q35",
        "-cpu",
        "max" if accel == "tcg" else "host",
        "-smp",
        "1",
        "-m",
        str(memory_mb),
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-chardev",
        f"file,id=ser0,path={serial_log}",
        "-serial",
        "chardev:ser0",
    ]


def start_guest(
    name: str,
    workdir: Path,
    *,
    accel: str,
    memory_mb: int = 1024,
    tftp_dir: Path | None = None,
    bootfile: str = "boot.ipxe",
    usb_stick: Path | None = None,
    cdrom: Path | None = None,
    kernel: Path | None = None,
    initrd: Path | None = None,
    kernel_args: Sequence[str] = (),
    uefi: bool = False,
    net: UserNet = UserNet(),
    mac: str = "",
    uuid: str = "",
    extra_qemu: Sequence[str] = (),
) -> Guest:
    """Start one guest with a virtio NIC on qemu's user network (DHCP; TFTP when tftp_dir is given)."""
    workdir.mkdir(parents=True, exist_ok=True)
    serial = workdir / f"{name}.serial.log"
    qemu_log = workdir / f"{name}.qemu.log"
    serial.unlink(missing_ok=True)
    argv = _base_argv(accel, memory_mb, serial)
    netdev = "user,id=n0" + net.options()
    if tftp_dir is not None:
        netdev += f",tftp={tftp_dir},bootfile={bootfile}"
    nic = "virtio-net-pci,netdev=n0" + (f",mac={mac}" if mac else "") + (",bootindex=1" if tftp_dir else "")
    argv += ["-netdev", netdev, "-device", nic]
    if uuid:
        argv += ["-uuid", uuid]  # the DMI system UUID the node agent reports
    if usb_stick is not None:
        argv += [
            "-device",
            "qemu-xhci,id=xhci",
            # snapshot=on: the guest may write to its "stick", the artifact on disk never changes.
            "-drive",
            f"if=none,id=stick,format=raw,snapshot=on,file={usb_stick}",
            "-device",
            "usb-storage,bus=xhci.0,drive=stick,bootindex=1",
        ]
    if cdrom is not None:
        argv += [
            "-drive",
            f"if=none,id=cd,format=raw,readonly=on,media=cdrom,file={cdrom}",
            "-device",
            "ide-cd,drive=cd,bootindex=1",
        ]
    if kernel is not None:
        argv += ["-kernel", str(kernel), "-append", " ".join(kernel_args)]
        if initrd is not None:
            argv += ["-initrd", str(initrd)]
    if uefi:
        vars_copy = workdir / f"{name}.OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        argv += [
            "-drive",
            f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,file={vars_copy}",
        ]
    argv += list(extra_qemu)
    (workdir / f"{name}.argv").write_text("\n".join(argv) + "\n")
    # Its own session: a Ctrl-C at the terminal goes to the test or demo, which then stops its guests.
    return Guest(name, spawn(argv, log_file=qemu_log, new_session=True), serial, qemu_log, accel)


@pytest.fixture
def guests() -> Iterator[list[Guest]]:
    """Guests a test appends here are killed when it ends, pass or fail."""
    started: list[Guest] = []
    yield started
    for guest in started:
        guest.kill()
