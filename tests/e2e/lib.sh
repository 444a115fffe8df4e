# shellcheck shell=bash
# Common helpers of the end-to-end test bed (sourced by build, run, demo).
#
# Everything downloaded or built lives under $GH_CACHE (default
# /var/cache/gpu-hostmem), outside the repository, keyed by the sha256 of the
# inputs of each product, so that a second run rebuilds only what changed.

shopt -s inherit_errexit
GH_E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GH_TOP=$(cd "$GH_E2E_DIR/../.." && pwd)
GH_SHARED=${GH_SHARED:-$(cd "$GH_TOP/.." && pwd)/shared}
GH_CACHE=${GPU_HOSTMEM_CACHE:-/var/cache/gpu-hostmem}
GH_MIRROR=${GPU_HOSTMEM_MIRROR:-http://deb.debian.org/debian}
GH_SUITE=trixie
GH_JOBS=${GPU_HOSTMEM_JOBS:-2}
GH_XEN_VERSION=4.20.4
GH_XEN_SHA256=77c8c7d1f250f41d85d76838bf8f0bf7bf8b08f911085d8b58046e39240d2b72
GH_XEN_URL=https://downloads.xenproject.org/release/xen/$GH_XEN_VERSION/xen-$GH_XEN_VERSION.tar.gz
# The git tree of the Xen source the series targets (RELEASE-4.20.4) as the
# vendored tarball unpacks, without .gitarchive-info (whose contents git
# archive substitutes): a download is accepted only if it unpacks to it
# (gh_xen_tree), since the release tarball's own hash is not pinned here.
GH_XEN_TREE=82851e391a5e72efd44014b2ca3ab747a181ffe1
GH_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

GH_T0=${GH_T0:-$(date +%s)}
export GH_T0

gh_log() { printf '[e2e %s +%4ss] %s\n' "$(date -u +%H:%M:%S)" "$(($(date +%s) - GH_T0))" "$*" >&2; }
gh_die() { printf '[e2e] ERROR: %s\n' "$*" >&2; exit 1; }

# gh_step NAME CMD...: run a step, log its duration, append it to the timing
# log.  A failing command inside the step stops the whole script (errexit
# stays in force: the step is not run in a condition), and the EXIT trap
# names the step that failed.
GH_CUR_STEP=
gh_on_exit() {
    local rc=$?
    if [ "$rc" != 0 ] && [ -n "$GH_CUR_STEP" ]; then
        printf '[e2e] FAILED in step "%s" (exit %s)\n' "$GH_CUR_STEP" "$rc" >&2
    fi
}
trap gh_on_exit EXIT
gh_step() {
    local _step_name=$1 _step_t0
    shift
    _step_t0=$(date +%s)
    GH_CUR_STEP=$_step_name
    gh_log "begin: $_step_name"
    "$@"
    GH_CUR_STEP=
    gh_log "end:   $_step_name ($(($(date +%s) - _step_t0)) s)"
    if [ -n "${GH_TIMINGS:-}" ]; then
        printf '%s\t%s\n' "$_step_name" "$(($(date +%s) - _step_t0))" >>"$GH_TIMINGS"
    fi
}

# gh_hash ARGS...: sha256 over strings and file contents. "f:PATH" hashes a
# file (or every file below a directory, with relative names), "s:TEXT" a string.
# gh_xen_tree TARBALL: the git tree id of the Xen source in TARBALL, without
# what an upstream release tarball adds to git's (.gitarchive-info, the QEMU
# trees in tools/, mini-os in extras/), which the build does not use.
gh_xen_tree() {
    local d top tree
    d=$(mktemp -d)
    tar xf "$1" -C "$d" || { rm -rf "$d"; return 1; }
    top=$d/xen-$GH_XEN_VERSION
    [ -d "$top" ] || { rm -rf "$d"; return 1; }
    rm -rf "$top/.gitarchive-info" "$top/tools/qemu-xen" "$top/tools/qemu-xen-traditional" "$top/extras"
    tree=$(cd "$top" && git init -q && git add -A -f . && git write-tree)
    rm -rf "$d"
    echo "$tree"
}

gh_hash() {
    local a
    for a in "$@"; do
        case "$a" in
        f:*)
            local p=${a#f:}
            if [ -d "$p" ]; then
                (cd "$p" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum)
            elif [ -e "$p" ]; then
                printf 'file %s\n' "$(basename "$p")"
                sha256sum <"$p"
            else
                printf 'missing %s\n' "$p"
            fi
            ;;
        s:*) printf 'str %s\n' "${a#s:}" ;;
        *) gh_die "gh_hash: bad argument $a" ;;
        esac
    done | sha256sum | cut -c1-16
}

