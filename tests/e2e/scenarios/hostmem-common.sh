# shellcheck shell=bash
# Helpers of the 60-hostmem-* and 80-bench-* scenarios (sourced, not a
# scenario: tests/e2e/run only runs files named NN-*.sh). They run in the test
# bed's dom0 with the whole feature installed: patched Xen, patched privcmd,
# patched xl/libxl, the real plugin, gpu-hostmem-ioreqd and the CLI.
#
# Conventions: RESULT lines (tests/e2e/dom0/lib.sh); everything a scenario
# starts is stopped on exit whatever happened.

# shellcheck source=/dev/null
source /usr/lib/gpu-hostmem/e2e/lib.sh

HM_VENDOR=0x1af4
HM_DEVICE=0x10f0
HM_PLUGIN=/usr/lib/xen/gpu-hostmem/libgpu_hostmem_plugin.so
HM_IOREQD=/usr/lib/xen/gpu-hostmem/gpu-hostmem-ioreqd
HM_BACKEND_PIDS=()
HM_GUESTS=()

hm_cleanup() {
    local p g
    for p in "${HM_BACKEND_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for g in "${HM_GUESTS[@]}"; do timeout 60 xl destroy "$g" >/dev/null 2>&1 || true; done
}
trap hm_cleanup EXIT

# hm_install: the IOREQ server at the path the plugin runs it from (the test
# bed's overlay puts the Rust binaries in /usr/lib/gpu-hostmem/bin).
hm_install() {
    local src
    if [ ! -x "$HM_IOREQD" ]; then
        src=$(command -v gpu-hostmem-ioreqd || true)
        [ -n "$src" ] && { mkdir -p "$(dirname "$HM_IOREQD")"; cp "$(readlink -f "$src")" "$HM_IOREQD"; }
    fi
    check hm-installed "plugin+ioreqd+cli" \
        test -f "$HM_PLUGIN" -a -x "$HM_IOREQD" -a -n "$(command -v gpu-hostmem)" -a -n "$(command -v hostmem-backend)"
    [ -e /sys/module/xen_privcmd/parameters/hostmem_max_regions ] ||
        result hm-patched-privcmd 0 "stock-privcmd"
    return "$GH_FAILED"
}

# hm_guest_create NAME RUN [XL.CFG LINE...]: xl create -p an HVM guest with
# gpu_hostmem = 1 running RUN (gh.run syntax); prints its domid.
hm_guest_create() {
    local name=$1 run=$2
    shift 2
    gh_guest_cfg "$name" hvm "$run" "gpu_hostmem = 1" "gpu_hostmem_size = ${HM_BAR_MIB:-64}" "$@" >/dev/null
    # The guest kernel's early messages (earlyprintk=xen, from gh_guest_cfg:
    # warnings and worse; all of them with HM_GUEST_DEBUG=1) also go to
    # Xen's console (port 0xe9, "(dN)" lines on the serial), for a guest
    # that never reaches its own console.
    [ "${HM_GUEST_DEBUG:-0}" = 1 ] && sed -i 's/ quiet loglevel=4 / loglevel=7 /' "/tmp/$name.cfg"
    rm -f "$GH_CONSOLE_DIR/guest-$name.log"
    HM_GUESTS+=("$name")
    if ! timeout 120 xl create -p "/tmp/$name.cfg" >"/tmp/$name.create" 2>&1; then
        sed "s/^/[xl create $name] /" "/tmp/$name.create" >&2
        return 1
    fi
    xl domid "$name"
}

# hm_backend DOMID OUT REGION...: start examples/hostmem-backend for DOMID
# with regions OFFSET:SIZE, output to OUT; waits for READY. Sets HM_BPID.
# The guest instance it registers for is the unique id ioreqd recorded.
hm_backend() {
    local dom=$1 out=$2 i uid
    shift 2
    local args=()
    for r in "$@"; do args+=(-r "$r"); done
    uid=$(xenstore-read "/local/domain/0/gpu-hostmem/$dom/unique-id" 2>/dev/null)
    if [ -z "$uid" ]; then
        echo "[backend] no unique-id in dom$dom's gpu-hostmem record" >&2
        return 1
    fi
    # HM_BACKEND_USER: run it as a backend should run, through `gpu-hostmem
    # backend`: as that user, with a privcmd fd narrowed to registering
    # memory for the guest (kernel-patches 0008) and the unique id given.
    if [ -n "${HM_BACKEND_USER:-}" ]; then
        gpu-hostmem backend "$dom" --user "$HM_BACKEND_USER" -- \
            hostmem-backend -d "$dom" "${args[@]}" >"$out" 2>&1 &
    else
        hostmem-backend -d "$dom" -u "$uid" "${args[@]}" >"$out" 2>&1 &
    fi
    HM_BPID=$!
    HM_BACKEND_PIDS+=("$HM_BPID")
    for i in $(seq 1 100); do
        grep -q '^READY' "$out" && return 0
        kill -0 "$HM_BPID" 2>/dev/null || break
        sleep 0.1
    done
    sed 's/^/[backend] /' "$out"
    return 1
}

