#!/usr/bin/env bash
# vk-compute on the build machine, against lavapipe (Mesa's software Vulkan;
# no venus, no Xen): a manual test, not run by CI or tests/run (it needs
# root and the Debian mirror). docs/virtio-gpu.md, "Stage 3", has the
# results.
#
# Usage (root: mmdebstrap, chroot, namespaces):
#   tests/guest/vk-compute/test-lavapipe.sh SCRATCH_DIR
# SCRATCH_DIR (outside the repository) receives a trixie root (made once with
# mmdebstrap from the Debian mirror, as tests/renderer-probe/run.sh does; the
# machine's own apt sources are not used or changed) with the run time of
# the guest (libvulkan1, mesa-vulkan-drivers) and what building needs
# (gcc, libc6-dev, libvulkan-dev for the headers, glslang-tools), and the
# programs and logs in SCRATCH_DIR/work.
#
# Checks, each printed as PASS or FAIL, then "N passed, M failed":
#   - gen-spirv.sh --check: the committed SPIR-V is what trixie's glslang
#     makes of the committed shader, and not what it makes of a shader with
#     another constant;
#   - vk-compute -s 4 and -s 64 on lavapipe: every word right, exit 0;
#   - -s 64 -b ROUNDS: the bandwidth lines (measurement only);
#   - -v on lavapipe (venus required, not there): fails naming the driver;
#   - no ICD at all: fails naming vkCreateInstance and its VkResult;
#   - the mutants (test-only builds, see vk-compute.c): one wrong expected
#     word must give exactly 1 wrong word and exit 1, a command buffer
#     without the dispatch every word wrong and exit 1.
# GH_VK_BW_ROUNDS (default 12) sets the bandwidth rounds.
set -euo pipefail

