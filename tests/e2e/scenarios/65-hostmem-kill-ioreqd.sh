#!/usr/bin/env bash
# Scenario (issue 16, "the guest survives its IOREQ server's death"): kill -9
# of the IOREQ server, three times, while the guest reads and writes the BAR
# without a pause. The guest reads 4 MiB of which 2 MiB are registered, one
# word per page and round, each checked against the backend's pattern
# (all-ones for the unregistered half, which sends an ioreq on every read),
# and stamps that word of each registered page with ~pattern (before the
# read in odd rounds, after it in even ones: the request in flight at a
# kill may be a write). The plugin
# starts gpu-hostmem-ioreqd as a supervisor (the record's pid) that runs the
# server as a worker child; each SIGKILL of the worker is followed by a new
# worker that re-attaches to the same Xen ioreq server, restores the PCI
# state, revokes what was lent and answers the request in flight. Asserted:
# a new worker after each kill, the guest finishes its checks with every
# value right, the backend's memory holds every word the guest wrote and
# nothing else (every word of the 2 MiB checked by the backend), the record
# counts the restarts, and xl destroy cleans up everything (no process, no
# page lent, no record).
# timeout: 480
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-kio
kills=3
hm_start "$name" "hostmem-guest,loopcheck,$HM_VENDOR,$HM_DEVICE,0,0x400000,0x200000,45,0,stamp" 0:2M || exit 1
xsdir=/local/domain/0/gpu-hostmem/$HM_DOM
if ! hm_wait_marker "$name" '^guest: loop round' 240; then
    result "$name-guest-looping" 0 "no-progress-line"; hm_console "$name"; exit 1
fi
w=$(hm_worker "$HM_IPID")
check "$name-worker-sandboxed" "pid=${w:-none}" hm_sandboxed "${w:-none}"
check "$name-supervisor-root" "pid=$HM_IPID" grep -qE '^Uid:\s+0\s' "/proc/$HM_IPID/status"
restarted=0
sandboxed=0
for k in $(seq 1 "$kills"); do
    w=$(hm_worker "$HM_IPID")
    if [ -z "$w" ]; then echo "no worker under supervisor $HM_IPID"; break; fi
    lent=$(hm_kernel_lent "$HM_DOM")
    echo "kill $k: worker $w (kernel_lent=$lent)"
    kill -9 "$w"
    nw=
    for _ in $(seq 1 100); do
        nw=$(hm_worker "$HM_IPID")
        [ -n "$nw" ] && [ "$nw" != "$w" ] && [ "$(xenstore-read "$xsdir/state" 2>/dev/null)" = running ] && break
        nw=
        sleep 0.1
    done
    if [ -n "$nw" ]; then restarted=$((restarted + 1)); echo "kill $k: worker $nw took over"; fi
    sleep 3
    hm_sandboxed "${nw:-none}" && sandboxed=$((sandboxed + 1))
done
check "$name-restarted" "restarted=$restarted/$kills" [ "$restarted" = "$kills" ]
check "$name-restarted-sandboxed" "sandboxed=$sandboxed/$kills" [ "$sandboxed" = "$kills" ]
check "$name-supervisor-kept" "pid=$HM_IPID" [ -d "/proc/$HM_IPID" ]
n=$(xenstore-read "$xsdir/restarts" 2>/dev/null || true)
check "$name-restarts-recorded" "restarts=${n:-none}" [ "${n:-0}" = "$kills" ]
gpu-hostmem status "$HM_DOM" 2>&1 | sed 's/^/[status] /'
hm_loopcheck_done "$name" 240
# Every byte, on the backend's side: each page holds the guest's stamp in
# its first R words (R: the rounds, at most 512, the guest reports) and the
# backend's pattern in all others; a write lost, applied twice elsewhere or
# torn shows as a bad word or a shorter run.
gwords=$(sed -n 's/^RESULT name=guest-loopcheck-stamped ok=1 value=\([0-9]*\).*/\1/p' "/tmp/$name.out" | tail -n1)
hm_backend_report "$HM_BPID" "$HM_BOUT"
words=$(grep '^backend: words ' "$HM_BOUT" | tail -n1)
echo "[backend] ${words:-no words line}"
wfield() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$words"; }
wbad=$(wfield bad)
wmin=$(wfield stamped_min)
wmax=$(wfield stamped_max)
every_byte() { [ -n "$1" ] && [ "$2" = 0 ] && [ "$3" = "$1" ] && [ "$4" = "$1" ]; }
check "$name-backend-every-byte" "guest_words=${gwords:-none},backend_stamped=${wmin:-?}..${wmax:-?},bad=${wbad:-?}" \
    every_byte "$gwords" "$wbad" "$wmin" "$wmax"
hm_ioreqd_log "$HM_DOM" 400 | grep -E 'died|re-attach|restarting|took' | tail -n 20
# Nothing leaked across the restarts: the kernel holds the backend's one
# registration and at most its 512 pages lent (each new worker revoked what
# the dead one had lent, then lent again on the guest's faults), and the
# live worker knows the one registration too.
klent=$(hm_kernel_lent "$HM_DOM")
kreg=$(hm_kernel_regions "$HM_DOM")
sreg=$(gpu-hostmem status "$HM_DOM" 2>/dev/null | awk '/^IOREQ server:/ { s = 1 } s && /^  registrations/ { print $2; exit }')
noleak() { [ -n "$1" ] && [ "$1" -le 512 ] && [ "$2" = 1 ] && [ "$3" = 1 ]; }
check "$name-no-leak-before-destroy" "kernel_lent=${klent:-?},kernel_regs=${kreg:-?},server_regs=${sreg:-?}" \
    noleak "$klent" "${kreg:-x}" "${sreg:-x}"
hm_destroy_clean "$name"
# The backend's registration goes with the guest instance or with the
# backend: once it exits, the kernel holds nothing for the domain.
kill -TERM "$HM_BPID" 2>/dev/null
for _ in $(seq 1 50); do kill -0 "$HM_BPID" 2>/dev/null || break; sleep 0.1; done
kreg=$(hm_kernel_regions "$HM_DOM")
check "$name-no-registration-left" "kernel=${kreg:-0}" [ "${kreg:-0}" = 0 ]
exit "$GH_FAILED"
