// SPDX-License-Identifier: MIT
/*
 * hostmem-backend: the smallest GPU backend that lends its own memory to a
 * Xen guest through gpu-hostmem.  Copy it as a starting point.
 *
 * A real backend (virglrenderer, a native-context server, ...) owns GPU
 * buffers mapped into its address space.  Here the "GPU memory" is shared
 * anonymous memory filled with a pattern the guest can check.
 *
 *   hostmem-backend -d DOMID -u UNIQUE_ID -r OFFSET:SIZE[:udmabuf]
 *                   [-r OFFSET:SIZE[:udmabuf]]... [-t SECONDS]
 *
 * UNIQUE_ID names the instance of DOMID the memory is for: Xen's unique id
 * of the guest (XEN_DOMCTL_get_domain_state), which gpu-hostmem-ioreqd
 * records as "unique-id" in /local/domain/0/gpu-hostmem/DOMID/.  A domid is
 * reused once its guest is gone; the unique id never is, so the memory can
 * never be lent to a later guest that happens to get the same domid.
 *
 * OFFSET and SIZE take k/M/G suffixes and must be page aligned.  A region
 * is shared anonymous memory, or with ":udmabuf" a dma-buf mapped as a
 * renderer maps the buffers its GPU driver exports: a memfd made into a
 * udmabuf (/dev/udmabuf), whose mapping is VM_PFNMAP, like TTM's and the
 * GEM shmem helpers'.  The backend
 *   1. takes the privcmd fd it was given in GPU_HOSTMEM_PRIVCMD_FD (started
 *      by "gpu-hostmem backend", which opens /dev/xen/privcmd, restricts it
 *      to DOMID and narrows it to registering memory: this process can then
 *      neither act on another domain nor act as the guest's device model,
 *      and needs no access to /dev/xen/privcmd nor root; the unique id then
 *      comes in GPU_HOSTMEM_UNIQUE_ID, so -u may be left out), or else opens
 *      /dev/xen/privcmd itself and restricts it to DOMID;
 *   2. maps each region, fills word i of BAR offset o with pattern(o + 8 * i),
 *      and registers it at its BAR offset (the kernel watches the range with
 *      an MMU notifier; nothing is pinned);
 *   3. prints "READY" and waits.  On SIGUSR1 it reports how many pages the
 *      guest has stamped (first word == ~pattern(offset)) and checks every
 *      word (see words_report); on SIGUSR2 it
 *      replaces the memory of every region (see replace_region); on SIGTERM, SIGINT
 *      or after SECONDS it unregisters everything and exits.  Unregistering,
 *      closing the fd or simply exiting revokes every page lent to the guest.
 *
 * Output lines start with "backend:" or "RESULT" so tests can parse them.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/udmabuf.h>

#include "privcmd-hostmem.h"

#define MAX_REGIONS 16
#define PAGE_SIZE_4K 4096ULL

struct region {
    uint64_t offset;
    uint64_t size;
    uint32_t id;
    uint64_t *mem;
    int udmabuf;        /* a udmabuf's mapping, not anonymous memory */
    int registered;
};

static volatile sig_atomic_t report_requested;
static volatile sig_atomic_t replace_requested;
static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        report_requested = 1;
    else if (sig == SIGUSR2)
        replace_requested = 1;
    else
        stop_requested = 1;
}

/* The value the backend stores at BAR offset @off (a multiple of 8). */
static uint64_t pattern(uint64_t off)
{
    return (off * 0x9e3779b97f4a7c15ULL) ^ 0x6770752d686f7374ULL; /* "gpu-host" */
}

static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || end == s)
        return -1;
    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    default: break;
    }
    if (*end != '\0' && *end != ':')
        return -1;
    *out = v;
    return 0;
}

static int parse_region(const char *arg, struct region *r)
{
    const char *colon = strchr(arg, ':');
    const char *kind;

    if (!colon || parse_size(arg, &r->offset) || parse_size(colon + 1, &r->size))
        return -1;
    kind = strchr(colon + 1, ':');
    if (kind && strcmp(kind + 1, "udmabuf"))
        return -1;
    r->udmabuf = kind != NULL;
    if (!r->size || (r->offset | r->size) & (PAGE_SIZE_4K - 1))
        return -1;
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: hostmem-backend -d DOMID -u UNIQUE_ID -r OFFSET:SIZE[:udmabuf] [-r ...]\n"
            "                       [-t SECONDS]\n"
            "       (-u from GPU_HOSTMEM_UNIQUE_ID and the privcmd fd from\n"
            "        GPU_HOSTMEM_PRIVCMD_FD when started by gpu-hostmem backend)\n");
    exit(2);
}

/* Every word of the region: in each page, the guest's stamps (~pattern)
 * on a first run of words, then the backend's pattern to the end of the
 * page; any other value is counted as bad. Prints the bad words and the
 * shortest and longest stamped run: a guest that stamped the first R words
 * of every page (hostmem-guest loopcheck ... stamp) expects 0, R and R. */
