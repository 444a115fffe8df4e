#!/usr/bin/env bash
# Scenario (issue 15, the OOM reaper): the owner of lent pages is OOM-killed
# and the OOM reaper unmaps its memory with a non-blockable MMU notifier
# range (mm/oom_kill.c __oom_reap_task_mm). privcmd must revoke the pages
# before the reaper frees them, or refuse (and leave them for exit_mmap).
# dom0 runs tests/kernel/hostmem-stale.c's oom-reap case as the backend, the
# guest "hostmem-guest follow": the owner (a child of the backend) sits in a
# memory cgroup v2 limited to OOM_MAX, has its 2 MiB data region lent to the
# guest, then allocates until the OOM killer takes it. Its mm is kept from
# exit_mmap by a reader stalled on its userfaultfd, so the reaper, not the
# exit, unmaps it (see case_oom_reap()). Checked there: killed by the OOM
# killer (kernel log, memory.events), reaped by the reaper, no page lent
# afterwards, the guest reads all ones; here: no kernel warning in dom0's
# log (WARNING, BUG, sleeping in atomic context, a page privcmd could not
# revoke), nothing lent once the backend is gone, destroy clean.
# Without a memory controller in dom0 the kill is a forced global OOM kill
# (sysrq f) of the same child (oom_score_adj 1000).
# timeout: 600
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-oom
hm_install || exit 1

# A memory cgroup for the owner (the test bed's init mounts no cgroup fs).
cg=/sys/fs/cgroup/gh-hostmem-oom
mode=sysrq
if ! grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts; then
    mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || true
fi
if grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    grep -qw memory /sys/fs/cgroup/cgroup.subtree_control ||
        echo +memory >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    rmdir "$cg" 2>/dev/null || true
    if mkdir -p "$cg" && echo "${OOM_MAX:-24M}" >"$cg/memory.max" 2>/dev/null; then
        [ -e "$cg/memory.swap.max" ] && echo 0 >"$cg/memory.swap.max"
        mode=$cg
    fi
fi
echo "hostmem-oom: mode=$mode memory.max=$(cat "$cg/memory.max" 2>/dev/null || echo none)"
# What dom0's kernel reports on its own: Debian's config has neither
# CONFIG_DEBUG_ATOMIC_SLEEP (might_sleep() checks) nor lockdep; "scheduling
# while atomic" it does report. /proc/lockdep exists only with lockdep.
echo "hostmem-oom: lockdep=$([ -e /proc/lockdep ] && echo on || echo off)"

# Kernel messages from here on only.
marker="gh-e2e 77 start $(date +%s%N)"
echo "$marker" >/dev/kmsg

t=$(gh_now)
HM_GUESTS+=("$name") # hm_guest_create runs in a subshell below
if ! HM_DOM=$(hm_guest_create "$name" "hostmem-guest,follow,$HM_VENDOR,$HM_DEVICE,0,0x200000,0x200000,400"); then
    result "$name-create" 0 "xl-create-failed"
    exit 1
fi
result "$name-create" 1 "domid=$HM_DOM,$(gh_since "$t")s"
HM_IPID=$(xenstore-read "/local/domain/0/gpu-hostmem/$HM_DOM/pid" 2>/dev/null || true)
uid=$(xenstore-read "/local/domain/0/gpu-hostmem/$HM_DOM/unique-id" 2>/dev/null || true)
if [ -z "$uid" ]; then
    result "$name-backend" 0 "no-unique-id-recorded"
    exit 1
fi
out=/tmp/$name.backend
hostmem-stale -d "$HM_DOM" -u "$uid" -c oom-reap -m "$mode" >"$out" 2>&1 &
spid=$!
HM_BACKEND_PIDS+=("$spid")
xl unpause "$name"
if ! gh_guest_wait "$name" 480; then
    result "$name-guest-run" 0 "did-not-finish"
    kill "$spid" 2>/dev/null
fi
wait "$spid"
src=$?
sed 's/^/[hostmem-stale] /' "$out"
grep -E '^(RESULT|SKIP) ' "$out"
check "$name-backend-exit" "exit:$src" [ "$src" = 0 ]
grep -qE '^RESULT name=stale-oom-reap ' "$out" || result "$name-case-oom-reap" 0 "no-result"
[ "$mode" = sysrq ] && result "$name-memcg" skip "no-memory-cgroup:forced-global-oom-instead"

# dom0's kernel log since the marker: the OOM report, and nothing worse.
log=/tmp/$name.kmsg
dmesg | sed -n "/$marker/,\$p" >"$log"
grep -E 'Killed process|oom_reaper|hostmem|privcmd' "$log" | sed 's/^/[dmesg] /'
bad=$(grep -cE 'WARNING:|BUG:|sleeping function called from invalid context|scheduling while atomic|cannot revoke|general protection|Oops|unable to reap' "$log")
grep -E 'WARNING:|BUG:|sleeping function called from invalid context|scheduling while atomic|cannot revoke|general protection|Oops|unable to reap' -A20 "$log" | sed 's/^/[dmesg-bad] /'
check "$name-dmesg-clean" "bad-lines:$bad" [ "$bad" = 0 ]

# The backend is gone: the kernel counts nothing lent to the guest.
lent=$(hm_kernel_lent "$HM_DOM")
regs=$(hm_kernel_regions "$HM_DOM")
check "$name-nothing-lent" "lent=$lent,registrations=$regs" test "${lent:-x}" = 0 -a "${regs:-0}" = 0
gpu-hostmem status "$HM_DOM" 2>&1 | sed 's/^/[status] /'
hm_ioreqd_log "$HM_DOM" 40
hm_destroy_clean "$name"
[ "$mode" != sysrq ] && rmdir "$cg" 2>/dev/null
exit "$GH_FAILED"
