#!/usr/bin/env bash
# Scenario (issue 18, stage 3): Mesa's venus driver in the guest, on the
# device of 79-virtio-gpu-venus. In CI's venus boot (tests/run's
# E2E_VENUS_SCENARIOS, the debug hypervisor, dom0 with the venus product):
# "tests/e2e/run 79-virtio-gpu-venus 79-venus-vk-compute".
# Named so that no other selection of tests/run matches it ("79-virtio-gpu-
# venus" is a part of no other name), with "venus" (dom0 gets the venus
# product) and "-vk" (the guest gets initrd-vk.gz: tests/e2e/build's
# guest-vk product, trixie's Vulkan loader, Mesa's venus driver and
# vk-compute appended to the busybox guest).
# With device: virtio-gpu, virtio_gpu.renderer and virtio_gpu.backend: venus
# in /etc/xen/gpu-hostmem.yaml, as 79-virtio-gpu-venus:
#   - the guest runs vk-guest (tests/guest/vk-compute/vk-guest.sh): it loads
#     virtio_gpu, then vk-compute -v -s VK_MIB (default 64) -H: a Vulkan
#     instance on the venus driver (VK_DRIVER_ID_MESA_VENUS required), two
#     HOST_VISIBLE|HOST_COHERENT buffers (blobs the renderer registers in
#     the window), a pattern written through the window, the compute shader
#     run by the host's render server on lavapipe, every word checked
#     through the window; with VK_BW_ROUNDS also the bandwidth lines
#     (83-bench-venus-vk); then, with every check passed, it holds its
#     buffers (allocated, mapped, lent) and prints vk-hold;
#   - every RESULT line of the guest ok, vk-hold printed;
#   - held (vk-held): the device model holds at least the two buffers'
#     blobs, the kernel (privcmd) counts their pages lent and at least two
#     registrations, the IOREQ server's ledger agrees: the state that
#     xl destroy must clean up, read with the same queries as after it;
#   - the blobs are dma-bufs, as a real GPU's are (vk-blobs-dmabuf): dom0's
#     /dev/udmabuf is given to group kvm, mode 0660, as trixie's udev does,
#     and the renderer gets kvm through virtio_gpu.renderer_groups, so
#     lavapipe in the render server exports host-visible memory as udmabuf
#     dma-bufs; the renderer logged at least two 64 MiB blobs mapped with
#     fd_type "dmabuf", and holds at least two 64 MiB dma-buf mappings that
#     are VM_PFNMAP ("pf" in smaps' VmFlags), which privcmd lends since
#     kernel-patches 0009 (before it, privcmd refused to register them);
#     with VK_BLOBS=opaque (or /etc/gpu-hostmem/vk-blobs, written by
#     tests/e2e/run from GPU_HOSTMEM_E2E_VK_BLOBS) the renderer gets no
#     group and the node stays root's, so the blobs must be lavapipe's
#     OPAQUE memfds (vk-blobs-opaque: at least two buffer-sized opaque
#     maps logged, no dma-buf one, no VM_PFNMAP dma-buf VMA); the line
#     "vk-blobs-dmabuf would be ..." then shows what the dma-buf check
#     says of memfds;
#   - the renderer loaded virglrenderer's Vulkan allocator before its
#     filter (its log line), alive until xl destroy, no refused system call
#     (the worker's log, and the renderer not ended by SIGSYS);
#   - xl destroy of the guest holding them, then: the domain, its ioreqd and
#     its records gone (vg-vk-clean), the kernel's query answering 0 pages
#     lent and 0 registrations for the domain (vk-destroyed-nothing-lent),
#     the renderer gone, and with it every blob it held (vk-renderer-gone),
#     not ended by SIGSYS, and the render server gone.
# Session 19's two passes (runs 20261206-142656-29541, -143510-6759) let
# the program tear down before the destroy, so nothing was lent when the
# guest was destroyed: the hold makes xl destroy's clean-up carry the blobs
# and the lent pages (docs/virtio-gpu.md, "Stage 3").
# VK_BLOBS (dmabuf, the default, or opaque: above), VK_BAR_MIB (window, default 512), VK_GUEST_MIB (guest memory, default
# 512), VK_GUEST_BOUND (the guest's bound on vk-compute, default 600 s),
# VK_HOLD_S (how long vk-compute holds, default 300 s: the scenario
# destroys the guest long before), VK_BW_ROUNDS (vk-compute -b: the
# bandwidth lines; default none, or what /etc/gpu-hostmem/vk-bw-rounds
# says: tests/e2e/run writes it from GPU_HOSTMEM_E2E_VK_BW_ROUNDS;
# 83-bench-venus-vk sets it).
# timeout: 1200
set -u
source "$(dirname "$0")/hostmem-common.sh"
renderer=/usr/lib/gpu-hostmem/bin/gpu-hostmem-renderer
HM_BAR_MIB=${VK_BAR_MIB:-512}
GH_GUEST_MEMORY=${VK_GUEST_MIB:-512}
GH_GUEST_INITRD=initrd-vk.gz
# The operator's way to dma-buf blobs on a machine without a GPU: the node
# in a group (trixie's udev rule: KERNEL=="udmabuf", GROUP="kvm"; nothing
# runs udev in this dom0, so the scenario does what the rule would) and
# that group among the renderer's.
VK_BLOBS=${VK_BLOBS:-$(cat /etc/gpu-hostmem/vk-blobs 2>/dev/null)}
VK_BLOBS=${VK_BLOBS:-dmabuf}
if [ "$VK_BLOBS" = opaque ]; then
    # As before kernel-patches 0009: the node root's alone (as this dom0
    # boots), the renderer without a supplementary group.
    udmabuf_node() { chown root:root /dev/udmabuf && chmod 0600 /dev/udmabuf; }
    check vk-udmabuf-node "was=$(stat -c %G:%a /dev/udmabuf 2>&1 | tr ' ' ','),now=root:600" udmabuf_node
    hm_device_config vk "device: virtio-gpu\nvirtio_gpu:\n  renderer: $renderer\n  backend: venus\n" \
        "renderer, venus" "renderer $renderer as nobody, backend venus"
