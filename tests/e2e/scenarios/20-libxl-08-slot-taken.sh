#!/usr/bin/env bash
# timeout: 600
# The IOREQ server never claims a PCI slot in which the guest's QEMU placed
# a device of its own (Xen would send that slot's config cycles to the
# server, and QEMU's device would vanish from the guest without an error).
#   - pci_slot: 3 and a guest with an emulated VGA (QEMU puts it in slot 3,
#     after the Xen platform device in 2): xl create fails, naming the slot
#     and QEMU's device, and leaves no domain, server or xenstore record;
#   - the control, the same pci_slot with vga = "none": created, the server
#     says it asked QEMU and found the slot free, destroyed cleanly.
# shellcheck source=lib-20-libxl.sh
. "$(dirname "$0")/lib-20-libxl.sh" || exit 1

[ -f "$GH_PLUGIN" ] || skip "real plugin not installed at $GH_PLUGIN"
grep -aq 'fake plugin' "$GH_PLUGIN" && skip "$GH_PLUGIN is the fake plugin, not the real one"

yaml=/etc/xen/gpu-hostmem.yaml
saved=$GH_WORK/gpu-hostmem.yaml.saved
[ -e "$yaml" ] && cp "$yaml" "$saved"
restore_yaml() { if [ -e "$saved" ]; then cp "$saved" "$yaml"; else rm -f "$yaml"; fi; }
trap 'restore_yaml; gh_cleanup' EXIT
printf 'pci_slot: 3\n' >"$yaml"

no_server_left() {
    local left
    left=$(pgrep -af 'gpu-hostmem-ioreqd --domid' || true)
    [ -z "$left" ] || fail "gpu-hostmem-ioreqd left running: $left"
    left=$(xenstore-list /local/domain/0/gpu-hostmem 2>/dev/null || true)
    [ -z "$left" ] || fail "xenstore records left under /local/domain/0/gpu-hostmem: $left"
}

# QEMU's VGA in the slot: refused.
gh_hvm_cfg gh-libxl-slot-vga "gpu_hostmem = 1" "gpu_hostmem_size = 64" 'vga = "stdvga"'
gh_xl_fails "slot 3 of bus 0 is taken by the guest's QEMU device 00:03\.0 [0-9a-f]{4}:[0-9a-f]{4} \(VGA" \
    xl create "$GH_CFG"
gh_wait_gone gh-libxl-slot-vga 30 || fail "domain still there after the failed create"
gh_assert_only_dom0
no_server_left
ok "pci_slot 3 under QEMU's VGA: xl create fails naming QEMU's device, nothing left behind"

# The control: no QEMU device in slot 3.
name=gh-libxl-slot-free
gh_hvm_cfg "$name" "gpu_hostmem = 1" "gpu_hostmem_size = 64"
gh_xl_ok xl create "$GH_CFG"
domid=$(gh_domid "$name") || fail "domain not created"
dir=/local/domain/0/gpu-hostmem/$domid
[ "$(xenstore-read "$dir/state" 2>/dev/null)" = running ] || fail "$dir/state is not running"
bdf=$(xenstore-read "$dir/bdf" 2>/dev/null)
case "$bdf" in *:03.0) ;; *) fail "the server claims $bdf, not slot 3" ;; esac
log=/var/log/xen/gpu-hostmem-$domid.log
grep -q "pci_slot is free of QEMU's devices" "$log" ||
    { sed 's/^/    | /' "$log" >&2; fail "the server did not check the slot with QEMU ($log)"; }
log "$(grep "pci_slot is free" "$log" | tail -n 1)"
gh_xl_ok xl destroy "$name"
gh_wait_gone "$name" 30 || fail "domain still there after xl destroy"
for _ in $(seq 20); do
    pgrep -f 'gpu-hostmem-ioreqd --domid' >/dev/null || break
    sleep 1
done
gh_assert_only_dom0
no_server_left
ok "pci_slot 3 with no QEMU device there: served ($bdf), QEMU asked, destroyed cleanly"
