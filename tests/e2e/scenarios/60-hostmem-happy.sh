#!/usr/bin/env bash
# Scenario (issue 7, 1): the whole feature, happy path.
#   - xl create -p of an HVM guest with gpu_hostmem = 1: the plugin starts
#     gpu-hostmem-ioreqd for it;
#   - examples/hostmem-backend in dom0, started by `gpu-hostmem backend` as
#     nobody with a privcmd fd narrowed to registering memory for the guest
#     (no other Xen right: checked with fd-privilege), registers four
#     regions of its own memory for that domid, filled with a per-offset
#     pattern; the third is a dma-buf (a memfd's udmabuf) mapped VM_PFNMAP,
#     as a renderer maps what a GPU driver exports (kernel-patches 0009);
#   - xl unpause: the guest (tests/guest/hostmem-guest check) maps the BAR
#     through sysfs, reads the pattern of every region and stamps each page;
#   - the backend sees the guest's writes in its own memory (SIGUSR1 report);
#   - gpu-hostmem status shows the registrations, lent pages, faults, retries;
#   - xl destroy: no page lent (kernel's count through the CLI), no ioreqd, no
#     xenstore keys; then the backend exits cleanly and nothing is registered.
# timeout: 1500
set -u
source "$(dirname "$0")/hostmem-common.sh"
# The guest with xl's default device set (the PV keyboard the other test
# guests leave out: dom0/lib.sh, gh_guest_cfg), as a user's would have.
export GH_GUEST_VKB=1

name=hm-happy
regions=(0:2M 0x400000:1M 0x1000000:4M:udmabuf 0x3000000:64k)
gargs="0,0x200000,0x400000,0x100000,0x1000000,0x400000,0x3000000,0x10000"

hm_install || exit 1
t=$(gh_now)
if ! dom=$(hm_guest_create "$name" "hostmem-guest,check,$HM_VENDOR,$HM_DEVICE,$gargs"); then
    result hm-create 0 "xl-create-failed"
    exit 1
fi
result hm-create 1 "domid=$dom,$(gh_since "$t")s"
xsdir=/local/domain/0/gpu-hostmem/$dom
ipid=$(xenstore-read "$xsdir/pid" 2>/dev/null || true)
check hm-ioreqd-running "pid=$ipid,state=$(xenstore-read "$xsdir/state" 2>/dev/null)" \
    test -n "$ipid" -a -d "/proc/$ipid" -a "$(xenstore-read "$xsdir/state" 2>/dev/null)" = running
# Least privilege (issue 19): the worker that parses the guest's requests
# runs as nobody, with no capability and a seccomp filter; its supervisor
# keeps root to restart it and clean up.
wpid=$(hm_worker "$ipid")
check hm-ioreqd-worker-sandboxed "pid=${wpid:-none}" hm_sandboxed "${wpid:-none}"

bout=/tmp/$name.backend
# /dev/udmabuf is root's alone here; distributions give it to a group (kvm)
# that a renderer's user is in. The backend runs as nobody.
chgrp nogroup /dev/udmabuf && chmod 0660 /dev/udmabuf
if HM_BACKEND_USER=nobody hm_backend "$dom" "$bout" "${regions[@]}"; then
    result hm-backend-ready 1 "pid=$HM_BPID,regions=${#regions[@]}"
else
    result hm-backend-ready 0 "backend-not-ready"
    exit 1
fi
bpid=$HM_BPID
sed 's/^/[backend] /' "$bout"
# The backend has a backend's rights and no more: uid nobody, and its only
# Xen handle refuses hypercalls and DMOPs on the guest (it cannot act as
# the guest's device model).
check hm-backend-unprivileged "pid=$bpid" grep -qE '^Uid:\s+65534\s' "/proc/$bpid/status"
backend_narrow() {
    fd-privilege --backend "$dom" "$bpid" | sed "s/^/[fd-privilege backend] /"
    [ "${PIPESTATUS[0]}" = 0 ] && grep -q 'narrowed privcmd fd' "$bout"
}
check hm-backend-fd-narrowed "pid=$bpid" backend_narrow
# The udmabuf region is what privcmd refused before 0009: a VM_PFNMAP
# mapping ("pf" in smaps' VmFlags) of a dma-buf.
npf=$(hm_pfnmap_dmabufs "$bpid")
udmabuf_registered() { [ "$npf" = 1 ] && grep -q 'registered id=3 .*(udmabuf)' "$bout"; }
check hm-backend-udmabuf-pfnmap "pfnmap-dmabuf-mappings=$npf" udmabuf_registered

