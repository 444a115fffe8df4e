# Scenario (stress, not in CI): boot the plain HVM test guest many times,
# alternating 1 and 2 vCPUs, and count the boots that end in a triple fault.
# Used to chase the intermittent early-boot triple fault (docs/status.md):
# run it against our hypervisor and against another image
# (GPU_HOSTMEM_XEN_OUT) to compare.  Boots: /etc/gpu-hostmem/boot-loop-count
# if present, else 10.  A boot that has not finished after 180 s (a normal
# one takes 15-30 s) counts as failed: a signature-C hang costs 3 minutes of
# the loop, not 10.
# timeout: 1800
source /usr/lib/gpu-hostmem/e2e/lib.sh
n=10
[ -r /etc/gpu-hostmem/boot-loop-count ] && n=$(cat /etc/gpu-hostmem/boot-loop-count)
ok=0 tf=0 other=0
for i in $(seq 1 "$n"); do
    before=$(xl dmesg | grep -c 'Triple fault' || true)
    if [ $((i % 2)) = 0 ]; then v=2; else v=1; fi
    GH_FAILED=0
    GH_GUEST_VCPUS=$v gh_guest_cycle "loop$i" hvm gh-selftest,1 180 >"/tmp/loop$i.log" 2>&1
    rc=$?
    after=$(xl dmesg | grep -c 'Triple fault' || true)
    if [ "$rc" = 0 ]; then
        ok=$((ok + 1)); echo "boot $i (vcpus=$v): ok"
    elif [ "$after" -gt "$before" ]; then
        tf=$((tf + 1)); echo "boot $i (vcpus=$v): TRIPLE FAULT"
        xl dmesg | grep -A14 'Triple fault' | tail -n 15
        grep -v '^\[xl create' "/tmp/loop$i.log" | tail -n 8
    else
        other=$((other + 1)); echo "boot $i (vcpus=$v): failed otherwise"
        tail -n 20 "/tmp/loop$i.log"
    fi
done
GH_FAILED=0
result boot-loop-summary "$([ "$tf" = 0 ] && [ "$other" = 0 ] && echo 1 || echo 0)" \
    "boots=$n,ok=$ok,triple_faults=$tf,other_failures=$other,xen=$(cat /etc/gpu-hostmem/xen-version)"
exit "$GH_FAILED"
