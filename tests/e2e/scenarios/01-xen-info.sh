# Scenario: the booted hypervisor and privcmd module are the ones this test
# bed BUILT (not Debian's packaged ones), and xl works.
# timeout: 60
source /usr/lib/gpu-hostmem/e2e/lib.sh
want_xen=$(cat /etc/gpu-hostmem/xen-version)
got_xen=$(xl info | awk -F': ' '$1 ~ /^xen_version/ { print $2 }')
got_extra=$(xl info | awk -F': ' '$1 ~ /^xen_extra/ { print $2 }')
check xen-is-ours "want=$want_xen,got=$got_xen" [ "$got_xen" = "$want_xen" ]
check xen-extra "$got_extra" [ "4.20$got_extra" = "$want_xen" ]
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
xl_path=$(readlink -f /usr/lib/xen-4.20/bin/xl)
check xl-is-ours "$(cat /etc/gpu-hostmem/tools-key)" \
    cmp -s /usr/lib/xen-4.20/bin/xl /usr/lib/gpu-hostmem/built/xl
xl list >/tmp/xl-list 2>&1
cat /tmp/xl-list
check xl-list "dom0" grep -q "^Domain-0" /tmp/xl-list
exit "$GH_FAILED"
