"""What goes into a node image: flavours, profiles, package lists and the kernel modules kept."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeVar

from appliance.errors import UsageError


class Flavor(enum.StrEnum):
    DEBIAN = "debian"  # mmdebstrap + dracut, builds on this Debian host
    FEDORA = "fedora"  # kickstart + lorax's livemedia-creator, builds only on a Fedora host

    def needs_lorax(self) -> bool:
        return self is Flavor.FEDORA


class Profile(enum.StrEnum):
    MINIMAL = "minimal"  # boots, networks and runs the node agent; no hypervisor
    HYPERVISOR = "hypervisor"  # the real node: libvirt + qemu, Kerberos, collectd
    GUEST = "guest"  # not a node: a VM's disk image (cloud-init + qemu guest agent) for `drover template import`

    def runs_guests(self) -> bool:
        return self is Profile.HYPERVISOR

    def is_node(self) -> bool:
        return self is not Profile.GUEST


class Compression(enum.StrEnum):
    # xz is the default: the squashfs sits in the node's RAM for its whole life, so its size is
    # memory as well as download; zstd builds and unpacks faster for a few MB more.
    XZ = "xz"
    ZSTD = "zstd"

    def mksquashfs_args(self) -> list[str]:
        if self is Compression.ZSTD:
            return ["-comp", "zstd", "-Xcompression-level", "19"]
        return ["-comp", "xz", "-Xbcj", "x86"]


E = TypeVar("E", bound=enum.StrEnum)


def parse_enum(kind: type[E], value: str, what: str) -> E:
    """`value` as a member of `kind`, or a UsageError listing the valid choices."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise UsageError(f"unknown {what} {value!r}", f"choose one of: {choices}") from None


# The Debian release the package names below are written for; package names move between releases.
DEBIAN_SUITE = "bookworm"
# The Fedora release the kickstart is written and validated for (pykickstart handler F<n>).
FEDORA_RELEASE = 42

# Boot machinery: only needed to make the initrd, or to find the root over the network.
_DEBIAN_BOOT = (
    "linux-image-amd64",
    "systemd-sysv",
    "systemd-resolved",  # the agent resolves _drover._tcp SRV records; networkd alone writes no resolv.conf
    "udev",
    "dracut",
    "dracut-live",
    "dracut-network",
    "curl",  # livenet fetches the squashfs with curl inside the initrd
    "isc-dhcp-client",  # dracut's network-legacy module runs dhclient (only recommended by dracut-network)
    "procps",  # network-legacy needs pgrep
    "dmsetup",  # dmsquash-live depends on dracut's dm module
    "zstd",
    "xz-utils",  # dracut compresses the initrd with xz
    "iproute2",
    "kmod",
)
# The node agent and the distro packages it may import (ARCHITECTURE.md: no pip on the node).
_DEBIAN_AGENT = (
    "python3",
    "python3-libvirt",
    "python3-gssapi",
    "python3-dbus",
    "python3-pyinotify",
    "python3-zeroconf",
)
_DEBIAN_HYPERVISOR = (
    "libvirt-daemon-system",
    "libvirt-daemon-driver-qemu",
    "qemu-system-x86",
    "qemu-utils",  # qemu-img: libvirt's storage pools create qcow2 volumes with it
    "libsasl2-modules-gssapi-mit",
    "krb5-user",
    "collectd-core",
    # Storage pool clients libvirt runs: mount.nfs (netfs pools), iscsiadm (iscsi pools), LVM (logical).
    "nfs-common",
    "open-iscsi",
    "lvm2",
)
# Packages the initrd needed and the running node does not: purged after dracut has run. usrmerge
# (pulled in by init-system-helpers on a bookworm bootstrap) drags ~50 MB of perl in with it.
DEBIAN_BUILD_ONLY = (
    "dracut",
    "dracut-live",
    "dracut-network",
    "dracut-core",
    "isc-dhcp-client",
    "curl",
    "usrmerge",
    "libfile-find-rule-perl",
    "libnumber-compare-perl",
    "libtext-glob-perl",
    "perl",
    "perl-modules-5.36",
    "libperl5.36",
)

