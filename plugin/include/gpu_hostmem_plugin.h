/* SPDX-License-Identifier: MIT */
/*
 * gpu_hostmem_plugin.h: the C ABI between libxl and the gpu-hostmem plugin.
 *
 * libxl dlopen()s the plugin from GPU_HOSTMEM_PLUGIN_PATH (a fixed path, never
 * a search path), checks gpu_hostmem_plugin_abi_version() against
 * GPU_HOSTMEM_PLUGIN_ABI_VERSION, and calls the hooks below.  Bump the version
 * on any incompatible change to this file.
 */
#ifndef GPU_HOSTMEM_PLUGIN_H
#define GPU_HOSTMEM_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define GPU_HOSTMEM_PLUGIN_ABI_VERSION 2u

#ifndef GPU_HOSTMEM_PLUGIN_PATH
#define GPU_HOSTMEM_PLUGIN_PATH "/usr/lib/xen/gpu-hostmem/libgpu_hostmem_plugin.so"
#endif

#define GPU_HOSTMEM_SYM_ABI_VERSION "gpu_hostmem_plugin_abi_version"
#define GPU_HOSTMEM_SYM_CREATE      "gpu_hostmem_plugin_create"
#define GPU_HOSTMEM_SYM_DESTROY     "gpu_hostmem_plugin_destroy"

/* Identity and parameters of the guest, filled in by libxl. */
struct gpu_hostmem_domain {
    uint32_t abi_version;   /* GPU_HOSTMEM_PLUGIN_ABI_VERSION of the caller */
    uint32_t domid;
    uint8_t  uuid[16];      /* libxl domain handle (c_info->uuid) */
    uint64_t bar_size_mib;  /* gpu_hostmem_size from xl.cfg; 0: plugin default */
    uint32_t max_vcpus;
    uint32_t flags;         /* must be 0 */
};

/*
 * The per-guest IOREQ server, as the create hook describes it to libxl.
 * Strings and array belong to the plugin and stay valid until the process
 * execs or exits.
 */
struct gpu_hostmem_server {
    const char *path;        /* absolute path of the program to execute */
    const char *const *argv; /* its arguments, argv[0] first, NULL-terminated */
    const char *log_path;    /* file for its stdout and stderr (appended to) */
};

/*
 * Values the server writes into ready_path (a xenstore node libxl chooses
 * and watches): GPU_HOSTMEM_READY once it serves the guest, or
 * GPU_HOSTMEM_FAILED_PREFIX followed by the reason if it cannot.
 */
#define GPU_HOSTMEM_READY         "running"
#define GPU_HOSTMEM_FAILED_PREFIX "failed: "

/*
 * Hooks return 0 on success or a negative errno value on failure, and then
 * write a NUL-terminated, human-readable reason into err (at most errlen
 * bytes, always terminated when errlen > 0).
 *
 * create: checks the guest's parameters, clears what an earlier domain with
 *   this domid left, records that the calling process serves the guest, and
 *   fills in *srv: the IOREQ server for the guest, which takes ready_path on
 *   its command line.  Called before the guest is unpaused, in the child
 *   process libxl then execs srv->path in (libxl__spawn_spawn's, so the
 *   server keeps this pid); libxl waits for ready_path and destroys the
 *   domain, calling destroy, if the server fails or is not ready in time.
 *   The hook neither forks nor waits.
 * destroy: revokes every page lent to the domain, stops the IOREQ server and
 *   removes its xenstore state.  Idempotent; succeeds when nothing is there or
 *   the domain is already gone; never acts on a different domain with the
 *   same domid (checked against uuid).
 */
typedef uint32_t (*gpu_hostmem_plugin_abi_version_fn)(void);
typedef int (*gpu_hostmem_plugin_create_fn)(const struct gpu_hostmem_domain *dom,
                                            const char *ready_path,
                                            struct gpu_hostmem_server *srv,
                                            char *err, size_t errlen);
typedef int (*gpu_hostmem_plugin_destroy_fn)(const struct gpu_hostmem_domain *dom,
                                             char *err, size_t errlen);

uint32_t gpu_hostmem_plugin_abi_version(void);
int gpu_hostmem_plugin_create(const struct gpu_hostmem_domain *dom,
                              const char *ready_path,
                              struct gpu_hostmem_server *srv,
                              char *err, size_t errlen);
int gpu_hostmem_plugin_destroy(const struct gpu_hostmem_domain *dom,
                               char *err, size_t errlen);

#endif /* GPU_HOSTMEM_PLUGIN_H */
