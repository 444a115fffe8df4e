#!/usr/bin/env bash
# Scenario (issue 19, least privilege and "no stuck vCPU"): a guest that
# moves its BAR at will, while the ioreqd supervisor does not read the
# worker's reports (SIGSTOP: a supervisor stuck in a slow xenstore write
# looks the same to the worker). Each move is a config write the sandboxed
# worker handles (revoke and unmap the old range, map the new) and reports to
# the supervisor, and logs. The guest reads and stamps 2 MiB, then moves
# its BAR 2000 times (8 GiB up and back, ending in place, reading a page
# back every 256 moves) and reads every page again. Asserted: the guest
# finishes (a worker blocked on its full report socket, a few hundred
# reports in, would leave its config write unanswered); every value right
# throughout; the server counted every move; its log holds a bounded number
# of lines about them (at most 10 per 5 s, then a count of those left out),
# not one per move; once the supervisor runs again the record shows the
# BAR where the guest left it; destroy is clean.
# timeout: 420
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-barflood
moves=2000
hm_start "$name" "hostmem-guest,barmove,$HM_VENDOR,$HM_DEVICE,0,0x200000,$moves" 0:2M || exit 1
xsdir=/local/domain/0/gpu-hostmem/$HM_DOM
sup=$HM_IPID
# pstate PID: the process's state letter (T: stopped).
pstate() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $1 }'; }
kill -STOP "$sup"
sleep 0.2
check "$name-supervisor-stopped" "pid=$sup,state=$(pstate "$sup")" [ "$(pstate "$sup")" = T ]
t=$(gh_now)
if gh_guest_wait "$name" 300; then
    result "$name-guest-run" 1 "$(gh_since "$t")s"
else
    result "$name-guest-run" 0 "$(gh_since "$t")s"
    kill -CONT "$sup"
    hm_diag "$name" "$HM_DOM"
fi
grep -E '^(RESULT name=guest-|guest: )' "/tmp/$name.out" || true
for r in guest-reads-pattern guest-stamps-pages guest-bar-moves guest-bar-data-after-moves; do
    check "$name-$r" "$(gh_guest_result "$name" "$r")" gh_guest_result "$name" "$r"
done
secs=$(sed -n 's/^RESULT name=guest-bar-moves .* seconds=\([0-9.]*\).*/\1/p' "/tmp/$name.out" | tail -n1)
kill -CONT "$sup"
# The server's count of moves (the status socket is the worker's own).
n=$(hm_counter "$HM_DOM" bar_moves)
check "$name-server-counted-moves" "bar_moves=$n" [ "$n" -ge "$moves" ]
# Two lines per move (old range, new range) within the limit: at most 10
# moves logged per 5 s window.
log=/var/log/xen/gpu-hostmem-$HM_DOM.log
lines=$(grep -c 'BAR range' "$log" || true)
bound=$(awk -v s="${secs:-0}" 'BEGIN { printf "%d", 2 * 10 * (int(s / 5) + 2) + 4 }')
grep 'not_logged_before=[1-9]' "$log" | head -n 3 | sed "s/^/[ioreqd $HM_DOM] /"
check "$name-log-bounded" "lines=$lines,bound=$bound,moves=$n,secs=${secs:-?}" \
    [ "$lines" -le "$bound" ]
# The supervisor, running again, gets the latest placement: the worker's.
# (The IOREQ server's section of `gpu-hostmem status`: "BAR  START-END".)
want=$(gpu-hostmem status "$HM_DOM" 2>/dev/null |
    awk '/^IOREQ server/ { s = 1 } s && $1 == "BAR" { split($2, a, "-"); print a[1]; exit }')
want=${want:-none}
bar=
for _ in $(seq 1 20); do
    bar=$(xenstore-read "$xsdir/bar-base" 2>/dev/null || true)
    [ "$bar" = "$want" ] && break
    sleep 0.5
done
check "$name-record-bar-base" "record=${bar:-none},worker=$want" [ "$bar" = "$want" ]
hm_destroy_clean "$name"
exit "$GH_FAILED"
