#!/usr/bin/env bash
# Scenario (issue 19, libxl integration): a soft reset keeps the gpu-hostmem
# device as it keeps QEMU's (docs/interfaces.md, "Soft reset"):
#   - an HVM gpu_hostmem guest (on_soft_reset = "soft-reset") reads and stamps
#     a 2 MiB region of a backend's memory: all 512 pages are lent;
#   - the guest asks for a soft reset (SHUTDOWN_soft_reset, here issued from
#     dom0 with XEN_DMOP_remote_shutdown by tests/xen/xen-dm-shutdown: the
#     test guest has no kexec; Xen and xl cannot tell the difference), and
#     xl's monitor soft-resets it: QEMU's state saved, QEMU restarted from it;
#   - afterwards: the same domain (domid, unique id), the same IOREQ server
#     (supervisor and worker pids, ioservid, state running), the BAR where the
#     guest put it, and every lent page still known to the server (kernel's
#     count == the server's ledger == 512): nothing revoked, nothing leaked;
#   - the backend then replaces its memory: the guest, still running the
#     program it ran before the reset, sees the new data in every page and its
#     stamps reach the backend's memory (results on port 0xe9, xl dmesg);
#   - xl destroy: nothing left (no page lent, no ioreqd, no xenstore keys).
# timeout: 900
set -u
source "$(dirname "$0")/hostmem-common.sh"

name=hm-softreset
pages=512

# gh_dm_pid DOMID: pid of the domain's QEMU.
gh_dm_pid() { pgrep -f "xen-qemu-system-i386.*-xen-domid $1( |$)" | head -n1; }

# e9_lines DOMID: what the guest wrote to Xen's debug port (xl dmesg).
e9_lines() { xl dmesg 2>/dev/null | tr -d '\r' | sed -n "s/^.*(d$1) //p"; }

# e9_wait DOMID REGEX SECONDS
e9_wait() {
    local end=$(($(date +%s) + $3))
    while [ "$(date +%s)" -lt "$end" ]; do
        e9_lines "$1" | grep -q -- "$2" && return 0
        sleep 0.5
    done
    return 1
}

hm_install || exit 1
t=$(gh_now)
# hm_guest_create runs in a subshell: record the guest for hm_cleanup here.
HM_GUESTS+=("$name")
if ! dom=$(hm_guest_create "$name" "hostmem-guest,softreset,$HM_VENDOR,$HM_DEVICE,0,0x200000,480" \
    'on_soft_reset = "soft-reset"'); then
    result "$name-create" 0 "xl-create-failed"
    exit 1
fi
result "$name-create" 1 "domid=$dom,$(gh_since "$t")s"
xsdir=/local/domain/0/gpu-hostmem/$dom
ipid=$(xenstore-read "$xsdir/pid" 2>/dev/null || true)
check "$name-ioreqd-running" "pid=$ipid" test -n "$ipid" -a -d "/proc/$ipid"
if ! hm_backend "$dom" "/tmp/$name.backend" 0:2M; then
    result "$name-backend-ready" 0 "backend-not-ready"
    exit 1
fi
bpid=$HM_BPID
bout=/tmp/$name.backend
result "$name-backend-ready" 1 "pid=$bpid"
xl unpause "$name"

# Before: the guest read and stamped the region, then waits without a
# system call (its console and clock stop at the soft reset).
if ! hm_wait_marker "$name" '^GH-GUEST-SOFTRESET-READY' "${HM_GUEST_WAIT:-600}" ||
    ! e9_wait "$dom" '^GH-GUEST-SOFTRESET-WAITING' 60; then
    result "$name-guest-ready" 0 "no-marker"
    hm_console "$name"
    hm_diag "$name" "$dom"
    exit 1
fi
hm_console "$name" | grep -E 'RESULT|guest:'
result "$name-guest-ready" 1 ""

uid0=$(xenstore-read "$xsdir/unique-id" 2>/dev/null)
wpid0=$(hm_worker "$ipid")
srv0=$(xenstore-read "$xsdir/ioservid" 2>/dev/null)
bar0=$(xenstore-read "$xsdir/bar-base" 2>/dev/null)
qemu0=$(gh_dm_pid "$dom")
j=$(hm_status_json "$dom")
klent0=$(hm_kernel_lent "$dom")
ledger0=$(hm_field "$j" ledger_lent_pages)
echo "before: unique-id=$uid0 supervisor=$ipid worker=$wpid0 ioservid=$srv0 bar-base=$bar0 qemu=$qemu0" \
    "kernel_lent=$klent0 ledger=$ledger0"
check "$name-lent-before" "kernel=$klent0,ledger=$ledger0" \
    [ "${klent0:-0}" = "$pages" -a "${ledger0:-0}" = "$pages" ]

