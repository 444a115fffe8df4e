#!/usr/bin/env bash
# timeout: 300
# No plugin at libxl's fixed path: xl create of a gpu_hostmem guest fails,
# says which file it could not load, and leaves no domain and no xenstore
# state behind (the half-built domain is destroyed).
# shellcheck source=lib-20-libxl.sh
. "$(dirname "$0")/lib-20-libxl.sh" || exit 1

gh_use_plugin none
gh_hvm_cfg gh-libxl-noplugin "gpu_hostmem = 1"
cfg=$GH_CFG
gh_xl_fails "gpu_hostmem: cannot load the plugin: $GH_PLUGIN: cannot open shared object file" \
    xl create "$cfg"
gh_assert_only_dom0
ok "missing plugin: xl create fails clearly, nothing left behind"
