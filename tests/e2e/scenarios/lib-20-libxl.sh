# shellcheck shell=bash
# Helpers shared by the 20-libxl-*.sh scenarios (sourced, not a scenario: the
# runner only runs scenarios/[0-9]*.sh, but copies every *.sh into dom0).
# They run in dom0 of the test bed, as root, with the patched xl/libxenlight.
#
# libxl loads the gpu-hostmem plugin only from one fixed path, so the
# scenarios that need a particular plugin (none, a broken file, the fake
# plugin of tests/libxl/) put it there and restore what was there on exit.

set -u

GH_PLUGIN=/usr/lib/xen/gpu-hostmem/libgpu_hostmem_plugin.so
GH_PLUGIN_SAVED=/run/gh-libxl-plugin.saved
GH_FAKE_DIR=/run/fake-gpu-hostmem
GH_FAKE_LOG=$GH_FAKE_DIR/log
GH_FAKE_CONF=$GH_FAKE_DIR/conf
GH_WORK=$(mktemp -d /tmp/gh-libxl.XXXXXX)
GH_SCENARIO=${GH_SCENARIO:-$(basename "$0" .sh)}
GH_CFG=  # set by gh_hvm_cfg and gh_cfg
export GH_CFG

# result, gh_wait_gone and the guest helpers: dom0/lib.sh.
# shellcheck source=../dom0/lib.sh
source /usr/lib/gpu-hostmem/e2e/lib.sh || exit 1

# Results go to stdout as RESULT lines (result, dom0/lib.sh), the narrative
# to stderr.  Any failure exits non-zero.
log() { printf '[%s] %s\n' "$GH_SCENARIO" "$*" >&2; }
fail() {
    printf '[%s] FAIL: %s\n' "$GH_SCENARIO" "$*" >&2
    result "$GH_SCENARIO" 0 "$*"
    exit 1
}
skip() {
    printf '[%s] SKIP: %s\n' "$GH_SCENARIO" "$*" >&2
    result "$GH_SCENARIO" skip "$*"
    exit 77
}
ok() {
    printf '[%s] ok: %s\n' "$GH_SCENARIO" "$*" >&2
    result "$GH_SCENARIO" 1 "$*"
}

# ------------------------------------------------------------------ plugin

# Where the test bed put the fake plugin built from tests/libxl/.
gh_find_fake_plugin() {
    local c
    for c in "${GH_FAKE_PLUGIN:-}" \
        /usr/local/bin/fake_gpu_hostmem_plugin \
        /usr/local/lib/gpu-hostmem-tests/libfake_gpu_hostmem_plugin.so \
        /opt/gpu-hostmem/tests/libfake_gpu_hostmem_plugin.so \
        /usr/local/lib/libfake_gpu_hostmem_plugin.so \
        /usr/local/bin/libfake_gpu_hostmem_plugin.so; do
        [ -n "$c" ] && [ -f "$c" ] && { echo "$c"; return 0; }
    done
    c=$(find /usr/local /usr/lib/gpu-hostmem /opt /root -name '*fake_gpu_hostmem_plugin*' -type f 2>/dev/null | head -n1)
    [ -n "$c" ] && { echo "$c"; return 0; }
    return 1
}

# Save the installed plugin (once) so that gh_restore_plugin can put it back.
gh_save_plugin() {
    [ -e "$GH_PLUGIN_SAVED" ] || [ -e "$GH_PLUGIN_SAVED.none" ] && return 0
    if [ -e "$GH_PLUGIN" ]; then
        cp -a "$GH_PLUGIN" "$GH_PLUGIN_SAVED"
    else
        : >"$GH_PLUGIN_SAVED.none"
    fi
}

gh_restore_plugin() {
    if [ -e "$GH_PLUGIN_SAVED" ]; then
        mkdir -p "$(dirname "$GH_PLUGIN")"
        mv -f "$GH_PLUGIN_SAVED" "$GH_PLUGIN"
    elif [ -e "$GH_PLUGIN_SAVED.none" ]; then
        rm -f "$GH_PLUGIN" "$GH_PLUGIN_SAVED.none"
    fi
}

# gh_use_plugin FILE | none: what libxl will find at its fixed path.
gh_use_plugin() {
    gh_save_plugin
    if [ "$1" = none ]; then
        rm -f "$GH_PLUGIN"
    else
        mkdir -p "$(dirname "$GH_PLUGIN")"
        cp "$1" "$GH_PLUGIN.new"
        mv -f "$GH_PLUGIN.new" "$GH_PLUGIN"
    fi
}

