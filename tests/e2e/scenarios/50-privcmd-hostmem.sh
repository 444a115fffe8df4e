#!/usr/bin/env bash
# Scenario: the patched xen-privcmd module (kernel-patches/) in dom0.
# timeout: 240
#
# Runs in dom0 of the test bed. Prints "RESULT name=... ok=0|1 value=..."
# lines and exits non-zero if any check failed.
#
#  1. privcmd-hostmem-module: the loaded xen-privcmd is ours (it has the
#     hostmem_* parameters) and was loaded from updates/.
#  2. the selftest (tests/kernel/hostmem-selftest.c): argument checks and
#     registration bookkeeping; then lending, relending after a revoke,
#     revocation by munmap / MADV_DONTNEED / mprotect / owner exit / fd
#     close / domain destruction and the concurrent stress, against a bare
#     HVM domain the selftest creates itself (--make-domain) or against
#     HOSTMEM_GUEST_DOMID. Lending needs the Xen of xen-patches/; on a Xen
#     without XEN_DMOP_lend_pages those tests are skipped (TAP SKIP) unless
#     HOSTMEM_REQUIRE_LEND=1.
#
# Environment:
#   HOSTMEM_SELFTEST      the selftest binary (default: searched in PATH,
#                         /usr/local/bin, /opt/gpu-hostmem/bin, /root)
#   HOSTMEM_GUEST_DOMID   lend to this running HVM guest instead of a bare
#                         domain made by the selftest
#   HOSTMEM_GUEST_GFN     first guest frame to lend at (default 0x100000,
#                         4 GiB, above a small guest's RAM)
#   HOSTMEM_REQUIRE_LEND  1: fail, rather than skip, when lending cannot run
#   HOSTMEM_SECONDS       duration of the concurrent stress (default 5)
#   HOSTMEM_BAR           a PCI memory BAR's sysfs resource file that lends
#                         must refuse (MMIO); default: the memory BAR of the
#                         test bed's ivshmem device (tests/e2e/run, DOM0_BAR)
set -u
# result: dom0/lib.sh.
# shellcheck source=../dom0/lib.sh
source /usr/lib/gpu-hostmem/e2e/lib.sh || exit 1

fail=0

find_selftest() {
    if [ -n "${HOSTMEM_SELFTEST:-}" ]; then
        echo "$HOSTMEM_SELFTEST"
        return
    fi
    for p in "$(command -v hostmem-selftest 2>/dev/null)" \
        /usr/local/bin/hostmem-selftest /opt/gpu-hostmem/bin/hostmem-selftest \
        /root/hostmem-selftest; do
        if [ -n "$p" ] && [ -x "$p" ]; then
            echo "$p"
            return
        fi
    done
}

# 1. The module.
[ -e /dev/xen/privcmd ] || modprobe xen-privcmd 2>/dev/null
params=/sys/module/xen_privcmd/parameters
where=$(modinfo -n xen-privcmd 2>/dev/null)
if [ -e "$params/hostmem_max_regions" ]; then
    case "$where" in
    */updates/*) result privcmd-hostmem-module 1 "$where" ;;
    *) result privcmd-hostmem-module 0 "loaded-but-not-from-updates:$where"; fail=1 ;;
    esac
else
    result privcmd-hostmem-module 0 "stock-module:${where:-none}"
    fail=1
fi

# 2. The selftest.
bin=$(find_selftest)
if [ -z "$bin" ]; then
    result privcmd-hostmem-selftest 0 selftest-not-installed
    exit 1
fi
set -- --seconds "${HOSTMEM_SECONDS:-5}"
if [ -n "${HOSTMEM_GUEST_DOMID:-}" ]; then
    set -- "$@" --dom "$HOSTMEM_GUEST_DOMID"
else
    set -- "$@" --make-domain
fi
[ -n "${HOSTMEM_GUEST_GFN:-}" ] && set -- "$@" --gfn "$HOSTMEM_GUEST_GFN"
[ "${HOSTMEM_REQUIRE_LEND:-0}" = 1 ] && set -- "$@" --require-lend
# The test bed gives dom0 an ivshmem device (1af4:1110) whose BAR2 stands in
# for a GPU's VRAM; the selftest then must map it (no SKIP).
bar=${HOSTMEM_BAR:-}
if [ -z "$bar" ]; then
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor" 2>/dev/null):$(cat "$d/device" 2>/dev/null)" = 0x1af4:0x1110 ] &&
            bar=$d/resource2 && break
    done
fi
if [ -n "$bar" ]; then
    set -- "$@" --bar "$bar"
else
    result privcmd-hostmem-mmio-bar 0 "no-ivshmem-device"
    fail=1
fi

# RAM mapped as TTM maps it (tests/kernel/pfnmap-test.c, test bed only).
modprobe gh-pfnmap-test || result privcmd-hostmem-pfnmap-test-module 0 "modprobe-failed"

dmesg_before=$(dmesg 2>/dev/null | wc -l)
out=/tmp/privcmd-selftest.$$
"$bin" "$@" >"$out" 2>&1
rc=$?
cat "$out"

# A domain made by the selftest must be gone, even if the selftest died.
made=$(sed -n 's/^# made HVM domain \([0-9]*\)$/\1/p' "$out")
if [ -n "$made" ] && command -v xl >/dev/null 2>&1; then
    if xl list "$made" >/dev/null 2>&1; then
        xl destroy "$made" >/dev/null 2>&1
        result privcmd-hostmem-domain-cleaned 0 "dom$made-left-behind"
        fail=1
    else
        result privcmd-hostmem-domain-cleaned 1 "dom$made"
    fi
fi
result privcmd-hostmem-selftest "$([ $rc = 0 ] && echo 1 || echo 0)" "exit:$rc"
# The test module is in every test bed: its case must have run, not SKIPped.
if grep -q '^ok [0-9]* - lend-unreferenced-pages$' "$out"; then
    result privcmd-hostmem-unreferenced-ran 1 -
else
    result privcmd-hostmem-unreferenced-ran 0 "$(grep -- '- lend-unreferenced-pages' "$out")"
    fail=1
fi
rm -f "$out"
[ $rc = 0 ] || fail=1

# The kernel must not have complained while the selftest ran.
tmp=/tmp/privcmd-dmesg.$$
dmesg 2>/dev/null | tail -n +"$((dmesg_before + 1))" |
    grep -E 'BUG:|WARNING:|Oops|circular locking|cannot revoke' >"$tmp"
if [ -s "$tmp" ]; then
    result privcmd-hostmem-dmesg-clean 0 "$(head -n1 "$tmp")"
    cat "$tmp"
    fail=1
else
    result privcmd-hostmem-dmesg-clean 1 -
fi
rm -f "$tmp"

exit $fail
