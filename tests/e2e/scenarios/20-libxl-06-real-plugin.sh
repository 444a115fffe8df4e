#!/usr/bin/env bash
# timeout: 900
# With the real plugin (plugin/libxl-plugin, installed at libxl's fixed path):
#   - xl create of a gpu_hostmem guest starts gpu-hostmem-ioreqd for it and
#     records it in xenstore (/local/domain/0/gpu-hostmem/<domid>/: uuid,
#     pid, state = running, bdf, bar-size, ioservid);
#   - the guest sees the device: its firmware (hvmloader, in xl dmesg) sizes
#     the BAR at the recorded BDF, and, with the test bed's guest kernel and
#     initramfs, tests/guest/hostmem-guest finds the vendor/device id and the
#     BAR size in sysfs;
#   - xl destroy stops the server: no process, no xenstore keys left.
# Skipped (exit 77, which the runner counts as a failure) when the real
# plugin is not installed in dom0.
# shellcheck source=lib-20-libxl.sh
. "$(dirname "$0")/lib-20-libxl.sh" || exit 1

[ -f "$GH_PLUGIN" ] || skip "real plugin not installed at $GH_PLUGIN"
grep -aq 'fake plugin' "$GH_PLUGIN" && skip "$GH_PLUGIN is the fake plugin, not the real one"

name=gh-libxl-real
vendor=0x1af4 device=0x10f0 # plugin/core/src/config.rs defaults
gdir=/usr/lib/gpu-hostmem/guest
in_guest=0
extra=('on_reboot = "destroy"' 'on_crash = "destroy"' 'on_poweroff = "destroy"')
if [ -f "$gdir/vmlinuz" ] && [ -f "$gdir/initrd.gz" ]; then
    in_guest=1
    extra+=("kernel = \"$gdir/vmlinuz\"" "ramdisk = \"$gdir/initrd.gz\""
        "cmdline = \"console=hvc0 iomem=relaxed xen_emul_unplug=never quiet loglevel=4 gh.hold=1 gh.run=hostmem-guest,info,$vendor,$device\"")
fi
gh_hvm_cfg "$name" "gpu_hostmem = 1" "gpu_hostmem_size = 64" "${extra[@]}"
cfg=$GH_CFG
rm -f "/var/log/xen/console/guest-$name.log"
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
bdf=$(xenstore-read "$dir/bdf" 2>/dev/null) || fail "no $dir/bdf"
bar_size=$(xenstore-read "$dir/bar-size" 2>/dev/null) || fail "no $dir/bar-size"
[ "$bar_size" = $((64 << 20)) ] || fail "$dir/bar-size is $bar_size, expected 64 MiB"
xenstore-read "$dir/ioservid" >/dev/null 2>&1 || fail "no $dir/ioservid"
[ "$(xenstore-read "/libxl/$domid/gpu-hostmem/state" 2>/dev/null)" = running ] ||
    fail "ioreqd did not report its startup on libxl's node /libxl/$domid/gpu-hostmem/state"
[ "$(xenstore-read "/libxl/$domid/gpu-hostmem/pid" 2>/dev/null)" = "$pid" ] ||
    fail "libxl's /libxl/$domid/gpu-hostmem/pid is not ioreqd's pid $pid"
ok "xl create: ioreqd $pid running for domain $domid, xenstore state complete"

# hvmloader enumerates PCI before anything boots: "pci dev SS:F bar RR size S: B".
slot=${bdf##*:}
slot=${slot%.*}
fn=${bdf##*.}
pat="\\(d$domid\\) pci dev $slot:$fn bar [0-9a-f]+ size 0*$(printf '%x' "$bar_size"):"
seen=
deadline=$(($(date +%s) + 180))
while [ "$(date +%s)" -lt "$deadline" ]; do
    seen=$(xl dmesg 2>/dev/null | grep -E "$pat" | tail -n1)
    [ -n "$seen" ] && break
    xenstore-read "/local/domain/$domid/name" >/dev/null 2>&1 ||
        fail "domain $domid went away while its firmware ran"
    sleep 2
done
[ -n "$seen" ] || fail "the guest firmware never sized a $bar_size-byte BAR at $bdf (xl dmesg)"
ok "guest firmware found the device at $bdf: ${seen#*pci dev }"

if [ "$in_guest" = 1 ]; then
    clog=/var/log/xen/console/guest-$name.log
    deadline=$(($(date +%s) + 300))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        grep -q '^GH-GUEST-DONE' "$clog" 2>/dev/null && break
        xenstore-read "/local/domain/$domid/name" >/dev/null 2>&1 || break
        sleep 2
    done
    tr -d '\r' <"$clog" 2>/dev/null | grep -E '^(RESULT|GH-GUEST)' | sed 's/^/    | /' >&2
    tr -d '\r' <"$clog" 2>/dev/null | grep -q "^RESULT name=guest-finds-device ok=1 " ||
        fail "the guest did not find PCI device $vendor:$device"
    tr -d '\r' <"$clog" | grep -q "^RESULT name=guest-bar-size ok=1 value=$bar_size\$" ||
        fail "the guest does not see a $bar_size-byte BAR"
    ok "the guest finds $vendor:$device with a $bar_size-byte BAR in sysfs"
else
    log "no test bed guest kernel/initramfs in $gdir: in-guest check not run"
fi
log "bar-base: $(xenstore-read "$dir/bar-base" 2>/dev/null)"

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
