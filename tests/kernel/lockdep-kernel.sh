#!/usr/bin/env bash
# Build a small debug dom0 kernel (lockdep, DEBUG_ATOMIC_SLEEP) from trixie's
# linux-source-6.12 with kernel-patches/ applied and privcmd built in, and run
# hostmem-selftest on it as a PV or PVH dom0 under Xen in QEMU
# (qemu-selftest.sh). Not part of CI: the build takes long on small machines.
#
#   tests/kernel/lockdep-kernel.sh build SOURCE_TARBALL BUILDROOT OUTDIR [JOBS]
#       SOURCE_TARBALL  /usr/src/linux-source-6.12.tar.xz of linux-source-6.12
#       BUILDROOT       a trixie build root with gcc-14, make, bc, flex, bison,
#                       libelf-dev (the test bed's buildroot/<key>/root)
#       OUTDIR          work and cache directory: OUTDIR/bzImage, config,
#                       build.log. The tree is reused (make is incremental)
#                       while the tarball, the series and lockdep.config are
#                       the same (OUTDIR/key); otherwise it is extracted again.
#       The build runs under nice -n 10 in BUILDROOT (chroot, OUTDIR bound on
#       its /tmp in a private mount namespace: nothing is written into it).
#
#   tests/kernel/lockdep-kernel.sh run XEN OUTDIR [pv|pvh] [SELFTEST ARGS...]
#       Link the selftest statically into OUTDIR and boot OUTDIR/bzImage as
#       dom0 under XEN (qemu-selftest.sh with privcmd built in). Default args:
#       --make-domain --require-lend --seconds 10. The console goes to stdout
#       and OUTDIR/console-<mode>.log. Fails if the selftest fails, or if the
#       kernel logged a BUG:/WARNING: (every lockdep report is one) or lockdep
#       turned itself off. Run it under the test bed's lock:
#           flock /var/tmp/gh-e2e.lock tests/kernel/lockdep-kernel.sh run ...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)

die() { echo "lockdep-kernel: $*" >&2; exit 1; }

series() {
    local p
    for p in "$top"/kernel-patches/0*.patch; do
        case "$p" in */0000-cover-letter.patch) continue ;; esac
        echo "$p"
    done
}

build() {
    local tarball=$1 broot=$2 out=$3 jobs=${4:-2} key p src t0 t1
    [ -f "$tarball" ] || die "no source tarball $tarball"
    [ -x "$broot/usr/bin/make" ] || die "$broot: not a build root (no make)"
    for p in bc flex bison; do
        [ -x "$broot/usr/bin/$p" ] || die "$broot has no $p"
    done
    [ -f "$broot/usr/include/libelf.h" ] || die "$broot has no libelf-dev (objtool)"
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    key=$( {
        basename "$tarball"
        sha256sum <"$tarball"
        for p in $(series); do basename "$p"; sha256sum <"$p"; done
        sha256sum <"$here/lockdep.config"
    } | sha256sum | cut -c1-16)
    src=$out/linux-source-6.12
    if [ "$(cat "$out/key" 2>/dev/null)" != "$key" ]; then
        echo "lockdep-kernel: extracting $tarball and applying the series (key $key)"
        rm -rf "$src" "$out/key" "$out/bzImage"
        tar -xJf "$tarball" -C "$out"
        [ -d "$src" ] || die "$tarball has no linux-source-6.12/"
        for p in $(series); do
            patch -d "$src" -p1 --forward --quiet <"$p" || die "$(basename "$p") does not apply"
        done
        echo "$key" >"$out/key"
    fi
    cp "$here/lockdep.config" "$out/lockdep.config"
    inroot() {
        unshare -m bash -c 'mount --bind "$1" "$2/tmp" && mount -t proc proc "$2/proc" &&
            exec nice -n 10 chroot "$2" bash -c "cd /tmp/linux-source-6.12 && $3"' \
            _ "$out" "$broot" "$1"
    }
    inroot "make -s x86_64_defconfig &&
        scripts/kconfig/merge_config.sh -m .config arch/x86/configs/xen.config \
            kernel/configs/xen.config /tmp/lockdep.config >/tmp/merge.log &&
        make -s olddefconfig"
    # merge_config.sh only warns when a value does not stick: check ours.
    local line
    while read -r line; do
        case "$line" in
        CONFIG_*=n) grep -qx "# ${line%=n} is not set" "$src/.config" || die "$line did not stick" ;;
        CONFIG_*) grep -qx "$line" "$src/.config" || die "$line did not stick" ;;
        esac
    done <"$here/lockdep.config"
    cp "$src/.config" "$out/config"
    t0=$(date +%s)
    echo "lockdep-kernel: make -j$jobs bzImage (log $out/build.log)"
    inroot "make -j$jobs bzImage" >"$out/build.log" 2>&1 || {
        tail -n 30 "$out/build.log"
        die "kernel build failed (log $out/build.log)"
    }
    t1=$(date +%s)
    cp "$src/arch/x86/boot/bzImage" "$out/bzImage"
    echo "lockdep-kernel: $out/bzImage ($(((t1 - t0) / 60)) min $(((t1 - t0) % 60)) s)"
}

run() {
    local xen=$1 out=$2 mode=${3:-pv}
    shift $(($# < 3 ? $# : 3))
    [ -f "$out/bzImage" ] || die "no $out/bzImage: run build first"
    [ -f "$xen" ] || die "no hypervisor $xen"
    gcc -O2 -static -pthread -Wall -Werror -o "$out/hostmem-selftest" "$here/hostmem-selftest.c"
    local log=$out/console-$mode.log rc=0
    # TCG and lockdep are slow: the boot alone takes minutes.
    QEMU_TIMEOUT=${QEMU_TIMEOUT:-1800} "$here/qemu-selftest.sh" "$xen" "$out/bzImage" - \
        "$out/hostmem-selftest" "$mode" "${@:---make-domain --require-lend --seconds 10}" \
        >"$log" || rc=$?
    cat "$log"
    echo "lockdep-kernel: $mode dom0: exit $rc; reports in the console:"
    grep -E 'possible (circular|recursive) locking|inconsistent lock state|sleeping function called|BUG:|WARNING:|lockdep|debug_locks' \
        "$log" || echo "  (none)"
    echo "lockdep-kernel: TAP $(grep -m1 '^1\.\.' "$log" || echo 'without a plan'):" \
        "$(grep -c '^ok' "$log") ok (of which $(grep -c '^ok .* # SKIP' "$log") SKIP)," \
        "$(grep -c '^not ok' "$log") not ok (console $log)"
    return "$rc"
}

case "${1:-}" in
build) [ $# -ge 4 ] || die "usage: build SOURCE_TARBALL BUILDROOT OUTDIR [JOBS]"; build "$2" "$3" "$4" "${5:-2}" ;;
run) [ $# -ge 3 ] || die "usage: run XEN OUTDIR [pv|pvh] [ARGS...]"; shift; run "$@" ;;
*) sed -n '2,26p' "$0"; exit 2 ;;
esac