xl unpause "$name"
t=$(gh_now)
if gh_guest_wait "$name" "${HM_GUEST_WAIT:-1200}"; then
    result hm-guest-run 1 "$(gh_since "$t")s"
else
    result hm-guest-run 0 "$(gh_since "$t")s"
    hm_diag "$name" "$dom"
fi
grc=$(sed -n 's/^GH-GUEST-DONE rc=\([0-9]*\).*/\1/p' "/tmp/$name.out" | tail -n1)
check hm-guest-rc "rc=${grc:-none}" [ "${grc:-1}" = 0 ]
nread=$(grep -c '^RESULT name=guest-reads-pattern ok=1' "/tmp/$name.out" || true)
nstamp=$(grep -c '^RESULT name=guest-stamps-pages ok=1' "/tmp/$name.out" || true)
check hm-guest-read-all-regions "$nread/${#regions[@]}" [ "$nread" = "${#regions[@]}" ]
check hm-guest-stamped-all-regions "$nstamp/${#regions[@]}" [ "$nstamp" = "${#regions[@]}" ]

# The backend's side: the guest's stamps are in the backend's own memory.
hm_backend_report "$bpid" "$bout"
echo "---- what the backend saw"
grep '^backend: id=' "$bout" | tail -n "${#regions[@]}" | sed 's/^/[backend] /'
nseen=$(grep '^RESULT name=backend-sees-guest-writes' "$bout" | tail -n "${#regions[@]}" | grep -c ' ok=1 ' || true)
check hm-backend-sees-guest-writes "$nseen/${#regions[@]}" [ "$nseen" = "${#regions[@]}" ]
# Every page of every region was stamped (not just one).
want_pages=$((512 + 256 + 1024 + 16))
got_pages=$(grep '^RESULT name=backend-sees-guest-writes' "$bout" | tail -n "${#regions[@]}" |
    sed -n 's/.* value=\([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }')
check hm-backend-stamped-pages "$got_pages/$want_pages" [ "$got_pages" = "$want_pages" ]

# The operator's view.
echo "---- gpu-hostmem status $dom"
gpu-hostmem status "$dom" 2>&1 | sed 's/^/[status] /'
j=$(hm_status_json "$dom")
faults=$(hm_field "$j" bar_faults)
retries=$(hm_field "$j" retries)
lends=$(hm_field "$j" lends)
ledger=$(hm_field "$j" ledger_lent_pages)
klent=$(printf '%s' "$j" | tr -d '\n' | sed -n 's/.*"kernel": *{ *"lent_pages": *\([0-9]*\).*/\1/p')
nreg_srv=$(gpu-hostmem status "$dom" 2>/dev/null | awk '/^IOREQ server:/ { s = 1 } s && /^  registrations/ { print $2; exit }')
nreg_k=$(gpu-hostmem status "$dom" 2>/dev/null | awk '/^kernel/ { s = 1 } s && /^  registrations/ { print $2; exit }')
check hm-status-registrations "server=$nreg_srv,kernel=$nreg_k" \
    [ "${nreg_srv:-0}" = "${#regions[@]}" -a "${nreg_k:-0}" = "${#regions[@]}" ]
check hm-status-faults "faults=$faults,lends=$lends,retries=$retries" \
    [ "${faults:-0}" -gt 0 -a "${retries:-0}" -gt 0 -a "${lends:-0}" -gt 0 ]
# All 1808 registered pages are lent (fault-around lends whole 2 MiB chunks of
# registered pages, so every region is fully lent after the guest's pass).
check hm-status-lent-pages "kernel=$klent,ledger=$ledger" [ "${klent:-0}" = "$want_pages" ]

# Teardown (hm-happy-destroy, hm-happy-clean).
HM_DOM=$dom HM_IPID=$ipid hm_destroy_clean "$name"
kill -0 "$bpid" 2>/dev/null
result hm-backend-survives-destroy $([ $? = 0 ] && echo 1 || echo 0) "pid=$bpid"
kill -TERM "$bpid"
for _ in $(seq 1 50); do kill -0 "$bpid" 2>/dev/null || break; sleep 0.1; done
wait "$bpid" 2>/dev/null
brc=$?
check hm-backend-exit "rc=$brc" [ "$brc" = 0 ]
tail -n 1 "$bout" | sed 's/^/[backend] /'
nreg_after=$(gpu-hostmem status "$dom" 2>/dev/null | awk '/^kernel/ { s = 1 } s && /^  registrations/ { print $2; exit }')
check hm-no-registrations-left "kernel=${nreg_after:-?}" [ "${nreg_after:-0}" = 0 ]
[ "$GH_FAILED" = 0 ] || hm_ioreqd_log "$dom" 40
exit "$GH_FAILED"
