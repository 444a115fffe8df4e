#!/usr/bin/env bash
# Scenario (issue 7, 3; issue 19): unregistered BAR offsets read all-ones
# and drop writes, and nothing is lent. The backend registers 1 MiB at
# offset 0 that the guest never touches; the guest reads and writes at 8 MiB
# (unregistered), then copies from there into its RAM with rep movsb, rep
# movsq and std; rep movsb (data_is_ptr reads: the server fills the buffer
# with ones itself, exactly the bytes copied, one round trip each) and
# from its RAM to there (dropped). Before, the server answered those with
# RETRY and nothing lent: Xen sent each 9 times, filled the buffer itself,
# counted a refused answer, and the server warned of a bypass.
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
for r in rep-movsb-fills-ones rep-movsq-fills-ones std-rep-movsb-fills-ones \
    rep-movsb-to-bar-dropped rep-movsb-to-bar-source-kept; do
    check "$name-guest-$r" "$(gh_guest_result "$name" "guest-unbacked-$r")" \
        gh_guest_result "$name" "guest-unbacked-$r"
done
# One request per copy (3 reads whose buffer the server filled, 1 write),
# no RETRY: Xen resent nothing and completed nothing as unbacked itself,
# and the server warned of nothing.
j=$(hm_status_json "$HM_DOM")
fills=$(hm_field "$j" buffer_fills)
xfills=$(hm_field "$j" xen_fills)
retries=$(hm_field "$j" retries)
xr=$(hm_field "$j" resent)
xf=$(hm_field "$j" refused)
check "$name-rep-one-request-each" \
    "buffer_fills=${fills:-none},xen_fills=${xfills:-none},server_retries=${retries:-none},xen_resent=${xr:-none},xen_refused=${xf:-none}" \
    [ "${fills:-x}" = 3 -a "${xfills:-x}" = 0 -a "${retries:-x}" = 0 -a "${xr:-x}" = 0 -a "${xf:-x}" = 0 ]
check "$name-no-bypass-warning" "log=/var/log/xen/gpu-hostmem-$HM_DOM.log" \
    bash -c "! grep -q 'RETRY answers .*as unbacked' /var/log/xen/gpu-hostmem-$HM_DOM.log"
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
