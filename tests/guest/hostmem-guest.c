// SPDX-License-Identifier: MIT
/*
 * hostmem-guest: the guest side of the gpu-hostmem end-to-end tests.
 * Runs inside an HVM guest (busybox initramfs, booted with iomem=relaxed),
 * finds the gpu-hostmem PCI function by vendor/device id, maps its BAR
 * through sysfs and prints machine-readable "RESULT" lines.
 *
 *   hostmem-guest info    VENDOR DEVICE
 *   hostmem-guest check   VENDOR DEVICE OFFSET SIZE [OFFSET SIZE]...  read
 *                         the backend's pattern, then stamp each page with
 *                         ~pattern, region by region
 *   hostmem-guest touch   VENDOR DEVICE OFFSET SIZE STRIDE [STRIDE]...  one
 *                         read per STRIDE bytes, a pass per STRIDE (fault-around)
 *   hostmem-guest unbacked VENDOR DEVICE OFFSET       reads give all-ones,
 *                         writes are dropped
 *   hostmem-guest hammer  VENDOR DEVICE OFFSET SIZE COUNT   COUNT accesses to
 *                         unregistered pages: all reads must be all-ones
 *   hostmem-guest revoke  VENDOR DEVICE OFFSET SIZE SECONDS   read, then wait
 *                         for the backend to replace the region's memory
 *   hostmem-guest loop    VENDOR DEVICE OFFSET SIZE   read the region forever
 *   hostmem-guest suite   VENDOR DEVICE OFFSET SIZE BENCH ROUNDS UNREG COUNT
 *                         the in-guest benchmarks in one run (see main)
 *   hostmem-guest bench   VENDOR DEVICE OFFSET SIZE ROUNDS   read/write
 *                         bandwidth through the BAR against guest RAM
 *
 * The pattern must match examples/hostmem-backend.c.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096ULL

static uint64_t pattern(uint64_t off)
{
    return (off * 0x9e3779b97f4a7c15ULL) ^ 0x6770752d686f7374ULL;
}

static unsigned long read_hex_file(const char *dir, const char *name)
{
    char path[512], buf[64];
    unsigned long v = ~0UL;
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "r");
    if (!f)
        return v;
    if (fgets(buf, sizeof(buf), f))
        v = strtoul(buf, NULL, 0);
    fclose(f);
    return v;
}

/* Finds the device and returns the path of its resource0 file. */
static int find_device(unsigned long vendor, unsigned long device, char *out, size_t len)
{
    const char *base = "/sys/bus/pci/devices";
    struct dirent *de;
    DIR *d = opendir(base);

    if (!d)
        return -1;
    while ((de = readdir(d))) {
        char dir[300];

        if (de->d_name[0] == '.')
            continue;
        snprintf(dir, sizeof(dir), "%s/%s", base, de->d_name);
        if (read_hex_file(dir, "vendor") == vendor &&
            read_hex_file(dir, "device") == device) {
            snprintf(out, len, "%s/resource0", dir);
            closedir(d);
            return 0;
        }
    }
    closedir(d);
    return -1;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static volatile uint64_t *map_bar(const char *res, uint64_t *bar_size)
{
    struct stat st;
    void *p;
    int fd = open(res, O_RDWR | O_SYNC);

    if (fd < 0 || fstat(fd, &st)) {
        printf("RESULT name=guest-map-bar ok=0 value=open:%s\n", strerror(errno));
        return NULL;
    }
    *bar_size = st.st_size;
    p = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        printf("RESULT name=guest-map-bar ok=0 value=mmap:%s\n", strerror(errno));
        return NULL;
    }
    return p;
}

/* Checks one region: the backend's pattern on every page, then stamps the
 * first word of each page with ~pattern so the backend can see the write. */
