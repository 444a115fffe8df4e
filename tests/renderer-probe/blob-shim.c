/* SPDX-License-Identifier: MIT */
/*
 * Manual probe, not run by CI (tests/renderer-probe/README.md).
 *
 * LD_PRELOAD shim for virglrenderer's vtest server (virgl_test_server): it
 * wraps virgl_renderer_resource_create_blob and _export_blob and reports,
 * on stderr, for every blob:
 *   - the create arguments (blob_mem, flags, blob_id, size);
 *   - what export gives: fd type, what the fd is (/proc/self/fd link,
 *     size, file system magic, memfd seals);
 *   - the map info (caching);
 *   - what virgl_renderer_resource_map gives in this process (the one a
 *     renderer of ours would register): the pointer, the VMA holding it
 *     (maps line, VmFlags), whether that VMA is the exported file and at
 *     which file offset the pointer lies, checked by writing a marker
 *     through the pointer and reading it back from the fd with pread;
 *   - whether get_user_pages accepts the mapping: process_vm_readv of the
 *     whole range on ourselves, which pins the pages with GUP and fails
 *     with EFAULT on VM_IO / VM_PFNMAP mappings, as privcmd's
 *     IOCTL_PRIVCMD_HOSTMEM_REGISTER would refuse them.
 * The resource is unmapped again afterwards, so the server goes on as
 * without the shim.
 *
 * With BLOB_SHIM_OPAQUE_AS_SHM=1 an OPAQUE fd is passed on as if it were
 * SHM (vtest refuses OPAQUE), so that the client maps the fd at offset 0
 * and its results show what that costs.  A probe of the client's view only;
 * never a fix.
 *
 * Build: cc -O2 -Wall -Wextra -shared -fPIC -o blob-shim.so blob-shim.c \
 *        $(pkg-config --cflags virglrenderer) -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <virglrenderer.h>

#define LOG(...) fprintf(stderr, "[blob-shim] " __VA_ARGS__)

static const char *fd_type_name(uint32_t t)
{
    switch (t) {
    case VIRGL_RENDERER_BLOB_FD_TYPE_DMABUF:
        return "DMABUF";
    case VIRGL_RENDERER_BLOB_FD_TYPE_OPAQUE:
        return "OPAQUE";
    case VIRGL_RENDERER_BLOB_FD_TYPE_SHM:
        return "SHM";
    default:
        return "?";
    }
}

static const char *fs_name(long magic)
{
    switch ((unsigned long)magic) {
    case 0x01021994:
        return "tmpfs/shmem";
    case 0x958458f6:
        return "hugetlbfs";
    case 0x444d4142: /* DMA_BUF_MAGIC */
        return "dma-buf";
    default:
        return "other";
    }
}

/* The VMA holding addr: its maps line (into line), VmFlags (into flags),
 * start, file offset and inode.  Returns 0 if found. */
static int find_vma(const void *addr, char *line, size_t n, char *flags, size_t fn,
                    uintptr_t *start, uint64_t *pgoff, unsigned long *ino)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char buf[512];
    int in = 0, found = -1;
    uintptr_t a = (uintptr_t)addr;

    if (!f)
        return -1;
    flags[0] = 0;
    while (fgets(buf, sizeof(buf), f)) {
        uintptr_t lo, hi;
        unsigned long long off;
        unsigned long inode;
        char perms[8], dev[16];
        if (sscanf(buf, "%" SCNxPTR "-%" SCNxPTR " %7s %llx %15s %lu", &lo, &hi, perms, &off, dev,
                   &inode) == 6) {
            in = a >= lo && a < hi;
            if (in) {
                snprintf(line, n, "%s", buf);
                line[strcspn(line, "\n")] = 0;
                *start = lo;
                *pgoff = off;
                *ino = inode;
                found = 0;
            }
            continue;
        }
        if (in && !strncmp(buf, "VmFlags:", 8)) {
            snprintf(flags, fn, "%s", buf + 8);
            flags[strcspn(flags, "\n")] = 0;
        }
    }
    fclose(f);
    return found;
}

static void describe_fd(int fd)
{
    char path[64], target[256];
    struct stat st;
    struct statfs sfs;
    ssize_t l;
    int seals;

    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    l = readlink(path, target, sizeof(target) - 1);
    target[l < 0 ? 0 : l] = 0;
    if (fstat(fd, &st))
        st.st_size = -1, st.st_ino = 0;
    if (fstatfs(fd, &sfs))
        sfs.f_type = 0;
    seals = fcntl(fd, F_GET_SEALS);
    LOG("  fd %d -> %s, inode %lu, size %lld, fs magic 0x%lx (%s), seals %s0x%x\n", fd, target,
        (unsigned long)st.st_ino, (long long)st.st_size, (unsigned long)sfs.f_type,
        fs_name(sfs.f_type), seals < 0 ? "none/err " : "", seals < 0 ? 0 : seals);
}

/* Whether a Vulkan driver (lavapipe here) is loaded in this process, and
 * how many threads it has. */
static void vulkan_here(const char *when)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char buf[512];
    int lvp = 0;
    long threads = 0;

    while (f && fgets(buf, sizeof(buf), f))
        lvp |= strstr(buf, "libvulkan_lvp") != NULL;
    if (f)
        fclose(f);
    f = fopen("/proc/self/status", "r");
    while (f && fgets(buf, sizeof(buf), f))
        if (!strncmp(buf, "Threads:", 8))
            threads = strtol(buf + 8, NULL, 10);
    if (f)
        fclose(f);
    LOG("  %s: libvulkan_lvp.so %s in this process, %ld threads\n", when,
        lvp ? "loaded" : "not loaded", threads);
}

