#!/usr/bin/env bash
# Scenario (issue 16, the give-up path): a worker that keeps dying is given
# up after the bound (more than 5 deaths within 60 s), and the guest is
# never left hanging. The guest reads 2 MiB of the BAR, none of it
# registered, one word per page and round, for 45 s: every read is an ioreq
# and must read all ones. At most 4 rounds a second: once given up, Xen
# answers the reads itself, 36 rounds (18000 exits) a second unpaced, and
# every exit is a chance of the test bed's emulator fault (the CI of
# b45e094 lost 72's guest to A or B four times in five, each after the
# give-up, run 20261205-135336-29832 and its retries); progress is what
# this scenario asks of the guest, not volume. The worker is killed (kill -9) six times, each
# time once its successor runs. Asserted: after the sixth death the record
# says `failed: ... given up ...`, no worker runs, the supervisor stays,
# `gpu-hostmem status` says it; the guest keeps making progress after the
# give-up (new "loop round" lines: its accesses are answered, as unbacked)
# and finishes with every value right; the function's config space, which
# the guest reads at each progress line, showed its ids while served and
# reads all ones once given up (the disabled server no longer claims it, so
# the function is gone, as a surprise-removed device is); xl destroy
# cleans up everything.
# timeout: 480
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-gup
kills=6
hm_start "$name" "hostmem-guest,loopcheck,$HM_VENDOR,$HM_DEVICE,0,0x200000,0,45,4" || exit 1
xsdir=/local/domain/0/gpu-hostmem/$HM_DOM
if ! hm_wait_marker "$name" '^guest: loop round' 240; then
    result "$name-guest-looping" 0 "no-progress-line"; hm_console "$name"; exit 1
fi
killed=0
for k in $(seq 1 "$kills"); do
    w=
    for _ in $(seq 1 100); do
        w=$(hm_worker "$HM_IPID")
        [ -n "$w" ] && [ "$(xenstore-read "$xsdir/state" 2>/dev/null)" = running ] && break
        w=
        sleep 0.1
    done
    if [ -z "$w" ]; then echo "kill $k: no running worker under supervisor $HM_IPID"; break; fi
    kill -9 "$w" && killed=$((killed + 1))
    echo "kill $k: worker $w"
    # Wait until the supervisor has seen the death (a new worker, or the
    # give-up) before looking for the next worker.
    for _ in $(seq 1 100); do
        nw=$(hm_worker "$HM_IPID")
        [ -n "$nw" ] && [ "$nw" != "$w" ] && break
        case "$(xenstore-read "$xsdir/state" 2>/dev/null)" in failed:*) break ;; esac
        sleep 0.1
    done
done
check "$name-killed" "killed=$killed/$kills" [ "$killed" = "$kills" ]
# config_ids: the config ids (device << 16 | vendor) of the guest's
# progress lines so far, in order.
config_ids() {
    tr -d '\r' <"$GH_CONSOLE_DIR/guest-$name.log" 2>/dev/null |
        sed -n 's/^guest: loop round .* id \(0x[0-9a-f]*\)$/\1/p'
}
served_id=$(config_ids | head -n1)
want_id=$(printf '0x%04x%04x' "$HM_DEVICE" "$HM_VENDOR")
check "$name-config-while-served" "id=${served_id:-none},want=$want_id" [ "$served_id" = "$want_id" ]
st=
for _ in $(seq 1 150); do
    st=$(xenstore-read "$xsdir/state" 2>/dev/null || true)
    case "$st" in failed:*) break ;; esac
    sleep 0.1
done
echo "state: $st"
has() { case "$1" in *"$2"*) return 0 ;; esac; return 1; }
check "$name-given-up" "state-recorded" has "$st" 'given up'
sleep 1
check "$name-no-worker" "worker=$(hm_worker "$HM_IPID")" [ -z "$(hm_worker "$HM_IPID")" ]
check "$name-supervisor-kept" "pid=$HM_IPID" [ -d "/proc/$HM_IPID" ]
gpu-hostmem status "$HM_DOM" >"/tmp/$name.status" 2>&1
sed 's/^/[status] /' "/tmp/$name.status"
check "$name-status-says-given-up" "gpu-hostmem-status" grep -q 'state .*given up' "/tmp/$name.status"
# Never a hang: the guest's loop goes on after the give-up.
r0=$(hm_loop_rounds "$name")
sleep 6
r1=$(hm_loop_rounds "$name")
check "$name-guest-progresses-after-give-up" "rounds=$r0->$r1" [ "$r1" -gt "$r0" ]
gone_id=$(config_ids | tail -n1)
check "$name-config-gone-after-give-up" "id=${gone_id:-none}" [ "$gone_id" = 0xffffffff ]
hm_loopcheck_done "$name" 240
hm_ioreqd_log "$HM_DOM" 400 | grep -E 'died|giving up|given up|fallback' | tail -n 20
hm_destroy_clean "$name"
exit "$GH_FAILED"
