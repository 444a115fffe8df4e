#!/usr/bin/env bash
# timeout: 1200
# libxl calls the plugin's hooks at the right points with the right domain,
# checked with the fake plugin of tests/libxl/ (which logs every call):
#   - xl create: create hook with the domain's domid, uuid, BAR size (given,
#     or the 256 MiB default) and vCPU count, before xl create returns;
#   - xl save and xl migrate of such a domain are refused, with the domain
#     left running (both xl's early check and libxl's own check);
#   - xl destroy: destroy hook for the same domid and uuid, nothing left;
#   - a domain that dies without xl destroy (the guest crashes; xl's monitor
#     restarts it, then destroys it) gets the destroy hook, and its restart
#     gets a fresh create hook.
# shellcheck source=lib-20-libxl.sh
. "$(dirname "$0")/lib-20-libxl.sh" || exit 1

gh_use_fake_plugin create=ok destroy=ok
name=gh-libxl-hooks
gh_hvm_cfg "$name" "gpu_hostmem = 1" "gpu_hostmem_size = 64"
cfg=$GH_CFG

# ------------------------------------------------------------ create, destroy
gh_xl_ok xl create -p "$cfg"
domid=$(gh_domid "$name") || fail "domain not created"
uuid=$(gh_uuid "$name")
gh_show_fake_log
gh_fake_log_has "^create domid=$domid uuid=$uuid size=64 vcpus=2 abi=2 flags=0 ready=/libxl/$domid/gpu-hostmem/state\$" ||
    fail "no create hook call for domid=$domid uuid=$uuid size=64 vcpus=2"
[ "$(grep -c . "$GH_FAKE_LOG")" = 1 ] || fail "expected exactly one plugin call after xl create"
[ "$(xenstore-read "/libxl/$domid/gpu-hostmem" 2>/dev/null)" = 64 ] ||
    fail "/libxl/$domid/gpu-hostmem does not record the BAR size"
ok "xl create: create hook for domain $domid ($uuid), 64 MiB, 2 vCPUs"

# libxl started the server the hook described (libxl__spawn_spawn), saw it
# ready on its own node, recorded its pid and detached it.
ready=$(xenstore-read "/libxl/$domid/gpu-hostmem/state" 2>/dev/null) || ready=
[ "$ready" = running ] || fail "/libxl/$domid/gpu-hostmem/state is '$ready', expected running"
spid=$(xenstore-read "/libxl/$domid/gpu-hostmem/pid" 2>/dev/null) || spid=
[ -n "$spid" ] && grep -aq fake-gpu-hostmem-server "/proc/$spid/cmdline" 2>/dev/null ||
    fail "/libxl/$domid/gpu-hostmem/pid ($spid) is not the fake server"
ok "xl create: libxl started the server ($spid), saw it ready and detached it"

# ------------------------------------------------------------ save, migrate
gh_xl_fails "domain $domid uses gpu_hostmem: it cannot be saved, migrated or replicated" \
    xl save "$name" "$GH_WORK/$name.save"
[ -e "$GH_WORK/$name.save" ] && fail "xl save created a save file before refusing"
[ "$(gh_domid "$name")" = "$domid" ] || fail "domain $domid gone after the refused xl save"
ok "xl save refused by xl, domain kept"

# With an overriding config file xl does not check: libxl must refuse itself.
plain=$GH_WORK/plain.cfg
grep -v gpu_hostmem "$cfg" >"$plain"
gh_xl_fails "a domain with gpu_hostmem enabled cannot be saved or migrated" \
    xl save "$name" "$GH_WORK/$name.save2" "$plain"
[ "$(gh_domid "$name")" = "$domid" ] || fail "domain $domid gone after the refused libxl save"
xl list "$name" | awk 'NR == 2 { print $5 }' | grep -q p || fail "domain $domid no longer paused after the refused save"
ok "libxl_domain_suspend refused by libxl itself, domain kept paused"

# Migration to this host through a local "ssh" (env): refused before sending.
gh_xl_fails "uses gpu_hostmem: it cannot be saved, migrated or replicated" \
    xl migrate -s env "$name" ""
[ "$(gh_domid "$name")" = "$domid" ] || fail "domain $domid gone after the refused migration"
[ "$(xl list | awk -v n="$name" '$1 ~ n' | wc -l)" = 1 ] || fail "a second copy of $name appeared"
ok "xl migrate refused, domain kept"

[ "$(grep -c . "$GH_FAKE_LOG")" = 1 ] || { gh_show_fake_log; fail "plugin called during refused save/migrate"; }

