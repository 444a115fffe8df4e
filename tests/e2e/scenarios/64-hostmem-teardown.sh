#!/usr/bin/env bash
# Scenario (issue 7, 5): teardown. (a) xl destroy with pages lent leaves no
# lent page (kernel's query through the CLI), no IOREQ server process, no
# xenstore keys; a second xl destroy and `gpu-hostmem teardown` (twice) are
# harmless. (b) A guest that powers itself off (on_poweroff = "destroy")
# after using the BAR leaves the same nothing.
# timeout: 600
set -u
source "$(dirname "$0")/hostmem-common.sh"
name=hm-td
hm_start "$name" "hostmem-guest,check,$HM_VENDOR,$HM_DEVICE,0,0x400000" 0:4M || exit 1
gh_guest_wait "$name" 300 || result "$name-guest-run" 0 "did-not-finish"
lent=$(hm_kernel_lent "$HM_DOM")
check "$name-lent-before" "kernel_lent=$lent" [ "${lent:-0}" = 1024 ]
hm_destroy_clean "$name"
out=$(timeout 60 xl destroy "$name" 2>&1); rc=$?
result "$name-destroy-twice" $([ "$rc" != 124 ] && echo 1 || echo 0) "rc=$rc:$(echo "$out" | head -n1 | tr ' ' _)"
for i in 1 2; do
    out=$(timeout 60 gpu-hostmem teardown "$HM_DOM" 2>&1); rc=$?
    echo "$out" | sed "s/^/[teardown $i] /"
    check "$name-cli-teardown-$i" "rc=$rc" [ "$rc" = 0 ]
done
check "$name-still-clean" "domid=$HM_DOM" hm_gone "$HM_DOM" "$HM_IPID"
kill -TERM "$HM_BPID"; wait "$HM_BPID" 2>/dev/null

# (b) the guest shuts itself down.
name=hm-td2
gh_guest_cfg "$name" hvm "hostmem-guest,check,$HM_VENDOR,$HM_DEVICE,0,0x400000" \
    "gpu_hostmem = 1" "gpu_hostmem_size = 64" >/dev/null
sed -i 's/ gh.hold=1//' "/tmp/$name.cfg"
HM_GUESTS+=("$name")
rm -f "$GH_CONSOLE_DIR/guest-$name.log"
timeout 120 xl create -p "/tmp/$name.cfg" >/dev/null 2>&1 || { result "$name-create" 0 failed; exit 1; }
HM_DOM=$(xl domid "$name")
HM_IPID=$(xenstore-read "/local/domain/0/gpu-hostmem/$HM_DOM/pid" 2>/dev/null || true)
hm_backend "$HM_DOM" "/tmp/$name.backend" 0:4M || { result "$name-backend" 0 failed; exit 1; }
xl unpause "$name"
t=$(gh_now)
if gh_wait_gone "$name" 300; then
    result "$name-poweroff" 1 "$(gh_since "$t")s"
else
    result "$name-poweroff" 0 "still-running"
fi
hm_console "$name" | grep -E 'RESULT|GH-GUEST'
hm_console "$name" | grep -q 'RESULT name=guest-reads-pattern ok=1' ||
    result "$name-guest-read" 0 "guest-did-not-read-the-pattern"
for _ in $(seq 1 20); do [ -n "$HM_IPID" ] && [ -d "/proc/$HM_IPID" ] || break; sleep 0.5; done
check "$name-clean" "domid=$HM_DOM" hm_gone "$HM_DOM" "$HM_IPID"
exit "$GH_FAILED"
