#!/usr/bin/env bash
# Scenario (issue 18, stage 1): with device: virtio-gpu in
# /etc/xen/gpu-hostmem.yaml, the guest's unmodified virtio_gpu driver (trixie
# 6.12, loaded from the initramfs) probes the gpu-hostmem function as a
# virtio-gpu device served by gpu-hostmem-ioreqd:
#   - hvmloader routes the function's INTA ("pci dev 05:0 INTA->IRQn");
#   - the guest's kernel log has the driver's probe with +resource_blob
#     +host_visible and "Host memory window: <BAR0> +<size>", the window BAR
#     the IOREQ server reports; /dev/dri/renderD128 and card0 exist;
#   - tests/guest/virtio-gpu-guest, through the DRM uAPI only, creates a
#     64x64 2D resource (the driver attaches its backing), writes a pattern
#     through its mapping and transfers it to the host: every command is
#     answered without an error response (the driver logs those);
#   - kill -9 of the IOREQ server's worker once the guest drew: the
#     supervisor restarts it from the saved state (function, transport,
#     ring positions), and the guest's second resource, drawn through the
#     same queues, is answered without an error too;
#   - gpu-hostmem status shows the device running and the requests the
#     restarted worker answered; the workers run as nobody with Seccomp 2
#     and no system call was refused;
#   - xl destroy: nothing left.
# timeout: 1500
set -u
source "$(dirname "$0")/hostmem-common.sh"
hm_device_config vg 'device: virtio-gpu\n' "device: virtio-gpu" 'device virtio-gpu'

name=vg-probe
hm_install || exit 1
hm_create vg "$name" "virtio-gpu-guest,probe,${VG_RESTART_WAIT:-20}" || exit 1
dom=$HM_DOM xsdir=$HM_XSDIR wpid=$HM_WPID
check vg-worker-sandboxed "pid=${wpid:-none}" hm_sandboxed_ids "${wpid:-none}"

xl unpause "$name"
t=$(gh_now)
# Once the guest drew its first resource, the worker dies (SIGKILL); the
# supervisor starts another that re-attaches from the saved state while
# the guest waits to draw its second.
if hm_wait_marker "$name" '^GH-VG-PHASE1-DONE' "${HM_GUEST_WAIT:-1200}"; then
    result vg-guest-phase1 1 "$(gh_since "$t")s"
    kill -9 "$wpid"
    nw=
    for _ in $(seq 1 100); do
        nw=$(hm_worker "$HM_IPID")
        [ -n "$nw" ] && [ "$nw" != "$wpid" ] && [ "$(xenstore-read "$xsdir/state" 2>/dev/null)" = running ] && break
        nw=
        sleep 0.1
    done
    check vg-worker-restarted "old=$wpid,new=${nw:-none}" test -n "$nw"
    wpid=$nw
    n=$(xenstore-read "$xsdir/restarts" 2>/dev/null || true)
    check vg-restart-recorded "restarts=${n:-none}" [ "${n:-0}" = 1 ]
    # The guest's second phase, now rather than at its time bound.
    gh_guest_say "$name" gh-go || echo "could not type on $name's console"
else
    result vg-guest-phase1 0 "$(gh_since "$t")s"
fi
if gh_guest_wait "$name" "${HM_GUEST_WAIT:-1200}"; then
    result vg-guest-run 1 "$(gh_since "$t")s"
else
    result vg-guest-run 0 "$(gh_since "$t")s"
    hm_diag "$name" "$dom"
fi
out=/tmp/$name.out

# The firmware routed our slot's INTA (hvmloader, on Xen's console).
bdf=$(xenstore-read "$xsdir/bdf" 2>/dev/null)
slot=${bdf##*:}
slot=${slot%.*}
inta=$(xl dmesg 2>/dev/null | grep -E "\\(d$dom\\) pci dev $slot:0 INTA->IRQ[0-9]+" | tail -n1)
check vg-hvmloader-inta "${inta#*pci dev }" test -n "$inta"

# The driver's probe, from the guest's kernel log.
grep '^KLOG' "$out" | sed 's/^/[guest klog] /'
check vg-driver-initialized "klog" grep -qE '^KLOG .*Initialized virtio_gpu' "$out"
check vg-features "klog" grep -qE '^KLOG .*features: .*\+resource_blob \+host_visible' "$out"
window=$(sed -n 's/^KLOG .*Host memory window: \(0x[0-9a-f]*\) +\(0x[0-9a-f]*\).*/\1 \2/p' "$out" | tail -n1)
bar_base=$(xenstore-read "$xsdir/bar-base" 2>/dev/null)
bar_size=$(xenstore-read "$xsdir/bar-size" 2>/dev/null)
same_window() {
    [ -n "$window" ] || return 1
    set -- $window
    [ $(($1)) = $((bar_base)) ] && [ $(($2)) = $((bar_size)) ]
}
check vg-host-memory-window "guest=${window:-none},bar-base=$bar_base,bar-size=$bar_size" same_window
for r in guest-modules guest-drm-nodes guest-host-memory-window guest-getparam guest-resource-create \
    guest-map guest-transfer-to-host guest-wait guest-no-error-responses \
    guest-after-restart-resource-create guest-after-restart-map guest-after-restart-transfer-to-host \
    guest-after-restart-wait guest-after-restart-no-error-responses; do
    check "vg-$r" "$(grep "^RESULT name=$r " "$out" | tail -n1 | sed 's/.* value=//')" gh_guest_result "$name" "$r"
done
grc=$(sed -n 's/^GH-GUEST-DONE rc=\([0-9]*\).*/\1/p' "$out" | tail -n1)
check vg-guest-rc "rc=${grc:-none}" [ "${grc:-1}" = 0 ]

# The host's side: the restarted worker's device model answered the
# second resource's commands (create, attach, transfer) and, when the
# program exited, the unreferences of both (the first one as an unknown
# resource: 2D resources live in the worker until stage 2).
echo "---- gpu-hostmem status $dom"
gpu-hostmem status "$dom" 2>&1 | sed 's/^/[status] /'
model=$(gpu-hostmem status "$dom" 2>/dev/null | sed -n 's/^ *model *//p' | head -n1)
answered=$(printf '%s' "$model" | sed -n 's/.*requests answered \([0-9]*\).*/\1/p')
check vg-status-running "$model" sh -c "printf '%s' '$model' | grep -q 'virtio-gpu status 0x0f (running)'"
check vg-status-answered "answered=${answered:-none}" [ "${answered:-0}" -ge 3 ]
check vg-status-resources-released "$model" sh -c "printf '%s' '$model' | grep -q '2D resource bytes 0,'"
log=/var/log/xen/gpu-hostmem-$dom.log
grep -E 'virtio-gpu|seccomp|INTA|re-attach|worker' "$log" | tail -n 16 | sed "s/^/[ioreqd $dom] /"
check vg-log-driver-ok "log" grep -q 'the driver started the device (DRIVER_OK)' "$log"
check vg-log-reattached "log" grep -q 're-attaching to ioreq server' "$log"
check vg-worker-still-sandboxed "pid=${wpid:-none}" hm_sandboxed "${wpid:-none}"
check vg-no-call-refused "log" sh -c "! grep -q 'seccomp: system call' '$log'"

hm_destroy_clean "$name"
[ "$GH_FAILED" = 0 ] || hm_ioreqd_log "$dom" 60
exit "$GH_FAILED"
