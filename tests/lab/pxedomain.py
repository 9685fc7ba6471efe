"""Lab nodes that are libvirt domains: the same PXE boot as tests/lab/pxe.py's qemu command, defined in a lab
libvirtd, so a BMC (virtualbmc) can power them on and off as it would a machine.

libvirt 9.0's `<interface type='user'>` cannot carry qemu's TFTP root, boot file or host forwards (its port
forwards need the passt backend), so the NIC is passed through as qemu's own `-netdev user` and `-device`
arguments (`<qemu:commandline>`), built by the same UserNet as the plain qemu node: DHCP with the node's name,
TFTP with the one-line iPXE chain to the appliance, the node's libvirtd port forwarded to its own loopback
address. The domain's UUID is the node's DMI UUID; the MAC is the node's. `on_reboot` destroy is qemu's
`-no-reboot`. The domain is defined only: powering it on is the BMC's job.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

from tests.lab.accel import Accel
from tests.lab.pxe import PxeNode, tftp_root, user_net


def domain_name(node: PxeNode) -> str:
    return f"pxe-{node.name}"


def serial_log(node: PxeNode, workdir: Path) -> Path:
    return workdir / f"{domain_name(node)}.serial.log"


def domain_xml(node: PxeNode, workdir: Path, boot_port: int, accel: Accel, memory_mb: int = 1024) -> str:
    netdev = f"user,id=n0{user_net(node).options()},tftp={tftp_root(node, workdir, boot_port)},bootfile=boot.ipxe"
    nic = f"virtio-net-pci,netdev=n0,mac={node.mac},bootindex=1"
    # TCG gets qemu's `-cpu max` as the plain qemu node does; a working KVM the host's CPU.
    cpu = "<cpu mode='maximum' migratable='off'/>" if accel is Accel.TCG else "<cpu mode='host-passthrough'/>"
    args = "".join(f"<qemu:arg value={quoteattr(a)}/>" for a in ("-netdev", netdev, "-device", nic))
    return f"""<domain type='{accel.domain_type}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{domain_name(node)}</name>
  <uuid>{node.uuid}</uuid>
  <memory unit='MiB'>{memory_mb}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  {cpu}
  <on_reboot>destroy</on_reboot>
  <devices>
    <serial type='file'><source path={quoteattr(str(serial_log(node, workdir)))}/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>{args}</qemu:commandline>
</domain>
"""
