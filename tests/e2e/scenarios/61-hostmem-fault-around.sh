#!/usr/bin/env bash
# Scenario (issue 7, 2): fault-around. The backend registers 16 MiB at BAR
# offset 0; the guest reads one word per 2 MiB (8 reads), then every 4 KiB
# page (4096 reads). With the default fault-around of 2 MiB the first pass
# makes exactly one fault per 2 MiB chunk and lends the whole chunk, the
# second pass makes none: 0.5 faults per MiB, 4096 pages lent. Xen's
# counters of RETRY answers (shown by `gpu-hostmem status`) say it honoured
# each of the server's 8 answers.
# timeout: 1100
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-fa
hm_start "$name" "hostmem-guest,touch,$HM_VENDOR,$HM_DEVICE,0,0x1000000,0x200000,0x1000" 0:16M || exit 1
gh_guest_wait "$name" "${HM_GUEST_WAIT:-900}" || result "$name-guest-run" 0 "did-not-finish"
passes=$(grep -c '^RESULT name=guest-touch ok=1' "/tmp/$name.out" || true)
check "$name-guest-passes" "$passes" [ "$passes" = 2 ]
faults=$(hm_counter "$HM_DOM" bar_faults)
lends=$(hm_counter "$HM_DOM" lends)
retries=$(hm_counter "$HM_DOM" retries)
lent=$(hm_kernel_lent "$HM_DOM")
gpu-hostmem status "$HM_DOM" 2>&1 | sed 's/^/[status] /'
per_mib=$(awk -v f="$faults" 'BEGIN { printf "%.3f", f / 16 }')
check "$name-faults-per-chunk" "faults=$faults,lends=$lends,retries=$retries,per_MiB=$per_mib" [ "$faults" = 8 -a "$lends" = 8 ]
check "$name-whole-chunks-lent" "kernel_lent=$lent" [ "${lent:-0}" = 4096 ]
# Xen's own counters of the domain's RETRY answers (XEN_DMOP_get_retry_stats,
# read by the IOREQ server for its status): Xen completed every access the
# server answered RETRY for from the chunk just lent, sent none again and
# completed none as unbacked.
j=$(hm_status_json "$HM_DOM")
xc=$(hm_field "$j" completed)
xr=$(hm_field "$j" resent)
xf=$(hm_field "$j" refused)
check "$name-xen-honoured-every-retry" \
    "xen_completed=${xc:-none},xen_resent=${xr:-none},xen_refused=${xf:-none},server_retries=$retries" \
    [ "${xc:-x}" = "$retries" -a "$retries" = "$faults" -a "${xr:-x}" = 0 -a "${xf:-x}" = 0 ]
hm_destroy_clean "$name"
# The IOREQ server logs Xen's counters when it stops.
tl=$(grep -h "RETRY counters of the domain at teardown" "/var/log/xen/gpu-hostmem-$HM_DOM.log" 2>/dev/null | tail -n1)
case "$tl" in *"completed=$retries resent=0 refused=0 "*) logged=1 ;; *) logged=0 ;; esac
check "$name-xen-counters-logged-at-teardown" "$(printf '%s' "${tl:-none}" | sed 's/.*teardown //; s/ /,/g')" \
    [ "$logged" = 1 ]
exit "$GH_FAILED"
