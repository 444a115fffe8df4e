#!/usr/bin/env bash
# timeout: 600
# Without gpu_hostmem, xl create behaves exactly as before: the domain is
# built (paused: the diskless guest's firmware would reboot it after a while),
# libxl never loads the plugin (the fake plugin, installed at libxl's
# path, records no call), nothing of gpu-hostmem appears in xenstore, and
# xl save / xl restore still work; with gpu_hostmem = 0 the same holds.
# shellcheck source=lib-20-libxl.sh
. "$(dirname "$0")/lib-20-libxl.sh" || exit 1

gh_use_fake_plugin create=ok destroy=ok

for v in unset 0; do
    name=gh-libxl-off-$v
    if [ "$v" = unset ]; then
        gh_hvm_cfg "$name"
        cfg=$GH_CFG
    else
        gh_hvm_cfg "$name" "gpu_hostmem = 0" "gpu_hostmem_size = 3"
        cfg=$GH_CFG
    fi
    log "gpu_hostmem $v: xl create"
    gh_xl_ok xl create -p "$cfg"
    domid=$(gh_domid "$name") || fail "domain $name not running after xl create"
    xenstore-read "/libxl/$domid/gpu-hostmem" >/dev/null 2>&1 &&
        fail "/libxl/$domid/gpu-hostmem exists for a domain without gpu_hostmem"
    xenstore-read "/local/domain/0/gpu-hostmem/$domid" >/dev/null 2>&1 &&
        fail "gpu-hostmem xenstore state for a domain without gpu_hostmem"
    [ -s "$GH_FAKE_LOG" ] && { gh_show_fake_log; fail "the plugin was called for a domain without gpu_hostmem"; }
    ok "gpu_hostmem $v: domain $domid created, plugin not called"

    if [ "$v" = unset ]; then
        log "xl save / xl restore still work without gpu_hostmem"
        gh_xl_ok xl save "$name" "$GH_WORK/$name.save"
        gh_domid "$name" >/dev/null && fail "domain still present after xl save"
        gh_xl_ok xl restore -p "$GH_WORK/$name.save"
        gh_domid "$name" >/dev/null || fail "domain not back after xl restore"
        rm -f "$GH_WORK/$name.save"
        ok "xl save and xl restore of a domain without gpu_hostmem"
    fi

    gh_xl_ok xl destroy "$name"
    gh_wait_gone "$name" 30 || fail "$name still there after xl destroy"
    [ -s "$GH_FAKE_LOG" ] && { gh_show_fake_log; fail "the plugin was called on destroy of a domain without gpu_hostmem"; }
    ok "gpu_hostmem $v: destroyed, plugin not called"
done

gh_assert_only_dom0
ok "option off behaves as before"
