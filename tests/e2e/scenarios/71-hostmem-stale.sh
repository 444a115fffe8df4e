#!/usr/bin/env bash
# Scenario (issue 15, "Tests that would catch a stale page"): the guest's view
# of every lent page against the owner's memory, after each way the owner's
# kernel can replace a frame under a lent page. dom0 runs
# tests/kernel/hostmem-stale.c as the backend (control page at BAR offset 0,
# 2 MiB of data at 2 MiB); the guest runs "hostmem-guest follow". For each
# case the backend lets the guest read (and so be lent) every page, replaces
# frames (fork + COW, KSM, THP split and collapse, migration, MADV_PAGEOUT,
# memfd truncate from another process, random invalidations while the guest
# reads), writes a new generation through its own mappings and asks the guest
# what it sees: any page that differs is a frame the owner no longer maps.
# Last, a child owning the data region is killed while the guest faults on
# it: every page must then read as unbacked (all ones).
# A case that replaced no frame (pagemap) is reported as SKIP with the reason.
# THP split and collapse need transparent huge pages, which a PV dom0 lacks
# (SKIP there); under a PVH dom0 (tests/e2e/run with GPU_HOSTMEM_DOM0=pvh)
# they must run: a SKIP of either fails the scenario.
# MADV_PAGEOUT needs swap: a zram swap device is set up if dom0 can.
# timeout: 900
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-stale
hm_install || exit 1

# Swap for MADV_PAGEOUT, if this dom0 can make some.
swap=none
if [ -z "$(tail -n +2 /proc/swaps)" ] && modprobe zram 2>/dev/null && [ -e /sys/block/zram0/disksize ] &&
    echo 64M >/sys/block/zram0/disksize 2>/dev/null && command -v mkswap >/dev/null &&
    mkswap /dev/zram0 >/dev/null 2>&1 && swapon /dev/zram0 2>/dev/null; then
    swap=zram0
fi
dom0_type=$(cat /sys/hypervisor/guest_type 2>/dev/null || echo unknown)
echo "hostmem-stale: dom0=$dom0_type swap=$swap ksm=$(cat /sys/kernel/mm/ksm/run 2>/dev/null || echo none)" \
    "thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo none)"

t=$(gh_now)
HM_GUESTS+=("$name") # hm_guest_create runs in a subshell below
if ! HM_DOM=$(hm_guest_create "$name" "hostmem-guest,follow,$HM_VENDOR,$HM_DEVICE,0,0x200000,0x200000,600"); then
    result "$name-create" 0 "xl-create-failed"
    exit 1
fi
result "$name-create" 1 "domid=$HM_DOM,$(gh_since "$t")s"
HM_IPID=$(xenstore-read "/local/domain/0/gpu-hostmem/$HM_DOM/pid" 2>/dev/null || true)
out=/tmp/$name.backend
# The guest instance the memory is for: the unique id ioreqd recorded.
uid=$(xenstore-read "/local/domain/0/gpu-hostmem/$HM_DOM/unique-id" 2>/dev/null || true)
if [ -z "$uid" ]; then
    result "$name-backend" 0 "no-unique-id-recorded"
    exit 1
fi
hostmem-stale -d "$HM_DOM" -u "$uid" -s "${HM_STALE_STRESS:-10}" >"$out" 2>&1 &
spid=$!
HM_BACKEND_PIDS+=("$spid")
xl unpause "$name"
if ! gh_guest_wait "$name" 780; then
    result "$name-guest-run" 0 "did-not-finish"
    # Its backend would wait for the guest's answers to its own time
    # bounds (minutes): a lost guest (e.g. the test bed's early-boot
    # fault) ends the scenario now.
    kill "$spid" 2>/dev/null
fi
wait "$spid"
src=$?
sed 's/^/[hostmem-stale] /' "$out"
grep -E '^(RESULT|SKIP) ' "$out"
check "$name-backend-exit" "exit:$src" [ "$src" = 0 ]
# Every case either ran or says why not.
for c in fork-cow ksm thp-split thp-collapse migrate pageout memfd-truncate stress owner-exit; do
    grep -qE "^(RESULT|SKIP) name=stale-$c " "$out" || result "$name-case-$c" 0 "no-result"
done
# A PVH dom0 has THP: the THP cases must have been exercised, not skipped;
# and so when the run asked for one (a dom0 booted PV instead has no THP).
if [ "$dom0_type" = PVH ] || [ "$(cat /etc/gpu-hostmem/dom0-mode 2>/dev/null)" = pvh ]; then
    for c in thp-split thp-collapse; do
        why=$(sed -n "s/^SKIP name=stale-$c reason=//p" "$out")
        [ -z "$why" ] || result "$name-case-$c-under-pvh" 0 "skipped:$why"
    done
fi
gpu-hostmem status "$HM_DOM" 2>&1 | sed 's/^/[status] /'
hm_destroy_clean "$name"
[ "$swap" = zram0 ] && swapoff /dev/zram0 2>/dev/null
exit "$GH_FAILED"
