# Runs inside the guest-vk root (tests/e2e/build's guest_vk): build
# vk-compute against this root's libc and Vulkan headers, then stage what
# the busybox guest needs to run it on Mesa's venus driver: the program,
# its wrapper, the Vulkan loader, libvulkan_virtio.so, every library ldd
# names for the three, the dynamic linker and venus's ICD manifest.
# Everything is staged under usr/ and lib64/ only: lib/, bin/ and sbin/
# are directories of the busybox guest, which an archive entry of the same
# name could replace.
# Argument: the work directory (holding src/), result in its stage/.
set -euo pipefail
w=$1
cd "$w"
libdir=usr/lib/x86_64-linux-gnu
gcc -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE -o vk-compute src/vk-compute.c -ldl
strip vk-compute
rm -rf stage
mkdir -p stage/usr/bin "stage/$libdir" stage/usr/share/vulkan/icd.d stage/lib64
install -m 755 vk-compute stage/usr/bin/vk-compute
install -m 755 src/vk-guest.sh stage/usr/bin/vk-guest
cp /usr/share/vulkan/icd.d/virtio_icd.json stage/usr/share/vulkan/icd.d/
# The loader and the driver, then their libraries and the program's, each
# copied (symlinks followed) under the name the dynamic linker looks for.
cp -L "/$libdir/libvulkan.so.1" "/$libdir/libvulkan_virtio.so" "stage/$libdir/"
for f in "/$libdir/libvulkan.so.1" "/$libdir/libvulkan_virtio.so" ./vk-compute; do
    ldd "$f"
done | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u | while read -r lib; do
    cp -L "$lib" "stage/$libdir/$(basename "$lib")"
done
cp -L /lib64/ld-linux-x86-64.so.2 "stage/$libdir/ld-linux-x86-64.so.2"
ln -s "/$libdir/ld-linux-x86-64.so.2" stage/lib64/ld-linux-x86-64.so.2
# Nothing may be missing: the guest has no other libraries.
if ldd ./vk-compute "/$libdir/libvulkan_virtio.so" | grep -q 'not found'; then
    echo "guest-vk: a library was not found" >&2
    exit 1
fi
echo "staged: $(find stage -type f | wc -l) files, $(du -sk stage | cut -f1) KiB"
find stage -type f -o -type l | LC_ALL=C sort
