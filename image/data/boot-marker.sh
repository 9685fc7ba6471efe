#!/bin/sh
# One line of boot facts for the console: where / lives, which disks exist and which are mounted,
# memory in use. Plain sh and awk, so it needs nothing the image does not already have.
set -u
root=$(awk '$2 == "/" { fs = $3; src = $1 } END { print fs ":" src }' /proc/self/mounts)
run_fs=$(awk '$2 == "/run" { fs = $3 } END { print fs }' /proc/self/mounts)
upper=$(awk '$2 == "/" { n = split($4, o, ","); for (i = 1; i <= n; i++) if (o[i] ~ /^upperdir=/) u = substr(o[i], 10) } END { print u }' /proc/self/mounts)
disks=""
for dev in /sys/block/*; do
    name=${dev##*/}
    case $name in loop*|ram*|zram*) continue ;; esac
    disks="$disks${disks:+,}$name"
done
loops=""
for file in /sys/block/loop*/loop/backing_file; do
    [ -r "$file" ] || continue
    dev=${file#/sys/block/}
    loops="$loops${loops:+,}${dev%%/*}:$(cat "$file")"
done
disk_mounts=$(awk '$1 ~ /^\/dev\/(sd|vd|hd|sr|nvme|mmcblk)/ { m = m (m ? "," : "") $1 ":" $2 } END { print m }' /proc/self/mounts)
mem=$(awk '/^MemTotal:/ { t = $2 } /^MemAvailable:/ { a = $2 } END { print "mem_total_kb=" t " mem_used_kb=" t - a }' /proc/meminfo)
multi_user=$(systemctl show -P ActiveState multi-user.target 2>/dev/null || echo unknown)
echo "DROVER-BOOT root=$root run_fs=$run_fs upper=${upper:-none} loops=${loops:-none}" \
    "disks=${disks:-none} disk_mounts=${disk_mounts:-none} multi_user=$multi_user $mem" \
    "uptime=$(cut -d' ' -f1 /proc/uptime)"
