# shellcheck shell=bash
# Helpers for scenario scripts, run in the test bed's dom0.  A scenario
# sources this file (source /usr/lib/gpu-hostmem/e2e/lib.sh), prints RESULT
# lines and exits non-zero on failure.  A scenario passes when it exits 0 and
# no RESULT line in its output (its own or a guest's) says ok=0.

GH_GUEST_DIR=/usr/lib/gpu-hostmem/guest
GH_CONSOLE_DIR=/var/log/xen/console
GH_FAILED=0

# result NAME OK [VALUE]: one machine-readable verdict, OK is 1, 0 or skip.
# The only printer of RESULT lines in dom0 (every scenario and helper
# library uses it; tests/e2e/run reads them). Whitespace in VALUE becomes
# "_" so that a line stays one "key=value" list. Any OK but 1 or skip sets
# GH_FAILED.
result() {
    local v=${3:-}
    v=${v//[[:space:]]/_}
    echo "RESULT name=$1 ok=$2 value=$v"
    case $2 in 1 | skip) ;; *) GH_FAILED=1 ;; esac
}

# check NAME VALUE CMD...: run CMD, record ok=1 if it succeeds.
check() {
    local n=$1 v=$2
    shift 2
    if "$@"; then result "$n" 1 "$v"; else result "$n" 0 "$v"; fi
}

# gh_now: seconds since boot, with a fraction.
gh_now() { cut -d' ' -f1 /proc/uptime; }
gh_since() { awk -v a="$1" -v b="$(gh_now)" 'BEGIN { printf "%.1f", b - a }'; }

# gh_guest_cfg NAME TYPE RUN [XL.CFG LINE...]: write /tmp/NAME.cfg for a
# test guest of TYPE hvm or pvh, booting the test kernel and initramfs and
# running RUN (gh.run syntax: PROG[,ARG...]). The guest stays up after RUN
# (gh.hold=1) until destroyed. Extra lines are appended to the config.
# GH_GUEST_INITRD: the initramfs in $GH_GUEST_DIR (default initrd.gz, the
# busybox guest; initrd-vk.gz adds the Vulkan root in a boot with a -vk
# scenario, tests/e2e/run).
# GH_GUEST_CMDLINE_EXTRA: words added to the guest kernel's command line
# (default: /etc/gpu-hostmem/guest-cmdline-extra, from tests/e2e/run's
# GPU_HOSTMEM_GUEST_CMDLINE_EXTRA).
gh_guest_cfg() {
    local name=$1 type=$2 run=$3 cfg=/tmp/$1.cfg extra
    shift 3
    extra=${GH_GUEST_CMDLINE_EXTRA-$(cat /etc/gpu-hostmem/guest-cmdline-extra 2>/dev/null)}
    extra=${extra:+$extra }
    {
        echo "name = \"$name\""
        echo "memory = ${GH_GUEST_MEMORY:-256}"
        echo "vcpus = ${GH_GUEST_VCPUS:-1}"
        echo "kernel = \"$GH_GUEST_DIR/vmlinuz\""
        echo "ramdisk = \"$GH_GUEST_DIR/${GH_GUEST_INITRD:-initrd.gz}\""
        echo 'on_poweroff = "destroy"'
        # A guest that dies (a triple fault is a reboot to Xen) is kept for
        # dom0's post-mortem watcher, which looks at it and destroys it
        # (gh_postmortem_running); without the watcher, destroyed at once.
        if gh_postmortem_running; then
            echo 'on_reboot = "preserve"'
            echo 'on_crash = "preserve"'
        else
            echo 'on_reboot = "destroy"'
            echo 'on_crash = "destroy"'
        fi
        # No RDTSC exits: the emulated CPU has no invariant TSC, so Xen
        # would emulate the guest's TSC, and the test bed's nested SVM
        # (docs/status.md, "Test-bed bug") kills guests right after such
        # exits. Not something gpu-hostmem depends on either way.
        echo "tsc_mode = \"${GH_GUEST_TSC_MODE:-native}\""
        case "$type" in
        hvm)
            echo 'type = "hvm"'
            echo 'device_model_version = "qemu-xen"'
            echo 'vga = "none"'
            echo 'serial = "none"'
            # No PV keyboard (QEMU's vkbd backend, for a VNC console the
            # test guests do not have): libxl's teardown of that device
            # waits about 2 s after it signals the device model, so
            # xl destroy took 3.0-3.3 s with it against 0.9-1.1 s without
            # (docs/history.md, session 19). GH_GUEST_VKB=1 keeps xl's
            # default device set (10-hvm-guest and 60-hostmem-happy).
            [ "${GH_GUEST_VKB:-0}" = 1 ] || echo 'vkb_device = 0'
            # pci=noearly: no early PCI scans. On this AMD CPU model the
            # kernel probes for a GART aperture twice early in setup_arch,
            # one config read per bus and slot through ports cf8/cfc, each
            # an exit: 10 of the 18 s a test guest took to boot under the
            # nested emulator (initcall_debug). The guest's PCI enumeration,
            # which finds our function, comes later and is unchanged.
            echo "cmdline = \"console=hvc0 earlyprintk=xen iomem=relaxed xen_emul_unplug=never pci=noearly quiet loglevel=4 ${extra}gh.hold=1 gh.run=$run\""
            ;;
        pvh)
            echo 'type = "pvh"'
            echo "cmdline = \"console=hvc0 quiet loglevel=4 ${extra}gh.hold=1 gh.run=$run\""
            ;;
        *) echo "gh_guest_cfg: unknown type $type" >&2; return 1 ;;
        esac
        local l
        for l in "$@"; do echo "$l"; done
        # Debugging aid (tests/e2e/run GPU_HOSTMEM_GUEST_CFG_EXTRA): more
        # xl.cfg lines for every guest, last so they win.
        if [ -r /etc/gpu-hostmem/guest-cfg-extra ]; then cat /etc/gpu-hostmem/guest-cfg-extra; fi
    } >"$cfg"
    gh_postmortem_register "$name" "$cfg"
    echo "$cfg"
}

