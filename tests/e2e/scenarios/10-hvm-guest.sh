# Scenario: an HVM guest (QEMU device model, direct kernel boot, hvc0) runs
# the generic in-guest self test; then xl destroy and nothing is left.
# timeout: 900
source /usr/lib/gpu-hostmem/e2e/lib.sh
# xl's default device set, PV keyboard included (dom0/lib.sh, gh_guest_cfg).
export GH_GUEST_VKB=1
gh_guest_cycle hvm1 hvm gh-selftest,16 600
check hvm1-guest-type "$(gh_guest_result hvm1 guest-type)" \
    [ "$(gh_guest_result hvm1 guest-type)" = HVM ]
check hvm1-guest-ram "$(gh_guest_result hvm1 guest-ram)" gh_guest_result hvm1 guest-ram
exit "$GH_FAILED"