static int check(volatile uint64_t *bar, uint64_t off, uint64_t size)
{
    uint64_t page, good = 0, bad = 0, stamped = 0, first;

    first = bar[off / 8];
    for (page = off; page < off + size; page += PAGE) {
        uint64_t w, ok = 1;

        for (w = 0; w < PAGE; w += 512)
            if (bar[(page + w) / 8] != pattern(page + w))
                ok = 0;
        if (ok)
            good++;
        else
            bad++;
    }
    printf("guest: region 0x%" PRIx64 "+0x%" PRIx64 ": read 0x%016" PRIx64
           " at 0x%" PRIx64 " (backend pattern 0x%016" PRIx64 "), %" PRIu64
           " page(s) match, %" PRIu64 " do not\n", off, size, first, off, pattern(off),
           good, bad);
    printf("RESULT name=guest-reads-pattern ok=%d value=%" PRIu64 " offset=0x%" PRIx64
           " bad=%" PRIu64 "\n", bad == 0 && good > 0, good, off, bad);
    for (page = off; page < off + size; page += PAGE) {
        bar[page / 8] = ~pattern(page);
        if (bar[page / 8] == ~pattern(page))
            stamped++;
    }
    printf("guest: region 0x%" PRIx64 "+0x%" PRIx64 ": wrote 0x%016" PRIx64
           " at 0x%" PRIx64 " and the first word of each of its %" PRIu64 " page(s)\n",
           off, size, ~pattern(off), off, (uint64_t)(size / PAGE));
    printf("RESULT name=guest-stamps-pages ok=%d value=%" PRIu64 " offset=0x%" PRIx64 "\n",
           stamped == size / PAGE, stamped, off);
    return bad == 0 && good > 0 && stamped == size / PAGE ? 0 : 1;
}

static int touch(volatile uint64_t *bar, uint64_t off, uint64_t size, uint64_t stride)
{
    uint64_t a, n = 0, sum = 0;
    double t0 = now();

    for (a = off; a < off + size; a += stride, n++)
        sum += bar[a / 8];
    printf("RESULT name=guest-touch ok=1 value=%" PRIu64 " stride=%" PRIu64
           " seconds=%.6f sum=%" PRIx64 "\n", n, stride, now() - t0, sum);
    return 0;
}

static int unbacked(volatile uint64_t *bar, uint64_t off)
{
    uint64_t before = bar[off / 8], after;

    bar[off / 8] = 0x1234567812345678ULL;
    after = bar[off / 8];
    printf("RESULT name=guest-unbacked-reads-ones ok=%d value=0x%" PRIx64 "\n",
           before == ~0ULL, before);
    printf("RESULT name=guest-unbacked-drops-writes ok=%d value=0x%" PRIx64 "\n",
           after == ~0ULL, after);
    return before == ~0ULL && after == ~0ULL ? 0 : 1;
}

/* Misbehaviour: COUNT accesses spread over the unregistered range
 * [OFFSET, OFFSET+SIZE), one per page, alternately read and write. Every read
 * must give all-ones (a guest never reaches memory not registered for it). */
static int hammer(volatile uint64_t *bar, uint64_t off, uint64_t size, uint64_t count)
{
    uint64_t i, leaked = 0, pages = size / PAGE;
    double t0 = now(), dt;

    for (i = 0; i < count; i++) {
        uint64_t a = off + (i % pages) * PAGE + (i / pages % 512) * 8;

        if (i & 1)
            bar[a / 8] = i;
        else if (bar[a / 8] != ~0ULL)
            leaked++;
    }
    dt = now() - t0;
    printf("RESULT name=guest-hammer-all-ones ok=%d value=%" PRIu64 " accesses=%" PRIu64
           " seconds=%.3f per_access_us=%.1f\n", leaked == 0, leaked, count, dt,
           dt * 1e6 / (double)count);
    return leaked != 0;
}

/* Revocation: read the region (generation 0 pattern), say so, then watch the
 * first word of every page until each shows the backend's replacement
 * (pattern ^ REPLACED, see examples/hostmem-backend.c), failing on anything
 * else, or on a page that shows the old data again after the new. */
