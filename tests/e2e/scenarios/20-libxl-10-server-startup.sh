#!/usr/bin/env bash
# timeout: 600
# libxl starts the gpu-hostmem server itself (libxl__spawn_spawn, inside the
# creation ao) with the command line the plugin's create hook describes, and
# waits for it on its own xenstore node /libxl/<domid>/gpu-hostmem/state.
# With the fake plugin of tests/libxl/ (server=...), a server that
#   - never says it is ready: xl create fails within libxl's 30 s timeout,
#     saying so;
#   - exits at once: xl create fails at once, naming the exit status;
#   - writes "failed: <reason>": xl create fails at once with that reason;
# and in every case nothing is left: no domain, no xenstore state (the
# destroy hook of the half-built domain ran), no server process.  A create
# hook that hangs (create=hang) fails xl create after the same timeout and
# is ended by libxl's alarm() in the spawn's child, which the timeout
# itself does not kill.
# shellcheck source=lib-20-libxl.sh
. "$(dirname "$0")/lib-20-libxl.sh" || exit 1

gh_hvm_cfg gh-libxl-startup "gpu_hostmem = 1" "gpu_hostmem_size = 64"
cfg=$GH_CFG
tag=fake-gpu-hostmem-server

# The fake servers still running (their command line carries $tag).
servers() { pgrep -af -- "$tag" || true; }

# check_case MODE PATTERN MAX_S: xl create fails saying PATTERN, within MAX_S
# seconds (the time taken left in $dt), and leaves nothing behind.
dt=
check_case() {
    local mode=$1 pat=$2 max=$3 t0 c left
    log "server=$mode"
    gh_use_fake_plugin "create=${CREATE:-ok}" destroy=ok "server=$mode"
    t0=$(date +%s)
    gh_xl_fails "$pat" xl create "$cfg"
    dt=$(($(date +%s) - t0))
    log "xl create failed after $dt s"
    [ "$dt" -le "$max" ] || fail "server=$mode: xl create took $dt s, expected at most $max s"
    gh_show_fake_log
    gh_fake_log_has '^create domid=[0-9]+ .* ready=/libxl/[0-9]+/gpu-hostmem/state$' ||
        fail "server=$mode: create hook not called with libxl's ready path"
    c=$(awk '/^create /{ print $2 " " $3 }' "$GH_FAKE_LOG")
    gh_fake_log_has "^destroy $c " || fail "server=$mode: no destroy hook for the half-built domain ($c)"
    gh_assert_only_dom0
    left=$(servers)
    [ -z "$left" ] || fail "server=$mode: server process left behind: $left"
}

check_case never "gpu_hostmem: the server was not ready within 30 seconds" 75
[ "$dt" -ge 29 ] || fail "server=never: xl create failed after $dt s, before libxl's 30 s timeout"
ok "a server that never becomes ready: xl create fails after libxl's timeout, nothing left"

check_case exit "gpu-hostmem server \[[0-9]+\]: failed startup with non-zero exit status 3" 25
ok "a server that exits at once: xl create fails with its exit status, nothing left"

check_case fail "gpu_hostmem: the server failed: fake server: cannot serve on purpose" 25
ok "a server that reports a failure: xl create fails with its reason, nothing left"

log "create hook hangs"
CREATE=hang check_case ready "gpu_hostmem: the server was not ready within 30 seconds|gpu-hostmem server \[[0-9]+\]: died during startup due to fatal signal Alarm clock" 75
sleep 3
left=$(pgrep -af -- "xl create $cfg" || true)
[ -z "$left" ] || fail "the spawn child hung in the create hook is still there: $left"
ok "a hanging create hook: xl create fails after libxl's timeout, the child is ended, nothing left"
