#!/usr/bin/env bash
# timeout: 300
# libxl's per-domain limit of lent pages stops a device model that lends
# more than the BAR (libxl-patches/0006, XEN_DMOP_set_lend_limit):
#   - xl create -p of a gpu_hostmem guest with a 4 MiB BAR (the real plugin
#     and gpu-hostmem-ioreqd start as usual; the guest stays paused, so no
#     guest code runs);
#   - a rogue device model in dom0 (tests/xen/xen-lend-test --limit) lends
#     1024 + 8 of its own pages to the guest at free guest frames: Xen
#     stops it with -ENOSPC after exactly 1024 (4 MiB in 4 KiB pages), far
#     below the host-wide cap (max-lent-pages, 1048576 by default), and the
#     pages lent are then revoked;
#   - a second guest with an 8 MiB BAR stops at 2048: the limit follows
#     gpu_hostmem_size;
#   - xl destroy of both leaves no domain, no server, no xenstore record.
# shellcheck source=lib-20-libxl.sh
. "$(dirname "$0")/lib-20-libxl.sh" || exit 1

[ -f "$GH_PLUGIN" ] || skip "real plugin not installed at $GH_PLUGIN"
grep -aq 'fake plugin' "$GH_PLUGIN" && skip "$GH_PLUGIN is the fake plugin, not the real one"

bin=
for p in "$(command -v xen-lend-test 2>/dev/null)" /usr/local/bin/xen-lend-test \
    /opt/gpu-hostmem/bin/xen-lend-test /root/xen-lend-test; do
    if [ -n "$p" ] && [ -x "$p" ]; then
        bin=$p
        break
    fi
done
[ -n "$bin" ] || fail "xen-lend-test not found in dom0"

cap=$(xl info | sed -n 's/^xen_commandline.*max-lent-pages=\([0-9]*\).*/\1/p')
[ -z "$cap" ] || [ "$cap" -gt 4096 ] ||
    skip "Xen booted with max-lent-pages=$cap: the host cap would stop the lend first"

# One guest per size: the lend must stop at exactly size/4 KiB pages.
for mib in 4 8; do
    name=gh-lend-limit-$mib
    gh_hvm_cfg "$name" "gpu_hostmem = 1" "gpu_hostmem_size = $mib"
    gh_xl_ok xl create -p "$GH_CFG"
    domid=$(gh_domid "$name") || fail "domain $name not created"
    dir=/local/domain/0/gpu-hostmem/$domid
    [ "$(xenstore-read "$dir/state" 2>/dev/null)" = running ] ||
        fail "no running server recorded for $name ($dir/state)"
    pages=$((mib * 256))
    # Guest frames at 64 GiB: a hole far above the guest's 128 MiB of RAM
    # and its MMIO, which Xen does not emulate.
    out=$("$bin" --dom "$domid" --limit "$pages" --gfn 0x1000000 2>&1)
    rc=$?
    printf '%s\n' "$out" | sed 's/^/    | /' >&2
    line=$(printf '%s\n' "$out" | grep '^RESULT name=xen-lend-limit ')
    [ -n "$line" ] || fail "xen-lend-test printed no xen-lend-limit result (rc $rc)"
    case $line in
    *" ok=1 "*) ok "gpu_hostmem_size = $mib: a rogue device model's lend stops at $pages pages (${line#* value=})" ;;
    *) fail "gpu_hostmem_size = $mib: the lend did not stop at $pages pages: $line" ;;
    esac
done

for mib in 4 8; do
    name=gh-lend-limit-$mib
    domid=$(gh_domid "$name") || fail "domain $name vanished"
    gh_xl_ok xl destroy "$name"
    gh_wait_gone "$name" 60 || fail "$name still listed after xl destroy"
    xenstore-read "/local/domain/0/gpu-hostmem/$domid/state" >/dev/null 2>&1 &&
        fail "xenstore record of $name ($domid) left after destroy"
done
pgrep -f gpu-hostmem-ioreqd >/dev/null && fail "a gpu-hostmem-ioreqd is still running"
ok "both guests destroyed: no domain, server or xenstore record left"
exit 0