# gh_patches DIR: the patch files of a series, in filename order.
gh_patches() {
    local d=$GH_TOP/$1
    [ -d "$d" ] || return 0
    find "$d" -maxdepth 1 -type f -name '*.patch' | LC_ALL=C sort
}

# gh_patches_hash DIR: hash of the patch series' names and contents.
gh_patches_hash() {
    local args=() p
    while read -r p; do args+=("f:$p"); done < <(gh_patches "$1")
    gh_hash "s:series $1" "${args[@]}"
}

# gh_apply_patches TREE DIR: apply a series in filename order.
gh_apply_patches() {
    local tree=$1 dir=$2 p n=0
    while read -r p; do
        [ -n "$p" ] || continue
        if ! grep -q '^--- ' "$p"; then
            gh_log "skipping $dir/$(basename "$p") (no diff: cover letter?)"
            continue
        fi
        gh_log "applying $dir/$(basename "$p")"
        patch -d "$tree" -p1 --batch --forward --no-backup-if-mismatch -s <"$p" ||
            gh_die "patch $p does not apply to $tree"
        n=$((n + 1))
    done < <(gh_patches "$dir")
    gh_log "$dir: $n patch(es) applied"
}

# gh_lock: serialise builds (other sessions may run the test bed concurrently).
gh_lock() {
    mkdir -p "$GH_CACHE"
    exec 9>"$GH_CACHE/.build.lock"
    if ! flock -n 9; then
        gh_log "waiting for another build to finish (lock $GH_CACHE/.build.lock, max 3600 s)"
        flock -w 3600 9 || gh_die "could not take $GH_CACHE/.build.lock within 3600 s"
    fi
}

# Private apt configuration for trixie: never touches /etc/apt.
gh_apt_opts() {
    local d=$GH_CACHE/apt
    printf '%s\n' -o "Dir::Etc::SourceList=$d/sources.list" -o "Dir::Etc::SourceParts=/dev/null" \
        -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=/dev/null" \
        -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache" -o "Dir::State::status=$d/status" \
        -o "APT::Architecture=amd64" -o "Acquire::Retries=3" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
}

gh_apt() {
    local cmd=$1 opts
    shift
    mapfile -t opts < <(gh_apt_opts)
    timeout 900 "$cmd" "${opts[@]}" "$@"
}

# Ensure the private trixie index exists and is recent (refresh after 12 h or
# when GPU_HOSTMEM_REFRESH=1); an old index is kept if the refresh fails.
gh_apt_update() {
    local d=$GH_CACHE/apt stamp
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
    : >>"$d/status"
    printf 'deb [signed-by=%s] %s %s main\n' "$GH_KEYRING" "$GH_MIRROR" "$GH_SUITE" >"$d/sources.list.new"
    if ! cmp -s "$d/sources.list.new" "$d/sources.list" 2>/dev/null; then
        mv "$d/sources.list.new" "$d/sources.list"
        rm -f "$d/updated"
    else
        rm -f "$d/sources.list.new"
    fi
    stamp=$d/updated
    if [ "${GPU_HOSTMEM_REFRESH:-0}" = 1 ] || [ ! -e "$stamp" ] ||
        [ -n "$(find "$stamp" -mmin +720 2>/dev/null)" ]; then
        gh_log "apt update ($GH_SUITE, private config in $d)"
        if gh_apt apt-get -q update >"$d/update.log" 2>&1; then
            touch "$stamp"
        elif [ -e "$stamp" ]; then
            gh_log "WARNING: apt update failed, using the previous index (see $d/update.log)"
        else
            cat "$d/update.log" >&2
            gh_die "apt update of $GH_SUITE failed"
        fi
    fi
}

