#!/usr/bin/env bash
# Scenario (issue 18, stage 2): a host-visible blob through gpu-hostmem.
# With device: virtio-gpu, virtio_gpu.renderer and virtio_gpu.test_capset
# in /etc/xen/gpu-hostmem.yaml:
#   - the supervisor starts gpu-hostmem-renderer beside the worker, as
#     nobody with no capability, no_new_privs and its seccomp filter,
#     holding its socket and a privcmd file restricted to the guest and
#     narrowed to a backend's rights (tests/kernel/fd-privilege --backend);
#     the worker stays sandboxed as before;
#   - tests/guest/virtio-gpu-blob, through the DRM uAPI only: GETPARAM
#     (3D, RESOURCE_BLOB, HOST_VISIBLE, CONTEXT_INIT, the test capset),
#     GET_CAPS, CONTEXT_INIT with the test capset, RESOURCE_CREATE_BLOB
#     (HOST3D, USE_MAPPABLE, 64 KiB), MAP + mmap: it reads the renderer's
#     pattern through the window and stamps every page; then EXECBUFFER
#     (SUBMIT_3D) of one test capset command, the renderer storing a value
#     in the blob, and VIRTGPU_WAIT: the guest reads the value through the
#     window;
#   - while it holds the mapping, gpu-hostmem status shows the renderer's
#     registration at the blob's offset (owner: the renderer), faults and
#     lends, and the model line one context, one mapped blob and one
#     command stream of 16 bytes;
#   - closing the handle (UNMAP_BLOB + UNREF) unregisters it: nothing is
#     registered or lent any more, in the kernel's view and in the IOREQ
#     server's (no registration listed, ledger = kernel = 0), and the
#     renderer logs the 16 pages the guest stamped;
#   - no error answer in the guest's log, no refused system call;
#     xl destroy: nothing left, the renderer gone.
# timeout: 1200
set -u
source "$(dirname "$0")/hostmem-common.sh"
renderer=/usr/lib/gpu-hostmem/bin/gpu-hostmem-renderer
hm_device_config vgb "device: virtio-gpu\nvirtio_gpu:\n  renderer: $renderer\n  test_capset: true\n" \
    "renderer, test capset" "renderer $renderer as nobody, test capset offered"

name=vg-blob
# The guest holds its mapping until dom0 acknowledges (host_ack), at most
# this long.
hold=${VG_BLOB_HOLD:-600}
hm_install || exit 1
check vgb-renderer-installed "$renderer" test -x "$renderer"
hm_create vgb "$name" "virtio-gpu-blob,run,$hold" || exit 1
dom=$HM_DOM wpid=$HM_WPID
check vgb-worker-sandboxed "pid=${wpid:-none}" hm_sandboxed "${wpid:-none}"
rpid=$(pgrep -P "$HM_IPID" -f 'gpu-hostmem-renderer --socket-fd' | head -n1)
renderer_unprivileged() {
    local st=/proc/$1/status
    grep -E '^(Uid|Gid|Groups|CapEff|NoNewPrivs|Seccomp):' "$st" | tr '\t' ' ' | sed "s/^/[renderer $1] /"
    grep -qE '^Uid:\s+65534\s+65534\s+65534\s+65534\s*$' "$st" &&
        grep -qE '^CapEff:\s+0+$' "$st" && grep -qE '^Groups:\s*$' "$st" &&
        grep -qE '^NoNewPrivs:\s+1$' "$st" && grep -qE '^Seccomp:\s+2$' "$st" || return 1
    ls -l "/proc/$1/fd" | sed "s/^/[renderer fds] /"
    # Its privcmd file reaches no other domain (dom0 hypercall refused)
    # and has only a backend's rights for this one (no DMOP).
    fd-privilege --backend "$dom" "$1" | sed "s/^/[fd-privilege $1] /"
    [ "${PIPESTATUS[0]}" = 0 ]
}
check vgb-renderer-unprivileged "pid=${rpid:-none}" renderer_unprivileged "${rpid:-none}"

