#!/usr/bin/env bash
# Scenario (issue 19, least privilege), with run_as given as UID:GID
# (65534:65534) in /etc/xen/gpu-hostmem.yaml (60 and 65 check the default,
# nobody): the ioreqd worker drops to uid 65534 with no supplementary group,
# no capability and a seccomp filter (Seccomp: 2 in /proc/PID/status) while
# the guest reads and stamps its region, and holds no privcmd or evtchn fd
# that reaches beyond its guest (the probe, checked against a process with
# an unrestricted privcmd fd); the supervisor keeps root. On
# destroy the worker stops under the filter (the supervisor logs its exit
# code, not a signal, and no "seccomp: system call N is not allowed" line:
# a call outside the allow-list would kill it with SIGSYS), and nothing is
# left.
# timeout: 600
set -u
source "$(dirname "$0")/hostmem-common.sh"
cfg=/etc/xen/gpu-hostmem.yaml
[ -e "$cfg" ] && cp "$cfg" /tmp/gpu-hostmem.yaml.saved
restore() { if [ -e /tmp/gpu-hostmem.yaml.saved ]; then mv /tmp/gpu-hostmem.yaml.saved "$cfg"; else rm -f "$cfg"; fi; hm_cleanup; }
trap restore EXIT
mkdir -p /etc/xen
printf 'run_as: 65534:65534\n' >"$cfg"
gpu-hostmem check-config "$cfg"
name=hm-sbx
if ! hm_start "$name" "hostmem-guest,check,$HM_VENDOR,$HM_DEVICE,0,0x200000" 0:2M; then
    grep -h 'seccomp: system call\|worker died\|SIGSYS' /var/log/xen/gpu-hostmem-*.log 2>/dev/null | tail -n 10 | sed 's/^/[ioreqd] /'
    exit 1
fi
w=$(hm_worker "$HM_IPID")
check "$name-worker-sandboxed" "pid=${w:-none}" hm_sandboxed "${w:-none}"
check "$name-supervisor-root" "pid=$HM_IPID" grep -qE '^Uid:\s+0\s' "/proc/$HM_IPID/status"
# The probe of hm_sandboxed catches what it looks for: a process holding
# an unrestricted privcmd fd (as the worker did with its xenctrl handle).
sleep 120 3</dev/xen/privcmd &
holder=$!
fdp_catches() {
    local out rc
    out=$(fd-privilege "$holder")
    rc=$?
    printf '%s\n' "$out" | sed "s/^/[fd-privilege control] /"
    [ "$rc" = 1 ] && grep -q '^fd 3 /dev/xen/privcmd: UNRESTRICTED' <<<"$out"
}
check "$name-fd-probe-catches-unrestricted-privcmd" "pid=$holder" fdp_catches
kill "$holder" 2>/dev/null
gh_guest_wait "$name" 300 || result "$name-guest-run" 0 "did-not-finish"
check "$name-guest-read" "$(gh_guest_result "$name" guest-reads-pattern)" gh_guest_result "$name" guest-reads-pattern
hm_destroy_clean "$name"
log=/var/log/xen/gpu-hostmem-$HM_DOM.log
grep -E 'seccomp|SIGSYS|unprivileged|died|stopped' "$log" | tail -n 10 | sed "s/^/[ioreqd $HM_DOM] /"
check "$name-filter-installed" "log" grep -q 'running unprivileged, seccomp filter installed' "$log"
# The worker's own teardown ran under the filter: it exited (a code, not
# a signal such as SIGSYS) when the destroy hook stopped it.
exited() { grep 'worker stopped on request' "$log" | grep -q 'status=exit code'; }
check "$name-worker-exited-under-the-filter" "log" exited
check "$name-no-call-refused" "log" sh -c "! grep -q 'seccomp: system call' '$log'"
exit "$GH_FAILED"
