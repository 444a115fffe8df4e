#!/usr/bin/env bash
# Scenario (issue 17): the BAR is above 4 GiB and write-back for a guest
# driver, with the guest's MTRRs as its firmware left them.
#   - a 256 MiB BAR (small enough that hvmloader would put it below 4 GiB, in
#     the PCI hole it makes UC): ioreqd names its function to hvmloader
#     (~/hvmloader/pci/wb-bar-devfns) and hvmloader places it above every
#     other BAR in the high window, outside the UC MTRR ranges;
#   - the guest (hostmem-guest wbcheck) maps the BAR as a GPU driver maps
#     host-visible memory, write-back (/dev/mem without O_SYNC: Linux's
#     memremap(MEMREMAP_WB) path for memory outside RAM); pat_memtype_list
#     must say write-back and the BAR must be above 4 GiB; no MTRR is lifted;
#   - through that mapping the guest reads the backend's pattern and stamps
#     every page, and the backend sees the stamps in its own memory;
#   - xenstore bar-base (what the IOREQ server decodes) is the high address;
#   - xl destroy leaves nothing behind.
# Before xen-patches 0012 the BAR sat at 0xe0000000, under a UC MTRR, and the
# mapping was UC- (run 20261204-231114-14335, on 385c954).
# timeout: 900
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-window
HM_BAR_MIB=256 hm_start "$name" "hostmem-guest,wbcheck,$HM_VENDOR,$HM_DEVICE,0,0x400000" \
    0:4M || exit 1
hint=$(xenstore-read "/local/domain/$HM_DOM/hvmloader/pci/wb-bar-devfns" 2>/dev/null || true)
check "$name-hvmloader-hint" "wb-bar-devfns=${hint:-none}" [ -n "$hint" ]
gh_guest_wait "$name" "${HM_GUEST_WAIT:-600}" || result "$name-guest-run" 0 "did-not-finish"
o=/tmp/$name.out
xl dmesg 2>/dev/null | grep "(d$HM_DOM) .*pci dev" | sed 's/^/[hvmloader] /'
grep '^guest: \(mtrr\|pat\|BAR0\|devmem\|disabled MTRR\)' "$o" | sed 's/^/[memtype] /'
for r in guest-bar-above-4g guest-bar-write-back guest-reads-pattern guest-stamps-pages; do
    v=$(sed -n "s/^RESULT name=$r ok=\([01]\) value=\([^ ]*\).*/\1 \2/p" "$o" | tail -n1)
    check "$name-$r" "${v#* }" [ "${v%% *}" = 1 ]
done
lifted=$(grep -c 'disabled MTRR' "$o" || true)
check "$name-no-mtrr-lifted" "lifted=$lifted" [ "$lifted" = 0 ]
base=$(xenstore-read "/local/domain/0/gpu-hostmem/$HM_DOM/bar-base" 2>/dev/null || echo unmapped)
case "$base" in 0x*) high=$((base >= (1 << 32))) ;; *) high=0 ;; esac
check "$name-bar-base-above-4g" "bar-base=$base" [ "$high" = 1 ]
hm_backend_report "$HM_BPID" "$HM_BOUT"
seen=$(sed -n 's/^RESULT name=backend-sees-guest-writes ok=1 value=\([0-9]*\) .*/\1/p' "$HM_BOUT" | tail -n1)
check "$name-backend-sees-stamps" "pages=${seen:-none}/1024" [ "${seen:-0}" = 1024 ]
hm_destroy_clean "$name"
exit "$GH_FAILED"