# The post-mortem watcher (tests/xen/xen-postmortem.c, started by dom0's
# init): a test guest that Xen shuts down for reboot, crash or watchdog,
# kept by "preserve" in its config, is walked (its vCPU's view of the IDT,
# redone in memory: one "POSTMORTEM d=DOMID name=NAME ... verdict=..."
# line on the console and in $GH_POSTMORTEM_LOG) and destroyed. Only the
# guests named in $GH_POSTMORTEM_NAMES: a config that asks for something
# else on reboot or crash (restart, destroy) is left to xl. Each of those
# is announced once while it lives ("POSTMORTEM d=DOMID name=NAME
# watched"): tests/e2e/classify-failure then takes a triple fault of it for
# the emulator's only with a post-mortem that agrees.
GH_POSTMORTEM_NAMES=/run/gh-postmortem-names
GH_POSTMORTEM_LOG=/run/gh-postmortem.log
GH_POSTMORTEM_PID=/run/gh-postmortem.pid
gh_postmortem_running() {
    [ -s "$GH_POSTMORTEM_PID" ] && kill -0 "$(cat "$GH_POSTMORTEM_PID")" 2>/dev/null
}

# gh_postmortem_register NAME CFG: tell the watcher whether guest NAME is
# its to look at: "NAME 1" if CFG's last on_reboot and on_crash settings
# (xl takes the last) are both "preserve", else "NAME 0" (a name used
# again with another action). One line appended (atomic, so guests
# configured at once do not lose each other's); the last line for a name
# counts.
gh_postmortem_register() {
    local name=$1 cfg=$2 actions
    [ -f "$GH_POSTMORTEM_NAMES" ] || return 0
    actions=$(sed -n 's/^ *\(on_reboot\|on_crash\) *= *"\([a-z-]*\)".*/\1 \2/p' "$cfg" |
        awk '{ a[$1] = $2 } END { print a["on_reboot"] "," a["on_crash"] }')
    if [ "$actions" = "preserve,preserve" ]; then
        echo "$name 1" >>"$GH_POSTMORTEM_NAMES"
    else
        echo "$name 0" >>"$GH_POSTMORTEM_NAMES"
    fi
}

