#!/usr/bin/env bash
# Benchmark (issue 8, in-guest points 1-4), measured side by side in one run.
# Not a timed test: it fails only if a measurement could not be taken. The
# numbers are printed as "BENCH key=value" lines (tests/e2e/bench collects
# them). Sizes: a 512 MiB BAR, 256 MiB registered and first-touched, 32 MiB
# bandwidth buffers.
#   1. bandwidth through lent BAR pages vs the guest's own RAM: GH_BENCH_ROUNDS
#      (default 60) interleaved rounds of GH_BENCH_PASSES (2) passes over
#      32 MiB per side, the same loop and warm-up for every side. The figure
#      is the median of the per-round ratios BAR/RAM with its 95 % interval;
#      the A/A control is the same ratio between two identical buffers of
#      guest RAM (the method's own error). Also the memory type the guest
#      kernel gives each way of mapping the BAR, and the same rounds through
#      a write-back mapping;
#   2. an emulated BAR: per-access cost of unregistered pages (each one an
#      ioreq round trip to the IOREQ server), and the speed-up of lent;
#   3. first touch of 256 MiB: time, faults, lend calls per MiB (fault-around
#      2 MiB; 81-bench-fault-around-off has the 4 KiB case);
#   4. time to revoke 256 MiB (the backend moves new memory over it);
#      82-bench-destroy has the destroy of a guest with 1 GiB lent.
# timeout: 1500
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=bench
reg_mib=256
HM_BAR_MIB=512
source "$(dirname "$0")/bench-common.sh"
bench_start "$name" "hostmem-guest,bwsuite,$HM_VENDOR,$HM_DEVICE,0,$((reg_mib << 20)),0x2000000,${GH_BENCH_ROUNDS:-60},${GH_BENCH_PASSES:-2},0x18000000,${GH_BENCH_EMUL:-3000}" \
    "0:${reg_mib}M" || exit 1
if ! hm_wait_marker "$name" "^GH-GUEST-TOUCHED" 900; then
    result "$name-first-touch" 0 "no-marker"; hm_console "$name"; exit 1
fi
ft_faults=$(hm_counter "$HM_DOM" bar_faults); ft_lends=$(hm_counter "$HM_DOM" lends)
ft_pages=$(hm_counter "$HM_DOM" pages_lent); ft_retries=$(hm_counter "$HM_DOM" retries)
gh_guest_wait "$name" 600 || result "$name-guest-run" 0 "did-not-finish"
o=/tmp/$name.out
touch_s=$(bench_touch_seconds "$name")
# side op -> "median min max" (from the guest's bw-read / bw-write lines)
bw() { sed -n "s/^RESULT name=${T:-bw}-$2 ok=1 value=\([0-9.]*\) side=$1 min=\([0-9.]*\) max=\([0-9.]*\).*/\1 \2 \3/p" "$o"; }
# op side -> "paired lo hi of_medians of_best" for side over ram4k
ratio() { sed -n "s/^RESULT name=${T:-bw}-$1-ratio ok=1 value=\([0-9.]*\) a=$2 b=ram4k paired_lo=\([0-9.]*\) paired_hi=\([0-9.]*\) of_medians=\([0-9.]*\) of_best=\([0-9.]*\).*/\1 \2 \3 \4 \5/p" "$o"; }
# report T-name bar-side: medians, ranges and the two ratios of one set
report() {
    local pfx=$1 barside=$2 op m mn mx p lo hi om ob
    for op in read write; do
        local line="" range=""
        for side in "$barside" ram4k ram4kb; do
            read -r m mn mx <<<"$(bw "$side" "$op")"
            line+=" $side=$m"; range+=" $side=$mn-$mx"
        done
        bench "${pfx}${op}_mbps_median$line"
        bench "${pfx}${op}_mbps_min_max$range"
        read -r p lo hi om ob <<<"$(ratio "$op" "$barside")"
        bench "${pfx}${op}_ratio $barside/ram4k paired_median=$p ci95=$lo-$hi of_medians=$om of_best=$ob"
        read -r p lo hi om ob <<<"$(ratio "$op" ram4kb)"
        bench "${pfx}${op}_ratio A/A ram4kb/ram4k paired_median=$p ci95=$lo-$hi of_medians=$om of_best=$ob"
    done
}
r_bar=$(bw bar read | cut -d' ' -f1); w_bar=$(bw bar write | cut -d' ' -f1)
r_ratio=$(ratio read bar | cut -d' ' -f1); w_ratio=$(ratio write bar | cut -d' ' -f1)
r_aa=$(ratio read ram4kb | cut -d' ' -f1); w_aa=$(ratio write ram4kb | cut -d' ' -f1)
read -r fw_ratio fw_first fw_second <<<"$(sed -n 's/^RESULT name=bw-bar-first-write ok=1 value=\([0-9.]*\) first_mbps=\([0-9.]*\) second_mbps=\([0-9.]*\).*/\1 \2 \3/p' "$o")"
read -r e_n e_s e_us <<<"$(sed -n 's/^RESULT name=guest-hammer-all-ones ok=1 value=0 accesses=\([0-9]*\) seconds=\([0-9.]*\) per_access_us=\([0-9.]*\).*/\1 \2 \3/p' "$o")"
check "$name-measured" "touch=$touch_s,read=$r_ratio,write=$w_ratio,aa=$r_aa/$w_aa,emul_us=$e_us" \
    [ -n "$touch_s" -a -n "$r_ratio" -a -n "$w_ratio" -a -n "$r_aa" -a -n "$w_aa" -a -n "$e_us" ]
