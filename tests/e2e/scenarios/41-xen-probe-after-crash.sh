#!/usr/bin/env bash
# Scenario (stress, not in CI): 40's probe-guest loss, in a loop.
#
# Four times (docs/testbed-fault.md, "A fresh PVH guest running Xen's
# scrub pattern") 40's probe guest P died at its first instructions, each
# time right after 40 had crashed another guest of the same image on
# purpose (a RETRY answer from a server that did not opt in: `Weird HVM
# iorequest state 4`, domain_crash from common/ioreq.c).  Two explanations
# fit: a nested translation of the destroyed guest kept by the emulator,
# or a page of the crashed guest freed twice in its teardown (a Xen bug).
#
# Each round creates a guest B of 40's image, ends it, creates P (the same
# image, on_crash = "preserve"), lets it run 3 s, and checks that P is
# alive, that its loop ran and that its code page holds its image
# (xen-lend-test --inspect, through dom0's foreign mapping, also after a
# death).  Rounds alternate how B ends:
#   crash  B's first emulated read answered RETRY by a server that did not
#          opt in (40's xen-retry-not-opted-in): B crashes in ioreq
#          completion, on_crash = "destroy";
#   clean  B runs its loop (reads answered by Xen, no server) and is
#          destroyed by `xl destroy`.
# If only crash rounds lose P, the crash's teardown is the suspect; if both
# do, the emulator.  Boot Xen with GPU_HOSTMEM_XEN_CMDLINE_EXTRA=asid=0 (a
# TLB flush on every VMRUN) to test the emulator's explanation.
# Rounds: /etc/gpu-hostmem/boot-loop-count if present, else 20.
# timeout: 1800
set -u
source /usr/lib/gpu-hostmem/e2e/lib.sh || exit 1
log() { printf '[41-probe-after-crash] %s\n' "$*" >&2; }

name=pac-$$
work=$(mktemp -d /tmp/pac.XXXXXX)
cleanup() {
    xl destroy "$name-b" >/dev/null 2>&1
    xl destroy "$name-p" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

bin=$(command -v xen-lend-test || true)
for p in /usr/local/bin/xen-lend-test /opt/gpu-hostmem/bin/xen-lend-test /root/xen-lend-test; do
    [ -n "$bin" ] || { [ -x "$p" ] && bin=$p; }
done
[ -n "$bin" ] || { result probe-after-crash 0 test-binary-not-installed; exit 1; }
"$bin" --write-guest "$work/guest.elf" || { result probe-after-crash 0 cannot-write-guest; exit 1; }

n=20
[ -r /etc/gpu-hostmem/boot-loop-count ] && n=$(cat /etc/gpu-hostmem/boot-loop-count)
xen_cmdline=$(xl info 2>/dev/null | sed -n 's/^xen_commandline *: *//p')
log "rounds=$n xen_cmdline=$xen_cmdline"

for g in b p; do
    crash=destroy
    [ $g = p ] && crash=preserve
    cat >"$work/guest-$g.cfg" <<EOF
name = "$name-$g"
type = "pvh"
kernel = "$work/guest.elf"
memory = 128
vcpus = 1
on_crash = "$crash"
EOF
done

declare -A rounds=([crash]=0 [clean]=0) lost=([crash]=0 [clean]=0)
setup_fail=0
for i in $(seq 1 "$n"); do
    kind=crash
    [ $((i % 2)) = 0 ] && kind=clean
    xl dmesg -c >/dev/null 2>&1
    if ! timeout 120 xl create "$work/guest-b.cfg" >"$work/create-b.log" 2>&1; then
        log "round $i: B not created"; sed 's/^/    | /' "$work/create-b.log" >&2
        setup_fail=$((setup_fail + 1)); continue
    fi
    b=$(xl domid "$name-b" 2>/dev/null)
    sleep 1
    if [ $kind = crash ]; then
        out=$("$bin" --dom "$b" --no-opt-in 2>&1)
        # B must have crashed (40 checks that); a B lost otherwise is no
        # round of this experiment.
        if ! printf '%s\n' "$out" | grep -q 'name=retry-not-opted-in ok=1'; then
            log "round $i: B (d$b) did not crash as expected: $out"
            setup_fail=$((setup_fail + 1))
        fi
    fi
    xl destroy "$name-b" >/dev/null 2>&1
    for _ in $(seq 1 50); do xl domid "$name-b" >/dev/null 2>&1 || break; sleep 0.1; done
    if ! timeout 120 xl create "$work/guest-p.cfg" >"$work/create-p.log" 2>&1; then
        log "round $i: P not created"; sed 's/^/    | /' "$work/create-p.log" >&2
        setup_fail=$((setup_fail + 1)); continue
    fi
    p=$(xl domid "$name-p" 2>/dev/null)
    rounds[$kind]=$((rounds[$kind] + 1))
    sleep 3
    state=$(xl list "$name-p" 2>/dev/null | awk 'NR == 2 { print $5 }')
    insp=$("$bin" --dom "$p" --inspect 2>&1 | grep '^INSPECT' || true)
    counter=$(printf '%s\n' "$insp" | sed -n 's/.* counter=\([0-9]*\).*/\1/p')
    if [[ "$state" == *c* ]] || ! printf '%s\n' "$insp" | grep -q 'code=intact' ||
        [ "${counter:-0}" = 0 ]; then
        lost[$kind]=$((lost[$kind] + 1))
        echo "round $i ($kind, B d$b, P d$p): P LOST state=$state $insp"
        xl dmesg | grep -E "d$p|Triple|MMIO emulation|\(XEN\) +[re][a-z]{2}:" | tail -n 30 | sed 's/^/    xen| /'
    else
        echo "round $i ($kind, B d$b, P d$p): ok $insp"
    fi
    xl destroy "$name-p" >/dev/null 2>&1
    for _ in $(seq 1 50); do xl domid "$name-p" >/dev/null 2>&1 || break; sleep 0.1; done
done

ok=1
[ "${lost[crash]}" = 0 ] && [ "${lost[clean]}" = 0 ] && [ "$setup_fail" = 0 ] || ok=0
result probe-after-crash "$ok" \
    "crash_rounds=${rounds[crash]},crash_lost=${lost[crash]},clean_rounds=${rounds[clean]},clean_lost=${lost[clean]},setup_failures=$setup_fail,xen=$(cat /etc/gpu-hostmem/xen-version)"
[ "$ok" = 1 ]
