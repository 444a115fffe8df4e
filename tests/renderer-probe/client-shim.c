/* SPDX-License-Identifier: MIT */
/*
 * Manual probe, not run by CI (tests/renderer-probe/README.md).
 *
 * LD_PRELOAD shim for the venus client, used with blob-shim.c's
 * BLOB_SHIM_OPAQUE_AS_SHM: Mesa's vtest backend maps every blob fd at
 * offset 0, but an OPAQUE blob of lavapipe is a memfd whose data starts
 * one page in (after lavapipe's header), where virgl_renderer_resource_map
 * points.  This shim moves the client's mmap of such a memfd to that page,
 * so the client sees the same bytes a renderer of ours would register.
 * If the client then passes, the pointer resource_map gives is the memory
 * venus uses, feedback slots included.
 *
 * Build: cc -O2 -Wall -Wextra -shared -fPIC -o client-shim.so client-shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

static int is_lavapipe_memfd(int fd)
{
    char path[64], target[128];
    ssize_t l;

    if (fd < 0)
        return 0;
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    l = readlink(path, target, sizeof(target) - 1);
    if (l < 0)
        return 0;
    target[l] = 0;
    return strstr(target, "/memfd:llvmpipe memory fd") != NULL;
}

static void *moved(void *(*real)(void *, size_t, int, int, int, off_t), void *addr, size_t len,
                   int prot, int flags, int fd, off_t off)
{
    if (off == 0 && is_lavapipe_memfd(fd)) {
        long page = sysconf(_SC_PAGESIZE);
        void *p = real(addr, len, prot, flags, fd, page);
        fprintf(stderr, "[client-shim] mmap of lavapipe memfd fd %d, %zu bytes: offset 0 -> %ld = %p\n",
                fd, len, page, p);
        return p;
    }
    return real(addr, len, prot, flags, fd, off);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    static void *(*real)(void *, size_t, int, int, int, off_t);
    if (!real)
        real = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
    return moved(real, addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    static void *(*real)(void *, size_t, int, int, int, off_t);
    if (!real)
        real = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap64");
    return moved(real, addr, len, prot, flags, fd, off);
}