else
    udmabuf_node() {
        chgrp kvm /dev/udmabuf && chmod 0660 /dev/udmabuf &&
            [ "$(stat -c %G:%a /dev/udmabuf)" = kvm:660 ]
    }
    check vk-udmabuf-node "was=$(stat -c %G:%a /dev/udmabuf 2>&1 | tr ' ' ','),now=kvm:660" udmabuf_node
    hm_device_config vk "device: virtio-gpu\nvirtio_gpu:\n  renderer: $renderer\n  renderer_groups: [kvm]\n  backend: venus\n" \
        "renderer, venus, groups kvm" "renderer $renderer as nobody with groups kvm, backend venus"
fi

name=vg-vk
mib=${VK_MIB:-64}
VK_BW_ROUNDS=${VK_BW_ROUNDS:-$(cat /etc/gpu-hostmem/vk-bw-rounds 2>/dev/null)}
run="vk-guest,${VK_GUEST_BOUND:-600},-v,-s,$mib${VK_BW_ROUNDS:+,-b,$VK_BW_ROUNDS},-H,${VK_HOLD_S:-300}"
hm_install || exit 1
check vk-guest-initrd "$GH_GUEST_DIR/$GH_GUEST_INITRD" test -s "$GH_GUEST_DIR/$GH_GUEST_INITRD"
hm_create vk "$name" "$run" || exit 1
dom=$HM_DOM wpid=$HM_WPID
rpid=$(pgrep -P "$HM_IPID" -f 'gpu-hostmem-renderer --socket-fd 3 --backend venus' | head -n1)
check vk-renderer "pid=${rpid:-none}" test -n "$rpid"
log=/var/log/xen/gpu-hostmem-$dom.log

