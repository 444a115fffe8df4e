#!/usr/bin/env bash
# Scenario (issue 7, 4): revocation. The guest reads a 2 MiB region (all of
# it lent), then the backend replaces the region's memory (new pages moved
# over the old mapping: the kernel's MMU notifier revokes what was lent). The
# guest keeps polling every page: it must fault again and see the new data,
# and never the old data after the new.
# timeout: 360
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-rev
hm_start "$name" "hostmem-guest,revoke,$HM_VENDOR,$HM_DEVICE,0,0x200000,120" 0:2M || exit 1
if ! hm_wait_marker "$name" '^GH-GUEST-REVOKE-READY' 240; then
    result "$name-guest-ready" 0 "no-marker"
    hm_console "$name"
    exit 1
fi
f0=$(hm_counter "$HM_DOM" bar_faults)
l0=$(hm_kernel_lent "$HM_DOM")
check "$name-lent-before" "faults=$f0,kernel_lent=$l0" [ "${l0:-0}" = 512 ]
kill -USR2 "$HM_BPID"
gh_guest_wait "$name" 200 || result "$name-guest-run" 0 "did-not-finish"
sed 's/^/[backend] /' "$HM_BOUT" | grep replaced
check "$name-backend-replaced" "$(grep -c '^RESULT name=backend-replace ok=1' "$HM_BOUT")" grep -q '^RESULT name=backend-replace ok=1' "$HM_BOUT"
f1=$(hm_counter "$HM_DOM" bar_faults)
l1=$(hm_kernel_lent "$HM_DOM")
gpu-hostmem status "$HM_DOM" 2>&1 | sed 's/^/[status] /'
check "$name-faulted-again" "faults_before=$f0,after=$f1" [ "$f1" -gt "$f0" ]
check "$name-lent-after" "kernel_lent=$l1" [ "${l1:-0}" = 512 ]
hm_destroy_clean "$name"
exit "$GH_FAILED"
