#!/usr/bin/env bash
# Benchmark (issue 8, point 3): first touch of 32 MiB with fault-around off
# (fault_around_kib: 4 in /etc/xen/gpu-hostmem.yaml) against on (the default
# 2 MiB), side by side in one run: time, faults and lend calls per MiB.
# timeout: 1800
set -u
source "$(dirname "$0")/hostmem-common.sh"
source "$(dirname "$0")/bench-common.sh"
cfg=/etc/xen/gpu-hostmem.yaml
[ -e "$cfg" ] && cp "$cfg" /tmp/gpu-hostmem.yaml.saved
restore() { if [ -e /tmp/gpu-hostmem.yaml.saved ]; then mv /tmp/gpu-hostmem.yaml.saved "$cfg"; else rm -f "$cfg"; fi; hm_cleanup; }
trap restore EXIT
mkdir -p /etc/xen
for fa in 2048 4; do
    printf 'fault_around_kib: %s\n' "$fa" >"$cfg"
    name=bfa-$fa
    bench_start "$name" "hostmem-guest,touch,$HM_VENDOR,$HM_DEVICE,0,0x2000000,0x1000" 0:32M || exit 1
    gh_guest_wait "$name" 500 || result "$name-guest-run" 0 "did-not-finish"
    s=$(bench_touch_seconds "$name")
    f=$(hm_counter "$HM_DOM" bar_faults); l=$(hm_counter "$HM_DOM" lends); r=$(hm_counter "$HM_DOM" retries)
    lent=$(hm_kernel_lent "$HM_DOM")
    check "$name-measured" "seconds=$s,lent=$lent" [ -n "$s" -a "${lent:-0}" = 8192 ]
    bench "fault_around_kib=$fa first_touch_mib=32 seconds=$s faults=$f lends=$l retries=$r faults_per_mib=$(awk -v f="$f" 'BEGIN { printf "%.2f", f / 32 }') us_per_page=$(awk -v s="$s" 'BEGIN { printf "%.1f", s * 1e6 / 8192 }')"
    hm_destroy_clean "$name"
    kill -TERM "$HM_BPID"; wait "$HM_BPID" 2>/dev/null
done
exit $((BENCH_FAILED | GH_FAILED))
