# Demo (run by tests/e2e/demo, not by default): an HVM guest with a QEMU
# device model runs the generic in-guest self test; its console is relayed.
# When the gpu_hostmem feature is present (plugin installed and the guest
# program hostmem-guest built), the guest gets gpu_hostmem = 1 and lists the
# PCI function. Later issues extend this scenario.
# timeout: 900
source /usr/lib/gpu-hostmem/e2e/lib.sh
extra=()
run=gh-selftest,16
if [ -f /usr/lib/xen/gpu-hostmem/libgpu_hostmem_plugin.so ] && [ "${GH_DEMO_HOSTMEM:-0}" = 1 ]; then
    extra=('gpu_hostmem = 1' 'gpu_hostmem_size = 64')
fi
gh_guest_cycle hvm-demo hvm "$run" 600 "${extra[@]}"
exit "$GH_FAILED"
