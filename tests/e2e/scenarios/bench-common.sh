# shellcheck shell=bash
# Helpers of the NN-bench-* scenarios (sourced after hostmem-common.sh; not a
# scenario: tests/e2e/run only runs files named NN-*.sh).

bench() { echo "BENCH $*"; }

# bench_start NAME RUN REGION...: hm_start, then wait until the guest's program
# runs (its first RESULT line). A guest that does not get there within
# BENCH_BOOT_S seconds (default 420; a guest of the loaded test bed normally
# takes 2-4 minutes) is taken for the early-boot hang or triple fault of
# docs/status.md ("Known gaps"), which happens before any gpu-hostmem code
# runs in the guest: it is destroyed, with its backend, and started once more,
# so one bad boot does not cost the whole benchmark. hm_start refuses to start
# anything once GH_FAILED is set, so failures before are kept in
# BENCH_FAILED (exit with $((BENCH_FAILED | GH_FAILED))).
BENCH_FAILED=0
bench_start() {
    local name=$1 try
    for try in 1 2; do
        BENCH_FAILED=$((BENCH_FAILED | GH_FAILED))
        GH_FAILED=0
        hm_start "$@" || return 1
        if hm_wait_marker "$name" "^RESULT name=guest-finds-device" "${BENCH_BOOT_S:-420}"; then
            return 0
        fi
        echo "bench: guest $name (domain $HM_DOM) did not start its program (boot $try of 2):"
        xl list "$name" 2>&1 | tail -n1 | sed 's/^/bench:   /'
        xl dmesg 2>/dev/null | grep -i "d${HM_DOM}v.*triple" | tail -n2 | sed 's/^/bench:   /'
        hm_console "$name" | tail -n3 | sed 's/^/bench:   /'
        timeout 60 xl destroy "$name" >/dev/null 2>&1
        gh_wait_gone "$name" 60
        kill -TERM "$HM_BPID" 2>/dev/null
        wait "$HM_BPID" 2>/dev/null
    done
    result "$name-guest-boot" 0 "two-boots-hung"
    return 1
}
