# Runs inside the build root: build the hypervisor in /build/$1.
# Arguments: tree name, XEN_VENDORVERSION (identifies our build in `xl info`),
# jobs, and optionally "debug" (CONFIG_DEBUG=y: ASSERTs and debug checks on).
set -euo pipefail
cd "/build/$1"
export XEN_VENDORVERSION=$2
make -C xen -j"$3" defconfig
if [ "${4:-}" = debug ]; then
    echo 'CONFIG_DEBUG=y' >>xen/.config
    make -C xen -j"$3" olddefconfig
    grep -q '^CONFIG_DEBUG=y' xen/.config
fi
make -C xen -j"$3" XEN_VENDORVERSION="$2"
# The symbol map of the image, for tests/e2e/classify-failure: a register
# dump of an HVM guest carries no symbols, so it needs Xen's text range.
nm -n xen/xen-syms >xen/System.map
ls -l xen/xen
ccache -s 2>/dev/null | head -n 5 || true
