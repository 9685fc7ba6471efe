#!/bin/sh
# The squashfs copied into RAM and the overlay's upper layer both live on /run; the initrd's default
# (a fraction of RAM) leaves a node with ~60 MB free on /. tmpfs only uses what is written, so a
# large limit costs nothing until it is used.
mount -o remount,size=80% /run
mkdir -m 0755 -p /run/overlayfs /run/ovlwork