# hm_backend_report PID OUT: SIGUSR1, wait for the report, print it.
hm_backend_report() {
    local pid=$1 out=$2 n
    n=$(grep -c 'RESULT name=backend-sees' "$out" || true)
    kill -USR1 "$pid"
    for _ in $(seq 1 50); do
        [ "$(grep -c 'RESULT name=backend-sees' "$out" || true)" -gt "$n" ] && break
        sleep 0.1
    done
    sleep 0.3
}

# hm_status_json DOMID: `gpu-hostmem status DOMID --json` (read with hm_field:
# dom0 has no JSON tool, the keys we read are unique in the document).
hm_status_json() { gpu-hostmem status "$1" --json 2>/dev/null; }

# hm_field JSON KEY: first value of "KEY": in a JSON document.
hm_field() {
    printf '%s' "$1" | tr -d '\n' | grep -o "\"$2\": *[^,}]*" | head -n1 | sed 's/^[^:]*: *//; s/"//g; s/ *$//'
}

# hm_worker SUPERVISOR_PID: the pid of gpu-hostmem-ioreqd's worker (the
# server itself, a child of the supervisor the record names).
hm_worker() { pgrep -P "$1" -f gpu-hostmem-ioreqd | head -n1; }

# hm_sandboxed PID: the process runs as nobody (uid 65534, no supplementary
# groups), with no effective capability and a seccomp filter (issue 19),
# and no Xen handle it holds reaches beyond its guest: a dom0 hypercall
# through each of its privcmd fds and a dom0 event channel through its
# evtchn fd are refused, and it holds no xenstore connection (dom0's would
# let it rewrite any node): tests/kernel/fd-privilege.c, through the
# process's own open files.
# The worker drops before it publishes `running`; a worker that was just
# restarted gets a few seconds.
hm_sandboxed() {
    hm_sandboxed_ids "$1" || return 1
    fd-privilege "$1" | sed "s/^/[fd-privilege $1] /"
    [ "${PIPESTATUS[0]}" = 0 ]
}
hm_sandboxed_ids() {
    local st=/proc/$1/status ok=1
    for _ in $(seq 1 50); do
        [ -r "$st" ] || { echo "no $st"; return 1; }
        grep -qE '^Uid:\s+65534\s+65534\s+65534\s+65534\s*$' "$st" &&
            grep -qE '^CapEff:\s+0+$' "$st" &&
            grep -qE '^Groups:\s*$' "$st" &&
            grep -qE '^Seccomp:\s+2$' "$st" && { ok=0; break; }
        sleep 0.1
    done
    grep -E '^(Uid|Gid|Groups|CapEff|NoNewPrivs|Seccomp):' "$st" | tr '\t' ' ' | sed "s/^/[pid $1] /"
    return "$ok"
}

# hm_ioreqd_log DOMID: show the IOREQ server's log.
hm_ioreqd_log() {
    local f=/var/log/xen/gpu-hostmem-$1.log
    [ -f "$f" ] && tail -n "${2:-40}" "$f" | sed "s/^/[ioreqd $1] /"
}

# hm_gone DOMID PID: after destroy: no domain, no ioreqd, no xenstore keys,
# no pages lent (kernel's query through the CLI).
hm_gone() {
    local dom=$1 pid=$2 j lent bad=0
    gh_clean "$dom" || bad=1
    if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
        echo "ioreqd $pid still running"; bad=1
    fi
    if pgrep -f "gpu-hostmem-ioreqd.*--domid $dom( |$)" >/dev/null; then
        echo "a gpu-hostmem-ioreqd is still running:"; pgrep -a -f gpu-hostmem-ioreqd; bad=1
    fi
    if xenstore-exists "/local/domain/0/gpu-hostmem/$dom" 2>/dev/null; then
        echo "xenstore still has /local/domain/0/gpu-hostmem/$dom"; bad=1
    fi
    # The kernel's own count, which must be answered: an unanswered query
    # (no "kernel" object: the CLI or privcmd failed) proves nothing.
    j=$(hm_status_json "$dom")
    lent=$(printf '%s' "$j" | tr -d '\n' | sed -n 's/.*"kernel": *{ *"lent_pages": *\([0-9]*\).*/\1/p')
    if [ -z "$lent" ]; then
        echo "no kernel count of pages lent to domain $dom: gpu-hostmem status --json said: $(printf '%s' "$j" | tr -d '\n' | cut -c1-300)"; bad=1
    elif [ "$lent" != 0 ]; then
        echo "the kernel still counts $lent page(s) lent to domain $dom"; bad=1
    fi
    return "$bad"
}

