# Runs inside the build root: build drivers/xen/privcmd.c (+ privcmd-buf.c)
# of a (patched) linux-source-6.12 subset as the out-of-tree module
# xen-privcmd.ko against the matching trixie linux-headers, and xenfs.ko
# with it: xenfs imports xen_privcmd_fops, whose modversions CRC changes
# as soon as privcmd.c includes more headers (genksyms expands every type
# that is complete in the unit), so the distribution's xenfs would refuse
# our privcmd ("disagrees about version of symbol", EINVAL).
# Arguments: patched source subset, module dir, kernel version, jobs.
#
# The patched uapi and Xen interface headers (include/uapi/xen,
# include/xen) come first on the include path, so the module compiles
# against them and not against the stock copies in linux-headers; new
# bool Kconfig symbols the patches add to drivers/xen/Kconfig
# (config XEN_PRIVCMD_* not in the pristine Kconfig.orig) are turned on with
# -DCONFIG_...=1.
set -euo pipefail
src=$1 mod=$2 kver=$3 jobs=$4
kdir=/usr/src/linux-headers-$kver
[ -d "$kdir" ] || { echo "no $kdir in the build root" >&2; exit 1; }
rm -rf "$mod"
mkdir -p "$mod/include/uapi"
cp "$src"/drivers/xen/privcmd.c "$src"/drivers/xen/privcmd-buf.c "$src"/drivers/xen/privcmd.h "$mod/"
mkdir -p "$mod/xenfs"
cp "$src"/drivers/xen/xenfs/*.[ch] "$mod/xenfs/"
cp "$src"/drivers/xen/xenfs/Makefile "$mod/xenfs/Kbuild"
sed -i "1i NOSTDINC_FLAGS := -I$mod/include/uapi -I$mod/include \\\$(NOSTDINC_FLAGS)" "$mod/xenfs/Kbuild"
cp -a "$src/include/xen" "$mod/include/xen"
cp -a "$src/include/uapi/xen" "$mod/include/uapi/xen"

defs=
for sym in $(sed -n 's/^config \(XEN_PRIVCMD_[A-Z0-9_]*\)$/\1/p' "$src/drivers/xen/Kconfig"); do
    grep -qx "config $sym" "$src/drivers/xen/Kconfig.orig" && continue
    if ! grep -q "^#define CONFIG_$sym " "$kdir/include/generated/autoconf.h"; then
        echo "enabling CONFIG_$sym (not in the distribution kernel's config)"
        defs="$defs -DCONFIG_$sym=1"
    fi
done
grep -q '^#define CONFIG_MMU_NOTIFIER 1' "$kdir/include/generated/autoconf.h" ||
    echo "warning: the kernel has no CONFIG_MMU_NOTIFIER"

# The selftest's test-only module (tests/kernel/pfnmap-test.c), if given:
# RAM mapped as TTM maps it.
testmods=
if [ -f "$src/gh-pfnmap-test.c" ]; then
    mkdir -p "$mod/pfnmap-test"
    cp "$src/gh-pfnmap-test.c" "$mod/pfnmap-test/"
    echo 'obj-m := gh-pfnmap-test.o' >"$mod/pfnmap-test/Kbuild"
    testmods=pfnmap-test/
fi

cat >"$mod/Kbuild" <<KBUILD
# Patched headers before the kernel's own (NOSTDINC_FLAGS precedes LINUXINCLUDE).
NOSTDINC_FLAGS := -I$mod/include/uapi -I$mod/include \$(NOSTDINC_FLAGS)
ccflags-y += $defs
obj-m := xen-privcmd.o xenfs/ $testmods
xen-privcmd-y := privcmd.o privcmd-buf.o
KBUILD
make -C "$kdir" M="$mod" -j"$jobs" modules 2>&1 | tee "$mod/make.log"
if grep -q 'WARNING:' "$mod/make.log"; then
    echo "modpost or compiler warnings (see above)" >&2
    exit 1
fi
# Prove the patched uapi header was the one compiled in.
grep -q "$mod/include/uapi/xen/privcmd.h" "$mod/.privcmd.o.cmd" || {
    echo "privcmd.o was not compiled against $mod/include/uapi/xen/privcmd.h" >&2
    exit 1
}
grep -q "$mod/include/xen/interface/hvm/dm_op.h" "$mod/.privcmd.o.cmd" || {
    echo "privcmd.o was not compiled against $mod/include/xen/interface/hvm/dm_op.h" >&2
    exit 1
}
cat "$mod/xenfs/Kbuild"
/sbin/modprobe --dump-modversions "$mod/xenfs/xenfs.ko" | grep privcmd
/sbin/modinfo -F srcversion "$mod/xen-privcmd.ko" >"$mod/srcversion"
/sbin/modinfo "$mod/xen-privcmd.ko"
