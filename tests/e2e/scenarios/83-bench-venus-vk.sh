#!/usr/bin/env bash
# Benchmark (issue 18, stage 3): bandwidth of the HOST_VISIBLE|HOST_COHERENT
# memory Mesa's venus driver maps in the guest (a blob lent through the
# window) against the guest's own RAM, with the A/A control of
# 80-bench-bar, in one run. Not a timed test: it runs 79-venus-vk-compute
# (every word checked, the held buffers, xl destroy clean: its RESULT lines
# count) with vk-compute -b GH_BENCH_ROUNDS (default 60) and prints "BENCH
# key=value" lines (tests/e2e/bench collects them):
#   - per operation (read, write) the median MiB/s of each side (mapped: the
#     output buffer's mapping; ram4k: guest RAM with 4 KiB pages; ram4kb: a
#     second such buffer, the A/A control), the median of the per-round
#     ratios mapped/ram4k with its 95 % interval, and the same for
#     ram4kb/ram4k (the method's own error), as 80-bench-bar;
#   - every round's samples (vk_round=...; tests/e2e/bw-stats pools them);
#   - what else ran during the rounds, to tell contention from the memory:
#     the guest's stolen time (its vCPU waiting while Xen ran another), the
#     CPU time dom0, the renderer and the render server used meanwhile, and
#     the window's faults (a fault during the rounds would mean its pages
#     were not all lent before the timing began).
# Named "venus" (dom0 gets the venus product) and "-vk" (the guest's
# Vulkan root): tests/e2e/run gives the whole bench boot both.
# timeout: 1800
set -u
here=$(dirname "$0")
source "$here/hostmem-common.sh"
source "$here/bench-common.sh"
rounds=${GH_BENCH_ROUNDS:-60}
name=vg-vk
clog=$GH_CONSOLE_DIR/guest-$name.log
out=/tmp/$name.out

# snap: "UPTIME DOM0_BUSY DOM0_ALL RENDERER SERVER IOREQD QEMU XEN_DOM0
# XEN_GUEST FAULTS": dom0's busy and all clock ticks (/proc/stat: every CPU
# of dom0, steal counted as not busy), the ticks (utime+stime) of
# gpu-hostmem-renderer, of the render servers, of gpu-hostmem-ioreqd and of
# the guests' QEMU, Xen's CPU seconds of dom0 and of the guest (xl list),
# and the IOREQ server's fault count.
ticks_of() {
    local p t=0
    for p in $(pgrep -f "$1"); do
        t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
snap() {
    local dom
    dom=$(xl domid "$name" 2>/dev/null)
    echo "$(cut -d' ' -f1 /proc/uptime)" \
        "$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)" \
        "$(ticks_of '^/usr/lib/gpu-hostmem/bin/gpu-hostmem-renderer')" \
        "$(ticks_of '^/usr/libexec/virgl_render_server')" \
        "$(ticks_of 'gpu-hostmem-ioreqd')" \
        "$(ticks_of 'qemu-system-i386')" \
        "$(xl list 2>/dev/null | awk '$1 == "Domain-0" { print $6 }')" \
        "$(xl list "$name" 2>/dev/null | awk 'NR == 2 { print $6 }')" \
        "$(hm_counter "${dom:-none}" bar_faults)"
}
# wait_console REGEX SECONDS: the guest's console has a line matching REGEX;
# fails at once when 79-venus-vk-compute ended (its guest lost, say).
wait_console() {
    local end=$(($(date +%s) + $2))
    while [ "$(date +%s)" -lt "$end" ]; do
        [ -f "$clog" ] && tr -d '\r' <"$clog" | grep -q -- "$1" && return 0
        kill -0 "$vpid" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}

rm -f "$clog"
VK_BW_ROUNDS=$rounds VK_GUEST_BOUND=${VK_GUEST_BOUND:-1500} HM_GUEST_WAIT=${HM_GUEST_WAIT:-1500} \
    bash "$here/79-venus-vk-compute.sh" &
vpid=$!
a="" b=""
if wait_console '^RESULT name=vkbw-setup ' 900; then
    a=$(snap)
    wait_console '^RESULT name=vkbw-cpu \|^RESULT name=vk-hold \|^GH-GUEST-DONE' 1500 && b=$(snap)
fi
wait "$vpid"
rc=$?

# The guest's lines as 79-venus-vk-compute kept them.
vkl() { sed -n "s/^RESULT name=$1 ok=1 value=//p" "$out" | tr ',' ' '; }
kv() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1; }
sed -n 's/^RESULT name=vkbw-setup ok=1 value=\([0-9]*\),rounds=\([0-9]*\),passes=\([0-9]*\).*/BENCH vk_bw_bytes=\1 rounds=\2 passes=\3/p' "$out"
for op in read write; do
    line="" range=""
    for side in mapped ram4k ram4kb; do
        l=$(vkl "vkbw-$op" | grep " side=$side ")
        line+=" $side=${l%% *}"
        range+=" $side=$(kv "$l" min)-$(kv "$l" max)"
    done
    bench "vk_${op}_mibps_median$line"
    bench "vk_${op}_mibps_min_max$range"
    for a_side in mapped ram4kb; do
        l=$(vkl vkbw-ratio | grep " op=$op a=$a_side b=ram4k ")
        label="$a_side/ram4k"
        [ "$a_side" = ram4kb ] && label="A/A ram4kb/ram4k"
        bench "vk_${op}_ratio $label paired_median=${l%% *} ci95=$(kv "$l" paired_lo)-$(kv "$l" paired_hi) of_medians=$(kv "$l" of_medians)"
    done
done
grep '^RESULT name=vkbw-sample ' "$out" | sed 's/^RESULT name=vkbw-sample ok=1 value=/BENCH vk_round=/'
l=$(vkl vkbw-cpu)
[ -n "$l" ] && bench "vk_guest_seconds=${l%% *} guest_ticks=$(kv "$l" ticks) guest_steal_ticks=$(kv "$l" steal_ticks) guest_steal_pct=$(kv "$l" steal_pct)"
if [ -n "$a" ] && [ -n "$b" ]; then
    read -r u0 db0 da0 r0 s0 i0 q0 xd0 xg0 f0 <<<"$a"
    read -r u1 db1 da1 r1 s1 i1 q1 xd1 xg1 f1 <<<"$b"
    hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
    bench "$(awk -v u0="$u0" -v u1="$u1" -v db="$((db1 - db0))" -v da="$((da1 - da0))" \
        -v r="$((r1 - r0))" -v s="$((s1 - s0))" -v i="$((i1 - i0))" -v q="$((q1 - q0))" \
        -v hz="$hz" -v xd0="$xd0" -v xd1="$xd1" \
        -v xg0="$xg0" -v xg1="$xg1" 'BEGIN {
            w = u1 - u0
            printf "vk_during_rounds wall_s=%.1f dom0_busy_pct=%.1f renderer_cpu_s=%.2f render_server_cpu_s=%.2f ioreqd_cpu_s=%.2f qemu_dm_cpu_s=%.2f xen_dom0_cpu_s=%.1f xen_guest_cpu_s=%.1f",
                w, (da > 0 ? 100 * db / da : 0), r / hz, s / hz, i / hz, q / hz, xd1 - xd0, xg1 - xg0 }')"
    bench "vk_faults_before_rounds=$f0 vk_faults_after_rounds=$f1"
else
    bench "vk_during_rounds not-sampled"
fi
check vk-bench-measured "rounds=$rounds" grep -q '^RESULT name=vkbw-ratio ok=1 .*op=write,a=ram4kb' "$out"
exit $((rc | GH_FAILED))
