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
 *   server=ready|never|exit|fail
 *                   what the server create describes does (default ready):
 *                   write "running" into libxl's ready path and sleep;
 *                   sleep without a word; exit 3 at once; write
 *                   "failed: fake server: ..." and sleep
 *
 * Every call appends one line to FAKE_LOG, which the scenarios check:
 *
 *   create domid=5 uuid=<36 chars> size=256 vcpus=2 abi=2 flags=0 ready=<path>
 *   destroy domid=5 uuid=<36 chars> size=256 vcpus=2 abi=2 flags=0
 *
 * The server is a shell whose command line names FAKE_SERVER_TAG and the
 * domid; create records its pid (the process libxl execs it in) in
 * FAKE_DIR/server.<domid>, and destroy kills its process group, as the
 * real plugin's teardown stops the real server.
 *
 * The test bed (tests/e2e/build, progs) builds it into dom0's
 * /usr/local/bin/fake_gpu_hostmem_plugin with these extra flags:
 * e2e-build-flags: -shared -fPIC
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu_hostmem_plugin.h"

#define FAKE_DIR  "/run/fake-gpu-hostmem"
#define FAKE_CONF FAKE_DIR "/conf"
#define FAKE_LOG  FAKE_DIR "/log"
#define FAKE_SERVER_TAG "fake-gpu-hostmem-server"

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

static void log_call(const char *what, const struct gpu_hostmem_domain *dom,
                     const char *ready_path)
{
    char line[512];
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
                 "%s domid=%u uuid=%s size=%llu vcpus=%u abi=%u flags=%u%s%s\n",
                 what, dom->domid, uuid,
                 (unsigned long long)dom->bar_size_mib, dom->max_vcpus,
                 dom->abi_version, dom->flags,
                 ready_path ? " ready=" : "", ready_path ? ready_path : "");
    if (n < 0 || n >= (int)sizeof(line))
        return;
    fd = open(FAKE_LOG, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    if (write(fd, line, n) != n) {
        /* Nothing to do: the scenario will notice the missing line. */
    }
    close(fd);
}

static int behave(const char *what, const struct gpu_hostmem_domain *dom,
                  const char *ready_path, char *err, size_t errlen)
{
    char mode[32];

    log_call(what, dom, ready_path);
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

/* The pid file of domid's fake server. */
static void server_pidfile(uint32_t domid, char *buf, size_t len)
{
    snprintf(buf, len, FAKE_DIR "/server.%u", domid);
}

/*
 * Shell scripts of the server modes; $1 is libxl's ready path.  The shell
 * stays (no exec), so that the server's command line keeps FAKE_SERVER_TAG
 * for the scenarios; destroy kills its process group (libxl made it a
 * session leader), sleep included.
 */
static const char *server_script(const char *mode)
{
    if (!strcmp(mode, "never"))
        return "while :; do sleep 1000; done";
    if (!strcmp(mode, "exit"))
        return "echo 'fake server: exiting at once' >&2; exit 3";
    if (!strcmp(mode, "fail"))
        return "xenstore-write \"$1\" 'failed: fake server: cannot serve on purpose'"
               " && while :; do sleep 1000; done";
    return "xenstore-write \"$1\" running && while :; do sleep 1000; done";
}

int gpu_hostmem_plugin_create(const struct gpu_hostmem_domain *dom,
                              const char *ready_path,
                              struct gpu_hostmem_server *srv,
                              char *err, size_t errlen)
{
    static char domid[16];
    static const char *argv[8];
    static char path[PATH_MAX];
    char mode[32], pidfile[64], pid[16];
    int rc, fd, n;

    rc = behave("create", dom, ready_path, err, errlen);
    if (rc)
        return rc;
    if (!conf_get("server", mode, sizeof(mode)))
        strcpy(mode, "ready");

    /* The process libxl execs the server in: destroy kills it. */
    server_pidfile(dom->domid, pidfile, sizeof(pidfile));
    n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
    fd = open(pidfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        if (write(fd, pid, n) != n) {
            /* The scenario will find the server left behind. */
        }
        close(fd);
    }

    snprintf(domid, sizeof(domid), "%u", dom->domid);
    snprintf(path, sizeof(path), "%s", ready_path);
    argv[0] = "/bin/sh";
    argv[1] = "-c";
    argv[2] = server_script(mode);
    argv[3] = FAKE_SERVER_TAG;  /* $0 */
    argv[4] = path;             /* $1 */
    argv[5] = domid;            /* $2: for the scenario's pgrep */
    argv[6] = NULL;
    srv->path = "/bin/sh";
    srv->argv = argv;
    srv->log_path = FAKE_DIR "/server.log";
    return 0;
}

int gpu_hostmem_plugin_destroy(const struct gpu_hostmem_domain *dom,
                               char *err, size_t errlen)
{
    char pidfile[64], buf[16];
    ssize_t n;
    int fd, pid;

    server_pidfile(dom->domid, pidfile, sizeof(pidfile));
    fd = open(pidfile, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        buf[n > 0 ? n : 0] = '\0';
        pid = atoi(buf);
        if (pid > 1)
            kill(-pid, SIGKILL);
        unlink(pidfile);
    }
    return behave("destroy", dom, NULL, err, errlen);
}
