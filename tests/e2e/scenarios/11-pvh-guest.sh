# Scenario: a PVH guest runs the generic in-guest self test; then xl
# destroy and nothing is left.
# timeout: 600
source /usr/lib/gpu-hostmem/e2e/lib.sh
gh_guest_cycle pvh1 pvh gh-selftest,16 400
check pvh1-guest-type "$(gh_guest_result pvh1 guest-type)" \
    [ "$(gh_guest_result pvh1 guest-type)" = PVH ]
check pvh1-guest-ram "$(gh_guest_result pvh1 guest-ram)" gh_guest_result pvh1 guest-ram
exit "$GH_FAILED"
