#!/bin/bash
# dracut module "drover-live": makes room for the live root's RAM overlay (see live-room.sh).

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
}