# vk_kernel DOMID: "LENT REGISTRATIONS" as the kernel (privcmd) counts them
# for DOMID through the CLI's query; empty if the query did not answer (a
# missing answer is never read as 0).
vk_kernel() {
    local st lent regs
    st=$(gpu-hostmem status "$1" 2>&1)
    lent=$(printf '%s\n' "$st" | awk '/^kernel \(privcmd\):/ { s = 1; next } s && /^  lent pages/ { print $3; exit }')
    regs=$(printf '%s\n' "$st" | awk '/^kernel \(privcmd\):/ { s = 1; next } s && /^  registrations/ { print $2; exit }')
    case "$lent$regs" in '' | *[!0-9]*) return 0 ;; esac
    [ -n "$lent" ] && [ -n "$regs" ] && echo "$lent $regs"
}

xl unpause "$name"
t=$(gh_now)
# Until the program holds its buffers (or ends: a failed check, no hold).
gh_guest_wait "$name" "${HM_GUEST_WAIT:-900}" '^RESULT name=vk-hold \|^GH-GUEST-DONE' ||
    result vk-guest-run 0 "did-not-hold"
result vk-guest-seconds 1 "$(gh_since "$t")"
out=/tmp/$name.out
guest_ok() { gh_guest_result "$1" "$2" >/dev/null; }
for r in vk-guest-modules vk-guest-render-node vk-device vk-memory vk-dispatch vk-compute vk-hold; do
    check "guest-$r" "$(grep "^RESULT name=$r " "$out" | tail -n1 | sed 's/.* value=//')" guest_ok "$name" "$r"
done
# Timing and, when asked for, the bandwidth lines (measurement only).
grep -E '^RESULT name=(vkbw-|vk-timing|vk-open)' "$out" | sed 's/^/[guest timing] /' || true
# Logged by the renderer during its setup, before its filter and the guest's
# first request.
check vk-allocator-before-filter "$(grep -o 'Vulkan allocator loaded before the filter.*' "$log" | head -n1 | tr ' ' ',')" \
    grep -q 'Vulkan allocator loaded before the filter' "$log"
# Every line the guest printed so far ok (vk-compute's exit status would be
# 1 on any ok=0; it has not exited, it holds).
check vk-guest-all-ok "$(grep -c '^RESULT .* ok=0' "$out") not ok" sh -c "! grep -q '^RESULT .* ok=0' '$out'"

# Held: what xl destroy has to clean up, read with the queries used after it.
sleep 1
echo "---- gpu-hostmem status $dom (guest holding its buffers)"
st=$(gpu-hostmem status "$dom" 2>&1)
printf '%s\n' "$st" | sed 's/^/[status held] /'
model=$(printf '%s\n' "$st" | sed -n 's/^ *model *//p' | head -n1)
hblobs=$(printf '%s' "$model" | sed -n 's/.* blobs \([0-9]*\) (\([0-9]*\) bytes).*/\1 \2/p')
read -r kl kr <<<"$(vk_kernel "$dom")"
read -r _ sl skl <<<"$(hm_server_view "$st")"
# At least the two buffers' blobs and bytes in the device model, every
# page of both lent (each was written and read whole) and registered in the
# kernel, the server's ledger and its own kernel reading the same count.
vk_held() {
    local blobs=$1 bytes=$2
    [ "$blobs" -ge 2 ] && [ "$bytes" -ge $((2 * mib << 20)) ] &&
        [ "${kl:-0}" -ge $((2 * mib * 256)) ] && [ "${kr:-0}" -ge 2 ] &&
        [ "${sl:-x}" = "${kl:-y}" ] && [ "${skl:-x}" = "${kl:-y}" ]
}
check vk-held "blobs=${hblobs% *},bytes=${hblobs#* },kernel_lent=${kl:-none},kernel_regs=${kr:-none},ledger=${sl:-none},server_kernel=${skl:-none}" \
    vk_held ${hblobs:-0 0}
