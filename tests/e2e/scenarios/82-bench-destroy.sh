#!/usr/bin/env bash
# Benchmark (issue 8, point 4): time to destroy a guest with 1 GiB lent
# (a 1 GiB BAR, all of it registered and touched), against the same guest
# with nothing lent, in the same run. The backend holds the 1 GiB in dom0:
# tests/e2e/bench boots a 3 GiB dom0 for it (GPU_HOSTMEM_DOM0_MIB).
# timeout: 1800
set -u
source "$(dirname "$0")/hostmem-common.sh"
source "$(dirname "$0")/bench-common.sh"
HM_BAR_MIB=1024
lent_mib=1024
dom0_mib=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
if [ "$dom0_mib" -lt $((lent_mib + 1024)) ]; then
    result bd-dom0-memory 0 "dom0 has ${dom0_mib} MiB, ${lent_mib} MiB lent needs $((lent_mib + 1024)): run through tests/e2e/bench (GPU_HOSTMEM_DOM0_MIB)"
    exit 1
fi
for lent_case in lent none; do
    name=bd-$lent_case
    if [ "$lent_case" = lent ]; then
        run="hostmem-guest,touch,$HM_VENDOR,$HM_DEVICE,0,$((lent_mib << 20)),0x1000"
    else
        run="hostmem-guest,info,$HM_VENDOR,$HM_DEVICE"
    fi
    bench_start "$name" "$run" "0:${lent_mib}M" || exit 1
    gh_guest_wait "$name" 900 || result "$name-guest-run" 0 "did-not-finish"
    lent=$(hm_kernel_lent "$HM_DOM")
    if [ "$lent_case" = lent ]; then
        # All of it, or the measurement is not of 1 GiB: lending stops at
        # the first failure (ENOMEM once the guest's paging memory, which
        # holds the p2m entries, is used up: libxl-patches/0005).
        s=$(bench_touch_seconds "$name")
        bench "first_touch_mib=$lent_mib seconds=$s faults=$(hm_counter "$HM_DOM" bar_faults) lends=$(hm_counter "$HM_DOM" lends) lend_errors=$(hm_counter "$HM_DOM" lend_errors) unbacked_reads=$(hm_counter "$HM_DOM" unbacked_reads)"
        check "$name-all-lent" "kernel_lent_pages=$lent" [ "${lent:-0}" = $((lent_mib * 256)) ]
    fi
    t0=$(date +%s%N)
    hm_destroy_clean "$name"
    bench "destroy_case=$lent_case registered_mib=$lent_mib kernel_lent_pages=$lent destroy_ms=$((($(date +%s%N) - t0) / 1000000))"
    kill -TERM "$HM_BPID"; wait "$HM_BPID" 2>/dev/null
done
exit $((BENCH_FAILED | GH_FAILED))