# gh_use_fake_plugin [key=value...]: the fake plugin, configured, empty log.
gh_use_fake_plugin() {
    local so
    so=$(gh_find_fake_plugin) || fail "fake plugin (tests/libxl/fake_gpu_hostmem_plugin.c) not found in dom0"
    gh_use_plugin "$so"
    mkdir -p "$GH_FAKE_DIR"
    : >"$GH_FAKE_LOG"
    printf '%s\n' "$@" >"$GH_FAKE_CONF"
}

gh_fake_conf() {
    mkdir -p "$GH_FAKE_DIR"
    printf '%s\n' "$@" >"$GH_FAKE_CONF"
}

# ------------------------------------------------------------------ domains

# Domains this scenario created, destroyed on exit whatever happened.
GH_DOMAINS=()

gh_cleanup() {
    local d
    for d in "${GH_DOMAINS[@]}"; do
        timeout 60 xl destroy "$d" >/dev/null 2>&1 || true
    done
    gh_restore_plugin
    rm -rf "$GH_WORK" "$GH_FAKE_DIR"
}
trap gh_cleanup EXIT

# gh_hvm_cfg NAME [xl.cfg lines...]: a minimal HVM guest config (no disk, no
# kernel: the firmware runs and finds nothing to boot, which is all libxl's
# side needs), written to $GH_WORK/NAME.cfg, whose path is left in $GH_CFG.
# Not to be called in a subshell: it registers NAME for the cleanup.
gh_hvm_cfg() {
    local name=$1 f
    shift
    f=$GH_WORK/$name.cfg
    {
        printf 'name = "%s"\n' "$name"
        printf 'type = "hvm"\n'
        printf 'memory = 128\n'
        printf 'vcpus = 2\n'
        printf 'device_model_version = "qemu-xen"\n'
        printf 'vga = "none"\n'
        # As gh_guest_cfg: no PV keyboard, whose teardown adds about 2 s
        # to every xl destroy.
        printf 'vkb_device = 0\n'
        # As gh_guest_cfg (dom0/lib.sh): no RDTSC exits, which the test
        # bed's emulated nested SVM does not survive reliably.
        printf 'tsc_mode = "native"\n'
        printf '%s\n' "$@"
    } >"$f"
    GH_DOMAINS+=("$name")
    GH_CFG=$f
}

# gh_cfg NAME [xl.cfg lines...]: a config with only the given lines ($GH_CFG).
gh_cfg() {
    local name=$1 f
    shift
    f=$GH_WORK/$name.cfg
    { printf 'name = "%s"\n' "$name"; printf '%s\n' "$@"; } >"$f"
    GH_DOMAINS+=("$name")
    GH_CFG=$f
}

# gh_xl_fails PATTERN CMD...: CMD must fail and print PATTERN (grep -E).
# Its output is left in $GH_XL_OUT for further checks.
GH_XL_OUT=
gh_xl_fails() {
    local pat=$1 out rc=0
    shift
    out=$(timeout 180 "$@" 2>&1) || rc=$?
    GH_XL_OUT=$out
    printf '%s\n' "$out" | sed 's/^/    | /' >&2
    [ "$rc" -ne 0 ] || fail "'$*' succeeded, expected a failure"
    [ "$rc" -ne 124 ] || fail "'$*' timed out"
    printf '%s\n' "$out" | grep -Eq -- "$pat" || fail "'$*' failed without saying /$pat/"
}

gh_xl_ok() {
    local out rc=0
    out=$(timeout 180 "$@" 2>&1) || rc=$?
    printf '%s\n' "$out" | sed 's/^/    | /' >&2
    [ "$rc" -eq 0 ] || fail "'$*' failed (rc=$rc)"
}

gh_domid() { xl domid "$1" 2>/dev/null; }

gh_uuid() {
    xl list -v "$1" 2>/dev/null | awk 'NR == 2 { print $7 }'
}

# No domain but dom0, and no xenstore state of another domain left behind.
gh_assert_only_dom0() {
    local doms ld lx
    doms=$(gh_other_domains | tr '\n' ' ')
    [ -z "$doms" ] || fail "domains left behind: $doms"
    ld=$(xenstore-list /local/domain 2>/dev/null | grep -vx 0 || true)
    [ -z "$ld" ] || fail "xenstore /local/domain still has: $ld"
    lx=$(xenstore-list /libxl 2>/dev/null | grep -vx 0 || true)
    [ -z "$lx" ] || fail "xenstore /libxl still has: $lx"
}

# gh_fake_log_has REGEX: the fake plugin's log has a matching line.
gh_fake_log_has() {
    grep -Eq -- "$1" "$GH_FAKE_LOG" 2>/dev/null
}

gh_show_fake_log() {
    log "fake plugin log:"
    sed 's/^/    | /' "$GH_FAKE_LOG" >&2 2>/dev/null || true
}