static void words_report(const struct region *r)
{
    uint64_t page, i, bad = 0, min = UINT64_MAX, max = 0, first_bad = 0;

    for (page = 0; page < r->size; page += PAGE_SIZE_4K) {
        const volatile uint64_t *m = &r->mem[page / 8];
        uint64_t off = r->offset + page, run = 0;

        while (run < PAGE_SIZE_4K / 8 && m[run] == ~pattern(off + 8 * run))
            run++;
        for (i = run; i < PAGE_SIZE_4K / 8; i++)
            if (m[i] != pattern(off + 8 * i) && bad++ == 0)
                first_bad = off + 8 * i;
        min = run < min ? run : min;
        max = run > max ? run : max;
    }
    printf("backend: words id=%u offset=0x%" PRIx64 " bad=%" PRIu64 " first_bad=0x%" PRIx64
           " stamped_min=%" PRIu64 " stamped_max=%" PRIu64 "\n",
           r->id, r->offset, bad, first_bad, min, max);
}

static unsigned long stamped_pages(const struct region *r)
{
    unsigned long n = 0;
    uint64_t page;

    for (page = 0; page < r->size; page += PAGE_SIZE_4K) {
        uint64_t off = r->offset + page;

        if (r->mem[page / 8] == ~pattern(off))
            n++;
    }
    return n;
}

/*
 * SIZE bytes of new memory for @r: shared anonymous memory, or a udmabuf of
 * a sealed memfd, mapped (the mapping keeps both alive once their fds are
 * closed).  MAP_FAILED with errno on failure.
 */
static uint64_t *map_memory(const struct region *r)
{
    struct udmabuf_create c = { .flags = UDMABUF_FLAGS_CLOEXEC };
    int dev, memfd, buf, err;
    void *mem = MAP_FAILED;

    if (!r->udmabuf)
        return mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    dev = open("/dev/udmabuf", O_RDWR | O_CLOEXEC);
    if (dev < 0)
        return MAP_FAILED;
    memfd = memfd_create("hostmem-backend", MFD_ALLOW_SEALING | MFD_CLOEXEC);
    buf = -1;
    if (memfd >= 0 && !ftruncate(memfd, r->size) && !fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK)) {
        c.memfd = memfd;
        c.size = r->size;
        buf = ioctl(dev, UDMABUF_CREATE, &c);
        if (buf >= 0)
            mem = mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_SHARED, buf, 0);
    }
    err = errno;
    if (buf >= 0)
        close(buf);
    if (memfd >= 0)
        close(memfd);
    close(dev);
    errno = err;
    return mem;
}

/*
 * Replaces a region's memory, as a backend does when it moves or frees a
 * buffer: new memory is filled with pattern ^ REPLACED, then moved over the
 * old mapping in one mremap().  The kernel's MMU notifier sees the old pages
 * go and revokes them from the guest; the registration (an address range)
 * stays, so the guest's next access faults and gets the new pages.
 */
