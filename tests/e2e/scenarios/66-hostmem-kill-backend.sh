#!/usr/bin/env bash
# Scenario (issue 7, 6b): kill -9 of the backend while pages are lent. The
# guest loops over the 4 MiB region (all lent after the first round). When
# the backend dies, its address space goes: the kernel revokes every page and
# drops its registrations. The guest keeps running (the BAR now reads
# all-ones through the IOREQ server), whose status lists no registration
# and nothing lent (ledger = kernel = 0), and the domain destroys cleanly.
# timeout: 420
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-kbe
hm_start "$name" "hostmem-guest,loop,$HM_VENDOR,$HM_DEVICE,0,0x400000" 0:4M || exit 1
if ! hm_wait_marker "$name" '^guest: loop round' 240; then
    result "$name-guest-looping" 0 "no-progress-line"; hm_console "$name"; exit 1
fi
lent=$(hm_kernel_lent "$HM_DOM")
check "$name-lent-before" "kernel_lent=$lent" [ "${lent:-0}" = 1024 ]
kill -9 "$HM_BPID"
wait "$HM_BPID" 2>/dev/null
for _ in $(seq 1 20); do
    lent=$(hm_kernel_lent "$HM_DOM")
    [ "${lent:-x}" = 0 ] && break
    sleep 0.5
done
regs=$(hm_kernel_regions "$HM_DOM")
check "$name-all-revoked" "kernel_lent=$lent,registrations=$regs" [ "${lent:-x}" = 0 -a "${regs:-x}" = 0 ]
u0=$(hm_counter "$HM_DOM" unbacked_reads)
n0=$(tr -d '\r' <"$GH_CONSOLE_DIR/guest-$name.log" | grep -c '^guest: loop round' || true)
sleep 6
n1=$(tr -d '\r' <"$GH_CONSOLE_DIR/guest-$name.log" | grep -c '^guest: loop round' || true)
u1=$(hm_counter "$HM_DOM" unbacked_reads)
check "$name-guest-continues" "progress=$n0->$n1,unbacked_reads=$u0->$u1" [ "$u1" -gt "$u0" ]
st=$(gpu-hostmem status "$HM_DOM" 2>&1)
printf '%s\n' "$st" | sed 's/^/[status] /'
# The IOREQ server's own view follows the kernel's: it lists no
# registration and its ledger forgot the 1024 revoked pages.
view=$(hm_server_view "$st")
check "$name-server-view" "registrations ledger kernel: $view" [ "$view" = "0 0 0" ]
hm_destroy_clean "$name"
exit "$GH_FAILED"
