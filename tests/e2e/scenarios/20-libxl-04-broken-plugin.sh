#!/usr/bin/env bash
# timeout: 900
# A plugin libxl must refuse or survive: xl create of a gpu_hostmem guest
# fails with a message saying what is wrong, the half-built domain is
# destroyed (and the plugin's destroy hook called for it when the plugin can
# be loaded), and nothing is left in xl list or xenstore.
#   - a file that is not a shared object
#   - a shared object that is not a gpu-hostmem plugin
#   - the fake plugin reporting another ABI version
#   - the fake plugin's create hook failing, then crashing
# and, the other way round, a failing or crashing destroy hook never stops a
# domain from being destroyed.
# shellcheck source=lib-20-libxl.sh
. "$(dirname "$0")/lib-20-libxl.sh" || exit 1

gh_hvm_cfg gh-libxl-broken "gpu_hostmem = 1" "gpu_hostmem_size = 64"
cfg=$GH_CFG

log "a file that is not a shared object"
printf 'this is not an ELF file\n' >"$GH_WORK/garbage.so"
gh_use_plugin "$GH_WORK/garbage.so"
gh_xl_fails "gpu_hostmem: cannot load the plugin: $GH_PLUGIN: (invalid ELF header|file too short)" xl create "$cfg"
gh_assert_only_dom0
ok "non-ELF plugin refused"

log "a shared object without the plugin's symbols"
other=
for c in /usr/lib/x86_64-linux-gnu/libxenstore.so.4 /lib/x86_64-linux-gnu/libz.so.1 /usr/lib/x86_64-linux-gnu/libz.so.1; do
    [ -f "$c" ] && { other=$c; break; }
done
[ -n "$other" ] || other=$(find /usr/lib/x86_64-linux-gnu -maxdepth 1 -name 'lib*.so.*' -type f | head -n1)
gh_use_plugin "$other"
gh_xl_fails "gpu_hostmem: $GH_PLUGIN is not a gpu-hostmem plugin: no symbol gpu_hostmem_plugin_abi_version" \
    xl create "$cfg"
gh_assert_only_dom0
ok "shared object without plugin symbols refused"

log "the fake plugin with ABI version 1"
gh_use_fake_plugin abi=1
gh_xl_fails "gpu_hostmem: plugin $GH_PLUGIN has ABI version 1, libxl needs version 2; install a matching plugin" \
    xl create "$cfg"
gh_assert_only_dom0
gh_fake_log_has '^create ' && { gh_show_fake_log; fail "create hook called despite the ABI mismatch"; }
ok "plugin with a wrong ABI version refused, its hooks never called"

log "the fake plugin's create hook fails"
gh_use_fake_plugin create=fail
gh_xl_fails "gpu_hostmem: plugin create hook failed \(Input/output error\): fake plugin: create refused on purpose for domain [0-9]+" \
    xl create "$cfg"
gh_assert_only_dom0
gh_show_fake_log
gh_fake_log_has '^create domid=[0-9]+ .* size=64 vcpus=2 abi=2 flags=0 ready=/libxl/[0-9]+/gpu-hostmem/state$' || fail "create hook not called"
c=$(awk '/^create /{ print $2 " " $3 }' "$GH_FAKE_LOG")
gh_fake_log_has "^destroy $c " || fail "no destroy hook for the half-built domain ($c)"
ok "failing create hook: plugin's reason reported, half-built domain destroyed with the destroy hook"

log "the fake plugin's create hook crashes"
gh_use_fake_plugin create=crash
gh_xl_fails "gpu-hostmem server \[[0-9]+\]: died during startup due to fatal signal" xl create "$cfg"
gh_assert_only_dom0
ok "crashing create hook: xl create fails cleanly"

for mode in fail crash; do
    log "the fake plugin's destroy hook: $mode"
    gh_use_fake_plugin "destroy=$mode"
    gh_xl_ok xl create -p "$cfg"
    domid=$(gh_domid gh-libxl-broken) || fail "domain not created"
    gh_xl_ok xl destroy gh-libxl-broken
    gh_wait_gone gh-libxl-broken 30 || fail "domain still there after xl destroy with destroy=$mode"
    gh_assert_only_dom0
    gh_fake_log_has "^destroy domid=$domid " || fail "destroy hook not called"
    ok "destroy hook $mode: domain $domid destroyed anyway"
done
