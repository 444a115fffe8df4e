#!/usr/bin/env bash
# Build a test-only hypervisor that widens the race window of revocation
# (docs/status.md, "Revocation's pause": issue 14), for a manual run of
# scenario 40 outside CI.  Nothing here is shipped or used by CI.
#
#   tests/xen/window/build-variant.sh [--mutant]
#
# Builds Xen 4.20.4 + xen-patches/ + 0001-widen-hvm-copy-window.patch (and
# with --mutant also 0002-mutant-no-revoke-pause.patch) with CONFIG_DEBUG=y,
# the same way as tests/e2e/build's debug variant (build.d/xen.sh, its
# build root, under its build lock), into
# ${GPU_HOSTMEM_CACHE:-/var/cache/gpu-hostmem}/xen-window/<key>/ (xen,
# xen.config, System.map, version; key = hash of the inputs, so a second
# call reuses it) and prints that directory.  Only xen/ differs from the
# test bed's build, so the image matches the tools tests/e2e/run installs.
#
# 0001 adds the Xen boot parameter hvm-copy-lent-delay=<us>: __hvm_copy()
# spins that long between taking a lent page and accessing it, and Xen logs
# the delayed copies whose page was revoked meanwhile ("hvm-copy-lent-delay:
# ... revoked within the window").  0002 removes the pause of
# XEN_DMOP_revoke_pages (xen-patches/0003), the fix under test.  Then:
#
#   d=$(tests/xen/window/build-variant.sh)            # window, pause kept
#   GPU_HOSTMEM_XEN_OUT=$d GPU_HOSTMEM_XEN_CMDLINE_EXTRA=hvm-copy-lent-delay=1500 \
#       flock /var/tmp/gh-e2e.lock tests/e2e/run 40
#   -> PASS: revoke-hcall-race ok=1, writes-after-revoke=0
#   d=$(tests/xen/window/build-variant.sh --mutant)   # window, no pause
#   (same run command)
#   -> FAIL: revoke-hcall-race ok=0, writes-after-revoke > 0
#
# In both runs the serial log (serial.log of the run directory) shows the
# window being hit: grep 'revoked within the window'.  The delay must stay
# below revoke-hcall-race's 2 ms watch after each revocation.
# Runs as root (chroot), like tests/e2e/build, whose build root it needs:
# run tests/e2e/build (or tests/e2e/run) once first.
set -euo pipefail
# shellcheck source=../../e2e/lib.sh
source "$(dirname "$0")/../../e2e/lib.sh"

WIN_DIR=$GH_TOP/tests/xen/window
series=("$WIN_DIR/0001-widen-hvm-copy-window.patch")
variant=window
for a in "$@"; do
    case "$a" in
    --mutant)
        series+=("$WIN_DIR/0002-mutant-no-revoke-pause.patch")
        variant=window-mutant
        ;;
    -h | --help) sed -n '2,37p' "$0"; exit 0 ;;
    *) gh_die "usage: tests/xen/window/build-variant.sh [--mutant]" ;;
    esac
done
[ "$(id -u)" = 0 ] || gh_die "must run as root (chroot), like tests/e2e/build"

tarball=
for c in "$GH_CACHE/src/xen-$GH_XEN_VERSION.tar.xz" "$GH_SHARED/vendor/xen-$GH_XEN_VERSION.tar.xz"; do
    [ -f "$c" ] && [ "$(sha256sum <"$c" | cut -d' ' -f1)" = "$GH_XEN_SHA256" ] && { tarball=$c; break; }
done
[ -n "$tarball" ] || gh_die "no verified xen-$GH_XEN_VERSION.tar.xz (run tests/e2e/build first; GH_SHARED?)"

# The build root of the last tests/e2e/build (it keeps only one) and its
# tree directory /build/xen: hold the build lock so no build runs meanwhile.
gh_lock
broot=$(find "$GH_CACHE/buildroot" -mindepth 2 -maxdepth 2 -name done -printf '%h\n' -quit 2>/dev/null || true)
[ -n "$broot" ] || gh_die "no build root under $GH_CACHE/buildroot: run tests/e2e/build first"
BUILDROOT=$broot/root

hargs=()
for p in "${series[@]}"; do hargs+=("f:$p"); done
key=$(gh_hash "s:tarball $GH_XEN_SHA256" "s:variant $variant" \
    "s:xen-patches $(gh_patches_hash xen-patches)" "${hargs[@]}" \
    "s:buildroot $BUILDROOT" "f:$GH_E2E_DIR/build.d/xen.sh")
out=$GH_CACHE/xen-window/$key
if [ -e "$out/done" ]; then
    gh_log "xen-$variant: cached ($out)"
    echo "$out"
    exit 0
fi
rm -rf "$out"
mkdir -p "$out"

tree=$BUILDROOT/build/xen
rm -rf "$tree"
mkdir -p "$tree"
tar -xf "$tarball" -C "$tree" --strip-components=1
gh_apply_patches "$tree" xen-patches
for p in "${series[@]}"; do
    gh_log "applying tests/xen/window/$(basename "$p")"
    patch -d "$tree" -p1 --batch --forward --no-backup-if-mismatch -s <"$p" ||
        gh_die "$p does not apply on xen-patches/ (regenerate it from a Xen tree with the series)"
done

vv=-gh$key-$variant
gh_log "building the hypervisor xen-$variant (debug, key $key, log $out/build.log)"
if ! gh_chroot "$BUILDROOT" /bin/bash -s xen "$vv" "$GH_JOBS" debug \
    <"$GH_E2E_DIR/build.d/xen.sh" >"$out/build.log" 2>&1; then
    tail -n 40 "$out/build.log" >&2
    gh_die "hypervisor build failed (log $out/build.log)"
fi
cp "$tree/xen/xen" "$out/xen"
cp "$tree/xen/.config" "$out/xen.config"
cp "$tree/xen/System.map" "$out/System.map"
echo "$GH_XEN_VERSION$vv" >"$out/version"
rm -rf "$tree"
touch "$out/done"
echo "$out"
