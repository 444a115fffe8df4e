# Scenario: XTF, the Xen Test Framework (upstream Xen's own CI suite), run
# with xtf-runner in dom0 against the hypervisor of this boot; one RESULT
# line per test instance, value = its result (SUCCESS, SKIP, FAILURE,
# ERROR, CRASH) and time.  SUCCESS and SKIP pass.
# Selection: one xtf-runner selection per line of /etc/gpu-hostmem/xtf-selection
# (tests/e2e/run's GPU_HOSTMEM_XTF_SELECTION, lines separated by ";"),
# default the CI subset below; "everything" selects every test the build
# produces (all categories).  Instances run a few at a time (GH_XTF_JOBS,
# below).  A test instance whose guest died of a known test-bed fault
# (tests/e2e/classify-failure on `xl dmesg`) runs again, alone, at most
# twice; its RESULT says so.  Tests listed in XTF_TESTBED_LIMITS fail
# identically on the unpatched 4.20.4 hypervisor (docs/e2e.md, "XTF"): they
# are reported with ok=1 and "test-bed limit" in the value, never hidden.
# timeout: 3600
# GH_XTF_TEST_ROOT: tests/e2e/test-xtf-batches runs this script on the host
# with stubs of xtf-runner, xl and the classifier below that directory.
root=${GH_XTF_TEST_ROOT:-}
source "$root/usr/lib/gpu-hostmem/e2e/lib.sh"
xtf=$root/usr/lib/xtf
classify=$root/usr/lib/gpu-hostmem/e2e/classify-failure
map=$root/usr/lib/gpu-hostmem/e2e/xen-System.map
etc=$root/etc/gpu-hostmem
w=${root:-/tmp}
# An instance's time bound. Passing HVM instances took up to 38 s, four at
# once, on a CI machine about three times slower than the one where 40 s
# was chosen; a bound that cuts them fails the run for nothing and, cut in
# the middle of xl's teardown of their guest, leaves it behind (reaped
# below). A real hang costs this bound once per instance (the hvm32pae
# instances, which all hang, are not run by default).
per_test=${GH_XTF_TEST_TIMEOUT:-120}

# The CI subset (issue 16): selftest in every environment; the emulation
# and memory tests; the XSA tests in the HVM environments.
ci_selection=(
    "selftest memop-seg swint-emulation fpu-exception-emulation lm-ts invlpg"
    "xsa hvm"
)
# Instances that fail the same way on unpatched 4.20.4 on this test bed
# (TCG's emulated CPU), from the comparison in docs/e2e.md.
# Compared on 2026-12-04 (docs/e2e.md, "XTF"): every instance of the CI
# subset gave the same result on both hypervisors; these are the ones that
# do not pass on either.
XTF_TESTBED_LIMITS=(
    "hvm32-swint-emulation FAILURE"
    "hvm32pse-swint-emulation FAILURE"
    "hvm64-swint-emulation FAILURE"
    "hvm64-fpu-exception-emulation FAILURE"
    "hvm64-memop-seg FAILURE"
    "hvm64-xsa-308 CRASH"
    "pv64-memop-seg CRASH"
    "pv64-selftest CRASH"
    "hvm32pae-invlpg~hap CRASH"
    "hvm32pae-memop-seg CRASH"
    "hvm32pae-selftest CRASH"
    "hvm32pae-swint-emulation CRASH"
    "hvm32pae-xsa-122 CRASH"
    "hvm32pae-xsa-188 CRASH"
    "hvm32pae-xsa-317 CRASH"
    "hvm32pae-xsa-consoleio-write CRASH"
)

# Environments the CI subset does not boot: every hvm32pae instance hangs
# until its time bound on this test bed, on unpatched 4.20.4 as on ours
# (docs/e2e.md, "XTF"), which would cost 40 s each for nothing.  Each is
# still listed, as "not run".  An explicit selection runs them.
ci_not_run_envs=(hvm32pae)

# (No process substitution here: dom0 has no /dev/fd.)
sels=()
not_run_envs=()
if [ -r "$etc/xtf-selection" ]; then
    tr ';' '\n' <"$etc/xtf-selection" | sed '/^ *$/d' >"$w/xtf-sels"
    mapfile -t sels <"$w/xtf-sels"
