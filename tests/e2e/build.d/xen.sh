# Runs inside the build root: build the hypervisor in /build/$1.
# Arguments: tree name, XEN_VENDORVERSION (identifies our build in `xl info`), jobs.
set -euo pipefail
cd "/build/$1"
export XEN_VENDORVERSION=$2
make -C xen -j"$3" defconfig
make -C xen -j"$3" XEN_VENDORVERSION="$2"
ls -l xen/xen
ccache -s 2>/dev/null | head -n 5 || true