[ $# = 1 ] || { echo "usage: $0 SCRATCH_DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: must run as root" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
S=$(mkdir -p "$1" && cd "$1" && pwd)
R=$S/root W=$S/work
MIRROR=${GPU_HOSTMEM_MIRROR:-http://deb.debian.org/debian}
PKGS=libvulkan1,mesa-vulkan-drivers,libvulkan-dev,gcc,libc6-dev,glslang-tools
ROUNDS=${GH_VK_BW_ROUNDS:-12}

if [ ! -e "$S/root.done" ] || [ "$(cat "$S/root.done")" != "$PKGS" ]; then
    rm -rf "$R"
    echo "== mmdebstrap trixie into $R ($PKGS)"
    t0=$(date +%s)
    timeout 1800 mmdebstrap --variant=minbase --include="$PKGS" --aptopt='Acquire::Retries "3"' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg trixie "$R" "$MIRROR" \
        >"$S/mmdebstrap.log" 2>&1 || { tail -n 20 "$S/mmdebstrap.log"; exit 1; }
    echo "root made in $(($(date +%s) - t0)) s"
    echo "$PKGS" >"$S/root.done"
fi
rm -rf "$W"
mkdir -p "$W"
cp "$HERE"/vk-compute.c "$HERE"/transform.comp "$HERE"/transform.spv.h "$HERE"/gen-spirv.sh \
    "$HERE"/../guest-result.h "$HERE"/../guest-bw.h "$W"/

# inroot TIMEOUT CMD: run CMD (a shell string) in the root, /mnt = $W, in
# its own mount and PID namespaces (nothing it starts outlives it).
inroot() {
    local t=$1
    shift
    timeout --kill-after=10 "$t" unshare -m -p -f --propagation private sh -c '
        mount -t proc proc "$0/proc" && mount --bind /dev "$0/dev" &&
        mount -t tmpfs tmpfs "$0/tmp" && mount --bind "$1" "$0/mnt" &&
        exec chroot "$0" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp \
            VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.json sh -c "$2"' \
        "$R" "$W" "$*"
}

pass=0 fail=0
# check NAME STATUS DETAIL: STATUS 0 passes. The conditions below end in
# "|| c=1", so that a false one never stops the script (set -e).
check() {
    if [ "$2" = 0 ]; then
        echo "PASS $1 ($3)"
        pass=$((pass + 1))
    else
        echo "FAIL $1 ($3)"
        fail=$((fail + 1))
    fi
}
# field LOG NAME: the value of RESULT line NAME (up to the first comma).
field() { sed -n "s/^RESULT name=$2 ok=[01] value=\([^,]*\).*/\1/p" "$1" | head -n1; }
okof() { sed -n "s/^RESULT name=$2 ok=\([01]\) .*/\1/p" "$1" | head -n1; }

echo "== versions"
inroot 60 "dpkg-query -W libvulkan1 mesa-vulkan-drivers libvulkan-dev glslang-tools gcc"

echo "== SPIR-V regenerated with trixie's glslang"
rc=0
inroot 120 "cd /mnt && bash ./gen-spirv.sh --check" || rc=$?
check spirv-reproducible "$rc" "gen-spirv.sh --check exit $rc"
# The check itself: a shader with another constant must not match.
mkdir -p "$W/mutspv"
cp "$W/gen-spirv.sh" "$W/transform.spv.h" "$W/mutspv/"
sed 's/2654435761u/2654435769u/' "$W/transform.comp" >"$W/mutspv/transform.comp"
rc=0
inroot 120 "cd /mnt/mutspv && bash ./gen-spirv.sh --check" >"$W/mutspv.log" 2>&1 || rc=$?
c=0
[ "$rc" = 1 ] && grep -q '^FAIL: transform.spv.h differs' "$W/mutspv.log" || c=1
check spirv-check-catches-a-changed-shader "$c" "exit $rc"

echo "== build (the program and its two mutants)"
inroot 300 "cd /mnt && f='-O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE' &&
    gcc \$f -o vk-compute vk-compute.c -ldl &&
    gcc \$f -DVK_COMPUTE_MUTANT=1 -o vk-compute-mutant1 vk-compute.c -ldl &&
    gcc \$f -DVK_COMPUTE_MUTANT=2 -o vk-compute-mutant2 vk-compute.c -ldl && ls -l vk-compute*"

# run NAME TIMEOUT ARGS...: vk-compute ARGS on lavapipe, log in $W/NAME.log,
# exit status in $W/NAME.rc, wall time printed.
run() {
    local name=$1 t=$2 rc=0 t0 t1
    shift 2
    t0=$(date +%s.%N)
    inroot "$t" "cd /mnt && $*" >"$W/$name.log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    echo "$rc" >"$W/$name.rc"
    echo "-- $name: $* -> exit $rc in $(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }") s"
    { grep -v '^RESULT name=vkbw-sample ' "$W/$name.log" || true; } | sed 's/^/   /'
}

for mib in 4 64; do
    run "size$mib" 600 ./vk-compute -s "$mib"
    l=$W/size$mib.log
    wrong=$(field "$l" vk-compute)
    words=$(sed -n 's/^RESULT name=vk-compute ok=1 value=0,words=\([0-9]*\).*/\1/p' "$l")
    c=0
    [ "$(cat "$W/size$mib.rc")" = 0 ] && [ "$(okof "$l" vk-compute)" = 1 ] && [ "$wrong" = 0 ] &&
        [ "$words" = $((mib << 18)) ] && grep -q '^RESULT name=vk-open ok=1 value=[0-9.]*,' "$l" &&
        ! grep -q ' ok=0 ' "$l" || c=1
    check "lavapipe-${mib}mib" $c "wrong=$wrong of words=$words, exit $(cat "$W/size$mib.rc")"
done

run bandwidth 900 ./vk-compute -s 64 -b "$ROUNDS"
l=$W/bandwidth.log
n=$(grep -c '^RESULT name=vkbw-sample ok=1 ' "$l" || true)
c=0
[ "$(cat "$W/bandwidth.rc")" = 0 ] && [ "$n" = $((ROUNDS * 3)) ] &&
    grep -q '^RESULT name=vkbw-ratio ok=1 value=[0-9.]*,op=read,a=mapped,b=ram4k' "$l" &&
    grep -q '^RESULT name=vkbw-ratio ok=1 value=[0-9.]*,op=write,a=ram4kb,b=ram4k' "$l" || c=1
check bandwidth-measured $c "$n samples"

run venus-required 120 ./vk-compute -s 4 -v
l=$W/venus-required.log
c=0
[ "$(cat "$W/venus-required.rc")" = 1 ] && [ "$(okof "$l" vk-device)" = 0 ] &&
    grep -q '^RESULT name=vk-device ok=0 .*venus-required' "$l" && ! grep -q '^RESULT name=vk-compute ok=1' "$l" || c=1
check venus-required-refuses-lavapipe $c "exit $(cat "$W/venus-required.rc")"

run no-icd 120 env VK_ICD_FILENAMES=/nonexistent.json ./vk-compute -s 4
l=$W/no-icd.log
c=0
[ "$(cat "$W/no-icd.rc")" = 1 ] && grep -q '^RESULT name=vk-error ok=0 value=vkCreateInstance,result=-[0-9]*,VK_ERROR_' "$l" || c=1
check vulkan-error-named $c "$(grep -o 'result=[^,]*,[A-Z_]*' "$l" | head -n1), exit $(cat "$W/no-icd.rc")"

run mutant1 300 ./vk-compute-mutant1 -s 4
l=$W/mutant1.log
c=0
[ "$(cat "$W/mutant1.rc")" = 1 ] && [ "$(okof "$l" vk-compute)" = 0 ] && [ "$(field "$l" vk-compute)" = 1 ] &&
    grep -q 'first_wrong=12345,' "$l" || c=1
check mutant-one-word-caught $c "wrong=$(field "$l" vk-compute), exit $(cat "$W/mutant1.rc")"

run mutant2 300 ./vk-compute-mutant2 -s 4
l=$W/mutant2.log
c=0
[ "$(cat "$W/mutant2.rc")" = 1 ] && [ "$(okof "$l" vk-compute)" = 0 ] && [ "$(field "$l" vk-compute)" = $((4 << 18)) ] || c=1
check mutant-no-dispatch-caught $c "wrong=$(field "$l" vk-compute), exit $(cat "$W/mutant2.rc")"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
