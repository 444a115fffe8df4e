/* What libxl's inner child of libxl__spawn_spawn does with the plugin
 * (libxl_gpu_hostmem.c, gpu_hostmem_exec_server), for tests/flow.rs: load
 * the plugin, check its ABI version, call the create hook, and exec the
 * server it describes in this process, stdout and stderr to its log.
 *
 *   spawn_server PLUGIN DOMID UUID-HEX32 READY-PATH
 *
 * Exits 1, with the hook's reason on stderr, if the hook fails. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu_hostmem_plugin.h"

int main(int argc, char **argv)
{
    gpu_hostmem_plugin_abi_version_fn ver;
    gpu_hostmem_plugin_create_fn create;
    struct gpu_hostmem_domain d;
    struct gpu_hostmem_server srv;
    char err[512];
    void *h;
    int i, rc, fd;

    if (argc != 5 || strlen(argv[3]) != 32) {
        fprintf(stderr, "usage: spawn_server PLUGIN DOMID UUID-HEX32 READY-PATH\n");
        return 2;
    }
    h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    ver = (gpu_hostmem_plugin_abi_version_fn)dlsym(h, GPU_HOSTMEM_SYM_ABI_VERSION);
    create = (gpu_hostmem_plugin_create_fn)dlsym(h, GPU_HOSTMEM_SYM_CREATE);
    if (!ver || !create || ver() != GPU_HOSTMEM_PLUGIN_ABI_VERSION) {
        fprintf(stderr, "not a version %u plugin\n", GPU_HOSTMEM_PLUGIN_ABI_VERSION);
        return 2;
    }
    memset(&d, 0, sizeof(d));
    d.abi_version = GPU_HOSTMEM_PLUGIN_ABI_VERSION;
    d.domid = (uint32_t)strtoul(argv[2], NULL, 10);
    for (i = 0; i < 16; i++) {
        unsigned b;

        sscanf(argv[3] + 2 * i, "%2x", &b);
        d.uuid[i] = (uint8_t)b;
    }
    d.bar_size_mib = 64;
    d.max_vcpus = 1;
    memset(&srv, 0, sizeof(srv));
    err[0] = '\0';
    rc = create(&d, argv[4], &srv, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "create hook failed (%s): %s\n", strerror(-rc), err);
        return 1;
    }
    fd = open(srv.log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) {
        fprintf(stderr, "open %s: %s\n", srv.log_path, strerror(errno));
        return 2;
    }
    dup2(fd, 1);
    dup2(fd, 2);
    execv(srv.path, (char *const *)srv.argv);
    fprintf(stderr, "exec %s: %s\n", srv.path, strerror(errno));
    return 127;
}
