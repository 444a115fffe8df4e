#!/usr/bin/env bash
# Scenario (issue 14, I3): every instruction form a guest may use on the BAR
# is exact on the first touch of a chunk, when the access faults to the
# IOREQ server and Xen completes it from the memory just lent, and again once
# the chunk is lent: libc memcpy, rep movsb/movsq both ways, with the
# direction flag set, BAR to BAR across two chunks, rep stosb/stosq, movsq
# without rep, SSE (and AVX where the CPU has it), unaligned loads and stores
# straddling two chunks, two registrations, the end of the registered
# memory and the start of a registration above a hole; and rep movsq/stosq
# whose first element straddles those last two boundaries. Every byte is
# compared with the backend's memory (the guest reads the lent pages back
# with plain loads). A rep movsb from a fresh chunk gave zeros for its first
# page before Xen completed such accesses from memory; a straddling rep
# element read all ones for its registered bytes (or dropped them) before
# Xen split it at the page boundary (xen-patches 0017).
# timeout: 1100
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-insn
# Registered: 0..48M and 48M..64M (two registrations), 72M..80M after a
# hole; unregistered elsewhere. The guest takes fresh 2 MiB chunks from
# 0..40M, then straddles 48M, 64M and 72M.
HM_BAR_MIB=128 hm_start "$name" \
    "hostmem-guest,insn,$HM_VENDOR,$HM_DEVICE,0,0x2800000,0x4000000,0x3000000,reg:0x4800000:0x5000000" \
    0:48M 48M:16M 72M:8M || exit 1
gh_guest_wait "$name" "${HM_GUEST_WAIT:-900}" || result "$name-guest-run" 0 "did-not-finish"
forms=$(grep -c '^RESULT name=guest-insn-.* ok=1' "/tmp/$name.out" || true)
check "$name-guest-all-exact" "forms_ok=$forms" grep -q '^RESULT name=guest-insn-all ok=1' "/tmp/$name.out"
# 15 forms (17 with AVX) x 2, 4 straddles x 2 x load/store, and 2 rep
# straddles x 2 x 4 forms: at least 62.
check "$name-guest-forms-run" "forms_ok=$forms" [ "$forms" -ge 62 ]
rep_ok=$(grep -c '^RESULT name=guest-insn-straddle-.*rep-.* ok=1' "/tmp/$name.out" || true)
check "$name-guest-rep-straddles" "rep_straddles_ok=$rep_ok" [ "$rep_ok" = 16 ]
retries=$(hm_counter "$HM_DOM" retries)
check "$name-completed-from-memory" "retries=$retries" [ "$retries" -gt 0 ]
gpu-hostmem status "$HM_DOM" 2>&1 | sed 's/^/[status] /'
# Xen's counters of the domain's RETRY answers (XEN_DMOP_get_retry_stats, in
# the server's status): every answer the server gave ended one way in Xen
# (completed from memory, sent again, completed as unbacked), so they add up
# to the server's own count; refused ones are warned about in its log.
j=$(hm_status_json "$HM_DOM")
retries=$(hm_counter "$HM_DOM" retries)
xc=$(hm_field "$j" completed)
xr=$(hm_field "$j" resent)
xf=$(hm_field "$j" refused)
sum=none
[ -n "$xc" -a -n "$xr" -a -n "$xf" ] && sum=$((xc + xr + xf))
check "$name-xen-retry-accounting" \
    "xen_completed=${xc:-none},xen_resent=${xr:-none},xen_refused=${xf:-none},sum=$sum,server_retries=$retries" \
    [ "$sum" = "$retries" -a "${xc:-0}" != 0 ]
# Copies from unregistered offsets into RAM are completed by the server
# (buffer_fills), those into lent pages left to Xen (xen_fills: each ends
# refused by design and is not warned about); other refused answers are.
fills=$(hm_field "$j" buffer_fills)
xfills=$(hm_field "$j" xen_fills)
log=/var/log/xen/gpu-hostmem-$HM_DOM.log
if [ "${xf:-0}" -gt "${xfills:-0}" ] 2>/dev/null; then
    check "$name-refused-warned" "refused=$xf,xen_fills=${xfills:-none},buffer_fills=${fills:-none}" \
        grep -q 'WARN.*RETRY answers .*as unbacked' "$log"
else
    check "$name-no-bypass-warning" "refused=${xf:-none},xen_fills=${xfills:-none},buffer_fills=${fills:-none}" \
        bash -c "! grep -q 'RETRY answers .*as unbacked' '$log'"
fi
hm_destroy_clean "$name"
exit "$GH_FAILED"
