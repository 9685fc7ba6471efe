#!/bin/bash
# dracut module "drover-live": room for the live root's RAM overlay, then release the boot media.

check() {
    # only when named in add_dracutmodules
    return 255
}

depends() {
    echo dmsquash-live
    return 0
}

install() {
    inst_hook pre-mount 10 "$moddir/live-room.sh"
    inst_hook pre-pivot 90 "$moddir/release-media.sh"
}
