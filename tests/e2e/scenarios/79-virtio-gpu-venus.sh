#!/usr/bin/env bash
# Scenario (issue 18, stage 2 with venus): a venus blob through gpu-hostmem.
# With device: virtio-gpu, virtio_gpu.renderer and virtio_gpu.backend:
# venus in /etc/xen/gpu-hostmem.yaml (dom0 needs libvirglrenderer1,
# virgl-server and mesa-vulkan-drivers: tests/e2e/run adds the cached
# "venus" product to this boot only when a scenario named *venus* runs):
#   - the supervisor starts gpu-hostmem-renderer --backend venus beside the
#     worker, as nobody with no capability, no_new_privs and its venus
#     seccomp filter; it has loaded libvirglrenderer and forked the render
#     server (/usr/libexec/virgl_render_server) before the filter;
#   - tests/guest/virtio-gpu-blob venus, through the DRM uAPI only:
#     GETPARAM (capset 4 offered), GET_CAPS of venus version 0 (160 bytes
#     from libvirglrenderer, through the renderer protocol), CONTEXT_INIT
#     with capset 4, RESOURCE_CREATE_BLOB (HOST3D, USE_MAPPABLE, blob_id 0,
#     64 KiB: venus's shm blob, a memfd the render server makes), MAP +
#     mmap: it reads zeros through the window; EXECBUFFER (SUBMIT_3D) of
#     a venus command stream, vkSetReplyCommandStreamMESA naming the blob
#     and vkEnumerateInstanceVersion asking for a reply: the render
#     server's reply (type 137, VK_SUCCESS, a Vulkan 1.1+ version) read
#     through the window; then it writes a pattern and reads it back;
#   - while it holds the mapping, gpu-hostmem status shows the renderer's
#     registration (owner: the renderer), lends and the command stream;
#     then dom0 writes an acknowledgement into the blob through the
#     renderer's mapping of it, which the guest reads through the window
#     (a handshake, not a fixed hold);
#   - closing the handle (UNMAP_BLOB + UNREF) unregisters it: nothing is
#     registered or lent any more;
#   - no error answer in the guest's log, no refused system call, the
#     renderer alive until xl destroy, then gone.
# timeout: 1200
set -u
source "$(dirname "$0")/hostmem-common.sh"
renderer=/usr/lib/gpu-hostmem/bin/gpu-hostmem-renderer
hm_device_config vgv "device: virtio-gpu\nvirtio_gpu:\n  renderer: $renderer\n  backend: venus\n" \
    "renderer, venus" "renderer $renderer as nobody, backend venus"

name=vg-venus
# The guest holds its mapping until dom0 acknowledges (venus_host_ack), at
# most this long.
hold=${VG_BLOB_HOLD:-600}
hm_install || exit 1
check vgv-renderer-installed "$renderer" test -x "$renderer"
check vgv-virglrenderer-installed "libvirglrenderer1" sh -c \
    "ls /usr/lib/x86_64-linux-gnu/libvirglrenderer.so.1 && test -x /usr/libexec/virgl_render_server"
hm_create vgv "$name" "virtio-gpu-blob,venus,$hold" || exit 1
dom=$HM_DOM wpid=$HM_WPID
check vgv-worker-sandboxed "pid=${wpid:-none}" hm_sandboxed "${wpid:-none}"
rpid=$(pgrep -P "$HM_IPID" -f 'gpu-hostmem-renderer --socket-fd 3 --backend venus' | head -n1)
# Its only child: the render server libvirglrenderer forked before the
# filter.
spid=$(pgrep -P "${rpid:-0}" | head -n1)
check vgv-render-server "pid=${spid:-none}" sh -c "[ -n '$spid' ] && tr '\\0' ' ' </proc/$spid/cmdline | grep -q virgl_render_server"
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
check vgv-renderer-unprivileged "pid=${rpid:-none}" renderer_unprivileged "${rpid:-none}"

