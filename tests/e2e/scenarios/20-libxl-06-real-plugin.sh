#!/usr/bin/env bash
# timeout: 600
# With the real plugin (plugin/libxl-plugin, installed at libxl's fixed path):
#   - xl create of a gpu_hostmem guest starts gpu-hostmem-ioreqd for it and
#     records it in xenstore (/local/domain/0/gpu-hostmem/<domid>/: uuid,
#     pid, state = running, bdf, bar-size, ioservid);
#   - the guest's firmware finds the device and places its BAR (bar-base
#     changes from "unmapped" to an address);
#   - xl destroy stops the server: no process, no xenstore keys left.
# Skipped (exit 77) when the real plugin is not installed in dom0.
# shellcheck source=lib-20-libxl.sh
. "$(dirname "$0")/lib-20-libxl.sh" || exit 1

[ -f "$GH_PLUGIN" ] || skip "real plugin not installed at $GH_PLUGIN"
grep -aq 'fake plugin' "$GH_PLUGIN" && skip "$GH_PLUGIN is the fake plugin, not the real one"

name=gh-libxl-real
gh_hvm_cfg "$name" "gpu_hostmem = 1" "gpu_hostmem_size = 64"
cfg=$GH_CFG
gh_xl_ok xl create "$cfg"
domid=$(gh_domid "$name") || fail "domain not created"
uuid=$(gh_uuid "$name")
dir=/local/domain/0/gpu-hostmem/$domid
log "xenstore $dir:"
xenstore-ls -f "$dir" 2>&1 | sed 's/^/    | /' >&2

state=$(xenstore-read "$dir/state" 2>/dev/null) || fail "no $dir/state"
[ "$state" = running ] || fail "$dir/state is '$state', expected running"
pid=$(xenstore-read "$dir/pid" 2>/dev/null) || fail "no $dir/pid"
[ -d "/proc/$pid" ] || fail "ioreqd pid $pid is not running"
grep -aq gpu-hostmem "/proc/$pid/cmdline" || fail "pid $pid is not gpu-hostmem-ioreqd: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
xs_uuid=$(xenstore-read "$dir/uuid" 2>/dev/null) || fail "no $dir/uuid"
[ "$xs_uuid" = "$uuid" ] || fail "$dir/uuid is $xs_uuid, the domain's is $uuid"
for k in bdf bar-size ioservid; do
    xenstore-read "$dir/$k" >/dev/null 2>&1 || fail "no $dir/$k"
done
ok "xl create: ioreqd $pid running for domain $domid, xenstore state complete"

# hvmloader sizes and places the BAR before the (empty) boot.
base=unmapped
for _ in $(seq 120); do
    base=$(xenstore-read "$dir/bar-base" 2>/dev/null || echo unmapped)
    [ "$base" != unmapped ] && break
    sleep 1
done
[ "$base" != unmapped ] || fail "the guest firmware never placed the gpu-hostmem BAR (bar-base still unmapped)"
ok "guest firmware placed the BAR at $base"

gh_xl_ok xl destroy "$name"
gh_wait_gone "$name" 30 || fail "domain still there after xl destroy"
for _ in $(seq 20); do
    [ -d "/proc/$pid" ] || break
    sleep 1
done
[ -d "/proc/$pid" ] && fail "ioreqd $pid still running after xl destroy"
left=$(xenstore-ls -f "$dir" 2>/dev/null || true)
if [ -n "$left" ] || xenstore-read "$dir" >/dev/null 2>&1; then
    fail "xenstore state left under $dir: $left"
fi
gh_assert_only_dom0
ok "xl destroy: ioreqd stopped, no xenstore keys left"
