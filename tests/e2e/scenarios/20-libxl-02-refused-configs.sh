#!/usr/bin/env bash
# timeout: 300
# Configurations libxl must refuse up front, with a clear message, leaving no
# domain behind and without calling the plugin: gpu_hostmem on a PV or PVH
# guest, and BAR sizes that are not a power of two in [1 MiB, 64 GiB].
# shellcheck source=lib-20-libxl.sh
. "$(dirname "$0")/lib-20-libxl.sh" || exit 1

gh_use_fake_plugin create=ok destroy=ok

gh_cfg gh-libxl-pv 'type = "pv"' 'memory = 128' 'kernel = "/nonexistent/vmlinuz"' 'gpu_hostmem = 1'
cfg=$GH_CFG
gh_xl_fails 'gpu_hostmem is only supported for HVM guests' xl create "$cfg"
gh_assert_only_dom0
ok "PV guest with gpu_hostmem refused"

gh_cfg gh-libxl-pvh 'type = "pvh"' 'memory = 128' 'kernel = "/nonexistent/vmlinuz"' 'gpu_hostmem = 1'
cfg=$GH_CFG
gh_xl_fails 'gpu_hostmem is only supported for HVM guests' xl create "$cfg"
gh_assert_only_dom0
ok "PVH guest with gpu_hostmem refused"

for size in 3 768 131072; do
    gh_hvm_cfg "gh-libxl-size-$size" "gpu_hostmem = 1" "gpu_hostmem_size = $size"
    cfg=$GH_CFG
    gh_xl_fails "gpu_hostmem_size=$size MiB is invalid: it must be a power of two between 1 and 65536 MiB" \
        xl create "$cfg"
    gh_assert_only_dom0
    ok "gpu_hostmem_size = $size refused"
done

gh_hvm_cfg gh-libxl-size-neg "gpu_hostmem = 1" 'gpu_hostmem_size = "-1"'  # the lexer has no negative numbers
cfg=$GH_CFG
gh_xl_fails 'invalid value -1 for "gpu_hostmem_size"' xl create "$cfg"
gh_assert_only_dom0
ok "gpu_hostmem_size = -1 refused"

[ -s "$GH_FAKE_LOG" ] && { gh_show_fake_log; fail "the plugin was called for a refused configuration"; }
ok "refused configurations never reach the plugin"