gh_xl_ok xl destroy "$name"
gh_wait_gone "$name" 30 || fail "domain still there after xl destroy"
gh_show_fake_log
gh_fake_log_has "^destroy domid=$domid uuid=$uuid size=64 vcpus=2 abi=2 flags=0\$" ||
    fail "no destroy hook call for domid=$domid uuid=$uuid"
gh_assert_only_dom0
[ -d "/proc/$spid" ] && grep -aq fake-gpu-hostmem-server "/proc/$spid/cmdline" 2>/dev/null &&
    fail "the fake server $spid still runs after xl destroy"
ok "xl destroy: destroy hook for domain $domid ($uuid), nothing left"

# ------------------------------------------------------------ default size
: >"$GH_FAKE_LOG"
gh_hvm_cfg gh-libxl-default "gpu_hostmem = 1"
cfg=$GH_CFG
gh_xl_ok xl create -p "$cfg"
d2=$(gh_domid gh-libxl-default) || fail "domain not created"
gh_fake_log_has "^create domid=$d2 .* size=2048 " || { gh_show_fake_log; fail "default BAR size is not 2048 MiB"; }
gh_xl_ok xl destroy gh-libxl-default
gh_wait_gone gh-libxl-default 30 || fail "gh-libxl-default still there"
ok "default gpu_hostmem_size is 2048 MiB"

# ------------------------------------------------------------ paging memory
# Xen maps lent pages with 4 KiB p2m entries, whose page tables come from
# the guest's paging memory: libxl adds the BAR's share to the default
# (libxl-patches/0005), and leaves an explicit shadow_memory alone. Paused
# guests, same memory and vCPUs; the value is Xen's
# (xc_get_paging_mempool_size, through gpu-hostmem status, which reports it
# even when nothing else is found).
shadow_kb() {
    gpu-hostmem status --json "$(gh_domid "$1")" 2>/dev/null |
        sed -n 's/.*"xen_paging_kib": \([0-9]*\).*/\1/p' | head -n1
}
# What a fully lent BAR of $1 MiB needs, by the formula of
# gpu_hostmem_core::limits::bar_paging_kib (plugin/core/src/limits.rs), not
# libxl's: one 4 KiB table per 2 MiB, per GiB and per 512 GiB the BAR
# touches, at least one of each (a BAR is aligned to its size).
bar_paging_kib() {
    local b=$(($1 << 20)) l1=$((2 << 20)) l2=$((1 << 30)) l3=$((512 << 30))
    echo $((4 * ((b + l1 - 1) / l1 + (b + l2 - 1) / l2 + (b + l3 - 1) / l3)))
}
# The smallest BARs (1 MiB, under one L1 table's span, and 2 MiB), 4 GiB
# and the largest (64 GiB), with what the largest's creation takes from the
# host's free memory (xl info, MiB) against a guest without gpu_hostmem.
declare -A pkb freed
sizes=(min:1 small:2 on:4096 max:65536)
for v in off:"gpu_hostmem = 0" explicit:"shadow_memory = 12" "${sizes[@]}"; do
    k=${v%%:*}
    n=gh-libxl-paging-$k
    case "${v#*:}" in
    [0-9]*) extra=("gpu_hostmem = 1" "gpu_hostmem_size = ${v#*:}") ;;
    "gpu_hostmem = 0") extra=("${v#*:}") ;;
    *) extra=("${v#*:}" "gpu_hostmem = 1") ;;
    esac
    gh_hvm_cfg "$n" "${extra[@]}"
    free0=$(xl info free_memory)
    gh_xl_ok xl create -p "$GH_CFG"
    freed[$k]=$((free0 - $(xl info free_memory)))
    pkb[$k]=$(shadow_kb "$n")
    gh_xl_ok xl destroy "$n"
    gh_wait_gone "$n" 30 || fail "$n still there"
done
log "paging memory (KiB): without gpu_hostmem ${pkb[off]}, explicit 12 MiB ${pkb[explicit]}," \
    "1 MiB BAR ${pkb[min]}, 2 MiB ${pkb[small]}, 4 GiB ${pkb[on]}, 64 GiB ${pkb[max]}"
