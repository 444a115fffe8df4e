# Scenario: an HVM guest (QEMU device model, direct kernel boot, hvc0) runs
# the generic in-guest self test; then xl destroy and nothing is left.
# Then the post-mortem watcher of dom0's init (tests/xen/xen-postmortem.c),
# which CI's classifier trusts to tell a triple fault of the emulator from
# broken guest memory (user-mode B, docs/testbed-fault.md), on a guest that
# triple-faults on purpose: its kernel booted with reboot=t, its program
# `reboot -d 10 -f` (the kernel then loads an empty IDT and executes int3).
# While it waits, paused: the walk from its CR3 to the IDT's #DF gate finds
# a present gate to the kernel's handler (the positive control: a walk of
# the wrong fields or frames would not). After the triple fault: the guest
# is kept, walked (verdict idt-unreadable, the IDT's limit 0) and destroyed
# by the watcher, and nothing is left; the watcher announced it while it
# lived.
# timeout: 900
source /usr/lib/gpu-hostmem/e2e/lib.sh
# xl's default device set, PV keyboard included (dom0/lib.sh, gh_guest_cfg).
export GH_GUEST_VKB=1
gh_guest_cycle hvm1 hvm gh-selftest,16 600
check hvm1-guest-type "$(gh_guest_result hvm1 guest-type)" \
    [ "$(gh_guest_result hvm1 guest-type)" = HVM ]
check hvm1-guest-ram "$(gh_guest_result hvm1 guest-ram)" gh_guest_result hvm1 guest-ram

unset GH_GUEST_VKB
name=hvm-tf
if ! gh_postmortem_running; then
    result pm-watcher-running 0 "no watcher (pid file $GH_POSTMORTEM_PID)"
    exit "$GH_FAILED"
fi
result pm-watcher-running 1 "pid=$(cat "$GH_POSTMORTEM_PID")"
GH_GUEST_CMDLINE_EXTRA="$(cat /etc/gpu-hostmem/guest-cmdline-extra 2>/dev/null) reboot=t" \
    gh_guest_cfg "$name" hvm reboot,-d,10,-f >/dev/null
reg=$(grep "^$name " "$GH_POSTMORTEM_NAMES" | tail -n1)
check pm-guest-registered "$reg" [ "$reg" = "$name 1" ]
if ! domid=$(gh_guest_create "$name"); then
    result pm-create 0 "xl create failed"
    exit "$GH_FAILED"
fi
result pm-create 1 "domid=$domid"
if gh_guest_wait "$name" 300 '^GH-GUEST-RUN'; then
    xl pause "$domid"
    live=$(xen-postmortem --walk "$domid" "$name" 2>&1)
    xl unpause "$domid"
    echo "$live"
    check pm-live-idt-readable "$(printf '%s' "$live" | grep -o 'verdict=[a-z-]*')" \
        grep -q 'verdict=idt-readable; gate8: gpa [0-9a-fx]* present type 14 sel 0x10 ist [0-9] handler 0xffffffff' <<<"$live"
    check pm-live-pf-gate "$(printf '%s' "$live" | grep -o 'gate14: [^(]*')" \
        grep -q 'gate14: gpa [0-9a-fx]* present type 14 sel 0x10 ist 0 handler 0xffffffff' <<<"$live"
else
    result pm-live-idt-readable 0 "the guest did not start its program"
fi
# The triple fault, 10 s after the program started: kept, walked, destroyed.
gh_wait_gone "$name" 120
# The watcher logs "destroyed" when its `xl destroy` has returned, which
# is after the domain is gone: wait for that line too (up to 30 s).
for _ in $(seq 1 60); do
    grep -q "^POSTMORTEM d=$domid name=$name destroyed " "$GH_POSTMORTEM_LOG" && break
    sleep 0.5
done
log=$(grep -E "^POSTMORTEM d=$domid (v=0 )?name=$name " "$GH_POSTMORTEM_LOG")
echo "$log"
# Announced while it lived (the classifier then asks a B of it for its
# post-mortem), before anything about its death.
check pm-announced "$(head -n1 <<<"$log")" \
    [ "$(head -n1 <<<"$log")" = "POSTMORTEM d=$domid name=$name watched" ]
dead=$(grep -v ' watched$' <<<"$log")
check pm-dead-walked "$(printf '%s' "$dead" | head -n1 | grep -o 'shutdown=[0-9]* .*verdict=[a-z-]*' | cut -c1-60)" \
    grep -q "shutdown=1 .* verdict=idt-unreadable; gate8: beyond the IDT's limit 0;" <<<"$dead"
check pm-dead-destroyed "$(printf '%s' "$dead" | tail -n1 | cut -c1-80)" \
    grep -q "destroyed (xl destroy: 0)" <<<"$dead"
sleep 1
check pm-clean "domid=$domid" gh_clean "$domid"
# What the watcher costs dom0 (it polls Xen every second): its CPU time so
# far, in clock ticks (utime, stime), beside dom0's uptime.
pid=$(cat "$GH_POSTMORTEM_PID")
echo "post-mortem watcher $pid: utime+stime $(awk '{ print $14 "+" $15 }' "/proc/$pid/stat") ticks of $(getconf CLK_TCK)/s after $(cut -d' ' -f1 /proc/uptime) s of uptime"
exit "$GH_FAILED"
