"""The libvirt domain XML of a VM, built from its database row with xml.etree: the one place it is written.

Disks come from the VM's storage volumes, NICs from its logical networks; every VM gets a serial console
(a pty, logged on the host under /var/log/libvirt/qemu/<name>-serial.log) and VNC graphics for the web
console. The domain type is KVM when the host's capabilities offer it for the VM's architecture and the
host record says KVM works there, TCG ("qemu") otherwise: decided from the host at run time, per host.
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from appliance.db.models import BootDevice, Firmware, HypervisorType, StorageType, Vm

SERIAL_LOG_DIR = "/var/log/libvirt/qemu"


@dataclass(frozen=True)
class HostCaps:
    """What the domain needs to know of the host it is defined on."""

    domain_types: frozenset[str]  # for the VM's architecture, from libvirt's capabilities: {"qemu", "kvm"}
    kvm_usable: bool  # the host record: KVM works there (a paravirtual /dev/kvm may list kvm and not run it)

    @property
    def domain_type(self) -> str:
        return "kvm" if "kvm" in self.domain_types and self.kvm_usable else "qemu"


def caps_from_xml(capabilities: str, arch: str, hypervisor: HypervisorType) -> HostCaps:
    """Parse virConnect.getCapabilities() for the domain types offered for `arch`."""
    root = ET.fromstring(capabilities)
    types: set[str] = set()
    for guest in root.findall("guest"):
        a = guest.find("arch")
        if a is None or a.get("name") != arch or guest.findtext("os_type") != "hvm":
            continue
        types |= {d.get("type", "") for d in a.findall("domain")}
    return HostCaps(frozenset(t for t in types if t), hypervisor is HypervisorType.KVM)


def serial_log(vm_name: str) -> str:
    return f"{SERIAL_LOG_DIR}/{vm_name}-serial.log"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def build(vm: Vm, caps: HostCaps) -> str:
    """The domain XML for `vm` on a host with `caps`."""
    dom = ET.Element("domain", {"type": caps.domain_type})
    _sub(dom, "name", vm.name)
    _sub(dom, "uuid", vm.uuid)
    if vm.description:
        _sub(dom, "description", vm.description)
    _sub(dom, "memory", str(vm.memory_mib), unit="MiB")
    _sub(dom, "currentMemory", str(vm.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(vm.vcpus))
    os_attrs = {"firmware": "efi"} if vm.firmware is Firmware.UEFI else {}
    os_el = _sub(dom, "os", **os_attrs)
    _sub(os_el, "type", "hvm", arch=str(vm.arch))
    if vm.kernel_path:
        _sub(os_el, "kernel", vm.kernel_path)
        if vm.initrd_path:
            _sub(os_el, "initrd", vm.initrd_path)
        if vm.kernel_cmdline:
            _sub(os_el, "cmdline", vm.kernel_cmdline)
    has_boot_order = any(d.boot_order is not None for d in vm.disks)
    if not vm.kernel_path and not has_boot_order:
        _sub(os_el, "boot", dev={BootDevice.HD: "hd", BootDevice.NETWORK: "network", BootDevice.CDROM: "cdrom"}[
            vm.boot_device])  # fmt: skip
    features = _sub(dom, "features")
    _sub(features, "acpi")  # ACPI: how `shutdown` asks the guest to power off
    _sub(features, "apic")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    for disk in sorted(vm.disks, key=lambda d: d.target_dev):
        volume = disk.volume
        pool_type = volume.storage_pool.type
        block = pool_type in (StorageType.ISCSI, StorageType.LOGICAL)
        el = _sub(devices, "disk", type="block" if block else "file", device="disk")
        _sub(el, "driver", name="qemu", type=str(volume.format), cache="none" if block else "default")
        if volume.path:
            _sub(el, "source", **({"dev": volume.path} if block else {"file": volume.path}))
        else:  # not refreshed yet: let libvirt resolve it in the pool of the same name on the host
            el.set("type", "volume")
            _sub(el, "source", pool=volume.storage_pool.name, volume=volume.name)
        _sub(el, "target", dev=disk.target_dev, bus=str(disk.bus))
        if disk.boot_order is not None:
            _sub(el, "boot", order=str(disk.boot_order))
        if disk.read_only:
            _sub(el, "readonly")
    for nic in sorted(vm.nics, key=lambda n: n.mac):
        network = nic.network
        if network is not None and network.bridge:
            el = _sub(devices, "interface", type="bridge")
            _sub(el, "source", bridge=network.bridge)
        elif network is not None:
            el = _sub(devices, "interface", type="network")
            _sub(el, "source", network=network.name)
        else:  # on no logical network: user-mode networking, outbound only
            el = _sub(devices, "interface", type="user")
        _sub(el, "mac", address=nic.mac)
        _sub(el, "model", type=str(nic.model))
        if network is not None and network.mtu:
            _sub(el, "mtu", size=str(network.mtu))
    # The qemu guest agent's channel: a guest running it tells its IP addresses (vm show), others ignore it.
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=serial_log(vm.name), append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    # Where VNC listens and on which ports is the node's (qemu.conf vnc_listen, which the node agent sets to
    # every address so the appliance's console proxy reaches it; remote_display_port_*): the same definition
    # then fits every host it migrates to. The password is random and never shown to anyone: a console
    # replaces it with a one-time password through libvirt for the proxy's own login (appliance.console).
    graphics = _sub(devices, "graphics", type="vnc", port="-1", autoport="yes", passwd=secrets.token_urlsafe(6)[:8])
    _sub(graphics, "listen", type="address")
    _sub(devices, "memballoon", model="none")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")
