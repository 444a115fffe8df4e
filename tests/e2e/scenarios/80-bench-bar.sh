#!/usr/bin/env bash
# Benchmark (issue 8, in-guest points 1-4), measured side by side in one run.
# Not a timed test: it fails only if a measurement could not be taken. The
# numbers are printed as "BENCH key=value" lines (tests/e2e/bench collects
# them). Scaled down for the emulated machine: a 256 MiB BAR (the default),
# 240 MiB registered and first-touched, 32 MiB bandwidth buffers.
#   1. bandwidth through lent BAR pages vs the guest's own RAM: GH_BENCH_ROUNDS
#      (default 31) interleaved rounds of GH_BENCH_PASSES (4) passes over 32 MiB
#      per side, the same loop and warm-up for every side; median, min and max
#      per side and the ratio of the medians. Two RAM sides: 4 KiB pages (as
#      the guest maps the BAR) and transparent huge pages. Also the memory
#      type the guest kernel gives each way of mapping the BAR;
#   2. an emulated BAR: per-access cost of unregistered pages (each one an
#      ioreq round trip to the IOREQ server), and the speed-up of lent;
#   3. first touch of 240 MiB: time, faults, lend calls per MiB (fault-around
#      2 MiB; 81-bench-fault-around-off has the 4 KiB case);
#   4. time to revoke 240 MiB (the backend moves new memory over it) and to
#      destroy the guest with 240 MiB lent.
# timeout: 1500
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=bench
reg_mib=240
HM_BAR_MIB=256
source "$(dirname "$0")/bench-common.sh"
bench_start "$name" "hostmem-guest,bwsuite,$HM_VENDOR,$HM_DEVICE,0,$((reg_mib << 20)),0x2000000,${GH_BENCH_ROUNDS:-31},${GH_BENCH_PASSES:-4},0xf800000,${GH_BENCH_EMUL:-3000}" \
    "0:${reg_mib}M" || exit 1
if ! hm_wait_marker "$name" "^GH-GUEST-TOUCHED" 900; then
    result "$name-first-touch" 0 "no-marker"; hm_console "$name"; exit 1
fi
ft_faults=$(hm_counter "$HM_DOM" bar_faults); ft_lends=$(hm_counter "$HM_DOM" lends)
ft_pages=$(hm_counter "$HM_DOM" pages_lent); ft_retries=$(hm_counter "$HM_DOM" retries)
gh_guest_wait "$name" 400 || result "$name-guest-run" 0 "did-not-finish"
o=/tmp/$name.out
touch_s=$(sed -n 's/^RESULT name=guest-touch ok=1 .* seconds=\([0-9.]*\).*/\1/p' "$o" | head -n1)
# side op -> "median min max" (from the guest's bw-read / bw-write lines)
bw() { sed -n "s/^RESULT name=${T:-bw}-$2 ok=1 value=\([0-9.]*\) side=$1 min=\([0-9.]*\) max=\([0-9.]*\).*/\1 \2 \3/p" "$o"; }
ratio() { sed -n "s/^RESULT name=${T:-bw}-$1-ratio ok=1 .* $2=\([0-9.]*\).*/\1/p" "$o"; }
read -r r_bar r_bar_min r_bar_max <<<"$(bw bar read)"
read -r r_ram r_ram_min r_ram_max <<<"$(bw ram4k read)"
read -r r_thp r_thp_min r_thp_max <<<"$(bw ramthp read)"
read -r w_bar w_bar_min w_bar_max <<<"$(bw bar write)"
read -r w_ram w_ram_min w_ram_max <<<"$(bw ram4k write)"
read -r w_thp w_thp_min w_thp_max <<<"$(bw ramthp write)"
r_ratio=$(ratio read bar_over_ram4k); w_ratio=$(ratio write bar_over_ram4k)
read -r fw_ratio fw_first fw_second <<<"$(sed -n 's/^RESULT name=bw-bar-first-write ok=1 value=\([0-9.]*\) first_mbps=\([0-9.]*\) second_mbps=\([0-9.]*\).*/\1 \2 \3/p' "$o")"
read -r e_n e_s e_us <<<"$(sed -n 's/^RESULT name=guest-hammer-all-ones ok=1 value=0 accesses=\([0-9]*\) seconds=\([0-9.]*\) per_access_us=\([0-9.]*\).*/\1 \2 \3/p' "$o")"
check "$name-measured" "touch=$touch_s,read=$r_ratio,write=$w_ratio,emul_us=$e_us" \
    [ -n "$touch_s" -a -n "$r_ratio" -a -n "$w_ratio" -a -n "$r_thp" -a -n "$w_thp" -a -n "$e_us" ]
