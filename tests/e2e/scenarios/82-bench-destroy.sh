#!/usr/bin/env bash
# Benchmark (issue 8, point 4): time to destroy a guest with 240 MiB lent
# (scaled down from 1 GiB: dom0 has 1.5 GiB in the emulated machine), against
# the same guest with nothing lent, in the same run.
# timeout: 1800
set -u
source "$(dirname "$0")/hostmem-common.sh"
source "$(dirname "$0")/bench-common.sh"
HM_BAR_MIB=256
for lent_case in lent none; do
    name=bd-$lent_case
    if [ "$lent_case" = lent ]; then
        run="hostmem-guest,touch,$HM_VENDOR,$HM_DEVICE,0,0xf000000,0x1000"
    else
        run="hostmem-guest,info,$HM_VENDOR,$HM_DEVICE"
    fi
    bench_start "$name" "$run" 0:240M || exit 1
    gh_guest_wait "$name" 400 || result "$name-guest-run" 0 "did-not-finish"
    lent=$(hm_kernel_lent "$HM_DOM")
    t0=$(date +%s%N)
    hm_destroy_clean "$name"
    bench "destroy_case=$lent_case kernel_lent_pages=$lent destroy_ms=$((($(date +%s%N) - t0) / 1000000))"
    kill -TERM "$HM_BPID"; wait "$HM_BPID" 2>/dev/null
done
exit $((BENCH_FAILED | GH_FAILED))
