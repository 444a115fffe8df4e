#!/usr/bin/env bash
# Boot Xen under QEMU with a throw-away dom0 (the trixie kernel, a busybox
# initramfs, our xen-privcmd.ko) and run hostmem-selftest in it: the quick
# check of the kernel series alone, without the test bed's toolstack, and the
# only one that covers a PVH dom0.
#
#   tests/kernel/qemu-selftest.sh XEN VMLINUZ MODULE SELFTEST [pv|pvh] [ARGS...]
#
#   XEN       multiboot hypervisor image (e.g. the test bed's xen/<key>/xen,
#             or the gunzipped /boot/xen-4.20-amd64.gz of trixie)
#   VMLINUZ   trixie dom0 kernel matching MODULE's vermagic
#   MODULE    xen-privcmd.ko (tests/kernel/build-module.sh), or - for a
#             kernel with privcmd built in (tests/kernel/lockdep-kernel.sh)
#   SELFTEST  hostmem-selftest, linked statically
#   pv|pvh    dom0 mode (default pv); pvh adds an emulated VT-d IOMMU, which
#             Xen requires for a PVH dom0
#   ARGS      selftest arguments (default: --make-domain --seconds 5)
#
# Prints the serial console to stdout (also kept in $TMPDIR) and exits with
# the selftest's status. Needs qemu-system-x86_64, a static busybox, cpio.
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,20p' "$0"; exit 2; }
xen=$1 vmlinuz=$2 module=$3 selftest=$4
mode=${5:-pv}
shift $(($# < 5 ? $# : 5))
args=${*:---make-domain --seconds 5}
busybox=${BUSYBOX:-$(command -v busybox)}
file -L "$busybox" | grep -q 'statically linked' || {
    echo "qemu-selftest: need a static busybox (BUSYBOX=...)" >&2
    exit 2
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp}
cp "$busybox" "$root/bin/busybox"
insmod="insmod /xen-privcmd.ko || echo \"QEMU-SELFTEST: insmod failed\""
if [ "$module" = - ]; then
    insmod=": privcmd built in"
else
    cp "$module" "$root/xen-privcmd.ko"
fi
cp "$selftest" "$root/hostmem-selftest"
cat >"$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
$insmod
/hostmem-selftest $args
echo "QEMU-SELFTEST-EXIT=\$?"
# A lockdep kernel: debug_locks 0 means lockdep turned itself off (after
# a report, or out of room) and checked nothing from then on.
if [ -e /proc/lockdep_stats ]; then
    grep -E 'debug_locks|dependency chains' /proc/lockdep_stats
    grep -qE 'debug_locks: +0' /proc/lockdep_stats && echo "QEMU-SELFTEST: kernel complained (lockdep is off)"
    # What lockdep learnt about privcmd's locks: each class with the locks
    # taken under it, and whether reclaim (fs_reclaim) is known to take them.
    echo "# lockdep classes of privcmd's hostmem locks:"
    awk '/^[0-9a-f]+ FD:/ { ours = / (&reg->lock|&fresh->lock|&data->hostmem_lock|hostmem_guests_lock)\$/; rec = / fs_reclaim\$/ }
        ours || (rec && /FD:|reg->lock|fresh->lock|hostmem/)' /proc/lockdep
fi
dmesg | grep -E 'BUG:|WARNING:|Oops|cannot revoke' && echo "QEMU-SELFTEST: kernel complained"
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"

machine=(-machine pc)
xenargs="console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M loglvl=all guest_loglvl=all"
if [ "$mode" = pvh ]; then
    machine=(-machine q35,kernel-irqchip=split -device intel-iommu,intremap=on)
    xenargs="$xenargs dom0=pvh"
fi
log=${TMPDIR:-/tmp}/qemu-selftest.$$.log
# QEMU's -initrd splits on commas: the paths must not contain any.
timeout "${QEMU_TIMEOUT:-600}" qemu-system-x86_64 "${machine[@]}" -accel tcg \
    -cpu qemu64,+svm,+npt -m 2048 -smp 2 -display none -no-reboot \
    -serial "file:$log" -monitor none -kernel "$xen" -append "$xenargs" \
    -initrd "$vmlinuz console=hvc0 earlyprintk=xen,$work/initrd.gz" </dev/null || true
cat "$log"
rc=$(sed -n 's/^QEMU-SELFTEST-EXIT=\([0-9]*\).*/\1/p' "$log" | tail -n1)
if grep -q 'QEMU-SELFTEST: kernel complained' "$log"; then
    echo "qemu-selftest: the kernel logged a warning (see above)" >&2
    exit 1
fi
[ -n "$rc" ] || { echo "qemu-selftest: the selftest did not finish (log $log)" >&2; exit 1; }
echo "qemu-selftest: $mode dom0, selftest exit $rc (log $log)"
exit "$rc"