grep -E 'renderer|blob|virtio-gpu|seccomp|fence|allocator' "$log" | tail -n 40 | sed "s/^/[ioreqd $dom] /"
# dma-bufs, not memfds: the renderer's own word (its map log line names
# the fd type virglrenderer exported) and the kernel's (the mappings it
# registered are VM_PFNMAP dma-buf mappings).
kvm_gid=$(getent group kvm | cut -d: -f3)
rgroups=$(grep '^Groups:' "/proc/${rpid:-none}/status" 2>/dev/null | cut -f2 | tr -d ' ')
mapped=$(grep 'venus blob mapped' "$log")
ndmabuf_all=$(printf '%s\n' "$mapped" | grep -c 'fd_type="\?dmabuf')
ndmabuf_log=$(printf '%s\n' "$mapped" | grep 'fd_type="\?dmabuf' | grep -c "len=$((mib << 20))")
nmemfd_log=$(printf '%s\n' "$mapped" | grep -c 'fd_type="\?opaque')
nmemfd_big=$(printf '%s\n' "$mapped" | grep 'fd_type="\?opaque' | grep -c "len=$((mib << 20))")
# VMAs of the renderer of at least the buffer's size that map a dma-buf
# with VM_PFNMAP.
npfnmap=$(hm_pfnmap_dmabufs "${rpid:-none}" $((mib << 10)))
blobs_dmabuf() {
    [ "$rgroups" = "$kvm_gid" ] && [ "$ndmabuf_log" -ge 2 ] && [ "$nmemfd_log" = 0 ] &&
        [ "${npfnmap:-0}" -ge 2 ]
}
blobs_what="renderer_groups=${rgroups:-none},kvm=${kvm_gid:-none},dmabuf_maps_logged=$ndmabuf_log,opaque_maps_logged=$nmemfd_log,pfnmap_dmabuf_vmas=${npfnmap:-none}"
if [ "$VK_BLOBS" = opaque ]; then
    blobs_opaque() {
        [ -z "$rgroups" ] && [ "$nmemfd_big" -ge 2 ] && [ "$ndmabuf_all" = 0 ] &&
            [ "${npfnmap:-x}" = 0 ]
    }
    check vk-blobs-opaque "$blobs_what" blobs_opaque
    if blobs_dmabuf; then would=pass; else would=fail; fi
    echo "vk-blobs-dmabuf would $would on these blobs"
else
    check vk-blobs-dmabuf "$blobs_what" blobs_dmabuf
fi
printf '%s\n' "$mapped" | sed "s/^/[renderer $dom] /" | tail -n 8
grep dmabuf "/proc/${rpid:-none}/maps" 2>/dev/null | sed "s/^/[renderer maps] /" | head -n 12
# Alive, not a zombie: the supervisor reaps a dead renderer only when its
# worker stops.
check vk-renderer-alive "pid=${rpid:-none},$(grep '^State:' "/proc/${rpid:-none}/status" 2>/dev/null | tr '\t' ' ')" \
    sh -c "grep -qE '^State:\s+[RSD]' '/proc/${rpid:-none}/status'"
check vk-no-call-refused "log" sh -c "! grep -q 'seccomp: system call' '$log'"
check vk-worker-still-sandboxed "pid=${wpid:-none}" hm_sandboxed_ids "${wpid:-none}"

hm_destroy_clean "$name"
# The kernel's own count for the destroyed domain, answered (hm_gone, in
# vg-vk-clean, takes an unanswered query for 0).
read -r kl kr <<<"$(vk_kernel "$dom")"
check vk-destroyed-nothing-lent "kernel_lent=${kl:-none},kernel_regs=${kr:-none}" [ "${kl:-x}" = 0 -a "${kr:-x}" = 0 ]
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
