# Runs inside the build root: the test guests' kernel, Linux 6.12 from
# linux-source-6.12 with tinyconfig plus tests/e2e/guest/kernel.config (an
# HVM and PVH Xen guest on a busybox initramfs, console hvc0), and the
# virtio_gpu driver with its dependencies as modules, unmodified, for
# scenario 79's guests to load.
# Arguments: source tree, config fragment, output dir, jobs.
set -euo pipefail
src=$1 frag=$2 out=$3 jobs=$4
obj=$out/obj
rm -rf "$out"
mkdir -p "$obj"
make -C "$src" O="$obj" tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$frag" >/dev/null
make -C "$src" O="$obj" olddefconfig >/dev/null
# Every symbol the fragment sets must have its value: Kconfig drops a
# symbol whose dependencies are not met, silently, and the guests would
# then fail far from the cause.
bad=0
while IFS='=' read -r sym val; do
    case "$val" in
    n) grep -q "^$sym=" "$obj/.config" && { echo "$sym: wanted n, got $(grep "^$sym=" "$obj/.config")"; bad=1; } ;;
    *) grep -qx "$sym=$val" "$obj/.config" || { echo "$sym: wanted $val, got $(grep "^$sym=" "$obj/.config" || echo unset)"; bad=1; } ;;
    esac
done < <(grep -E '^CONFIG_[A-Z0-9_]+=' "$frag")
[ "$bad" = 0 ] || { echo "the guest kernel's config differs from $frag (above)" >&2; exit 1; }
make -C "$src" O="$obj" -j"$jobs" KBUILD_BUILD_USER=gh KBUILD_BUILD_HOST=gh bzImage modules
cp "$obj/arch/x86/boot/bzImage" "$out/vmlinuz"
cp "$obj/.config" "$out/config"
cat "$obj/include/config/kernel.release" >"$out/kver"
mkdir -p "$out/modules"
for m in drivers/gpu/drm/drm_panel_orientation_quirks drivers/virtio/virtio_dma_buf \
    drivers/gpu/drm/drm drivers/gpu/drm/drm_kms_helper \
    drivers/gpu/drm/drm_shmem_helper drivers/gpu/drm/virtio/virtio-gpu; do
    cp "$obj/$m.ko" "$out/modules/"
done
rm -rf "$obj"
