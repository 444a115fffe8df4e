#!/bin/sh
# Manual probe, not run by CI (run.sh).  Run inside the probe's root: for
# the vtest server's processes (listener, per-client proxy, render server
# and its per-context worker) and the client, the memfd and dma-buf VMAs
# with their VmFlags, the memfd/dma-buf fds held, the threads, and whether
# lavapipe is loaded.
for p in $(pgrep -f 'virgl_|venus-hostvis' | sort -n); do
    case "$(cat /proc/"$p"/comm 2>/dev/null)" in sh | timeout | pgrep | stdbuf | env) continue ;; esac
    echo "== pid $p comm $(cat /proc/"$p"/comm): $(tr '\0' ' ' </proc/"$p"/cmdline)" \
        "(ppid $(awk '/^PPid/{print $2}' /proc/"$p"/status);" \
        "threads: $(cat /proc/"$p"/task/*/comm | sort | uniq -c | tr -s ' \n' ' '))"
    grep -q libvulkan_lvp /proc/"$p"/maps && echo "   has libvulkan_lvp.so mapped"
    awk '/^[0-9a-f]+-[0-9a-f]+ /{show = ($0 ~ /memfd|dmabuf|udmabuf/); if (show) print "   " $0; next}
         show && /^VmFlags/{print "     " $0}' /proc/"$p"/smaps
    ls -l /proc/"$p"/fd 2>/dev/null | grep -E 'memfd|dmabuf' | sed 's/^.* \([0-9][0-9]*\) -> /   fd \1 -> /'
done
