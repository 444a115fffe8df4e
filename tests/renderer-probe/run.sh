#!/bin/bash
# Manual probe, not run by CI: what virglrenderer 1.1 (Debian trixie) gives
# for a venus host-visible blob, with venus on lavapipe, over vtest, on the
# build machine (no Xen, no GPU).  Results and their meaning:
# docs/virtio-gpu.md, "Stage 2 proper: what virglrenderer 1.1 gives for a
# venus blob (measured)".
#
# Usage (root: mmdebstrap, chroot, namespaces):
#   tests/renderer-probe/run.sh SCRATCH_DIR
# SCRATCH_DIR (outside the repository) receives the trixie root (about
# 700 MB, made once with mmdebstrap from the Debian mirror; the machine's own
# apt sources are not used or changed) and the logs in SCRATCH_DIR/work.
# Every experiment runs in its own mount and PID namespace, so nothing it
# starts outlives it.
set -euo pipefail

[ $# = 1 ] || { echo "usage: $0 SCRATCH_DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: must run as root" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
S=$(mkdir -p "$1" && cd "$1" && pwd)
R=$S/root W=$S/work
MIRROR=${GPU_HOSTMEM_MIRROR:-http://deb.debian.org/debian}
PKGS=libvirglrenderer1,libvirglrenderer-dev,virgl-server,mesa-vulkan-drivers,vulkan-tools,libvulkan-dev,gcc,libc6-dev,pkgconf,strace,procps

if [ ! -e "$S/root.done" ]; then
    rm -rf "$R"
    echo "== mmdebstrap trixie into $R"
    timeout 1800 mmdebstrap --variant=apt --include="$PKGS" --aptopt='Acquire::Retries "3"' \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg trixie "$R" "$MIRROR" \
        >"$S/mmdebstrap.log" 2>&1 || { tail -n 20 "$S/mmdebstrap.log"; exit 1; }
    touch "$S/root.done"
fi
mkdir -p "$W"
cp "$HERE"/venus-hostvis.c "$HERE"/blob-shim.c "$HERE"/client-shim.c "$HERE"/inspect.sh "$W"/

# inroot TIMEOUT CMD: run CMD (a shell string) in the root, /mnt = $W.
inroot() {
    local t=$1
    shift
    timeout --kill-after=10 "$t" unshare -m -p -f --propagation private sh -c '
        mount -t proc proc "$0/proc" && mount --bind /dev "$0/dev" &&
        mount -t tmpfs tmpfs "$0/tmp" && mount --bind "$1" "$0/mnt" &&
        exec chroot "$0" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp sh -c "$2"' \
        "$R" "$W" "$*"
}

# The environment of both sides, sourced in the root.
cat >"$W/env.sh" <<'EOF'
LVP=/usr/share/vulkan/icd.d/lvp_icd.json
VIRTIO=/usr/share/vulkan/icd.d/virtio_icd.json
export VTEST_SOCKET_NAME=/tmp/vtest.sock
# start_server [env...]: virgl_test_server with venus, rendering on lavapipe.
start_server() {
    env VK_ICD_FILENAMES=$LVP "$@" virgl_test_server --venus --no-virgl \
        --socket-path $VTEST_SOCKET_NAME --multi-clients >/mnt/server.log 2>&1 &
    sleep 1
}
# client CMD...: Mesa's venus driver in vtest mode.
client() { env VK_ICD_FILENAMES=$VIRTIO VN_DEBUG=vtest "$@"; }
EOF

echo "== versions"
inroot 60 "dpkg-query -W libvirglrenderer1 virgl-server mesa-vulkan-drivers libvulkan1"
echo "== build"
inroot 120 "cd /mnt && cc -O2 -Wall -Wextra -o venus-hostvis venus-hostvis.c -lvulkan &&
    cc -O2 -Wall -Wextra -shared -fPIC -o blob-shim.so blob-shim.c \$(pkg-config --cflags virglrenderer) -ldl &&
    cc -O2 -Wall -Wextra -shared -fPIC -o client-shim.so client-shim.c -ldl"

echo "== 1. lavapipe directly (control)"
inroot 120 ". /mnt/env.sh; VK_ICD_FILENAMES=\$LVP /mnt/venus-hostvis 4" || true

echo "== 2. vulkaninfo --summary: venus over vtest over virglrenderer over lavapipe"
inroot 120 ". /mnt/env.sh; start_server; client vulkaninfo --summary 2>&1 | sed -n '/^Devices/,\$p'" || true

echo "== 3. the probe client over venus, server with the shim (export as it is)"
inroot 120 ". /mnt/env.sh; start_server LD_PRELOAD=/mnt/blob-shim.so
    client timeout 30 stdbuf -oL /mnt/venus-hostvis 4; echo client exit \$?
    cat /mnt/server.log" || true

echo "== 4. as 3, the OPAQUE fd passed on as SHM, venus feedback off; processes inspected"
inroot 180 ". /mnt/env.sh; start_server LD_PRELOAD=/mnt/blob-shim.so BLOB_SHIM_OPAQUE_AS_SHM=1
    (sleep 12; echo) | client VN_PERF=no_fence_feedback,no_semaphore_feedback,no_event_feedback,no_query_feedback \
        PROBE_PAUSE=1 timeout 60 stdbuf -oL /mnt/venus-hostvis 4 >/mnt/client.log 2>&1 &
    sleep 8; sh /mnt/inspect.sh; wait \$!; echo client exit \$?; cat /mnt/client.log
    grep '^\[blob-shim\] \(create\|export\)\|offset\|passing' /mnt/server.log" || true

echo "== 5. as 4 with venus's feedback on, the client mapping lavapipe's memfds one page in (client-shim)"
inroot 180 ". /mnt/env.sh; start_server LD_PRELOAD=/mnt/blob-shim.so BLOB_SHIM_OPAQUE_AS_SHM=1
    client LD_PRELOAD=/mnt/client-shim.so timeout 60 stdbuf -oL /mnt/venus-hostvis 64; echo client exit \$?
    grep '^\[blob-shim\] \(create\|export\)\|offset\|passing' /mnt/server.log" || true

echo "== 6. as 5 under strace -ff: what the library's process (the vtest server's per-client child) does"
rm -rf "$W/st"
inroot 180 ". /mnt/env.sh; mkdir -p /mnt/st
    env VK_ICD_FILENAMES=\$LVP LD_PRELOAD=/mnt/blob-shim.so BLOB_SHIM_OPAQUE_AS_SHM=1 strace -ff -qq -o /mnt/st/t \
        virgl_test_server --venus --no-virgl --socket-path \$VTEST_SOCKET_NAME --multi-clients >/mnt/server.log 2>&1 &
    sleep 2; client LD_PRELOAD=/mnt/client-shim.so timeout 90 /mnt/venus-hostvis 4 2>/dev/null | tail -n 1" || true
# The listener's trace names the per-client child it forked; that child's
# threads are the ones it cloned.  (The shim adds its own /proc reads,
# pread, fstatfs and process_vm_readv/writev.)
lst=$(grep -l 'execve("/usr/bin/virgl_test_server"' "$W"/st/t.* | head -n1)
child=$(grep -oE '^clone3?\(.*= [0-9]+' "$lst" | grep -oE '[0-9]+$' | head -n1)
files=("$W/st/t.$child")
for t in $(grep -E '^clone3?\(' "$W/st/t.$child" | grep CLONE_THREAD | grep -oE '= [0-9]+$' | grep -oE '[0-9]+'); do
    files+=("$W/st/t.$t")
done
echo "process $child, ${#files[@]} tasks; syscalls (count):"
cat "${files[@]}" | grep -oE '^[a-z_0-9]+\(' | tr -d '(' | sort | uniq -c | sort -rn | awk '{printf "%s %s, ", $2, $1} END {print ""}'
echo "files it opened (beyond /proc/self and libraries):"
cat "${files[@]}" | grep -E '^(openat|mkdir|newfstatat|access)\(' | grep -oE '"/[^"]*"' |
    grep -vE '^"/(proc/self|lib|usr/lib|etc/ld\.so)' | sort -u
