#!/usr/bin/env bash
# Scenario (issue 7, 6a): kill -9 of the IOREQ server while the guest uses the
# BAR. The guest loops over 4 MiB of which 2 MiB are registered: the other
# half keeps sending ioreqs. What happens (and is asserted): nothing restarts
# the server; the vCPU that was waiting for it stays blocked in Xen (the guest
# makes no more progress), the domain stays destroyable, and xl destroy then
# cleans up everything: the destroy hook adopts the dead server's Xen IOREQ
# server, revokes every lent page, and removes the record.
# timeout: 420
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-kio
hm_start "$name" "hostmem-guest,loop,$HM_VENDOR,$HM_DEVICE,0,0x400000" 0:2M || exit 1
if ! hm_wait_marker "$name" '^guest: loop round' 240; then
    result "$name-guest-looping" 0 "no-progress-line"; hm_console "$name"; exit 1
fi
lent=$(hm_kernel_lent "$HM_DOM")
check "$name-lent-before" "kernel_lent=$lent" [ "${lent:-0}" = 512 ]
kill -9 "$HM_IPID"
sleep 1
check "$name-ioreqd-dead" "pid=$HM_IPID" [ ! -d "/proc/$HM_IPID" ]
n0=$(tr -d '\r' <"$GH_CONSOLE_DIR/guest-$name.log" | grep -c '^guest: loop round' || true)
sleep 8
n1=$(tr -d '\r' <"$GH_CONSOLE_DIR/guest-$name.log" | grep -c '^guest: loop round' || true)
echo "guest progress lines: $n0 at the kill, $n1 eight seconds later"
check "$name-domain-alive" "state=$(xl list "$name" 2>/dev/null | awk 'NR == 2 { print $5 }')" xl domid "$name"
result "$name-guest-blocked" $([ "$n1" -le $((n0 + 1)) ] && echo 1 || echo 0) "progress=$n0->$n1"
gpu-hostmem status "$HM_DOM" 2>&1 | sed 's/^/[status] /'
hm_destroy_clean "$name"
exit "$GH_FAILED"