#define REPLACED 0x5a5a5a5a00000000ULL
static int revoke_watch(volatile uint64_t *bar, uint64_t off, uint64_t size, int seconds)
{
    uint64_t pages = size / PAGE, i, seen_new = 0, other = 0, back_to_old = 0, polls = 0;
    unsigned char *isnew = calloc(pages, 1);
    double t0, deadline;

    for (i = 0; i < pages; i++)
        if (bar[(off + i * PAGE) / 8] != pattern(off + i * PAGE))
            other++;
    printf("RESULT name=guest-revoke-before ok=%d value=%" PRIu64 "\n", other == 0, other);
    printf("GH-GUEST-REVOKE-READY\n");
    fflush(stdout);
    t0 = now();
    deadline = t0 + seconds;
    while (seen_new < pages && now() < deadline) {
        for (i = 0; i < pages; i++) {
            uint64_t a = off + i * PAGE, v = bar[a / 8];

            if (v == (pattern(a) ^ REPLACED)) {
                if (!isnew[i])
                    seen_new++;
                isnew[i] = 1;
            } else if (v == pattern(a)) {
                if (isnew[i])
                    back_to_old++;
            } else {
                other++;
            }
        }
        polls++;
    }
    printf("RESULT name=guest-revoke-sees-new ok=%d value=%" PRIu64 "/%" PRIu64
           " seconds=%.3f polls=%" PRIu64 "\n", seen_new == pages, seen_new, pages,
           now() - t0, polls);
    printf("RESULT name=guest-revoke-never-old ok=%d value=%" PRIu64 "\n", back_to_old == 0,
           back_to_old);
    printf("RESULT name=guest-revoke-no-other ok=%d value=%" PRIu64 "\n", other == 0, other);
    free(isnew);
    return seen_new == pages && back_to_old == 0 && other == 0 ? 0 : 1;
}

/* Keeps reading the region until killed (for faults while it is in use);
 * prints a progress line about once a second. */
static int loop_reads(volatile uint64_t *bar, uint64_t off, uint64_t size)
{
    uint64_t a, rounds = 0, sum = 0;
    double next = now() + 1;

    for (;;) {
        for (a = off; a < off + size; a += PAGE)
            sum += bar[a / 8];
        rounds++;
        if (now() >= next) {
            printf("guest: loop round %" PRIu64 " sum %" PRIx64 "\n", rounds, sum);
            fflush(stdout);
            next = now() + 1;
        }
    }
    return 0;
}

static double bandwidth(volatile uint64_t *p, uint64_t size, int rounds, int write)
{
    uint64_t i, sum = 0;
    double t0 = now();
    int r;

    for (r = 0; r < rounds; r++)
        for (i = 0; i < size / 8; i++) {
            if (write)
                p[i] = i;
            else
                sum += p[i];
        }
    if (sum == 42)
        printf("#\n");
    return (double)size * rounds / (now() - t0) / 1e6;
}