# hm_wait_marker NAME REGEX TIMEOUT: wait until the guest's console (the
# xenconsoled log) has a line matching REGEX; relays new lines as it goes.
hm_wait_marker() {
    local name=$1 re=$2 tmo=$3 log=$GH_CONSOLE_DIR/guest-$1.log end
    end=$(($(date +%s) + tmo))
    while [ "$(date +%s)" -lt "$end" ]; do
        [ -f "$log" ] && tr -d '\r' <"$log" | grep -q -- "$re" && return 0
        xl domid "$name" >/dev/null 2>&1 || return 1
        sleep 0.5
    done
    # The domain and the console so far, for tests/e2e/classify-failure
    # (signature C: a guest hung in its kernel's first boot steps).
    echo "still waiting for $name: $(xl list "$name" 2>&1 | tail -n1)"
    echo "guest $name did not print its marker ($re) within $tmo s"
    hm_console "$name"
    return 1
}

# hm_loop_rounds NAME: the guest's "guest: loop round" lines so far.
hm_loop_rounds() {
    tr -d '\r' <"$GH_CONSOLE_DIR/guest-$1.log" 2>/dev/null | grep -c '^guest: loop round' || true
}

# hm_loopcheck_done NAME TIMEOUT: wait (at most TIMEOUT s) for the guest's
# `hostmem-guest loopcheck` to finish (NAME-guest-run, diagnostics if it
# does not), then check that it read every value right
# (NAME-guest-every-value-right, the guest's exit status as its value).
# The loop runs for its time bound at most; once the guest has printed two
# more progress lines than when this was called (it still reads, and
# checks, after everything the scenario did), dom0 tells it to stop
# (gh_guest_say), so that the scenario does not wait out the bound.
hm_loopcheck_done() {
    local name=$1 tmo=$2 t grc r0 r
    t=$(gh_now)
    r0=$(hm_loop_rounds "$name")
    for _ in $(seq 1 60); do
        r=$(hm_loop_rounds "$name")
        [ "$r" -ge $((r0 + 2)) ] && break
        xl domid "$name" >/dev/null 2>&1 || break
        sleep 0.5
    done
    if [ "$r" -ge $((r0 + 2)) ] && gh_guest_say "$name" gh-stop; then
        echo "told $name to stop its loop (progress lines $r0 -> $r)"
    fi
    if gh_guest_wait "$name" "$tmo"; then
        result "$name-guest-run" 1 "$(gh_since "$t")s"
    else
        result "$name-guest-run" 0 "$(gh_since "$t")s"
        hm_diag "$name" "$HM_DOM"
    fi
    grep '^RESULT name=guest-loopcheck' "/tmp/$name.out" || true
    grc=$(sed -n 's/^GH-GUEST-DONE rc=\([0-9]*\).*/\1/p' "/tmp/$name.out" | tail -n1)
    check "$name-guest-every-value-right" "rc=${grc:-none}" \
        grep -q '^RESULT name=guest-loopcheck ok=1' "/tmp/$name.out"
}

# hm_console NAME: the guest's console so far, prefixed.
hm_console() {
    local log=$GH_CONSOLE_DIR/guest-$1.log
    [ -f "$log" ] && tr -d '\r' <"$log" | sed "s/^/[$1] /"
}

# hm_counter DOMID KEY: one counter of the IOREQ server (0 if unreachable).
hm_counter() {
    local v
    v=$(hm_field "$(hm_status_json "$1")" "$2")
    case "$v" in '' | *[!0-9]*) echo 0 ;; *) echo "$v" ;; esac
}

# hm_kernel_lent DOMID: pages lent to DOMID according to the kernel (via the
# CLI's privcmd query); empty if the query failed.
hm_kernel_lent() {
    hm_status_json "$1" | tr -d '\n' | sed -n 's/.*"kernel": *{ *"lent_pages": *\([0-9]*\).*/\1/p'
}

