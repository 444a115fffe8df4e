#!/bin/sh
# The libxl series carries its own copy of the plugin ABI header
# (tools/libs/light/gpu_hostmem_plugin.h, libxl cannot include files of this
# repository).  Check that the copy the series creates is byte-for-byte
# plugin/include/gpu_hostmem_plugin.h, so libxl and the plugin agree on the ABI.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
hdr=$top/plugin/include/gpu_hostmem_plugin.h
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
found=0
for p in "$top"/libxl-patches/[0-9]*.patch; do
    grep -q '^+++ b/tools/libs/light/gpu_hostmem_plugin.h$' "$p" || continue
    # The new file's lines, without the leading '+', up to the next file.
    awk '/^\+\+\+ b\/tools\/libs\/light\/gpu_hostmem_plugin.h$/ { on = 1; next }
         on && /^diff --git / { exit }
         on && /^@@/ { next }
         on && /^\+/ { print substr($0, 2) }' "$p" >"$tmp/copy.h"
    found=1
done
[ "$found" = 1 ] || { echo "check-abi-header: no patch creates gpu_hostmem_plugin.h" >&2; exit 1; }
if ! cmp -s "$hdr" "$tmp/copy.h"; then
    echo "check-abi-header: libxl-patches' gpu_hostmem_plugin.h differs from $hdr:" >&2
    diff -u "$hdr" "$tmp/copy.h" >&2 || true
    exit 1
fi
echo "check-abi-header: libxl-patches carries an identical copy of the plugin ABI header"
