/* SPDX-License-Identifier: MIT */
/*
 * fake_gpu_hostmem_plugin.c: a stand-in for the gpu-hostmem plugin, used by
 * tests/e2e/scenarios/20-libxl-*.sh to test libxl's side of the plugin ABI
 * without the real IOREQ server.  Built as a shared object against
 * plugin/include/gpu_hostmem_plugin.h:
 *
 *   cc -shared -fPIC -O2 -Wall -Wextra -Iplugin/include \
 *      -o libfake_gpu_hostmem_plugin.so tests/libxl/fake_gpu_hostmem_plugin.c
 *
 * and installed in place of the real plugin (libxl loads only
 * GPU_HOSTMEM_PLUGIN_PATH).  Its behaviour is read at each call from
 * FAKE_CONF (one "key=value" per line), so one binary covers every case:
 *
 *   abi=N           gpu_hostmem_plugin_abi_version() returns N
 *                   (default GPU_HOSTMEM_PLUGIN_ABI_VERSION)
 *   create=ok|fail|crash|hang
 *   destroy=ok|fail|crash|hang
 *
 * Every call appends one line to FAKE_LOG, which the scenarios check:
 *
 *   create domid=5 uuid=<36 chars> size=256 vcpus=2 abi=1 flags=0
 *   destroy domid=5 uuid=<36 chars> size=256 vcpus=2 abi=1 flags=0
 *
 * The test bed (tests/e2e/build, progs) builds it into dom0's
 * /usr/local/bin/fake_gpu_hostmem_plugin with these extra flags:
 * e2e-build-flags: -shared -fPIC
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu_hostmem_plugin.h"

#define FAKE_CONF "/run/fake-gpu-hostmem/conf"
#define FAKE_LOG  "/run/fake-gpu-hostmem/log"

/* Value of key in FAKE_CONF, copied into buf; NULL if not set. */
static const char *conf_get(const char *key, char *buf, size_t len)
{
    char line[128];
    size_t klen = strlen(key);
    const char *found = NULL;
    FILE *f = fopen(FAKE_CONF, "r");

    if (!f)
        return NULL;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!strncmp(line, key, klen) && line[klen] == '=') {
            snprintf(buf, len, "%s", line + klen + 1);
            found = buf;
        }
    }
    fclose(f);
    return found;
}

static void log_call(const char *what, const struct gpu_hostmem_domain *dom)
{
    char line[256];
    int fd, n, i, off;
    char uuid[37];

    off = 0;
    for (i = 0; i < 16; i++) {
        off += snprintf(uuid + off, sizeof(uuid) - off, "%02x", dom->uuid[i]);
        if (i == 3 || i == 5 || i == 7 || i == 9)
            uuid[off++] = '-';
    }
    uuid[36] = '\0';

    n = snprintf(line, sizeof(line),
                 "%s domid=%u uuid=%s size=%llu vcpus=%u abi=%u flags=%u\n",
                 what, dom->domid, uuid,
                 (unsigned long long)dom->bar_size_mib, dom->max_vcpus,
                 dom->abi_version, dom->flags);
    fd = open(FAKE_LOG, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    if (write(fd, line, n) != n) {
        /* Nothing to do: the scenario will notice the missing line. */
    }
    close(fd);
}

static int behave(const char *what, const struct gpu_hostmem_domain *dom,
                  char *err, size_t errlen)
{
    char mode[32];

    log_call(what, dom);
    if (!conf_get(what, mode, sizeof(mode)) || !strcmp(mode, "ok"))
        return 0;
    if (!strcmp(mode, "fail")) {
        snprintf(err, errlen, "fake plugin: %s refused on purpose for domain %u",
                 what, dom->domid);
        return -EIO;
    }
    if (!strcmp(mode, "crash"))
        abort();
    if (!strcmp(mode, "hang"))
        for (;;)
            pause();
    snprintf(err, errlen, "fake plugin: unknown mode '%s'", mode);
    return -EINVAL;
}

uint32_t gpu_hostmem_plugin_abi_version(void)
{
    char buf[32];

    if (conf_get("abi", buf, sizeof(buf)))
        return (uint32_t)strtoul(buf, NULL, 0);
    return GPU_HOSTMEM_PLUGIN_ABI_VERSION;
}

int gpu_hostmem_plugin_create(const struct gpu_hostmem_domain *dom,
                              char *err, size_t errlen)
{
    return behave("create", dom, err, errlen);
}

int gpu_hostmem_plugin_destroy(const struct gpu_hostmem_domain *dom,
                               char *err, size_t errlen)
{
    return behave("destroy", dom, err, errlen);
}