# The soft reset, as xl's monitor does it for a guest that asks.
t=$(gh_now)
xen-dm-shutdown "$dom" soft_reset || { result "$name-soft-reset" 0 "dm-shutdown-failed"; exit 1; }
done_reset=0
for _ in $(seq 1 360); do
    qemu1=$(gh_dm_pid "$dom")
    # By domid: libxl removes and rewrites the domain's xenstore directory
    # (its name with it) during the soft reset, so a lookup by name fails
    # for a moment although the domain is alive (lost the CI of stop 24).
    st=$(xl list "$dom" 2>/dev/null | awk 'NR == 2 { print $5 }')
    dms=$(xenstore-read "/local/domain/0/device-model/$dom/state" 2>/dev/null)
    if [ -n "$qemu1" ] && [ "$qemu1" != "$qemu0" ] && [ "$dms" = running ] &&
        [ -n "$st" ] && [ "${st#*s}" = "$st" ]; then
        done_reset=1
        break
    fi
    xl list "$dom" >/dev/null 2>&1 || break
    sleep 0.5
done
echo "---- xl's monitor"
tail -n 20 "/var/log/xen/xl-$name.log" 2>/dev/null | sed 's/^/[xl monitor] /'
dom1=$(xl domid "$name" 2>/dev/null)
check "$name-soft-reset" "domid=${dom1:-gone},qemu=$qemu0->${qemu1:-none},state=${st:-none},dm=${dms:-none},$(gh_since "$t")s" \
    [ "$done_reset" = 1 -a "$dom1" = "$dom" ]
[ "$done_reset" = 1 ] || { hm_diag "$name" "$dom"; exit 1; }

# After: the same instance, the same server, the same BAR, the same pages.
uid1=$(xenstore-read "$xsdir/unique-id" 2>/dev/null)
ipid1=$(xenstore-read "$xsdir/pid" 2>/dev/null)
wpid1=$(hm_worker "$ipid")
srv1=$(xenstore-read "$xsdir/ioservid" 2>/dev/null)
bar1=$(xenstore-read "$xsdir/bar-base" 2>/dev/null)
state1=$(xenstore-read "$xsdir/state" 2>/dev/null)
echo "---- gpu-hostmem status $dom after the soft reset"
gpu-hostmem status "$dom" 2>&1 | sed 's/^/[status] /'
j=$(hm_status_json "$dom")
klent1=$(hm_kernel_lent "$dom")
ledger1=$(hm_field "$j" ledger_lent_pages)
check "$name-same-instance" "unique-id=$uid0->$uid1" [ -n "$uid1" -a "$uid1" = "$uid0" ]
check "$name-same-server" "supervisor=$ipid->$ipid1,worker=$wpid0->$wpid1,ioservid=$srv0->$srv1,state=$state1" \
    [ "$ipid1" = "$ipid" -a -n "$wpid1" -a "$wpid1" = "$wpid0" -a "$srv1" = "$srv0" -a "$state1" = running ]
check "$name-bar-kept" "bar-base=$bar0->$bar1" [ -n "$bar1" -a "$bar1" = "$bar0" -a "$bar1" != unmapped ]
check "$name-lent-kept" "kernel=$klent1,ledger=$ledger1" \
    [ "${klent1:-0}" = "$pages" -a "${ledger1:-0}" = "$pages" ]

# The guest after the reset: new data in every page, its writes reach the
# backend (the replacement erased the stamps of before).
kill -USR2 "$bpid"
if e9_wait "$dom" '^GH-GUEST-SOFTRESET-DONE' 360; then
    result "$name-guest-after" 1 "$(e9_lines "$dom" | sed -n 's/^GH-GUEST-SOFTRESET-DONE //p' | tail -n1)"
else
    result "$name-guest-after" 0 "no-GH-GUEST-SOFTRESET-DONE"
    hm_diag "$name" "$dom"
fi
e9_lines "$dom" | grep -E '^(RESULT|GH-GUEST-SOFTRESET)' | sed "s/^/[$name e9] /"
grc=$(e9_lines "$dom" | sed -n 's/^GH-GUEST-SOFTRESET-DONE rc=\([0-9]*\).*/\1/p' | tail -n1)
check "$name-guest-rc" "rc=${grc:-none}" [ "${grc:-1}" = 0 ]
grep -q '^RESULT name=backend-replace ok=1' "$bout"
result "$name-backend-replaced" $([ $? = 0 ] && echo 1 || echo 0) ""
hm_backend_report "$bpid" "$bout"
seen=$(grep '^RESULT name=backend-sees-guest-writes' "$bout" | tail -n1 | sed -n 's/.* value=\([0-9]*\).*/\1/p')
check "$name-backend-sees-writes-after" "$seen/$pages" [ "${seen:-0}" = "$pages" ]
j=$(hm_status_json "$dom")
klent2=$(hm_kernel_lent "$dom")
ledger2=$(hm_field "$j" ledger_lent_pages)
check "$name-lent-known" "kernel=$klent2,ledger=$ledger2" [ "${klent2:-x}" = "${ledger2:-y}" ]

# Teardown: nothing left.
HM_DOM=$dom HM_IPID=$ipid hm_destroy_clean "$name"
kill -TERM "$bpid"
for _ in $(seq 1 50); do kill -0 "$bpid" 2>/dev/null || break; sleep 0.1; done
wait "$bpid" 2>/dev/null
brc=$?
check "$name-backend-exit" "rc=$brc" [ "$brc" = 0 ]
nreg=$(hm_kernel_regions "$dom")
check "$name-no-registrations-left" "kernel=${nreg:-?}" [ "${nreg:-0}" = 0 ]
[ "$GH_FAILED" = 0 ] || hm_ioreqd_log "$dom" 60
exit "$GH_FAILED"