grep '^RESULT name=bw-setup ' "$o" | sed 's/^RESULT name=bw-setup ok=1 value=/BENCH bw_bytes=/'
grep '^RESULT name=bw-sample ' "$o" | sed 's/^RESULT name=bw-sample ok=1 value=/BENCH bw_round=/'
report "" bar
bench "bar_first_write_pass_mbps=$fw_first second_pass_mbps=$fw_second first_over_second=$fw_ratio"
grep '^MEMTYPE ' "$o" | sed 's/^MEMTYPE /BENCH memtype /'
grep '^guest: \(mtrr\|pat\|BAR0\|disabled MTRR\|could not\)' "$o" | sed 's/^/BENCH /'
# The same rounds through a /dev/mem mapping the guest made write-back (as
# the firmware left its MTRRs since xen-patches/0012; with an older hvmloader
# after lifting the guest's own UC MTRR from the BAR), if it could make one.
if grep -q '^RESULT name=bwwb-read-ratio ' "$o"; then
    T=bwwb
    grep '^RESULT name=bwwb-sample ' "$o" | sed 's/^RESULT name=bwwb-sample ok=1 value=/BENCH wb_round=/'
    report wb_ barwb
    T=bw
fi
emul_mbps=$(awk -v u="$e_us" 'BEGIN { printf "%.4f", 8 / u }')
bench "emulated_accesses=$e_n emulated_seconds=$e_s emulated_us_per_access=$e_us emulated_mbps=$emul_mbps"
bench "speedup_read_lent_over_emulated=$(awk -v a="$r_bar" -v b="$emul_mbps" 'BEGIN { printf "%.0f", a / b }') speedup_write_lent_over_emulated=$(awk -v a="$w_bar" -v b="$emul_mbps" 'BEGIN { printf "%.0f", a / b }')"
bench "first_touch_mib=$reg_mib first_touch_seconds=$touch_s faults=$ft_faults lends=$ft_lends pages_lent=$ft_pages retries=$ft_retries"
bench "faults_per_mib=$(awk -v f="$ft_faults" -v m="$reg_mib" 'BEGIN { printf "%.3f", f / m }') lend_calls_per_mib=$(awk -v f="$ft_lends" -v m="$reg_mib" 'BEGIN { printf "%.3f", f / m }') lend_hypercalls_per_mib_min=$(awk -v p="$ft_pages" -v m="$reg_mib" 'BEGIN { printf "%.3f", p / 512 / m }')"
lent=$(hm_kernel_lent "$HM_DOM")
bench "kernel_lent_pages=$lent"
gpu-hostmem status "$HM_DOM" 2>&1 | sed 's/^/[status] /'

# 4. Revocation: the backend replaces the region (mremap over it).
kill -USR2 "$HM_BPID"
for _ in $(seq 1 600); do grep -q 'RESULT name=backend-replace' "$HM_BOUT" && break; sleep 0.1; done
rv_ms=$(sed -n 's/.*took \([0-9.]*\) ms.*/\1/p' "$HM_BOUT" | head -n1)
lent_after=$(hm_kernel_lent "$HM_DOM")
bench "revoke_mib=$reg_mib revoke_ms=$rv_ms kernel_lent_after=$lent_after"
check "$name-revoked" "revoke_ms=$rv_ms,lent_after=$lent_after" [ -n "$rv_ms" -a "${lent_after:-x}" = 0 ]
# The destroy below is of a guest whose 256 MiB were revoked (nothing lent
# any more): 82-bench-destroy measures the destroy with pages lent.
t0=$(date +%s%N)
hm_destroy_clean "$name"
bench "destroy_ms_after_revoke=$((($(date +%s%N) - t0) / 1000000))"
exit $((BENCH_FAILED | GH_FAILED))
