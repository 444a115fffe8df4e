#!/usr/bin/env bash
# Scenario (issue 19, "no stuck vCPU on an error path"): kill -9 of the
# ioreqd *supervisor* (the record's pid, root) while the guest reads the BAR
# without a pause. The guest reads 4 MiB of which 2 MiB are registered, one
# word per page and round, each checked against the backend's pattern
# (all-ones for the unregistered half, which sends an ioreq on every read).
# The sandboxed worker, which answers the guest, must outlive its
# supervisor: it only loses restart-on-crash. Asserted: the record names the
# worker (worker-pid, worker-start, written by the supervisor); after the
# kill the worker keeps running, still sandboxed, says in its log that its
# supervisor is gone, and `gpu-hostmem status` says so too; the guest goes
# on and finishes its checks with every value right; nothing leaked before
# destroy; xl destroy finds the orphaned worker by the recorded identity and
# stops it with SIGTERM (it shuts its server down itself: every lent page
# revoked, its ioreq server destroyed), and then no ioreqd process, no lent
# page, no registration and no xenstore record is left.
# timeout: 420
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-ksup
hm_start "$name" "hostmem-guest,loopcheck,$HM_VENDOR,$HM_DEVICE,0,0x400000,0x200000,40" 0:2M || exit 1
xsdir=/local/domain/0/gpu-hostmem/$HM_DOM
if ! hm_wait_marker "$name" '^guest: loop round' 240; then
    result "$name-guest-looping" 0 "no-progress-line"; hm_console "$name"; exit 1
fi
# alive PID: the process exists and is not a zombie.
alive() { [ -r "/proc/$1/stat" ] && ! awk '{ sub(/.*\) /, ""); exit !($1 == "Z" || $1 == "X") }' "/proc/$1/stat"; }
# start PID: the process's start time (clock ticks since boot, field 22 of
# /proc/PID/stat).
start() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $20 }'; }
sup=$HM_IPID
w=$(hm_worker "$sup")
check "$name-worker-found" "supervisor=$sup,worker=${w:-none}" test -n "$w"
check "$name-worker-sandboxed" "pid=${w:-none}" hm_sandboxed "${w:-none}"
rw=$(xenstore-read "$xsdir/worker-pid" 2>/dev/null || true)
rs=$(xenstore-read "$xsdir/worker-start" 2>/dev/null || true)
ws=$(start "${w:-none}")
check "$name-record-names-worker" "worker-pid=${rw:-none},worker-start=${rs:-none},actual=${w:-none}/${ws:-none}" \
    test -n "$rw" -a "$rw" = "${w:-x}" -a -n "$rs" -a "$rs" = "${ws:-x}"
echo "kill -9 of the supervisor $sup (worker ${w:-none}, kernel_lent=$(hm_kernel_lent "$HM_DOM"))"
kill -9 "$sup"
for _ in $(seq 1 50); do alive "$sup" || break; sleep 0.1; done
check "$name-supervisor-killed" "pid=$sup" eval '! alive "$sup"'
# The worker outlives it and notices (within a few seconds).
sleep 3
check "$name-worker-survives" "pid=${w:-none}" alive "${w:-none}"
check "$name-worker-still-sandboxed" "pid=${w:-none}" hm_sandboxed "${w:-none}"
check "$name-state-running" "state=$(xenstore-read "$xsdir/state" 2>/dev/null)" \
    test "$(xenstore-read "$xsdir/state" 2>/dev/null)" = running
check "$name-worker-says-unsupervised" "log" \
    sh -c "tail -n 400 /var/log/xen/gpu-hostmem-$HM_DOM.log | grep -q 'the supervisor is gone'"
gpu-hostmem status "$HM_DOM" >"/tmp/$name.status" 2>&1
sed 's/^/[status] /' "/tmp/$name.status"
check "$name-status-says-unsupervised" "gpu-hostmem-status" grep -q '^  supervisor gone' "/tmp/$name.status"
# Never a hang: the guest's loop goes on after the kill.
r0=$(hm_loop_rounds "$name")
sleep 5
r1=$(hm_loop_rounds "$name")
check "$name-guest-progresses" "rounds=$r0->$r1" [ "$r1" -gt "$r0" ]
hm_loopcheck_done "$name" 150
# Nothing leaked: the backend's one registration, at most its 512 pages
# lent, and the worker knows the one registration.
klent=$(hm_kernel_lent "$HM_DOM")
kreg=$(hm_kernel_regions "$HM_DOM")
sreg=$(gpu-hostmem status "$HM_DOM" 2>/dev/null | awk '/^IOREQ server:/ { s = 1 } s && /^  registrations/ { print $2; exit }')
noleak() { [ -n "$1" ] && [ "$1" -le 512 ] && [ "$2" = 1 ] && [ "$3" = 1 ]; }
check "$name-no-leak-before-destroy" "kernel_lent=${klent:-?},kernel_regs=${kreg:-?},server_regs=${sreg:-?}" \
    noleak "$klent" "${kreg:-x}" "${sreg:-x}"
# The destroy hook must find the worker itself: a hook that fails still
# lets libxl destroy the domain, after which the worker stops on its own
# ("domain gone"), which would hide the failure.
hm_destroy_clean "$name" >"/tmp/$name.destroy" 2>&1
cat "/tmp/$name.destroy"
check "$name-destroy-hook-ok" "no-hook-error" eval '! grep -q "hook failed" "/tmp/$name.destroy"'
for _ in $(seq 1 20); do alive "${w:-none}" || break; sleep 0.5; done
check "$name-worker-stopped" "pid=${w:-none}" eval '! alive "${w:-none}"'
hm_ioreqd_log "$HM_DOM" 400 | grep -E 'supervisor|stopping|stopped|teardown' | tail -n 20
# The orphaned worker was stopped by the destroy hook's SIGTERM and cleaned
# up itself (its ioreq server destroyed, every page revoked), not killed.
after_loss() { awk '/the supervisor is gone/ { s = 1 } s' "/var/log/xen/gpu-hostmem-$HM_DOM.log"; }
check "$name-worker-stopped-by-teardown" "log" eval 'after_loss | grep -q "reason=SIGTERM"'
check "$name-worker-stopped-cleanly" "log" eval 'after_loss | grep -q "stopped cleanly"'
kill -TERM "$HM_BPID" 2>/dev/null
for _ in $(seq 1 50); do kill -0 "$HM_BPID" 2>/dev/null || break; sleep 0.1; done
kreg=$(hm_kernel_regions "$HM_DOM")
check "$name-no-registration-left" "kernel=${kreg:-0}" [ "${kreg:-0}" = 0 ]
exit "$GH_FAILED"