# gh_guest_create NAME: xl create /tmp/NAME.cfg (bounded), prints the domid.
gh_guest_create() {
    local name=$1
    rm -f "$GH_CONSOLE_DIR/guest-$name.log"
    if ! timeout 120 xl create "/tmp/$name.cfg" >"/tmp/$name.create" 2>&1; then
        sed "s/^/[xl create $name] /" "/tmp/$name.create" >&2
        return 1
    fi
    sed "s/^/[xl create $name] /" "/tmp/$name.create" >&2
    xl domid "$name"
}

# gh_guest_say NAME LINE: type LINE on guest NAME's console, as `xl console`
# would: into the pty xenconsoled keeps for it (raw mode), which the guest
# reads on hvc0 (its programs' standard input).
gh_guest_say() {
    local domid tty
    domid=$(xl domid "$1" 2>/dev/null) || return 1
    tty=$(xenstore-read "/local/domain/$domid/console/tty" 2>/dev/null) || return 1
    [ -c "$tty" ] || return 1
    printf '%s\n' "$2" >"$tty"
}

# gh_guest_wait NAME TIMEOUT [REGEX]: relay the guest's console (xenconsoled
# log) prefixed with [NAME] until it prints GH-GUEST-DONE, or a line matching
# REGEX (grep) when given; the whole console so far is kept in
# /tmp/NAME.out. Fails on timeout or if the domain disappears.
gh_guest_wait() {
    local name=$1 tmo=$2 re=${3:-^GH-GUEST-DONE} log=$GH_CONSOLE_DIR/guest-$1.log n=0 end next
    end=$(($(date +%s) + tmo))
    next=$(($(date +%s) + 60))
    : >"/tmp/$name.out"
    while :; do
        if [ -f "$log" ]; then
            local total
            total=$(wc -l <"$log")
            if [ "$total" -gt "$n" ]; then
                sed -n "$((n + 1)),${total}p" "$log" | tr -d '\r' | tee -a "/tmp/$name.out" | sed "s/^/[$name] /"
                n=$total
            fi
        fi
        grep -q -- "$re" "/tmp/$name.out" && return 0
        if ! xl domid "$name" >/dev/null 2>&1; then
            echo "guest $name is gone before it finished"
            return 1
        fi
        if [ "$(date +%s)" -ge "$next" ]; then
            echo "still waiting for $name: $(xl list "$name" 2>&1 | tail -n1)"
            next=$(($(date +%s) + 60))
        fi
        if [ "$(date +%s)" -ge "$end" ]; then
            echo "guest $name did not finish within $tmo s"
            return 1
        fi
        sleep 0.5
    done
}

# gh_guest_result NAME RESULTNAME: the value of a guest's RESULT line if it
# says ok=1 (fails otherwise).
gh_guest_result() {
    local l
    l=$(grep "^RESULT name=$2 " "/tmp/$1.out" 2>/dev/null | tail -n1)
    [ -n "$l" ] || return 1
    case "$l" in *" ok=1 "* | *" ok=1") ;; *) return 1 ;; esac
    echo "${l#* value=}"
}

# gh_guest_destroy NAME: xl destroy (bounded).
gh_guest_destroy() {
    timeout 60 xl destroy "$1"
}

# gh_clean DOMID: no trace of the domain left: xl list, xenstore (domain,
# libxl, backends, device model) and no device model process.
gh_clean() {
    local domid=$1 bad=0 p
    if xl list | awk 'NR > 1 && $1 != "Domain-0"' | grep -q .; then
        echo "xl list still shows guests:"; xl list; bad=1
    fi
    for p in "/local/domain/$domid" "/libxl/$domid" "/local/domain/0/device-model/$domid" \
        "/local/domain/0/backend/vbd/$domid" "/local/domain/0/backend/vif/$domid" \
        "/local/domain/0/backend/console/$domid" "/local/domain/0/backend/vkbd/$domid" \
        "/local/domain/0/backend/qdisk/$domid" "/local/domain/0/gpu-hostmem/$domid"; do
        if xenstore-exists "$p" 2>/dev/null; then
            echo "xenstore still has $p"; bad=1
        fi
    done
    if pgrep -f "xen-qemu-system-i386.*-xen-domid $domid( |$)" >/dev/null; then
        echo "device model of domain $domid still running"; bad=1
    fi
    return "$bad"
}

