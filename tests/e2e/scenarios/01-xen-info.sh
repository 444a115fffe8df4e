# Scenario: the booted hypervisor and privcmd module are the ones this test
# bed BUILT (not Debian's packaged ones), xl works, and programs built
# against Debian's stock libxenlight still work beside ours.
# timeout: 60
source /usr/lib/gpu-hostmem/e2e/lib.sh
want_xen=$(cat /etc/gpu-hostmem/xen-version)
got_xen=$(xl info | awk -F': ' '$1 ~ /^xen_version/ { print $2 }')
got_extra=$(xl info | awk -F': ' '$1 ~ /^xen_extra/ { print $2 }')
check xen-is-ours "want=$want_xen,got=$got_xen" [ "$got_xen" = "$want_xen" ]
check xen-extra "$got_extra" [ "4.20$got_extra" = "$want_xen" ]
# dom0 is of the kind tests/e2e/run booted (GPU_HOSTMEM_DOM0: pv or pvh).
want_dom0=$(cat /etc/gpu-hostmem/dom0-mode 2>/dev/null || echo pv)
got_dom0=$(cat /sys/hypervisor/guest_type 2>/dev/null)
check dom0-mode "want=$want_dom0,got=$got_dom0" [ "${got_dom0,,}" = "$want_dom0" ]
check xen-hap "$(xl info | awk -F': ' '$1 ~ /^virt_caps/ { print $2 }' | tr ' ' ,)" \
    sh -c 'xl info | grep -E "^virt_caps" | grep -qw hap'
mod=$(modinfo -n xen-privcmd 2>/dev/null)
check privcmd-from-updates "$mod" sh -c "case '$mod' in */updates/*) true ;; *) false ;; esac"
# The file in updates/ is the one we built, and the loaded module is an
# out-of-tree build (taint O), which Debian's in-tree xen-privcmd is not.
got_sum=$(sha256sum <"$mod" | cut -d' ' -f1)
check privcmd-file-is-ours "$got_sum" [ "$got_sum" = "$(cat /etc/gpu-hostmem/privcmd-sha256)" ]
taint=$(cat /sys/module/xen_privcmd/taint 2>/dev/null)
check privcmd-loaded-out-of-tree "taint=$taint" sh -c "case '$taint' in *O*) true ;; *) false ;; esac"
# The hand-kept copy of the privcmd uAPI (examples/privcmd-hostmem.h, which
# examples, tests and the plugin's Rust structs follow) is the patched
# kernel header's: tests/kernel/uapi-layout.c checks layouts at compile
# time (a mismatch leaves it out of dom0) and ioctl numbers when run.
if command -v uapi-layout >/dev/null 2>&1; then
    uapi-layout >/tmp/uapi-layout 2>&1
    rc=$?
    cat /tmp/uapi-layout
else
    rc=missing
fi
check uapi-copy-matches-kernel "rc=$rc" [ "$rc" = 0 ]
xl_path=$(readlink -f /usr/lib/xen-4.20/bin/xl)
check xl-is-ours "$(cat /etc/gpu-hostmem/tools-key)" \
    cmp -s /usr/lib/xen-4.20/bin/xl /usr/lib/gpu-hostmem/built/xl
# libxl: ours has a soname of its own (its public structs differ from the
# stock 4.20 library's), our programs load it, and a program built against
# the stock library (Debian's xen-init-dom0) still loads the stock one and
# runs without corrupting its stack.
ldd /usr/lib/xen-4.20/bin/xl >/tmp/xl-ldd 2>&1
check xl-loads-our-libxenlight "$(grep -o 'libxenlight[^ ]*' /tmp/xl-ldd | head -n 1)" \
    grep -q 'libxenlight\.so\.4\.20\.gpuhostmem1 ' /tmp/xl-ldd
ldd /usr/lib/gpu-hostmem/debian/xen-init-dom0 >/tmp/init-ldd 2>&1
check stock-program-loads-stock-libxenlight "$(grep -o 'libxenlight[^ ]*' /tmp/init-ldd | head -n 1)" \
    grep -q 'libxenlight\.so\.4\.20 ' /tmp/init-ldd
/usr/lib/gpu-hostmem/debian/xen-init-dom0 >/tmp/init-out 2>&1
rc=$?
cat /tmp/init-out
check stock-xen-init-dom0-runs "rc=$rc" sh -c "[ $rc = 0 ] && ! grep -q 'stack smashing' /tmp/init-out"
check dom0-pool-recorded "$(xenstore-read /local/pool/0/name 2>&1)" xenstore-exists /local/pool/0/name
xl list >/tmp/xl-list 2>&1
cat /tmp/xl-list
check xl-list "dom0" grep -q "^Domain-0" /tmp/xl-list
exit "$GH_FAILED"
