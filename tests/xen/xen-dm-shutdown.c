// SPDX-License-Identifier: MIT
/*
 * xen-dm-shutdown: shut a guest down with a given reason, as its device model
 * may (XEN_DMOP_remote_shutdown through libxendevicemodel). The test bed's
 * way to make a guest ask for a soft reset (reason 5, SHUTDOWN_soft_reset)
 * without a kexec in the guest: Xen marks the domain shut down with that
 * reason exactly as if the guest had called SCHEDOP_shutdown, and xl's
 * monitor then does what on_soft_reset says (soft-reset by default).
 *
 *   xen-dm-shutdown DOMID REASON
 *
 * REASON: poweroff (0), reboot (1), suspend (2), crash (3), watchdog (4),
 * soft_reset (5), or a number. Prints one RESULT line; exit status 0 on
 * success.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void *(*open_fn)(void *logger, unsigned int flags);
typedef int (*shutdown_fn)(void *dmod, uint16_t domid, unsigned int reason);
typedef int (*close_fn)(void *dmod);

static const char *const reasons[] = {
    "poweroff", "reboot", "suspend", "crash", "watchdog", "soft_reset",
};

int main(int argc, char **argv)
{
    unsigned long domid;
    unsigned int reason, i;
    char *end;
    void *lib, *dmod;
    open_fn dm_open;
    shutdown_fn dm_shutdown;
    close_fn dm_close;
    int rc;

    if (argc != 3) {
        fprintf(stderr, "usage: xen-dm-shutdown DOMID REASON\n");
        return 2;
    }
    domid = strtoul(argv[1], &end, 0);
    if (*end || domid == 0 || domid >= 0x7ff0) {
        fprintf(stderr, "xen-dm-shutdown: bad domid %s\n", argv[1]);
        return 2;
    }
    reason = sizeof(reasons) / sizeof(reasons[0]);
    for (i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (!strcmp(argv[2], reasons[i]))
            reason = i;
    if (reason == sizeof(reasons) / sizeof(reasons[0])) {
        reason = strtoul(argv[2], &end, 0);
        if (*end) {
            fprintf(stderr, "xen-dm-shutdown: bad reason %s\n", argv[2]);
            return 2;
        }
    }

    lib = dlopen("libxendevicemodel.so.1", RTLD_NOW);
    if (!lib) {
        printf("RESULT name=dm-shutdown ok=0 value=dlopen:%s\n", dlerror());
        return 1;
    }
    dm_open = (open_fn)dlsym(lib, "xendevicemodel_open");
    dm_shutdown = (shutdown_fn)dlsym(lib, "xendevicemodel_shutdown");
    dm_close = (close_fn)dlsym(lib, "xendevicemodel_close");
    if (!dm_open || !dm_shutdown || !dm_close) {
        printf("RESULT name=dm-shutdown ok=0 value=dlsym\n");
        return 1;
    }
    dmod = dm_open(NULL, 0);
    if (!dmod) {
        printf("RESULT name=dm-shutdown ok=0 value=open:%s\n", strerror(errno));
        return 1;
    }
    rc = dm_shutdown(dmod, (uint16_t)domid, reason);
    if (rc)
        printf("RESULT name=dm-shutdown ok=0 value=dom%lu,reason=%u,%s\n", domid, reason,
               strerror(errno));
    else
        printf("RESULT name=dm-shutdown ok=1 value=dom%lu,reason=%u\n", domid, reason);
    dm_close(dmod);
    return rc ? 1 : 0;
}