grep '^RESULT name=bw-setup ' "$o" | sed 's/^RESULT name=bw-setup ok=1 value=/BENCH bw_bytes=/'
grep '^RESULT name=bw-sample ' "$o" | sed 's/^RESULT name=bw-sample ok=1 value=/BENCH bw_round=/'
bench "read_mbps_median bar=$r_bar ram4k=$r_ram ramthp=$r_thp"
bench "read_mbps_min_max bar=$r_bar_min-$r_bar_max ram4k=$r_ram_min-$r_ram_max ramthp=$r_thp_min-$r_thp_max"
bench "write_mbps_median bar=$w_bar ram4k=$w_ram ramthp=$w_thp"
bench "write_mbps_min_max bar=$w_bar_min-$w_bar_max ram4k=$w_ram_min-$w_ram_max ramthp=$w_thp_min-$w_thp_max"
bench "read_ratio_of_medians bar/ram4k=$r_ratio bar/ramthp=$(ratio read bar_over_ramthp) ratio_of_best bar/ram4k=$(ratio read best_bar_over_ram4k) bar/ramthp=$(ratio read best_bar_over_ramthp)"
bench "write_ratio_of_medians bar/ram4k=$w_ratio bar/ramthp=$(ratio write bar_over_ramthp) ratio_of_best bar/ram4k=$(ratio write best_bar_over_ram4k) bar/ramthp=$(ratio write best_bar_over_ramthp)"
bench "bar_first_write_pass_mbps=$fw_first second_pass_mbps=$fw_second first_over_second=$fw_ratio"
grep '^MEMTYPE ' "$o" | sed 's/^MEMTYPE /BENCH memtype /'
grep '^guest: \(mtrr\|pat\|BAR0\|disabled MTRR\|could not\)' "$o" | sed 's/^/BENCH /'
# The same rounds through a /dev/mem mapping the guest made write-back (after
# lifting its own UC MTRR from the BAR), if the guest could make one.
if grep -q '^RESULT name=bwwb-read-ratio ' "$o"; then
    T=bwwb
    grep '^RESULT name=bwwb-sample ' "$o" | sed 's/^RESULT name=bwwb-sample ok=1 value=/BENCH wb_round=/'
    bench "wb_read_mbps_median barwb=$(bw barwb read | cut -d' ' -f1) ram4k=$(bw ram4k read | cut -d' ' -f1) ratio_of_medians barwb/ram4k=$(ratio read bar_over_ram4k) ratio_of_best=$(ratio read best_bar_over_ram4k)"
    bench "wb_write_mbps_median barwb=$(bw barwb write | cut -d' ' -f1) ram4k=$(bw ram4k write | cut -d' ' -f1) ratio_of_medians barwb/ram4k=$(ratio write bar_over_ram4k) ratio_of_best=$(ratio write best_bar_over_ram4k)"
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
# Lend it all again (the guest is idle: a dom0-side lend is not possible, so
# destroy with what the guest had; re-touching needs a guest command). The
# destroy below is of a guest whose 240 MiB were revoked: measure the other
# case in 82-bench-destroy.
t0=$(date +%s%N)
hm_destroy_clean "$name"
bench "destroy_ms_after_revoke=$((($(date +%s%N) - t0) / 1000000))"
exit $((BENCH_FAILED | GH_FAILED))
