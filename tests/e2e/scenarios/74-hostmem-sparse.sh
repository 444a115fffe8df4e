#!/usr/bin/env bash
# Scenario (issue 17, sizes): real window sizes with sparse registrations.
# For a 2 GiB BAR (the default size) and an 8 GiB BAR in turn:
#   - the BAR is above 4 GiB (xenstore bar-base);
#   - the backend registers 512 MiB in 16 pieces of 32 MiB spread evenly over
#     the whole window (one every BAR/16);
#   - first touch: the guest reads every page of every piece (fault-around
#     2 MiB: 16 faults per piece) and stamps it; the backend sees every stamp;
#   - revocation: the backend moves new memory over every piece; nothing is
#     left lent;
#   - destroy: nothing left behind.
# The times of each step are printed as BENCH lines (not asserted).
# timeout: 1500
set -u
source "$(dirname "$0")/hostmem-common.sh"
bench() { echo "BENCH $*"; }

piece_mib=32
pieces=16
for bar_mib in 2048 8192; do
    name=hm-sparse-$bar_mib
    stride=$(((bar_mib / pieces) << 20))
    regions=() gargs=""
    for i in $(seq 0 $((pieces - 1))); do
        regions+=("$((i * stride)):${piece_mib}M")
        gargs+=",$((i * stride)),$((piece_mib << 20))"
    done
    HM_BAR_MIB=$bar_mib hm_start "$name" "hostmem-guest,check,$HM_VENDOR,$HM_DEVICE${gargs}" \
        "${regions[@]}" || exit 1
    t=$(gh_now)
    gh_guest_wait "$name" "${HM_GUEST_WAIT:-900}" || result "$name-guest-run" 0 "did-not-finish"
    touch_s=$(gh_since "$t")
    o=/tmp/$name.out
    nread=$(grep -c '^RESULT name=guest-reads-pattern ok=1' "$o" || true)
    nstamp=$(grep -c '^RESULT name=guest-stamps-pages ok=1' "$o" || true)
    check "$name-first-touch-reads" "$nread/$pieces" [ "$nread" = "$pieces" ]
    check "$name-first-touch-stamps" "$nstamp/$pieces" [ "$nstamp" = "$pieces" ]
    base=$(xenstore-read "/local/domain/0/gpu-hostmem/$HM_DOM/bar-base" 2>/dev/null || echo unmapped)
    case "$base" in 0x*) high=$((base >= (1 << 32))) ;; *) high=0 ;; esac
    check "$name-bar-base-above-4g" "bar-base=$base" [ "$high" = 1 ]
    faults=$(hm_counter "$HM_DOM" bar_faults)
    lent=$(hm_kernel_lent "$HM_DOM")
    want=$((pieces * piece_mib * 256))
    check "$name-lent-all" "kernel_lent=$lent/$want,faults=$faults" [ "${lent:-0}" = "$want" ]
    hm_backend_report "$HM_BPID" "$HM_BOUT"
    seen=$(grep '^RESULT name=backend-sees-guest-writes' "$HM_BOUT" | tail -n "$pieces" |
        sed -n 's/.* ok=1 value=\([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }')
    check "$name-backend-sees-stamps" "$seen/$want" [ "$seen" = "$want" ]
    bench "bar_mib=$bar_mib registered_mib=$((pieces * piece_mib)) pieces=$pieces first_touch_and_stamp_seconds=$touch_s faults=$faults kernel_lent_pages=$lent"

    # Revocation: the backend moves new memory over every piece.
    kill -USR2 "$HM_BPID"
    for _ in $(seq 1 600); do
        [ "$(grep -c 'RESULT name=backend-replace' "$HM_BOUT")" -ge "$pieces" ] && break
        sleep 0.1
    done
    nrep=$(grep -c 'RESULT name=backend-replace ok=1' "$HM_BOUT" || true)
    rv_ms=$(sed -n 's/.*took \([0-9.]*\) ms.*/\1/p' "$HM_BOUT" | awk '{ s += $1 } END { printf "%.1f", s }')
    lent_after=$(hm_kernel_lent "$HM_DOM")
    check "$name-revoked" "replaced=$nrep/$pieces,kernel_lent_after=$lent_after" \
        [ "$nrep" = "$pieces" -a "${lent_after:-x}" = 0 ]
    bench "bar_mib=$bar_mib revoke_mib=$((pieces * piece_mib)) revoke_ms_total=$rv_ms"

    t0=$(date +%s%N)
    hm_destroy_clean "$name"
    bench "bar_mib=$bar_mib destroy_ms_after_revoke=$((($(date +%s%N) - t0) / 1000000))"
    kill "$HM_BPID" 2>/dev/null || true
done
exit "$GH_FAILED"