else
    sels=("${ci_selection[@]}")
    not_run_envs=("${ci_not_run_envs[@]}")
fi
[ -x "$xtf/xtf-runner" ] || { result xtf-installed 0 "no $xtf/xtf-runner in dom0"; exit 1; }

: >"$w/xtf-list"
for s in "${sels[@]}"; do
    if [ "$s" = everything ]; then
        s="functional xsa special utility in-development"
    fi
    # shellcheck disable=SC2086 # a selection is several words
    (cd "$xtf" && ./xtf-runner --list $s) >>"$w/xtf-list"
done
awk 'NF && !seen[$0]++' "$w/xtf-list" >"$w/xtf-list.u"
mapfile -t list <"$w/xtf-list.u"
echo "xtf: ${#list[@]} test instances: ${list[*]}"
[ "${#list[@]}" -gt 0 ] || { result xtf-selection 0 "empty selection: ${sels[*]}"; exit 1; }

# limit INSTANCE RESULT: the instance is a test-bed limit and failed the way
# it fails on unpatched 4.20.4 (an entry is "instance result", the result
# without its time, e.g. "hvm64-memop-seg FAILURE"; CRASH also matches
# "CRASH(timeout ...)"): any other outcome is a real failure.
limit() {
    local l
    for l in "${XTF_TESTBED_LIMITS[@]}"; do
        [ "${l%% *}" = "$1" ] || continue
        case "$2" in "${l#* }" | "${l#* }("*) return 0 ;; esac
    done
    return 1
}

# run_one INSTANCE: one xtf-runner run of INSTANCE; its result (SUCCESS,
# SKIP, FAILURE, ERROR, CRASH or "CRASH(timeout N s)"), seconds and output
# go to $w/xtf-r/INSTANCE.{res,secs,out}.  Results come from xenconsoled's
# log of the guest (dom0 runs it with --log=guest), not `xl console`: that
# one races with xenconsoled for a PV guest ("Could not read tty from
# store").
run_one() {
    local t=$1 t0 out rc res
    t0=$(gh_now)
    rm -f "$GH_CONSOLE_DIR/guest-$t.log"
    out=$(cd "$xtf" && timeout -k 5 "$per_test" ./xtf-runner --results-mode=logfile \
        --logfile-dir="$GH_CONSOLE_DIR" --logfile-pattern=guest-%s.log "$t" 2>&1)
    rc=$?
    res=$(printf '%s\n' "$out" | awk -v t="$t" '/^Combined test results:/ { on = 1; next } on && $1 == t { r = $2 } END { print r }')
    [ -n "$res" ] || res=CRASH
    [ "$rc" = 124 ] && res="CRASH(timeout ${per_test}s)"
    # Remove what a crashed test left behind (what xl can no longer name
    # is reaped by domid after the batch: reap below).
    xl destroy "$t" >/dev/null 2>&1 || true
    printf '%s\n' "$out" >"$w/xtf-r/$t.out"
    gh_since "$t0" >"$w/xtf-r/$t.secs"
    echo "$res" >"$w/xtf-r/$t.res"
}
passed() { case "$1" in SUCCESS | SKIP) return 0 ;; esac; return 1; }

# reap WHAT: no guest of WHAT (a batch or an instance, all its runners
# ended) may outlive it; one that did (a runner cut by its bound while xl
# tore its guest down leaves it nameless, "(null)", which `xl destroy NAME`
# cannot reach) is destroyed by domid and named in the log. The instance
# that left it did not pass (its runner was cut), so this hides no result;
# it keeps the guest's memory from the next instances and scenarios.
reap() {
    local left
    left=$(gh_reap_domains "${GH_XTF_REAP_SECS:-20}") || echo "xtf: $1 left domains behind: $left"
}

# report INSTANCE NOTE: its RESULT line.
n_ok=0
n_bad=0
report() {
    local t=$1 res ok
    res=$(cat "$w/xtf-r/$t.res")
    if passed "$res"; then
        ok=1
    else
        # Show what the test printed, for the log.
        tail -n 25 "$w/xtf-r/$t.out" | sed "s/^/[$t] /"
        if limit "${t#test-}" "$res"; then ok=1; res="$res (test-bed limit, same on unpatched 4.20.4)"; else ok=0; fi
    fi
    result "xtf-$t" "$ok" "$res,$(cat "$w/xtf-r/$t.secs")s$2"
    if [ "$ok" = 1 ]; then n_ok=$((n_ok + 1)); else n_bad=$((n_bad + 1)); fi
}