# gh_apt_field PKG FIELD: a field of the candidate version of PKG.
gh_apt_field() {
    gh_apt apt-cache show --no-all-versions "$1" 2>/dev/null |
        awk -v f="$2:" '$1 == f { sub(/^[^:]*: */, ""); print; exit }'
}

# gh_fetch_deb PKG VERSION: download a .deb into the cache, print its path.
gh_fetch_deb() {
    local pkg=$1 ver=$2 d=$GH_CACHE/debs f
    mkdir -p "$d"
    f=$(find "$d" -maxdepth 1 -name "${pkg}_${ver//:/%3a}_*.deb" | head -n1)
    if [ -z "$f" ]; then
        gh_log "downloading $pkg=$ver"
        (cd "$d" && gh_apt apt-get -q download "$pkg=$ver" >/dev/null) || gh_die "download of $pkg=$ver failed"
        f=$(find "$d" -maxdepth 1 -name "${pkg}_*.deb" -newer "$GH_CACHE/apt/sources.list" | grep -F "_${ver//:/%3a}_" | head -n1)
        [ -n "$f" ] || f=$(find "$d" -maxdepth 1 -name "${pkg}_*${ver##*:}*.deb" | head -n1)
        [ -n "$f" ] || gh_die "downloaded $pkg but cannot find the .deb in $d"
    fi
    echo "$f"
}

# gh_resolve_kernel: sets GH_KVER (e.g. 6.12.57+deb13-amd64), GH_KPKGVER
# (Debian version, e.g. 6.12.57-1): the kernel image, headers and source of
# one and the same trixie upload.
gh_resolve_kernel() {
    local dep abi ver src
    dep=$(gh_apt_field linux-headers-amd64 Depends)
    abi=$(printf '%s\n' "$dep" | grep -o 'linux-headers-6\.12\.[^ ,]*-amd64' | head -n1)
    [ -n "$abi" ] || gh_die "cannot resolve the trixie 6.12 kernel from linux-headers-amd64 (Depends: $dep)"
    GH_KVER=${abi#linux-headers-}
    ver=$(gh_apt_field "linux-headers-$GH_KVER" Version)
    [ -n "$ver" ] || gh_die "no version for linux-headers-$GH_KVER"
    [ "$(gh_apt_field "linux-image-$GH_KVER-unsigned" Version)" = "$ver" ] ||
        gh_die "linux-image-$GH_KVER-unsigned does not exist in version $ver"
    src=$(gh_apt_field linux-source-6.12 Version)
    [ "$src" = "$ver" ] || gh_die "linux-source-6.12 is $src but the kernel is $ver: archive out of sync, retry later"
    GH_KPKGVER=$ver
    gh_log "kernel: $GH_KVER (Debian $GH_KPKGVER)"
}

# gh_chroot ROOT CMD...: run CMD in the build root, in a private mount
# namespace (mounts vanish with the process even if it is killed).
gh_chroot() {
    local root=$1
    shift
    mkdir -p "$GH_CACHE/ccache" "$root/ccache"
    timeout --kill-after=30 "${GH_CHROOT_TIMEOUT:-3600}" unshare -m --propagation private -- /bin/bash -c '
        set -e
        r=$1; c=$2; shift 2
        mount -t proc proc "$r/proc"
        mount --rbind /dev "$r/dev"
        mount -t tmpfs tmpfs "$r/tmp"
        mount --bind "$c" "$r/ccache"
        exec chroot "$r" /usr/bin/env -i PATH=/usr/lib/ccache:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
            LANG=C.UTF-8 CCACHE_DIR=/ccache CCACHE_MAXSIZE=5G "$@"
    ' gh-chroot "$root" "$GH_CACHE/ccache" "$@"
}
