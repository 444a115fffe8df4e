/* Loads the plugin the way libxl does (dlopen, dlsym of the header's symbol
 * names, ABI version check) and prints the layout of the ABI struct as the
 * C compiler sees it, for tests/abi.rs. */
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "gpu_hostmem_plugin.h"

int main(int argc, char **argv)
{
    void *h;
    gpu_hostmem_plugin_abi_version_fn ver;
    gpu_hostmem_plugin_create_fn create;
    gpu_hostmem_plugin_destroy_fn destroy;
    struct gpu_hostmem_domain d;
    struct gpu_hostmem_server srv;
    char err[128];
    int rc;

    printf("size %zu align %zu\n", sizeof(d), _Alignof(struct gpu_hostmem_domain));
    printf("abi_version %zu domid %zu uuid %zu bar_size_mib %zu max_vcpus %zu flags %zu\n",
           offsetof(struct gpu_hostmem_domain, abi_version),
           offsetof(struct gpu_hostmem_domain, domid),
           offsetof(struct gpu_hostmem_domain, uuid),
           offsetof(struct gpu_hostmem_domain, bar_size_mib),
           offsetof(struct gpu_hostmem_domain, max_vcpus),
           offsetof(struct gpu_hostmem_domain, flags));
    printf("server size %zu path %zu argv %zu log_path %zu\n", sizeof(srv),
           offsetof(struct gpu_hostmem_server, path),
           offsetof(struct gpu_hostmem_server, argv),
           offsetof(struct gpu_hostmem_server, log_path));
    if (argc < 2)
        return 0;

    h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("dlopen failed: %s\n", dlerror());
        return 1;
    }
    ver = (gpu_hostmem_plugin_abi_version_fn)dlsym(h, GPU_HOSTMEM_SYM_ABI_VERSION);
    create = (gpu_hostmem_plugin_create_fn)dlsym(h, GPU_HOSTMEM_SYM_CREATE);
    destroy = (gpu_hostmem_plugin_destroy_fn)dlsym(h, GPU_HOSTMEM_SYM_DESTROY);
    if (!ver || !create || !destroy) {
        printf("missing symbol\n");
        return 1;
    }
    printf("version %u header %u\n", ver(), GPU_HOSTMEM_PLUGIN_ABI_VERSION);

    /* A domain with a bad flags field: refused before anything happens. */
    memset(&d, 0, sizeof(d));
    d.abi_version = GPU_HOSTMEM_PLUGIN_ABI_VERSION;
    d.domid = 3;
    d.flags = 1;
    memset(&srv, 0, sizeof(srv));
    rc = create(&d, "/libxl/3/gpu-hostmem/state", &srv, err, sizeof(err));
    printf("create-flags %d %s\n", rc, rc == -EINVAL ? "EINVAL" : "other");
    printf("reason %s\n", err);
    printf("server %s\n", srv.path ? "described" : "none");
    rc = destroy(NULL, err, sizeof(err));
    printf("destroy-null %d %s\n", rc, rc == -EINVAL ? "EINVAL" : "other");
    return 0;
}
