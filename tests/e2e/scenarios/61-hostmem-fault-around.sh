#!/usr/bin/env bash
# Scenario (issue 7, 2): fault-around. The backend registers 16 MiB at BAR
# offset 0; the guest reads one word per 2 MiB (8 reads), then every 4 KiB
# page (4096 reads). With the default fault-around of 2 MiB the first pass
# makes exactly one fault per 2 MiB chunk and lends the whole chunk, the
# second pass makes none: 0.5 faults per MiB, 4096 pages lent.
# timeout: 1100
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-fa
hm_start "$name" "hostmem-guest,touch,$HM_VENDOR,$HM_DEVICE,0,0x1000000,0x200000,0x1000" 0:16M || exit 1
gh_guest_wait "$name" "${HM_GUEST_WAIT:-900}" || result "$name-guest-run" 0 "did-not-finish"
passes=$(grep -c '^RESULT name=guest-touch ok=1' "/tmp/$name.out" || true)
check "$name-guest-passes" "$passes" [ "$passes" = 2 ]
faults=$(hm_counter "$HM_DOM" bar_faults)
lends=$(hm_counter "$HM_DOM" lends)
retries=$(hm_counter "$HM_DOM" retries)
lent=$(hm_kernel_lent "$HM_DOM")
gpu-hostmem status "$HM_DOM" 2>&1 | sed 's/^/[status] /'
per_mib=$(awk -v f="$faults" 'BEGIN { printf "%.3f", f / 16 }')
check "$name-faults-per-chunk" "faults=$faults,lends=$lends,retries=$retries,per_MiB=$per_mib" [ "$faults" = 8 -a "$lends" = 8 ]
check "$name-whole-chunks-lent" "kernel_lent=$lent" [ "${lent:-0}" = 4096 ]
hm_destroy_clean "$name"
exit "$GH_FAILED"
