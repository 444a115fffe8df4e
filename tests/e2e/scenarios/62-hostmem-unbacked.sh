#!/usr/bin/env bash
# Scenario (issue 7, 3): unregistered BAR offsets read all-ones and drop
# writes, and nothing is lent. The backend registers 1 MiB at offset 0 that
# the guest never touches; the guest reads and writes at 8 MiB (unregistered)
# and then hammers 1000 accesses over 8..16 MiB.
# timeout: 1100
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-unb
hm_start "$name" "hostmem-guest,unbacked,$HM_VENDOR,$HM_DEVICE,0x800000" 0:1M || exit 1
gh_guest_wait "$name" "${HM_GUEST_WAIT:-900}" || result "$name-guest-run" 0 "did-not-finish"
check "$name-guest-reads-ones" "$(gh_guest_result "$name" guest-unbacked-reads-ones)" \
    gh_guest_result "$name" guest-unbacked-reads-ones
check "$name-guest-writes-dropped" "$(gh_guest_result "$name" guest-unbacked-drops-writes)" \
    gh_guest_result "$name" guest-unbacked-drops-writes
ur=$(hm_counter "$HM_DOM" unbacked_reads)
uw=$(hm_counter "$HM_DOM" unbacked_writes)
lends=$(hm_counter "$HM_DOM" lends)
lent=$(hm_kernel_lent "$HM_DOM")
gpu-hostmem status "$HM_DOM" 2>&1 | sed 's/^/[status] /'
check "$name-server-unbacked" "reads=$ur,writes=$uw" [ "$ur" -ge 2 -a "$uw" -ge 1 ]
check "$name-nothing-lent" "lends=$lends,kernel_lent=${lent:-?}" [ "$lends" = 0 -a "${lent:-x}" = 0 ]
# The backend's memory is untouched.
hm_backend_report "$HM_BPID" "$HM_BOUT"
seen=$(grep '^RESULT name=backend-sees-guest-writes' "$HM_BOUT" | tail -n1 | sed -n 's/.* value=\([0-9]*\).*/\1/p')
check "$name-backend-untouched" "stamped=$seen" [ "${seen:-x}" = 0 ]
hm_destroy_clean "$name"
exit "$GH_FAILED"