# signatures: the test bed's known faults (tests/e2e/classify-failure) in
# Xen's log since the last `xl dmesg -c`, one per line.
signatures() {
    xl dmesg >"$w/xtf-dmesg" 2>&1 || true
    "$classify" --map "$map" --list "$w/xtf-dmesg" || true
}

# alone INSTANCE NOTE: run INSTANCE by itself; a guest that died of a known
# test-bed fault (it is the only guest, so the fault is its own) runs
# again, at most twice.
alone() {
    local t=$1 lost=$2 tries=0 sig letter
    while :; do
        xl dmesg -c >/dev/null 2>&1 || true
        run_one "$t"
        reap "$t"
        passed "$(cat "$w/xtf-r/$t.res")" && break
        sig=$(signatures)
        [ -n "$sig" ] && [ "$tries" -lt 2 ] || break
        tries=$((tries + 1))
        letter=$(echo "$sig" | head -n1 | cut -d' ' -f1)
        lost="$lost,lost to test-bed fault $letter ($(echo "$sig" | head -n1 | cut -d' ' -f2-))"
        echo "xtf: $t: guest lost to signature $letter, running it again"
    done
    report "$t" "$lost"
}

# Instances run $jobs at a time (GH_XTF_JOBS, default 4): most of an HVM
# instance's 5 s is libxl starting QEMU twice (its command-line probe, then
# the device model) and tearing it down, which overlaps well (four HVM
# instances at once took 10.2 s, one alone 5.7 s).  A batch in
# which an instance did not pass and Xen's log shows a known test-bed fault
# cannot say whose guest the fault took: every instance of the batch that
# did not pass then runs again alone (above), where its result is its own,
# and its RESULT says "batch lost a guest to X".  With no known fault in
# the batch, a result is final, as it is alone.
jobs=${GH_XTF_JOBS:-4}
rm -rf "$w/xtf-r"
mkdir -p "$w/xtf-r"
run=()
for t in "${list[@]}"; do
    skip=
    for e in "${not_run_envs[@]}"; do
        case "$t" in "test-$e-"*) skip=$e ;; esac
    done
    if [ -n "$skip" ]; then
        result "xtf-$t" 1 "not run (every $skip instance hangs on this test bed, unpatched 4.20.4 too)"
        n_ok=$((n_ok + 1))
    else
        run+=("$t")
    fi
done
t_all=$(gh_now)
i=0
while [ "$i" -lt "${#run[@]}" ]; do
    batch=("${run[@]:i:jobs}")
    i=$((i + ${#batch[@]}))
    xl dmesg -c >/dev/null 2>&1 || true
    for t in "${batch[@]}"; do
        run_one "$t" &
    done
    wait
    reap "batch ${batch[*]}"
    again=()
    for t in "${batch[@]}"; do
        passed "$(cat "$w/xtf-r/$t.res")" || again+=("$t")
    done
    sig=
    [ "${#again[@]}" = 0 ] || sig=$(signatures)
    if [ -z "$sig" ]; then
        for t in "${batch[@]}"; do report "$t" ""; done
        continue
    fi
    letter=$(echo "$sig" | head -n1 | cut -d' ' -f1)
    echo "xtf: batch ${batch[*]}: a guest was lost to signature $letter; running ${again[*]} again, alone"
    for t in "${batch[@]}"; do
        case " ${again[*]} " in
        *" $t "*) alone "$t" ",batch lost a guest to test-bed fault $letter ($(echo "$sig" | head -n1 | cut -d' ' -f2-)), run again alone" ;;
        *) report "$t" "" ;;
        esac
    done
done
result xtf-summary "$([ "$n_bad" = 0 ] && echo 1 || echo 0)" \
    "instances=${#list[@]},ok=$n_ok,failed=$n_bad,xen=$(cat "$etc/xen-version" 2>/dev/null),$(gh_since "$t_all")s"
exit "$GH_FAILED"