# hm_kernel_regions DOMID: registrations the kernel holds for DOMID.
hm_kernel_regions() {
    gpu-hostmem status "$1" 2>/dev/null | awk '/^kernel/ { s = 1 } s && /^  registrations/ { print $2; exit }'
}

# hm_pfnmap_dmabufs PID [MIN_KIB]: how many of PID's mappings of a dma-buf
# (of at least MIN_KIB) are VM_PFNMAP ("pf" in smaps' VmFlags), what
# privcmd lends since kernel-patches 0009; empty if PID's smaps is
# unreadable.
hm_pfnmap_dmabufs() {
    awk -v kib="${2:-0}" '
        /^[0-9a-f]+-[0-9a-f]+ / { dmabuf = ($0 ~ /dmabuf/); big = 0; next }
        /^Size:/ { big = ($2 >= kib) }
        /^VmFlags:/ && dmabuf && big && / pf( |$)/ { n++ }
        END { print n + 0 }' "/proc/$1/smaps" 2>/dev/null
}

# hm_server_view STATUS_TEXT: "REGISTRATIONS LEDGER KERNEL" as the IOREQ
# server reports them in one `gpu-hostmem status DOMID` text: the
# registrations it lists and its "lent pages L (ledger), K (kernel)" line
# (it asks the kernel for both). Empty fields if the server did not answer.
hm_server_view() {
    local regs lent
    regs=$(printf '%s\n' "$1" | awk '/^IOREQ server:/ { s = 1 } /^kernel/ { s = 0 } s && /^  registrations/ { print $2; exit }')
    lent=$(printf '%s\n' "$1" | sed -n 's/^  lent pages  \([0-9]*\) (ledger), \([0-9]*\) (kernel)$/\1 \2/p' | head -n1)
    echo "$regs $lent"
}

# hm_vg_after_unref PREFIX NAME DOMID T0 RESULT...: the checks of a
# virtio-gpu blob scenario once guest NAME has unreferenced its blob (its
# GH-VG-BLOB-UNREF line, within 120 s): nothing registered or lent, in the
# kernel and in the IOREQ server's own view (it asks the kernel), the
# device model holding no blob; then the guest's run (T0: gh_now at its
# start) and its own RESULT lines, each as PREFIX-guest-RESULT.
hm_vg_after_unref() {
    local p=$1 name=$2 dom=$3 t=$4 st model regs lent view out r
    shift 4
    if hm_wait_marker "$name" '^GH-VG-BLOB-UNREF' 120; then
        sleep 1
        echo "---- gpu-hostmem status $dom (blob unreferenced)"
        st=$(gpu-hostmem status "$dom" 2>&1)
        printf '%s\n' "$st" | sed 's/^/[status unref] /'
        model=$(printf '%s\n' "$st" | sed -n 's/^ *model *//p' | head -n1)
        regs=$(hm_kernel_regions "$dom")
        lent=$(hm_kernel_lent "$dom")
        check "$p-unregistered" "regions=${regs:-none},lent=${lent:-none}" [ "${regs:-1}" = 0 -a "${lent:-1}" = 0 ]
        # Before the server asked the kernel, it kept the blob's
        # registration and 16 ledger pages here.
        view=$(hm_server_view "$st")
        check "$p-server-unregistered" "registrations ledger kernel: $view" [ "$view" = "0 0 0" ]
        check "$p-model-unref" "$model" sh -c "printf '%s' '$model' | grep -qE 'blobs 0 \\(0 bytes\\), mapped 0 \\(0 bytes\\), submits [0-9]+ \\([0-9]+ bytes\\), renderer errors 0'"
    else
        result "$p-guest-unref" 0 "no GH-VG-BLOB-UNREF"
    fi
    if gh_guest_wait "$name" "${HM_GUEST_WAIT:-900}"; then
        result "$p-guest-run" 1 "$(gh_since "$t")s"
    else
        result "$p-guest-run" 0 "$(gh_since "$t")s"
        hm_diag "$name" "$dom"
    fi
    out=/tmp/$name.out
    grep '^KLOG' "$out" | sed 's/^/[guest klog] /'
    for r in "$@"; do
        check "$p-$r" "$(grep "^RESULT name=$r " "$out" | tail -n1 | sed 's/.* value=//')" gh_guest_result "$name" "$r"
    done
}

