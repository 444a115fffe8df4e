#!/usr/bin/env bash
# Scenario (issue 7, 6d): a second guest right after the first is destroyed.
# Guest A uses the BAR and is destroyed while its backend keeps its
# registrations for A's (now dead) domid. Guest B gets a fresh IOREQ server
# (zero counters, no registrations of A), its own backend, reads its own
# backend's pattern; A's backend sees none of B's writes.
# timeout: 600
set -u
source "$(dirname "$0")/hostmem-common.sh"
hm_start hm-a "hostmem-guest,check,$HM_VENDOR,$HM_DEVICE,0,0x200000" 0:2M || exit 1
gh_guest_wait hm-a 300 || result hm-a-guest-run 0 "did-not-finish"
domA=$HM_DOM; bA=$HM_BPID; boutA=$HM_BOUT
hm_destroy_clean hm-a
hm_backend_report "$bA" "$boutA"
stA=$(grep '^RESULT name=backend-sees-guest-writes' "$boutA" | tail -n1 | sed -n 's/.* value=\([0-9]*\).*/\1/p')

# B, created at once.
hm_install || exit 1
domB=$(hm_guest_create hm-b "hostmem-guest,check,$HM_VENDOR,$HM_DEVICE,0,0x200000") || { result hm-b-create 0 failed; exit 1; }
result hm-b-create 1 "domid=$domB,previous=$domA"
check hm-b-new-domid "A=$domA,B=$domB" [ "$domB" != "$domA" ]
HM_DOM=$domB
HM_IPID=$(xenstore-read "/local/domain/0/gpu-hostmem/$domB/pid" 2>/dev/null || true)
j=$(hm_status_json "$domB")
fB=$(hm_field "$j" bar_faults); regsB=$(hm_kernel_regions "$domB")
check hm-b-fresh "faults=$fB,kernel_registrations=$regsB" [ "${fB:-x}" = 0 -a "${regsB:-x}" = 0 ]
hm_backend "$domB" /tmp/hm-b.backend 0:2M || { result hm-b-backend 0 failed; exit 1; }
bB=$HM_BPID
xl unpause hm-b
gh_guest_wait hm-b 300 || result hm-b-guest-run 0 "did-not-finish"
check hm-b-reads "$(gh_guest_result hm-b guest-reads-pattern)" gh_guest_result hm-b guest-reads-pattern
hm_backend_report "$bB" /tmp/hm-b.backend
sB=$(grep '^RESULT name=backend-sees-guest-writes' /tmp/hm-b.backend | tail -n1 | sed -n 's/.* value=\([0-9]*\).*/\1/p')
check hm-b-backend-sees "stamped=$sB" [ "${sB:-0}" = 512 ]
hm_backend_report "$bA" "$boutA"
stA2=$(grep '^RESULT name=backend-sees-guest-writes' "$boutA" | tail -n1 | sed -n 's/.* value=\([0-9]*\).*/\1/p')
check hm-a-backend-untouched-by-b "stamped=$stA->$stA2" [ "$stA" = "$stA2" ]
hm_destroy_clean hm-b
kill -TERM "$bA" "$bB"
exit "$GH_FAILED"