# venus_host_ack PID: writes "!KCA" (the guest's HOST_ACK) at byte 4 of the
# blob as the renderer maps it: venus's 64 KiB vkr-shmem memfd, made by the
# render server (the renderer keeps no fd of it, only the mapping, written
# through /proc/PID/map_files). The guest reads it through the window.
venus_host_ack() {
    local r _x path range= n=0
    while read -r r _x _x _x _x path; do
        case "$path" in *memfd:vkr-shmem*) ;; *) continue ;; esac
        [ $((16#${r#*-} - 16#${r%-*})) = 65536 ] || continue
        range=$r n=$((n + 1))
    done <"/proc/$1/maps"
    [ "$n" = 1 ] || { echo "renderer $1 maps $n 64 KiB vkr-shmem ranges"; return 1; }
    printf '!KCA' | dd of="/proc/$1/map_files/$range" bs=4 seek=1 conv=notrunc status=none
}

xl unpause "$name"
t=$(gh_now)
regs_mapped= model_mapped=
if hm_wait_marker "$name" '^GH-VG-BLOB-MAPPED' "${HM_GUEST_WAIT:-900}"; then
    result vgv-guest-mapped 1 "$(gh_since "$t")s"
    echo "---- gpu-hostmem status $dom (blob mapped)"
    gpu-hostmem status "$dom" 2>&1 | sed 's/^/[status mapped] /'
    model_mapped=$(gpu-hostmem status "$dom" 2>/dev/null | sed -n 's/^ *model *//p' | head -n1)
    regs_mapped=$(hm_kernel_regions "$dom")
    lent_mapped=$(hm_kernel_lent "$dom")
    lends=$(hm_counter "$dom" lends)
    check vgv-registered "regions=${regs_mapped:-none}" [ "${regs_mapped:-0}" = 1 ]
    check vgv-registration-is-the-renderers "pid=$rpid" sh -c \
        "gpu-hostmem status '$dom' 2>/dev/null | awk '/^kernel/ {s=1} s' | grep -qE 'size 0x10000 lent [0-9]+ owner pid $rpid\$'"
    check vgv-lent "kernel=${lent_mapped:-none},lends=$lends" [ "${lent_mapped:-0}" -ge 16 -a "$lends" -ge 1 ]
    check vgv-model-mapped "$model_mapped" sh -c \
        "printf '%s' '$model_mapped' | grep -q 'contexts 1, blobs 1 (65536 bytes), mapped 1 (65536 bytes), submits 1 (52 bytes), renderer errors 0'"
    # Done reading: let the guest go on (a host write reaching its page).
    check vgv-host-ack "pid=${rpid:-none}" venus_host_ack "${rpid:-none}"
else
    result vgv-guest-mapped 0 "$(gh_since "$t")s"
fi
hm_vg_after_unref vgv "$name" "$dom" "$t" guest-modules guest-drm-nodes guest-getparam guest-get-caps guest-context-init \
    guest-create-blob guest-map guest-read-zeros guest-venus-reply guest-write-read-back guest-host-ack guest-unref \
    guest-no-error-responses
out=/tmp/$name.out
grc=$(sed -n 's/^GH-GUEST-DONE rc=\([0-9]*\).*/\1/p' "$out" | tail -n1)
check vgv-guest-rc "rc=${grc:-none}" [ "${grc:-1}" = 0 ]

log=/var/log/xen/gpu-hostmem-$dom.log
grep -E 'renderer|blob|virtio-gpu|seccomp' "$log" | tail -n 20 | sed "s/^/[ioreqd $dom] /"
check vgv-log-registered "log" grep -q 'blob registered in the window' "$log"
check vgv-log-venus "log" grep -q 'capsets=\[CapsetOffer { id: 4' "$log"
check vgv-log-unregistered "log" grep -q 'blob unregistered' "$log"
check vgv-worker-still-sandboxed "pid=${wpid:-none}" hm_sandboxed_ids "${wpid:-none}"
check vgv-no-call-refused "log" sh -c "! grep -q 'seccomp: system call' '$log'"

hm_destroy_clean "$name"
check vgv-renderer-gone "pid=${rpid:-none}" sh -c "[ -n '$rpid' ] && ! [ -d /proc/$rpid ]"
sleep 1
# Anchored: the check's own shell has the name in its command line.
check vgv-render-server-gone "left: $(pgrep -f '^/usr/libexec/virgl_render_server' | tr '\n' ' ')" \
    sh -c "! pgrep -f '^/usr/libexec/virgl_render_server'"
[ "$GH_FAILED" = 0 ] || hm_ioreqd_log "$dom" 80
exit "$GH_FAILED"
