#!/bin/sh
# vk-guest SECONDS [VK-COMPUTE ARGS...]: run vk-compute in the test guest
# (busybox init, gh.run=vk-guest,SECONDS,...) on Mesa's venus driver.
# The guest initramfs carries the virtio_gpu driver and its dependencies
# uncompressed in /lib/modules/gh (tests/e2e/run's overlay); the
# guest-vk archive appended to it (tests/e2e/build's guest_vk) carries this
# script, vk-compute, the Vulkan loader and Mesa's venus driver. Loads the
# modules in the order of tests/guest/virtio-gpu-common.h, waits for the
# render node, then runs vk-compute bounded by SECONDS, so that a stalled
# driver still ends the run. Prints RESULT lines like the guest programs;
# exit status vk-compute's (busybox timeout: 143 when the bound killed it).
secs=${1:-600}
[ $# -gt 0 ] && shift
# drm_panel_orientation_quirks is a module of the test guest kernel only
# (built into the trixie kernel): loaded when present.
n=0
for m in drm_panel_orientation_quirks virtio_dma_buf drm drm_kms_helper drm_shmem_helper virtio-gpu; do
    [ "$m" != drm_panel_orientation_quirks ] || [ -e "/lib/modules/gh/$m.ko" ] || continue
    if ! insmod "/lib/modules/gh/$m.ko"; then
        echo "RESULT name=vk-guest-modules ok=0 value=insmod-$m"
        exit 1
    fi
    n=$((n + 1))
done
echo "RESULT name=vk-guest-modules ok=1 value=$n"
n=0
while [ ! -e /dev/dri/renderD128 ] && [ $n -lt 200 ]; do
    sleep 0.1
    n=$((n + 1))
done
if [ ! -e /dev/dri/renderD128 ]; then
    echo "RESULT name=vk-guest-render-node ok=0 value=none-after-20s"
    exit 1
fi
echo "RESULT name=vk-guest-render-node ok=1 value=renderD128"
# Venus's own diagnostics on stderr (the console): its renderer and device
# at start, and each failed call's VkResult.
export VN_DEBUG=${VN_DEBUG:-init,result}
echo "vk-guest: VN_DEBUG=$VN_DEBUG vk-compute $*"
timeout "$secs" vk-compute "$@"
rc=$?
if [ $rc = 124 ] || [ $rc = 143 ]; then
    echo "RESULT name=vk-guest-bound ok=0 value=killed-after-${secs}s"
fi
exit $rc