static int bench(volatile uint64_t *bar, uint64_t off, uint64_t size, int rounds)
{
    volatile uint64_t *ram = mmap(NULL, size, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    double bar_r, bar_w, ram_r, ram_w;

    if (ram == MAP_FAILED)
        return 1;
    /* Warm up: first touches fault the BAR pages in. */
    bandwidth(bar + off / 8, size, 1, 0);
    bandwidth(ram, size, 1, 0);
    bar_r = bandwidth(bar + off / 8, size, rounds, 0);
    ram_r = bandwidth(ram, size, rounds, 0);
    bar_w = bandwidth(bar + off / 8, size, rounds, 1);
    ram_w = bandwidth(ram, size, rounds, 1);
    printf("RESULT name=bench-read ok=1 value=%.3f bar_mbps=%.1f ram_mbps=%.1f\n",
           bar_r / ram_r, bar_r, ram_r);
    printf("RESULT name=bench-write ok=1 value=%.3f bar_mbps=%.1f ram_mbps=%.1f\n",
           bar_w / ram_w, bar_w, ram_w);
    return 0;
}

int main(int argc, char **argv)
{
    unsigned long vendor, device;
    volatile uint64_t *bar;
    uint64_t bar_size, off = 0, size = 0;
    char res[512];

    if (argc < 4) {
        fprintf(stderr, "usage: hostmem-guest CMD VENDOR DEVICE [ARGS]\n");
        return 2;
    }
    vendor = strtoul(argv[2], NULL, 0);
    device = strtoul(argv[3], NULL, 0);
    if (find_device(vendor, device, res, sizeof(res))) {
        printf("RESULT name=guest-finds-device ok=0 value=%04lx:%04lx\n", vendor, device);
        return 1;
    }
    printf("RESULT name=guest-finds-device ok=1 value=%s\n", res);
    bar = map_bar(res, &bar_size);
    if (!bar)
        return 1;
    printf("RESULT name=guest-bar-size ok=1 value=%" PRIu64 "\n", bar_size);
    if (argc > 4)
        off = strtoull(argv[4], NULL, 0);
    if (argc > 5)
        size = strtoull(argv[5], NULL, 0);
    if (off >= bar_size || size > bar_size - off) {
        printf("RESULT name=guest-args ok=0 value=outside-bar\n");
        return 2;
    }
    if (!strcmp(argv[1], "info"))
        return 0;
    if (!strcmp(argv[1], "check")) {
        int i, rc = check(bar, off, size);

        /* More OFFSET SIZE pairs: more regions. */
        for (i = 6; i + 1 < argc; i += 2) {
            off = strtoull(argv[i], NULL, 0);
            size = strtoull(argv[i + 1], NULL, 0);
            if (off >= bar_size || size > bar_size - off) {
                printf("RESULT name=guest-args ok=0 value=outside-bar\n");
                return 2;
            }
            rc |= check(bar, off, size);
        }
        return rc;
    }
    if (!strcmp(argv[1], "touch") && argc > 6) {
        int i;

        /* One pass per STRIDE given. */
        for (i = 6; i < argc; i++)
            touch(bar, off, size, strtoull(argv[i], NULL, 0));
        return 0;
    }
    if (!strcmp(argv[1], "unbacked"))
        return unbacked(bar, off);
    if (!strcmp(argv[1], "hammer") && argc > 6)
        return hammer(bar, off, size, strtoull(argv[6], NULL, 0));
    if (!strcmp(argv[1], "revoke") && argc > 6)
        return revoke_watch(bar, off, size, atoi(argv[6]));
    if (!strcmp(argv[1], "loop"))
        return loop_reads(bar, off, size);
    if (!strcmp(argv[1], "suite") && argc > 9) {
        /* The in-guest benchmarks in one run (tests/e2e/scenarios/80-bench-*):
         * first touch of OFFSET..+SIZE (one read per 4 KiB page), bandwidth
         * over the first BENCH bytes against guest RAM, then COUNT accesses
         * to unregistered pages at UNREG (every one an ioreq round trip: an
         * emulated BAR). */
        uint64_t bsz = strtoull(argv[6], NULL, 0), unreg = strtoull(argv[8], NULL, 0);
        int rc;

        if (bsz > size || unreg >= bar_size || bar_size - unreg < (1 << 20)) {
            printf("RESULT name=guest-args ok=0 value=outside-bar\n");
            return 2;
        }
        touch(bar, off, size, PAGE);
        printf("GH-GUEST-TOUCHED\n");
        fflush(stdout);
        rc = bench(bar, off, bsz, atoi(argv[7]));
        rc |= hammer(bar, unreg, 1 << 20, strtoull(argv[9], NULL, 0));
        return rc;
    }
    if (!strcmp(argv[1], "bench") && argc > 6)
        return bench(bar, off, size, atoi(argv[6]));
    fprintf(stderr, "hostmem-guest: unknown command %s\n", argv[1]);
    return 2;
}