log "host memory taken by creation (MiB): without gpu_hostmem ${freed[off]}, 64 GiB BAR ${freed[max]}"
[ -n "${pkb[off]}" ] || fail "no paging memory reported for the guest without gpu_hostmem"
[ "$(bar_paging_kib 65536)" = $((4 * (32768 + 64 + 1))) ] || fail "bar_paging_kib here is not limits.rs's"
bad=
for v in "${sizes[@]}"; do
    k=${v%%:*} mib=${v#*:}
    want=$(bar_paging_kib "$mib")
    got=$((${pkb[$k]:-0} - pkb[off]))
    [ -n "${pkb[$k]}" ] && [ "$got" = "$want" ] ||
        { log "a $mib MiB BAR should add $want KiB of paging memory, it added $got"; bad+=" $mib"; }
done
[ -z "$bad" ] || fail "paging memory wrong for BARs of$bad MiB (${pkb[off]} KiB without a BAR)"
d=$((freed[max] - freed[off]))
[ "$d" -ge 120 ] && [ "$d" -le 136 ] ||
    fail "a 64 GiB BAR should take about 128 MiB more of the host's memory (took $d MiB more)"
[ "${pkb[explicit]}" = 12288 ] || fail "explicit shadow_memory = 12 gave ${pkb[explicit]} KiB"
ok "paging memory: BARs of 1 MiB, 2 MiB, 4 GiB, 64 GiB add $(bar_paging_kib 1), $(bar_paging_kib 2), $(bar_paging_kib 4096), $(bar_paging_kib 65536) KiB; an explicit shadow_memory is kept"

# ------------------------------------------------------------ death without xl destroy
kernel=
for c in "${GH_GUEST_KERNEL:-}" /usr/lib/gpu-hostmem/guest/vmlinuz /var/lib/xen/images/vmlinuz; do
    [ -n "$c" ] && [ -f "$c" ] && { kernel=$c; break; }
done
[ -n "$kernel" ] || kernel=$(find /usr/lib/gpu-hostmem /var/lib/xen /boot -name 'vmlinuz*' -type f 2>/dev/null | head -n1)
[ -n "$kernel" ] || fail "no guest kernel found for the crash/restart check (set GH_GUEST_KERNEL)"

# The kernel panics (no root file system) and, with panic=1, reports a crash
# (or a reboot) to Xen; xl's monitor then destroys and restarts the domain.
: >"$GH_FAKE_LOG"
name=gh-libxl-crash
gh_hvm_cfg "$name" "gpu_hostmem = 1" "gpu_hostmem_size = 32" \
    "kernel = \"$kernel\"" 'extra = "console=hvc0 panic=1 root=/dev/gh-none"' \
    'on_crash = "restart"' 'on_reboot = "restart"'
cfg=$GH_CFG
gh_xl_ok xl create "$cfg"
first=$(gh_domid "$name") || fail "domain not created"
log "waiting for domain $first to crash and be restarted by xl's monitor"
for _ in $(seq 240); do
    [ "$(grep -c '^create ' "$GH_FAKE_LOG")" -ge 2 ] && break
    sleep 1
done
gh_show_fake_log
if ! gh_fake_log_has "^destroy domid=$first .* size=32 "; then
    log "guest console:"
    tail -n 30 "/var/log/xen/console/guest-$name.log" 2>/dev/null | sed 's/^/    | /' >&2
    fail "no destroy hook after the crash of domain $first"
fi
second=$(awk -v f="$first" '/^create / { split($2, a, "="); if (a[2] != f) { print a[2]; exit } }' "$GH_FAKE_LOG")
[ -n "$second" ] || fail "no create hook for the restarted domain"
# Order: create(first), destroy(first), create(second).
awk -v f="$first" -v s="$second" '
    $0 ~ "^create domid=" f " "  { c1 = NR }
    $0 ~ "^destroy domid=" f " " { d1 = NR }
    $0 ~ "^create domid=" s " "  { c2 = NR }
    END { exit !(c1 && d1 && c2 && c1 < d1 && d1 < c2) }' "$GH_FAKE_LOG" ||
    fail "hooks not in the order create($first), destroy($first), create($second)"
ok "crash: destroy hook for $first, restart: create hook for $second"

# Stop the crash/restart loop; xl destroy may race with a restart, so retry.
for _ in $(seq 30); do
    timeout 60 xl destroy "$name" >/dev/null 2>&1 || true
    sleep 2
    gh_domid "$name" >/dev/null || { sleep 3; gh_domid "$name" >/dev/null || break; }
done
gh_domid "$name" >/dev/null && fail "could not stop $name"
gh_assert_only_dom0
creates=$(grep -c '^create ' "$GH_FAKE_LOG")
destroys=$(grep -c '^destroy ' "$GH_FAKE_LOG")
[ "$creates" = "$destroys" ] || { gh_show_fake_log; fail "$creates create hooks but $destroys destroy hooks"; }
ok "every create hook ($creates) matched by a destroy hook"