_FEDORA_BASE = (
    "kernel",
    "kernel-modules",
    "systemd",
    "systemd-networkd",
    "systemd-resolved",
    "dracut-live",
    "dracut-network",
    "curl",
    "iproute",
    "kmod",
    "python3",
    "python3-libvirt",
    "python3-gssapi",
    "python3-dbus",
    "python3-inotify",
    "python3-zeroconf",
)
_FEDORA_HYPERVISOR = (
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "qemu-kvm-core",
    "qemu-img",
    "cyrus-sasl-gssapi",
    "krb5-workstation",
    "collectd",
    "nfs-utils",
    "iscsi-initiator-utils",
    "lvm2",
    # Fedora splits plugins into subpackages; the node agent's collectd.conf loads disk and virt too.
    "collectd-disk",
    "collectd-virt",
)


# The guest: a VM that configures itself from drover's NoCloud seed and tells its addresses through the
# guest agent. systemd because cloud-init's Debian package is written for it (generator, four units);
# openssh-server because the SSH key cloud-init installs is there to log in with.
_DEBIAN_GUEST = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "cloud-init",
    "qemu-guest-agent",
    "openssh-server",
    "iproute2",  # cloud-init's networkd renderer and its own interface checks run `ip`
    "netbase",
)


def packages(flavor: Flavor, profile: Profile) -> tuple[str, ...]:
    """The distro packages asked for (their dependencies come along, their recommendations do not)."""
    if profile is Profile.GUEST:
        if flavor is not Flavor.DEBIAN:
            raise UsageError(f"the {profile} profile is built by the debian flavour only", "use --flavor debian")
        return _DEBIAN_GUEST
    if flavor is Flavor.DEBIAN:
        return _DEBIAN_BOOT + _DEBIAN_AGENT + (_DEBIAN_HYPERVISOR if profile.runs_guests() else ())
    return _FEDORA_BASE + (_FEDORA_HYPERVISOR if profile.runs_guests() else ())


