#!/usr/bin/env bash
# Scenario (issue 18, stage 3, first cut): Mesa's venus driver in the guest.
# Not in tests/run's lists (docs/virtio-gpu.md, "Stage 3": what it showed).
# Named so that no selection of tests/run matches it ("79-virtio-gpu-venus"
# is a part of no other name), with "venus" (dom0 gets the venus product)
# and "-vk" (the guest gets initrd-vk.gz: tests/e2e/build's guest-vk
# product, trixie's Vulkan loader, Mesa's venus driver and vk-compute
# appended to the busybox guest).
# With device: virtio-gpu, virtio_gpu.renderer and virtio_gpu.backend: venus
# in /etc/xen/gpu-hostmem.yaml, as 79-virtio-gpu-venus:
#   - the guest runs vk-guest (tests/guest/vk-compute/vk-guest.sh): it loads
#     virtio_gpu, then vk-compute -v -s VK_MIB (default 64): a Vulkan
#     instance on the venus driver (VK_DRIVER_ID_MESA_VENUS required), two
#     HOST_VISIBLE|HOST_COHERENT buffers (blobs the renderer registers in
#     the window), a pattern written through the window, the compute shader
#     run by the host's render server on lavapipe, every word checked
#     through the window; with VK_BW_ROUNDS also the bandwidth lines;
#   - every RESULT line of the guest ok, its exit status 0;
#   - the renderer loaded virglrenderer's Vulkan allocator before its
#     filter (its log line), alive until xl destroy, no refused system call
#     (the worker's log, and the renderer not ended by SIGSYS), then the
#     renderer and the render server gone, nothing lent.
# Failed before the renderer loaded the allocator at setup (runs
# 20261206-132035-19763, -132656-32707, -133956-18557): the first
# host-visible MAP_BLOB made virglrenderer load lavapipe into the renderer
# under its seccomp filter, which killed it (SIGSYS); passed since (runs
# 20261206-142656-29541, -143510-6759); docs/virtio-gpu.md, "Stage 3".
# VK_BAR_MIB (window, default 512), VK_GUEST_MIB (guest memory, default
# 512), VK_GUEST_BOUND (the guest's bound on vk-compute, default 600 s),
# VK_BW_ROUNDS (vk-compute -b: the bandwidth lines; default none, or what
# /etc/gpu-hostmem/vk-bw-rounds says: tests/e2e/run writes it from
# GPU_HOSTMEM_E2E_VK_BW_ROUNDS).
# timeout: 1200
set -u
source "$(dirname "$0")/hostmem-common.sh"
renderer=/usr/lib/gpu-hostmem/bin/gpu-hostmem-renderer
HM_BAR_MIB=${VK_BAR_MIB:-512}
GH_GUEST_MEMORY=${VK_GUEST_MIB:-512}
GH_GUEST_INITRD=initrd-vk.gz
hm_device_config vk "device: virtio-gpu\nvirtio_gpu:\n  renderer: $renderer\n  backend: venus\n" \
    "renderer, venus" "renderer $renderer as nobody, backend venus"

name=vg-vk
mib=${VK_MIB:-64}
VK_BW_ROUNDS=${VK_BW_ROUNDS:-$(cat /etc/gpu-hostmem/vk-bw-rounds 2>/dev/null)}
run="vk-guest,${VK_GUEST_BOUND:-600},-v,-s,$mib${VK_BW_ROUNDS:+,-b,$VK_BW_ROUNDS}"
hm_install || exit 1
check vk-guest-initrd "$GH_GUEST_DIR/$GH_GUEST_INITRD" test -s "$GH_GUEST_DIR/$GH_GUEST_INITRD"
hm_create vk "$name" "$run" || exit 1
dom=$HM_DOM wpid=$HM_WPID
rpid=$(pgrep -P "$HM_IPID" -f 'gpu-hostmem-renderer --socket-fd 3 --backend venus' | head -n1)
check vk-renderer "pid=${rpid:-none}" test -n "$rpid"
log=/var/log/xen/gpu-hostmem-$dom.log

xl unpause "$name"
t=$(gh_now)
gh_guest_wait "$name" "${HM_GUEST_WAIT:-900}" || result vk-guest-run 0 "did-not-finish"
result vk-guest-seconds 1 "$(gh_since "$t")"
out=/tmp/$name.out
guest_ok() { gh_guest_result "$1" "$2" >/dev/null; }
for r in vk-guest-modules vk-guest-render-node vk-device vk-memory vk-dispatch vk-compute; do
    check "guest-$r" "$(grep "^RESULT name=$r " "$out" | tail -n1 | sed 's/.* value=//')" guest_ok "$name" "$r"
done
# Timing and, when asked for, the bandwidth lines (measurement only).
grep -E '^RESULT name=(vkbw-|vk-timing|vk-open)' "$out" | sed 's/^/[guest timing] /' || true
# Logged by the renderer during its setup, before its filter and the guest's
# first request.
check vk-allocator-before-filter "$(grep -o 'Vulkan allocator loaded before the filter.*' "$log" | head -n1 | tr ' ' ',')" \
    grep -q 'Vulkan allocator loaded before the filter' "$log"
grc=$(sed -n 's/^GH-GUEST-DONE rc=\([0-9]*\).*/\1/p' "$out" | tail -n1)
check vk-guest-rc "rc=${grc:-none}" [ "${grc:-1}" = 0 ]

echo "---- gpu-hostmem status $dom (guest done)"
gpu-hostmem status "$dom" 2>&1 | sed 's/^/[status done] /'
grep -E 'renderer|blob|virtio-gpu|seccomp|fence|allocator' "$log" | tail -n 40 | sed "s/^/[ioreqd $dom] /"
# Alive, not a zombie: the supervisor reaps a dead renderer only when its
# worker stops.
check vk-renderer-alive "pid=${rpid:-none},$(grep '^State:' "/proc/${rpid:-none}/status" 2>/dev/null | tr '\t' ' ')" \
    sh -c "grep -qE '^State:\s+[RSD]' '/proc/${rpid:-none}/status'"
check vk-no-call-refused "log" sh -c "! grep -q 'seccomp: system call' '$log'"
check vk-worker-still-sandboxed "pid=${wpid:-none}" hm_sandboxed_ids "${wpid:-none}"

hm_destroy_clean "$name"
check vk-renderer-gone "pid=${rpid:-none}" sh -c "[ -n '$rpid' ] && ! [ -d /proc/$rpid ]"
# How the renderer ended (logged when the supervisor reaped it): not by its
# seccomp filter.
grep 'renderer exited' "$log" | sed "s/^/[ioreqd $dom] /"
check vk-renderer-not-killed-by-filter "log" sh -c "! grep -q 'renderer exited.*SIGSYS' '$log'"
sleep 1
check vk-render-server-gone "left: $(pgrep -f '^/usr/libexec/virgl_render_server' | tr '\n' ' ')" \
    sh -c "! pgrep -f '^/usr/libexec/virgl_render_server'"
[ "$GH_FAILED" = 0 ] || hm_ioreqd_log "$dom" 120
exit "$GH_FAILED"
