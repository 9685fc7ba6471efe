#!/bin/sh
# With rd.live.ram=1 the root runs from the squashfs copied into RAM; dmsquash-live still leaves the
# CD or stick mounted at /run/initramfs/live. Release it, so the node uses no disk and the stick
# can be pulled.
if getargbool 0 rd.live.ram && grep -q " /run/initramfs/live " /proc/mounts; then
    umount /run/initramfs/live || warn "drover: could not release the live media"
fi