#define REPLACED 0x5a5a5a5a00000000ULL
static double ms_since(const struct timespec *t0)
{
    struct timespec t1;

    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1e3 + (t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* @move_ms: how long the mremap took (the revocation happens inside it). */
static int replace_region(struct region *r, double *move_ms)
{
    struct timespec t0;
    uint64_t *mem, w;

    mem = map_memory(r);
    if (mem == MAP_FAILED)
        return -1;
    for (w = 0; w < r->size / 8; w++)
        mem[w] = pattern(r->offset + w * 8) ^ REPLACED;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (mremap(mem, r->size, r->size, MREMAP_MAYMOVE | MREMAP_FIXED, r->mem) == MAP_FAILED) {
        munmap(mem, r->size);
        return -1;
    }
    *move_ms = ms_since(&t0);
    return 0;
}

int main(int argc, char **argv)
{
    struct region regions[MAX_REGIONS];
    unsigned int nr = 0, i;
    long domid = -1, seconds = 0;
    unsigned long long unique_id = 0;
    struct sigaction sa;
    time_t deadline;
    uint16_t dom;
    int fd, opt, rc = 0;

    memset(regions, 0, sizeof(regions));
    while ((opt = getopt(argc, argv, "d:u:r:t:")) != -1) {
        switch (opt) {
        case 'd':
            domid = strtol(optarg, NULL, 0);
            break;
        case 'u':
            unique_id = strtoull(optarg, NULL, 0);
            break;
        case 'r':
            if (nr == MAX_REGIONS || parse_region(optarg, &regions[nr])) {
                fprintf(stderr, "backend: bad region '%s' (OFFSET:SIZE, page aligned, at most %d)\n",
                        optarg, MAX_REGIONS);
                return 2;
            }
            regions[nr].id = nr + 1;
            nr++;
            break;
        case 't':
            seconds = strtol(optarg, NULL, 0);
            break;
        default:
            usage();
        }
    }
    if (!unique_id && getenv("GPU_HOSTMEM_UNIQUE_ID"))
        unique_id = strtoull(getenv("GPU_HOSTMEM_UNIQUE_ID"), NULL, 0);
    if (domid <= 0 || domid >= 0x7ff0 || nr == 0 || unique_id == 0)
        usage();
    dom = (uint16_t)domid;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    if (getenv("GPU_HOSTMEM_PRIVCMD_FD")) {
        /* Restricted and narrowed by whoever started us. */
        fd = atoi(getenv("GPU_HOSTMEM_PRIVCMD_FD"));
        if (fcntl(fd, F_SETFD, FD_CLOEXEC)) {
            perror("backend: GPU_HOSTMEM_PRIVCMD_FD");
            return 1;
        }
        printf("backend: using the narrowed privcmd fd %d\n", fd);
    } else {
        fd = open("/dev/xen/privcmd", O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            perror("backend: open /dev/xen/privcmd");
            return 1;
        }
        /* From here on this fd can only name @dom. */
        if (ioctl(fd, IOCTL_PRIVCMD_RESTRICT, &dom)) {
            perror("backend: IOCTL_PRIVCMD_RESTRICT");
            return 1;
        }
    }

    for (i = 0; i < nr; i++) {
        struct region *r = &regions[i];
        struct privcmd_hostmem_register reg;
        uint64_t w;

        r->mem = map_memory(r);
        if (r->mem == MAP_FAILED) {
            fprintf(stderr, "backend: map %s memory of id=%u: %s\n",
                    r->udmabuf ? "udmabuf" : "anonymous", r->id, strerror(errno));
            r->mem = NULL;
            rc = 1;
            goto out;
        }
        for (w = 0; w < r->size / 8; w++)
            r->mem[w] = pattern(r->offset + w * 8);

        memset(&reg, 0, sizeof(reg));
        reg.addr = (uintptr_t)r->mem;
        reg.size = r->size;
        reg.offset = r->offset;
        reg.id = r->id;
        reg.dom = dom;
        reg.unique_id = unique_id;
        if (ioctl(fd, IOCTL_PRIVCMD_HOSTMEM_REGISTER, &reg)) {
            fprintf(stderr, "backend: register id=%u offset=0x%" PRIx64 " size=0x%" PRIx64
                    " for dom%u: %s\n", r->id, r->offset, r->size, dom, strerror(errno));
            rc = 1;
            goto out;
        }
        r->registered = 1;
        printf("backend: registered id=%u offset=0x%" PRIx64 " size=0x%" PRIx64 " dom=%u%s\n",
               r->id, r->offset, r->size, dom, r->udmabuf ? " (udmabuf)" : "");
    }
    printf("READY\n");
    fflush(stdout);

    deadline = seconds > 0 ? time(NULL) + seconds : 0;
    while (!stop_requested && (!deadline || time(NULL) < deadline)) {
        if (replace_requested) {
            replace_requested = 0;
            for (i = 0; i < nr; i++) {
                double ms = 0;
                int err = replace_region(&regions[i], &ms) ? errno : 0;

                printf("backend: replaced id=%u offset=0x%" PRIx64 " size=0x%" PRIx64
                       ": %s, move over the old mapping (revokes) took %.3f ms\n",
                       regions[i].id, regions[i].offset, regions[i].size,
                       err ? strerror(err) : "ok", ms);
                printf("RESULT name=backend-replace ok=%d value=%u\n", !err, regions[i].id);
            }
            fflush(stdout);
        }
        if (report_requested) {
            report_requested = 0;
            for (i = 0; i < nr; i++) {
                const struct region *r = &regions[i];
                unsigned long n = stamped_pages(r);

                words_report(r);

                printf("backend: id=%u offset=0x%" PRIx64 ": first word 0x%016" PRIx64
                       " (%s), %lu of %" PRIu64 " page(s) stamped by the guest\n",
                       r->id, r->offset, r->mem[0],
                       r->mem[0] == ~pattern(r->offset) ? "guest stamp" :
                       r->mem[0] == pattern(r->offset) ? "still our pattern" : "unexpected",
                       n, (uint64_t)(r->size / PAGE_SIZE_4K));
                printf("RESULT name=backend-sees-guest-writes ok=%d value=%lu id=%u offset=0x%"
                       PRIx64 "\n", n > 0, n, r->id, r->offset);
            }
            fflush(stdout);
        }
        usleep(100 * 1000);
    }

out:
    for (i = 0; i < nr; i++) {
        struct region *r = &regions[i];

        if (r->registered) {
            struct privcmd_hostmem_unregister unreg = { .id = r->id, .dom = dom };

            if (ioctl(fd, IOCTL_PRIVCMD_HOSTMEM_UNREGISTER, &unreg))
                fprintf(stderr, "backend: unregister id=%u: %s\n", r->id, strerror(errno));
        }
        if (r->mem && r->mem != MAP_FAILED)
            munmap(r->mem, r->size);
    }
    close(fd);
    printf("backend: exiting rc=%d\n", rc);
    return rc;
}