# Kernel modules kept, as paths under /lib/modules/<kver>/kernel/ (a directory keeps everything below
# it). Everything else is deleted before depmod and dracut run: GPUs, sound, media, wireless and
# friends are most of a distro kernel's 400 MB of modules and a hypervisor node has none of them.
KEPT_MODULES: tuple[str, ...] = (
    "arch/x86/kvm",  # KVM itself
    "virt/lib",  # irqbypass, for KVM's posted interrupts
    "arch/x86/crypto",
    "crypto",
    "lib",
    "block",
    "fs/squashfs",  # the live root
    "fs/overlayfs",
    "fs/isofs",  # node.iso on CD or USB
    "fs/fat",
    "fs/nls",
    "fs/ext4",
    "fs/jbd2",
    "fs/mbcache.ko",
    "fs/fuse",
    "fs/autofs",  # systemd loads it at boot for automount units
    "fs/nfs",  # libvirt netfs storage pools
    "fs/nfs_common",
    "fs/lockd",
    "net",  # bridges, VLANs, bonding, netfilter for libvirt's networks (wireless pruned below)
    "drivers/virtio",
    "drivers/vhost/vhost_net.ko",  # vhost-net for guests
    "drivers/vhost/vhost_vsock.ko",
    "drivers/vfio",
    "drivers/block/loop.ko",  # the live root's squashfs
    "drivers/block/virtio_blk.ko",
    "drivers/block/nbd.ko",
    "drivers/md/dm-mod.ko",  # device-mapper: dmsquash-live and LVM storage pools
    "drivers/md/dm-snapshot.ko",
    "drivers/md/dm-thin-pool.ko",
    "drivers/md/dm-mirror.ko",
    "drivers/md/dm-zero.ko",
    "drivers/cdrom",
    "drivers/scsi/scsi_mod.ko",
    "drivers/scsi/scsi_common.ko",
    "drivers/scsi/sd_mod.ko",
    "drivers/scsi/sr_mod.ko",
    "drivers/scsi/sg.ko",
    "drivers/scsi/virtio_scsi.ko",
    "drivers/scsi/scsi_transport_sas.ko",
    "drivers/scsi/scsi_transport_iscsi.ko",
    "drivers/scsi/iscsi_tcp.ko",
    "drivers/scsi/libiscsi.ko",
    "drivers/scsi/libiscsi_tcp.ko",
    "drivers/scsi/megaraid",
    "drivers/scsi/mpt3sas",
    "drivers/scsi/hpsa.ko",
    "drivers/ata/libata.ko",
    "drivers/ata/libahci.ko",
    "drivers/ata/ahci.ko",
    "drivers/ata/ata_piix.ko",
    "drivers/ata/ata_generic.ko",
    "drivers/nvme/host/nvme.ko",
    "drivers/nvme/host/nvme-core.ko",
    "drivers/usb/host",
    "drivers/usb/storage",
    "drivers/usb/common",
    "drivers/usb/core",
    "drivers/hid/hid-generic.ko",
    "drivers/hid/usbhid",
    "drivers/hid/hid.ko",
    "drivers/input",
    "drivers/char",
    "drivers/net/virtio_net.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/tun.ko",
    "drivers/net/tap.ko",
    "drivers/net/macvlan.ko",
    "drivers/net/macvtap.ko",
    "drivers/net/veth.ko",
    "drivers/net/vxlan",
    "drivers/net/bonding",
    "drivers/net/team",
    "drivers/net/dummy.ko",
    "drivers/net/mii.ko",
    "drivers/net/mdio",
    "drivers/net/mdio.ko",
    "drivers/net/phy",
    "drivers/net/ethernet/intel/e1000",
    "drivers/net/ethernet/intel/e1000e",
    "drivers/net/ethernet/intel/igb",
    "drivers/net/ethernet/intel/igc",
    "drivers/net/ethernet/intel/ixgbe",
    "drivers/net/ethernet/intel/i40e",
    "drivers/net/ethernet/intel/ice",
    "drivers/net/ethernet/realtek/r8169.ko",
    "drivers/net/ethernet/broadcom/tg3.ko",
    "drivers/net/ethernet/broadcom/bnx2.ko",
    "drivers/net/ethernet/broadcom/bnxt",
    "drivers/pci",
    "drivers/acpi",
    "drivers/firmware",  # qemu_fw_cfg, efivars
    "drivers/edac",
    "drivers/hwmon/coretemp.ko",  # collectd's sensors plugin: CPU temperatures
    "drivers/hwmon/k10temp.ko",
    "drivers/i2c/busses/i2c-piix4.ko",
    "drivers/iommu",
    "drivers/dca",
    "drivers/ptp",
    "drivers/pps",
    "drivers/thermal",
)
# Below a kept directory, these are still pruned (big and useless on a server).
PRUNED_BELOW_KEPT: tuple[str, ...] = (
    "net/wireless",
    "net/mac80211",
    "net/bluetooth",
    "net/nfc",
    "net/6lowpan",
    "net/ieee802154",
    "net/mac802154",
    "drivers/net/ethernet/intel/iwlwifi",
    # protocols no hypervisor node speaks
    "net/ceph",
    "net/rds",
    "net/tipc",
    "net/dccp",
    "net/rxrpc",
    "net/l2tp",
    "net/batman-adv",
    "net/can",
    "net/atm",
    "net/ax25",
    "net/netrom",
    "net/rose",
    "net/x25",
    "net/appletalk",
    "net/phonet",
    "net/smc",
    "net/9p",
    "net/sctp",
    "net/mpls",
    "net/lapb",
    "net/llc/llc2.ko",
    "net/ipx",
    "net/nsh",
    "net/qrtr",
    "net/hsr",
    # input devices a server console does not have
    "drivers/input/joystick",
    "drivers/input/touchscreen",
    "drivers/input/tablet",
    "drivers/input/misc",
    "drivers/input/mouse",
    "drivers/input/rmi4",
    "drivers/input/gameport",
    "drivers/md/bcache",
    "lib/test_bpf.ko",  # a 4.7 MB self-test
)

