#!/usr/bin/env bash
# Makes transform.spv.h (the SPIR-V of transform.comp as a C array,
# vk_compute_spv) with Debian's glslang-tools, or checks that the committed
# one is what glslang makes from the committed source.
#
#   tests/guest/vk-compute/gen-spirv.sh           regenerate transform.spv.h
#   tests/guest/vk-compute/gen-spirv.sh --check   exit 0 if regenerating gives
#                                                 the committed bytes, 1 if
#                                                 not, 77 without glslang
#
# The header's first line is glslang's version (glslangValidator writes it),
# so output of another glslang shows as a difference there: the committed
# file was made with trixie's glslang-tools (test-lavapipe.sh checks it in
# a trixie root).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
check=0
case "${1:-}" in
"") ;;
--check) check=1 ;;
*) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
if ! command -v glslangValidator >/dev/null 2>&1; then
    echo "gen-spirv: glslangValidator not found (Debian: glslang-tools)" >&2
    [ "$check" = 1 ] && { echo "SKIP: SPIR-V not checked"; exit 77; }
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# -V: SPIR-V for Vulkan (1.0 semantics, what every driver takes); --vn: a C
# array of that name rather than a binary. Run from $here so that no
# absolute path can enter the output.
(cd "$here" && glslangValidator -V --vn vk_compute_spv -o "$tmp/transform.spv.h" transform.comp) >"$tmp/log" 2>&1 ||
    { cat "$tmp/log" >&2; exit 1; }
if [ "$check" = 0 ]; then
    mv "$tmp/transform.spv.h" "$here/transform.spv.h"
    echo "wrote $here/transform.spv.h ($(glslangValidator --version | head -n1))"
    exit 0
fi
if cmp -s "$tmp/transform.spv.h" "$here/transform.spv.h"; then
    echo "PASS: transform.spv.h is what $(glslangValidator --version | head -n1 | tr -s ' ') makes of transform.comp"
    exit 0
fi
echo "FAIL: transform.spv.h differs from what glslang makes of transform.comp:"
diff "$here/transform.spv.h" "$tmp/transform.spv.h" | head -n 20
exit 1