# hm_device_config PREFIX CONTENT WHAT EXPECT: /etc/xen/gpu-hostmem.yaml is
# CONTENT (printf %b: "\n" is a newline) for this scenario; the file there
# before comes back at exit (then hm_cleanup runs). RESULT PREFIX-config,
# value WHAT: `gpu-hostmem check-config` says EXPECT.
hm_device_config() {
    HM_CFG=/etc/xen/gpu-hostmem.yaml
    HM_CFG_SAVED=/tmp/gpu-hostmem.yaml.saved-$1
    [ -e "$HM_CFG" ] && cp "$HM_CFG" "$HM_CFG_SAVED"
    trap hm_restore_config EXIT
    mkdir -p /etc/xen
    printf '%b' "$2" >"$HM_CFG"
    check "$1-config" "$3" sh -c "gpu-hostmem check-config '$HM_CFG' | grep -q '$4'"
}

hm_restore_config() {
    if [ -e "$HM_CFG_SAVED" ]; then mv "$HM_CFG_SAVED" "$HM_CFG"; else rm -f "$HM_CFG"; fi
    hm_cleanup
}

# hm_create PREFIX NAME RUN: xl create -p the guest NAME running RUN, its
# IOREQ server running (RESULT PREFIX-create, PREFIX-ioreqd-running). Sets
# HM_DOM, HM_XSDIR (its gpu-hostmem record), HM_IPID (the supervisor) and
# HM_WPID (the worker). Returns non-zero if the guest was not created.
hm_create() {
    local prefix=$1 name=$2 run=$3 t
    t=$(gh_now)
    # hm_guest_create runs in a subshell here: record the guest for
    # hm_cleanup in this shell, or a scenario that exits early leaves it
    # running for the next scenario's gh_clean to trip over.
    HM_GUESTS+=("$name")
    if ! HM_DOM=$(hm_guest_create "$name" "$run"); then
        result "$prefix-create" 0 "xl-create-failed"
        return 1
    fi
    result "$prefix-create" 1 "domid=$HM_DOM,$(gh_since "$t")s"
    HM_XSDIR=/local/domain/0/gpu-hostmem/$HM_DOM
    HM_IPID=$(xenstore-read "$HM_XSDIR/pid" 2>/dev/null || true)
    check "$prefix-ioreqd-running" "pid=$HM_IPID" test -n "$HM_IPID" -a -d "/proc/$HM_IPID"
    HM_WPID=$(hm_worker "$HM_IPID")
}

# hm_start NAME RUN REGION...: the common start: install check, xl create -p,
# ioreqd running (hm_create, RESULT names prefixed with NAME), backend
# registered, xl unpause. Sets what hm_create sets, HM_BPID and HM_BOUT.
# Returns non-zero (with RESULT lines) on failure.
hm_start() {
    local name=$1 run=$2
    shift 2
    hm_install || return 1
    hm_create "$name" "$name" "$run" || return 1
    HM_BOUT=/tmp/$name.backend
    if [ $# -gt 0 ]; then
        if ! hm_backend "$HM_DOM" "$HM_BOUT" "$@"; then
            result "$name-backend-ready" 0 "backend-not-ready"
            return 1
        fi
        result "$name-backend-ready" 1 "pid=$HM_BPID"
    fi
    xl unpause "$name"
}

# hm_destroy_clean NAME: xl destroy, then everything gone (RESULT lines).
hm_destroy_clean() {
    local name=$1 t
    t=$(gh_now)
    if gh_guest_destroy "$name" && gh_wait_gone "$name" 60; then
        result "$name-destroy" 1 "$(gh_since "$t")s"
    else
        result "$name-destroy" 0 "$(gh_since "$t")s"
    fi
    for _ in $(seq 1 20); do [ -n "$HM_IPID" ] && [ -d "/proc/$HM_IPID" ] || break; sleep 0.5; done
    check "$name-clean" "domid=$HM_DOM" hm_gone "$HM_DOM" "$HM_IPID"
}

# hm_diag NAME DOMID: what to look at when the guest did not finish.
hm_diag() {
    echo "---- diagnostics for $1 (domain $2)"
    xl list 2>&1 | sed 's/^/[xl list] /'
    pgrep -a xenconsoled | sed 's/^/[xenconsoled] /'
    ls -la "$GH_CONSOLE_DIR" 2>&1 | sed 's/^/[console dir] /'
    gpu-hostmem status "$2" 2>&1 | sed 's/^/[status] /'
    hm_ioreqd_log "$2" 60
    xl vcpu-list "$1" 2>&1 | sed 's/^/[vcpu] /'
    echo "----"
}