# The initrd gets only what it needs to find the root: over the network (PXE) or on a CD or a
# USB stick (node.iso). dracut's `drivers=` makes this list exclusive: no generic module set.
INITRD_DRIVERS: tuple[str, ...] = (
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "r8169",
    "tg3",
    "bnx2",
    "squashfs",
    "overlay",
    "loop",
    "isofs",
    "sr_mod",
    "cdrom",
    "sd_mod",
    "ahci",
    "ata_piix",
    "nvme",
    "usb_storage",
    "uas",
    "xhci_pci",
    "xhci_hcd",
    "ehci_pci",
    "uhci_hcd",
    "ohci_pci",
    "dm_mod",
    "nls_utf8",
    "vfat",
)


# The guest's kernel modules: what a KVM/TCG guest on virtio (or an emulated SATA/IDE CD-ROM) can meet, and
# what cloud-init's network-config may ask for (VLANs, bonds, bridges). The rest of the 400 MB goes.
GUEST_MODULES: tuple[str, ...] = (
    "arch/x86/crypto",
    "crypto",
    "lib",
    "block",
    "fs/ext4",
    "fs/jbd2",
    "fs/mbcache.ko",
    "fs/isofs",  # the NoCloud seed
    "fs/fat",
    "fs/nls",
    "fs/autofs",
    "net/packet",
    "net/ipv4",
    "net/ipv6",
    "net/core",
    "net/802",
    "net/8021q",
    "net/bridge",
    "net/llc",
    "net/sched",
    "drivers/virtio",
    "drivers/block/virtio_blk.ko",
    "drivers/scsi/virtio_scsi.ko",
    "drivers/scsi/sd_mod.ko",
    "drivers/scsi/sr_mod.ko",
    "drivers/scsi/scsi_mod.ko",
    "drivers/scsi/scsi_common.ko",
    "drivers/ata/libata.ko",
    "drivers/ata/libahci.ko",
    "drivers/ata/ahci.ko",
    "drivers/ata/ata_piix.ko",
    "drivers/ata/ata_generic.ko",
    "drivers/cdrom",
    "drivers/net/virtio_net.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/bonding",
    "drivers/net/ethernet/intel/e1000",
    "drivers/char",  # virtio_console: the guest agent's channel
    "drivers/input/evdev.ko",
    "drivers/input/serio",
    "drivers/input/keyboard/atkbd.ko",
    "drivers/acpi",  # the power button: `drover vm shutdown`
    "drivers/firmware",  # qemu_fw_cfg
)
# What the guest's initramfs loads to find its root: initramfs-tools with MODULES=list takes only these.
GUEST_INITRD_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "ata_piix",
    "ext4",
    "crc32c_generic",
)


@dataclass(frozen=True)
class Recipe:
    """Everything a build depends on besides files: the inputs the cache key is computed from."""

    flavor: Flavor
    profile: Profile
    compression: Compression
    packages: tuple[str, ...]
    kept_modules: tuple[str, ...]
    initrd_drivers: tuple[str, ...]

    @classmethod
    def of(cls, flavor: Flavor, profile: Profile, compression: Compression = Compression.XZ) -> Recipe:
        if profile is Profile.GUEST:
            return cls(flavor, profile, compression, packages(flavor, profile), GUEST_MODULES, GUEST_INITRD_MODULES)
        return cls(flavor, profile, compression, packages(flavor, profile), KEPT_MODULES, INITRD_DRIVERS)