static void probe_map(uint32_t res, int fd)
{
    void *p = NULL;
    uint64_t size = 0;
    char line[512], flags[512];
    uintptr_t start = 0;
    uint64_t pgoff = 0;
    unsigned long ino = 0;
    struct stat st;
    int ret;

    vulkan_here("before resource_map");
    ret = virgl_renderer_resource_map(res, &p, &size);
    vulkan_here("after resource_map");

    LOG("  resource_map = %d, ptr %p, size %" PRIu64 "\n", ret, p, size);
    if (ret || !p)
        return;
    if (find_vma(p, line, sizeof(line), flags, sizeof(flags), &start, &pgoff, &ino)) {
        LOG("  no VMA holds %p\n", p);
    } else {
        uint64_t off = pgoff + ((uintptr_t)p - start);
        int pf = strstr(flags, " pf") != NULL, io = strstr(flags, " io") != NULL;
        int mm = strstr(flags, " mm") != NULL;
        int same = fd >= 0 && !fstat(fd, &st) && st.st_ino == ino;
        LOG("  VMA: %s\n", line);
        LOG("  VmFlags:%s -> %s\n", flags,
            pf || io || mm ? "VM_PFNMAP/VM_IO/VM_MIXEDMAP: privcmd refuses" : "no pf/io/mm");
        LOG("  ptr is %s at file offset %" PRIu64 " (0x%" PRIx64 ")\n",
            same ? "the exported file" : "NOT the exported file's inode", off, off);
        if (same) {
            /* Marker through the pointer, read back through the fd. */
            volatile uint64_t *q = p;
            uint64_t saved = q[0], got = 0, at0 = 0;
            q[0] = 0x5eed5eed12345678ull;
            if (pread(fd, &got, 8, (off_t)off) != 8)
                got = 0;
            if (pread(fd, &at0, 8, 0) != 8)
                at0 = 0;
            q[0] = saved;
            LOG("  marker written at ptr: pread(fd, off %" PRIu64 ") %s, pread(fd, off 0) %s\n", off,
                got == 0x5eed5eed12345678ull ? "sees it" : "does NOT see it",
                at0 == 0x5eed5eed12345678ull ? "sees it" : "does not see it");
        }
    }
    {
        /* GUP on the range: process_vm_readv/writev pin the pages of the
         * remote (here: our own) mm, the write with FOLL_WRITE as privcmd
         * does, and fail with EFAULT where GUP refuses.  The bytes read are
         * written back unchanged (nothing else uses a blob being exported). */
        size_t len = size > (64u << 20) ? (64u << 20) : size;
        void *buf = malloc(len);
        struct iovec l = {buf, len}, r = {p, len};
        ssize_t rd = buf ? process_vm_readv(getpid(), &l, 1, &r, 1, 0) : -1;
        int rerr = errno;
        ssize_t wr = rd == (ssize_t)len ? process_vm_writev(getpid(), &l, 1, &r, 1, 0) : -1;
        int werr = errno;
        LOG("  GUP of %zu bytes: process_vm_readv %s, process_vm_writev %s\n", len,
            rd == (ssize_t)len ? "ok" : strerror(rerr), wr == (ssize_t)len ? "ok" : strerror(werr));
        free(buf);
    }
    ret = virgl_renderer_resource_unmap(res);
    LOG("  resource_unmap = %d\n", ret);
}

int virgl_renderer_resource_create_blob(const struct virgl_renderer_resource_create_blob_args *a)
{
    static int (*real)(const struct virgl_renderer_resource_create_blob_args *);
    int ret;

    if (!real)
        real = (int (*)(const struct virgl_renderer_resource_create_blob_args *))dlsym(
            RTLD_NEXT, "virgl_renderer_resource_create_blob");
    ret = real(a);
    LOG("create_blob res %u ctx %u blob_mem %u flags 0x%x blob_id %" PRIu64 " size %" PRIu64
        " = %d\n",
        a->res_handle, a->ctx_id, a->blob_mem, a->blob_flags, a->blob_id, a->size, ret);
    return ret;
}

int virgl_renderer_resource_export_blob(uint32_t res, uint32_t *fd_type, int *fd)
{
    static int (*real)(uint32_t, uint32_t *, int *);
    uint32_t info = 0;
    int ret, mret;

    if (!real)
        real = (int (*)(uint32_t, uint32_t *, int *))dlsym(RTLD_NEXT,
                                                           "virgl_renderer_resource_export_blob");
    ret = real(res, fd_type, fd);
    LOG("export_blob res %u = %d, fd_type %u (%s), fd %d\n", res, ret, ret ? 0 : *fd_type,
        ret ? "-" : fd_type_name(*fd_type), ret ? -1 : *fd);
    if (ret)
        return ret;
    describe_fd(*fd);
    mret = virgl_renderer_resource_get_map_info(res, &info);
    LOG("  get_map_info = %d, map_info 0x%x\n", mret, info);
    probe_map(res, *fd);
    if (*fd_type == VIRGL_RENDERER_BLOB_FD_TYPE_OPAQUE && getenv("BLOB_SHIM_OPAQUE_AS_SHM")) {
        LOG("  passing the OPAQUE fd on as SHM (BLOB_SHIM_OPAQUE_AS_SHM)\n");
        *fd_type = VIRGL_RENDERER_BLOB_FD_TYPE_SHM;
    }
    return ret;
}
