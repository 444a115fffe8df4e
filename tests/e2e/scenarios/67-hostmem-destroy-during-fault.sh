#!/usr/bin/env bash
# Scenario (issue 7, 6c): xl destroy while faults are being handled. The
# guest loops over 16 MiB of which the first 2 MiB are registered: it faults
# continuously (unregistered pages) while a 2 MiB chunk is lent. xl destroy
# in the middle must finish and leave nothing.
# timeout: 360
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-ddf
hm_start "$name" "hostmem-guest,loop,$HM_VENDOR,$HM_DEVICE,0,0x1000000" 0:2M || exit 1
if ! hm_wait_marker "$name" '^guest: loop round' 240; then
    result "$name-guest-looping" 0 "no-progress-line"; hm_console "$name"; exit 1
fi
f0=$(hm_counter "$HM_DOM" bar_faults); sleep 1; f1=$(hm_counter "$HM_DOM" bar_faults)
check "$name-faulting" "faults=$f0->$f1" [ "$f1" -gt "$f0" ]
hm_destroy_clean "$name"
regs=$(hm_kernel_regions "$HM_DOM")
echo "backend still registered for the dead domain: ${regs:-?} region(s)"
kill -TERM "$HM_BPID"; wait "$HM_BPID"; rc=$?
check "$name-backend-exit" "rc=$rc" [ "$rc" = 0 ]
exit "$GH_FAILED"