# gh_xen_lend_test: the path of tests/xen/xen-lend-test.c's binary
# ($XEN_LEND_TEST, else searched in PATH, /usr/local/bin, /opt/gpu-hostmem/bin,
# /root); nothing if it is not installed (40 and 41 use it).
gh_xen_lend_test() {
    local p
    if [ -n "${XEN_LEND_TEST:-}" ]; then
        echo "$XEN_LEND_TEST"
        return
    fi
    for p in "$(command -v xen-lend-test 2>/dev/null)" \
        /usr/local/bin/xen-lend-test /opt/gpu-hostmem/bin/xen-lend-test \
        /root/xen-lend-test; do
        if [ -n "$p" ] && [ -x "$p" ]; then
            echo "$p"
            return
        fi
    done
}

# gh_wait_gone NAME SECONDS: wait until the domain is gone from xl list
# (the only definition: the 20-libxl-* scenarios use it too).
gh_wait_gone() {
    local i
    for i in $(seq 1 $(($2 * 2))); do
        xl domid "$1" >/dev/null 2>&1 || return 0
        sleep 0.5
    done
    return 1
}

# gh_guest_cycle NAME TYPE RUN TIMEOUT [XL.CFG LINE...]: create a guest, wait
# for its program, destroy it and check everything is clean, with a RESULT
# line (and timing) for each step. Returns non-zero on any failure.
gh_guest_cycle() {
    local name=$1 type=$2 run=$3 tmo=$4 t domid
    shift 4
    gh_guest_cfg "$name" "$type" "$run" "$@" >/dev/null || return 1
    t=$(gh_now)
    if ! domid=$(gh_guest_create "$name"); then
        result "$name-create" 0 "$(gh_since "$t")s"
        return 1
    fi
    result "$name-create" 1 "domid=$domid,$(gh_since "$t")s"
    if gh_guest_wait "$name" "$tmo"; then
        result "$name-run" 1 "$(gh_since "$t")s"
    else
        result "$name-run" 0 "$(gh_since "$t")s"
    fi
    t=$(gh_now)
    if gh_guest_destroy "$name" && gh_wait_gone "$name" 30; then
        result "$name-destroy" 1 "$(gh_since "$t")s"
    else
        result "$name-destroy" 0 "$(gh_since "$t")s"
    fi
    sleep 1
    check "$name-clean" "domid=$domid" gh_clean "$domid"
    return "$GH_FAILED"
}

# gh_other_domains: "DOMID(NAME,STATE)" of every domain but dom0, one per
# line. A domain whose xenstore entries are gone (its destruction was cut
# short, or it is dying) shows as "(null)": xl cannot name it any more.
gh_other_domains() {
    xl list 2>/dev/null | awk 'NR > 1 && $2 != 0 { print $2 "(" $1 "," $5 ")" }'
}

# gh_reap_domains SECONDS: wait up to SECONDS for every domain but dom0 to
# be gone (a destroyed domain lingers while Xen frees its memory), then
# destroy by domid what is left (by domid: a "(null)" domain cannot be
# destroyed by name) and wait as long again. Returns 0 if nothing was left;
# otherwise prints one line, "WHAT WAS LEFT; destroyed by domid" with
# ", some survive it: WHAT" if some did, and returns 1 (all gone) or 2
# (some survive). For the scenario runner (init) and 30-xtf, whose
# xtf-runner instances can be cut by their time bound in the middle of
# xl's own teardown of their guest.
gh_reap_domains() {
    local secs=$1 left d i
    for i in $(seq 1 $((secs * 2))); do
        left=$(gh_other_domains)
        [ -n "$left" ] || return 0
        sleep 0.5
    done
    for d in $(printf '%s\n' "$left" | cut -d'(' -f1); do
        timeout 60 xl destroy "$d" >/dev/null 2>&1 || true
    done
    printf '%s; destroyed by domid' "$(printf '%s' "$left" | tr '\n' ' ')"
    for i in $(seq 1 $((secs * 2))); do
        [ -n "$(gh_other_domains)" ] || { echo; return 1; }
        sleep 0.5
    done
    echo ", some survive it: $(gh_other_domains | tr '\n' ' ')"
    return 2
}
