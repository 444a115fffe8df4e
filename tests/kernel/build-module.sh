#!/usr/bin/env bash
# Build the patched xen-privcmd module (kernel-patches/) out of tree against
# Debian trixie's linux-headers, the way the test bed installs it.
#
#   tests/kernel/build-module.sh prepare SOURCE_TARBALL OUTDIR
#       Extract drivers/xen and the Xen headers from linux-source-6.12's
#       tarball (/usr/src/linux-source-6.12.tar.xz in the .deb), apply
#       kernel-patches/*.patch, and lay out OUTDIR as an external module
#       directory (Kbuild, privcmd.c, privcmd-buf.c, privcmd.h and the
#       patched headers, which Kbuild puts first on the include path).
#       Also runs checkpatch.pl --strict from the same source on the series.
#
#   tests/kernel/build-module.sh make OUTDIR HEADERS_DIR [JOBS]
#       Build OUTDIR/xen-privcmd.ko against HEADERS_DIR (run it inside a
#       trixie build root: the headers expect trixie's gcc-14). Fails on any
#       compiler or modpost warning.
#
#   tests/kernel/build-module.sh all WORKDIR
#       Everything from a clean fetch, standalone: resolve the trixie kernel
#       version, download linux-source-6.12 with a private apt configuration
#       under WORKDIR (never touching /etc/apt), make a trixie buildd root
#       with the matching linux-headers (mmdebstrap), prepare and build.
#       Result: WORKDIR/module/xen-privcmd.ko.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECMIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

die() { echo "build-module: $*" >&2; exit 1; }

prepare() {
    local tarball=$1 out=$2 tmp src
    [ -f "$tarball" ] || die "no source tarball $tarball"
    tmp=$(mktemp -d)
    tar -xJf "$tarball" -C "$tmp" --wildcards \
        '*/drivers/xen/*' '*/include/xen/*' '*/include/uapi/xen/*' \
        '*/scripts/checkpatch.pl' '*/scripts/spelling.txt' \
        '*/scripts/const_structs.checkpatch'
    src=$(echo "$tmp"/*)
    local p
    for p in "$top"/kernel-patches/0*.patch; do
        case "$p" in */0000-cover-letter.patch) continue ;; esac
        patch -d "$src" -p1 --forward --quiet <"$p" || die "$(basename "$p") does not apply"
        # Lines with trailing whitespace, long lines etc. in the series.
        perl "$src/scripts/checkpatch.pl" --strict --no-signoff --no-tree --quiet "$p" ||
            die "checkpatch --strict: $(basename "$p")"
    done
    rm -rf "$out"
    mkdir -p "$out/include/xen/interface/hvm" "$out/include/uapi/xen"
    cp "$src"/drivers/xen/{privcmd.c,privcmd-buf.c,privcmd.h} "$out/"
    cp "$src/include/xen/interface/hvm/dm_op.h" "$out/include/xen/interface/hvm/"
    cp "$src/include/uapi/xen/privcmd.h" "$out/include/uapi/xen/"
    # The distribution's xenfs imports xen_privcmd_fops with the modversions
    # CRC of the stock privcmd.c. genksyms computes it from every struct
    # definition the unit can see, so the header the series adds
    # (linux/shmem_fs.h) changes it although the symbol's type does not,
    # and xenfs would refuse to load. Hide that header from genksyms only
    # (it preprocesses with -D__GENKSYMS__); 'make' checks the CRCs.
    cat >"$out/genksyms-compat.h" <<'EOF'
#ifdef __GENKSYMS__
#define __SHMEM_FS_H
#endif
EOF
    cat >"$out/Kbuild" <<'EOF'
# drivers/xen/Makefile's privcmd part, with CONFIG_XEN_PRIVCMD_HOSTMEM=y;
# the patched headers come before those of the installed linux-headers.
obj-m := xen-privcmd.o
xen-privcmd-y := privcmd.o privcmd-buf.o
LINUXINCLUDE := -I$(src)/include -I$(src)/include/uapi $(LINUXINCLUDE)
ccflags-y += -DCONFIG_XEN_PRIVCMD_HOSTMEM=1 -include $(src)/genksyms-compat.h
EOF
    rm -rf "$tmp"
    echo "build-module: prepared $out"
}

