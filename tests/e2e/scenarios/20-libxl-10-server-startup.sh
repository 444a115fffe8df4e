#!/usr/bin/env bash
# timeout: 600
# libxl starts the gpu-hostmem server itself (libxl__spawn_spawn, inside the
# creation ao) with the command line the plugin's create hook describes, and
# waits for it on its own xenstore node /libxl/<domid>/gpu-hostmem/state.
# With the fake plugin of tests/libxl/ (server=...), a server that
#   - never says it is ready: xl create fails after libxl's startup timeout,
#     saying so;
#   - exits at once: xl create fails at once, naming the exit status;
#   - writes "failed: <reason>": xl create fails at once with that reason;
# and in every case nothing is left: no domain, no xenstore state (the
# destroy hook of the half-built domain ran), no server process.  A create
# hook that hangs (create=hang) fails xl create after the same timeout and
# is ended by libxl's alarm() in the spawn's child, which the timeout
# itself does not kill.
# The timeout is 30 s unless the environment variable
# LIBXL_GPU_HOSTMEM_START_TIMEOUT overrides it: the two cases that wait for
# it set $start_timeout (5 s) and check that xl create fails no earlier and
# well before the 30 s, with a message naming it, so an ignored override
# fails them; the two that fail at once pass invalid values, which libxl
# must ignore with a warning naming the 30 s default.
# shellcheck source=lib-20-libxl.sh
. "$(dirname "$0")/lib-20-libxl.sh" || exit 1

gh_hvm_cfg gh-libxl-startup "gpu_hostmem = 1" "gpu_hostmem_size = 64"
cfg=$GH_CFG
tag=fake-gpu-hostmem-server
start_timeout=5
default_timeout=30

# The fake servers still running (their command line carries $tag).
servers() { pgrep -af -- "$tag" || true; }

# check_case MODE PATTERN MAX_S [TIMEOUT]: xl create, with
# LIBXL_GPU_HOSTMEM_START_TIMEOUT=TIMEOUT in its environment if given, fails
# saying PATTERN, within MAX_S seconds (the time taken left in $dt_ms, in
# milliseconds), and leaves nothing behind.
dt_ms=
check_case() {
    local mode=$1 pat=$2 max=$3 t0 c left
    local -a env=()
    [ $# -lt 4 ] || env=("LIBXL_GPU_HOSTMEM_START_TIMEOUT=$4")
    log "server=$mode${4+, LIBXL_GPU_HOSTMEM_START_TIMEOUT=$4}"
    gh_use_fake_plugin "create=${CREATE:-ok}" destroy=ok "server=$mode"
    t0=$(date +%s%N)
    gh_xl_fails "$pat" env "${env[@]}" xl create "$cfg"
    dt_ms=$((($(date +%s%N) - t0) / 1000000))
    log "xl create failed after $dt_ms ms"
    [ "$dt_ms" -le $((max * 1000)) ] ||
        fail "server=$mode: xl create took $dt_ms ms, expected at most $max s"
    gh_show_fake_log
    gh_fake_log_has '^create domid=[0-9]+ .* ready=/libxl/[0-9]+/gpu-hostmem/state$' ||
        fail "server=$mode: create hook not called with libxl's ready path"
    c=$(awk '/^create /{ print $2 " " $3 }' "$GH_FAKE_LOG")
    gh_fake_log_has "^destroy $c " || fail "server=$mode: no destroy hook for the half-built domain ($c)"
    gh_assert_only_dom0
    left=$(servers)
    [ -z "$left" ] || fail "server=$mode: server process left behind: $left"
}

# check_waited WHAT: the xl create of check_case waited for the whole
# $start_timeout and not for the 30 s default, which would take at least
# 30 s: at most 25 s in all.  Here a case that fails at once takes about
# 3 s, creation and destruction of the half-built domain included, and
# these two 8-12 s with 5 s (33-37 s with the 30 s default).
check_waited() {
    [ "$dt_ms" -ge $((start_timeout * 1000)) ] ||
        fail "$1: xl create failed after $dt_ms ms, before the $start_timeout s timeout"
    [ "$dt_ms" -le 25000 ] ||
        fail "$1: xl create failed after $dt_ms ms, not within 25 s: libxl waited for more than LIBXL_GPU_HOSTMEM_START_TIMEOUT=$start_timeout s"
}

not_ready="gpu_hostmem: the server was not ready within $start_timeout seconds"
check_case never "$not_ready" 75 "$start_timeout"
check_waited server=never
ok "a server that never becomes ready: xl create fails after libxl's timeout ($start_timeout s from LIBXL_GPU_HOSTMEM_START_TIMEOUT), nothing left"

# An invalid LIBXL_GPU_HOSTMEM_START_TIMEOUT: the last xl create warned that
# it ignored VALUE for the 30 s default.
check_ignored() {
    local want
    want=$(printf 'gpu_hostmem: ignoring LIBXL_GPU_HOSTMEM_START_TIMEOUT="%s", not a positive number of seconds; using %s' \
        "$1" "$default_timeout")
    printf '%s\n' "$GH_XL_OUT" | grep -Fq -- "$want" ||
        fail "LIBXL_GPU_HOSTMEM_START_TIMEOUT=$1 not ignored with a warning naming the $default_timeout s default"
}

check_case exit "gpu-hostmem server \[[0-9]+\]: failed startup with non-zero exit status 3" 25 0
check_ignored 0
ok "a server that exits at once: xl create fails with its exit status, nothing left (LIBXL_GPU_HOSTMEM_START_TIMEOUT=0 ignored)"

check_case fail "gpu_hostmem: the server failed: fake server: cannot serve on purpose" 25 5s
check_ignored 5s
ok "a server that reports a failure: xl create fails with its reason, nothing left (LIBXL_GPU_HOSTMEM_START_TIMEOUT=5s ignored)"

log "create hook hangs"
CREATE=hang check_case ready "$not_ready|gpu-hostmem server \[[0-9]+\]: died during startup due to fatal signal Alarm clock" 75 "$start_timeout"
check_waited create=hang
sleep 3
left=$(pgrep -af -- "xl create $cfg" || true)
[ -z "$left" ] || fail "the spawn child hung in the create hook is still there: $left"
ok "a hanging create hook: xl create fails after libxl's timeout ($start_timeout s), the child is ended, nothing left"