# host_ack PID: writes "!KCA" (the guest's HOST_ACK) at byte 4 of the
# renderer's one blob memfd.
host_ack() {
    local f n=0 mfd=
    for f in /proc/"$1"/fd/*; do
        case "$(readlink "$f")" in /memfd:*) mfd=$f; n=$((n + 1)) ;; esac
    done
    [ "$n" = 1 ] || { echo "renderer $1 holds $n memfds"; return 1; }
    printf '!KCA' | dd of="$mfd" bs=4 seek=1 conv=notrunc status=none
}

xl unpause "$name"
t=$(gh_now)
regs_mapped= model_mapped=
if hm_wait_marker "$name" '^GH-VG-BLOB-MAPPED' "${HM_GUEST_WAIT:-900}"; then
    result vgb-guest-mapped 1 "$(gh_since "$t")s"
    echo "---- gpu-hostmem status $dom (blob mapped)"
    gpu-hostmem status "$dom" 2>&1 | sed 's/^/[status mapped] /'
    model_mapped=$(gpu-hostmem status "$dom" 2>/dev/null | sed -n 's/^ *model *//p' | head -n1)
    regs_mapped=$(hm_kernel_regions "$dom")
    lent_mapped=$(hm_kernel_lent "$dom")
    lends=$(hm_counter "$dom" lends)
    check vgb-registered "regions=${regs_mapped:-none}" [ "${regs_mapped:-0}" = 1 ]
    check vgb-registration-is-the-renderers "pid=$rpid" sh -c \
        "gpu-hostmem status '$dom' 2>/dev/null | awk '/^kernel/ {s=1} s' | grep -qE 'size 0x10000 lent [0-9]+ owner pid $rpid\$'"
    check vgb-lent "kernel=${lent_mapped:-none},lends=$lends" [ "${lent_mapped:-0}" -ge 16 -a "$lends" -ge 1 ]
    check vgb-model-mapped "$model_mapped" sh -c \
        "printf '%s' '$model_mapped' | grep -q 'contexts 1, blobs 1 (65536 bytes), mapped 1 (65536 bytes), submits 1 (16 bytes), renderer errors 0'"
    # Done reading: let the guest go on, by writing HOST_ACK into the
    # blob's second word through the renderer's memfd (the page the guest
    # has mapped: it reads the host's write through the window).
    check vgb-host-ack "pid=${rpid:-none}" host_ack "${rpid:-none}"
else
    result vgb-guest-mapped 0 "$(gh_since "$t")s"
fi
hm_vg_after_unref vgb "$name" "$dom" "$t" guest-modules guest-drm-nodes guest-getparam guest-get-caps guest-context-init \
    guest-create-blob guest-map guest-read-host-pattern guest-stamped guest-submit guest-host-ack guest-unref \
    guest-no-error-responses
out=/tmp/$name.out
grc=$(sed -n 's/^GH-GUEST-DONE rc=\([0-9]*\).*/\1/p' "$out" | tail -n1)
check vgb-guest-rc "rc=${grc:-none}" [ "${grc:-1}" = 0 ]

log=/var/log/xen/gpu-hostmem-$dom.log
grep -E 'renderer|blob|virtio-gpu|seccomp' "$log" | tail -n 20 | sed "s/^/[ioreqd $dom] /"
check vgb-log-registered "log" grep -q 'blob registered in the window' "$log"
check vgb-log-guest-stamps-seen "log" grep -qE 'blob unregistered; pages the guest stamped .*stamped=16 pages=16' "$log"
check vgb-worker-still-sandboxed "pid=${wpid:-none}" hm_sandboxed_ids "${wpid:-none}"
check vgb-no-call-refused "log" sh -c "! grep -q 'seccomp: system call' '$log'"

hm_destroy_clean "$name"
check vgb-renderer-gone "pid=${rpid:-none}" sh -c "[ -n '$rpid' ] && ! [ -d /proc/$rpid ]"
[ "$GH_FAILED" = 0 ] || hm_ioreqd_log "$dom" 80
exit "$GH_FAILED"