build() {
    local out=$1 headers=$2 jobs=${3:-2} log
    log=$(mktemp)
    make -C "$headers" M="$out" W=1 -j"$jobs" modules 2>&1 | tee "$log"
    if [ "${PIPESTATUS[0]}" != 0 ]; then
        rm -f "$log"
        die "module build failed"
    fi
    if grep -Ei 'warning|error' "$log"; then
        rm -f "$log"
        die "module build has warnings"
    fi
    rm -f "$log"
    [ -f "$out/xen-privcmd.ko" ] || die "no xen-privcmd.ko"
    # Exported symbols keep the distribution's CRCs (xenfs uses them).
    local crc sym rest want
    while read -r crc sym rest; do
        want=$(awk -v s="$sym" '$2 == s { print $1 }' "$headers/Module.symvers")
        [ -z "$want" ] || [ "$want" = "$crc" ] ||
            die "$sym: CRC $crc is not the distribution's $want: xenfs would not load"
    done <"$out/Module.symvers"
    echo "build-module: built $out/xen-privcmd.ko"
}

all() {
    local work=$1 apt ver kver root
    mkdir -p "$work"
    work=$(cd "$work" && pwd)
    apt=$work/apt
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
    cat >"$apt/trixie.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECMIRROR
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    : >"$apt/status"
    local A=(-o "Dir::Etc::SourceList=$apt/trixie.sources" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
        -o "Dir::State::status=$apt/status" -o APT::Architecture=amd64)
    apt-get "${A[@]}" -qq update
    # The kernel the test bed boots: what linux-headers-amd64 points to.
    kver=$(apt-cache "${A[@]}" show linux-headers-amd64 | sed -n 's/^Depends: .*linux-headers-\(6\.12\.[^ ,]*-amd64\).*/\1/p' | head -n1)
    [ -n "$kver" ] || die "cannot resolve the trixie kernel"
    ver=$(apt-cache "${A[@]}" show "linux-headers-$kver" | sed -n 's/^Version: //p' | head -n1)
    echo "build-module: kernel $kver (Debian $ver)"
    (cd "$apt/debs" && apt-get "${A[@]}" -qq download "linux-source-6.12=$ver")
    rm -rf "$work/src"
    mkdir -p "$work/src"
    dpkg-deb --fsys-tarfile "$apt/debs/linux-source-6.12_${ver}_all.deb" |
        tar -x -C "$work/src" ./usr/src/linux-source-6.12.tar.xz
    root=$work/root
    if [ ! -d "$root/usr/src/linux-headers-$kver" ]; then
        rm -rf "$root"
        mmdebstrap --quiet --variant=buildd --include="linux-headers-$kver" trixie "$root" \
            "deb $MIRROR trixie main" "deb $SECMIRROR trixie-security main"
    fi
    prepare "$work/src/usr/src/linux-source-6.12.tar.xz" "$root/build/privcmd"
    chroot "$root" /bin/bash -c "$(declare -f die build); build /build/privcmd /usr/src/linux-headers-$kver 2"
    rm -rf "$work/module"
    cp -r "$root/build/privcmd" "$work/module"
    echo "build-module: $work/module/xen-privcmd.ko ($kver)"
}

case "${1:-}" in
prepare) [ $# = 3 ] || die "usage: prepare SOURCE_TARBALL OUTDIR"; prepare "$2" "$3" ;;
make) [ $# -ge 3 ] || die "usage: make OUTDIR HEADERS_DIR [JOBS]"; build "$2" "$3" "${4:-2}" ;;
all) [ $# = 2 ] || die "usage: all WORKDIR"; all "$2" ;;
*) sed -n '2,24p' "$0"; exit 2 ;;
esac
