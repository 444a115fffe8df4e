// SPDX-License-Identifier: MIT
/*
 * hostmem-guest: the guest side of the gpu-hostmem end-to-end tests.
 * Runs inside an HVM guest (busybox initramfs, booted with iomem=relaxed),
 * finds the gpu-hostmem PCI function by vendor/device id, maps its BAR
 * through sysfs and prints machine-readable "RESULT" lines.
 *
 *   hostmem-guest info    VENDOR DEVICE
 *   hostmem-guest check   VENDOR DEVICE OFFSET SIZE   read the backend's
 *                         pattern, then stamp each page with ~pattern
 *   hostmem-guest touch   VENDOR DEVICE OFFSET SIZE STRIDE   one read per
 *                         STRIDE bytes (fault-around tests)
 *   hostmem-guest unbacked VENDOR DEVICE OFFSET       reads give all-ones,
 *                         writes are dropped
 *   hostmem-guest bench   VENDOR DEVICE OFFSET SIZE ROUNDS   read/write
 *                         bandwidth through the BAR against guest RAM
 *
 * The pattern must match examples/hostmem-backend.c.
 */
#define _GNU_SOURCE
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

static int check(volatile uint64_t *bar, uint64_t off, uint64_t size)
{
    uint64_t page, good = 0, bad = 0, stamped = 0;

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
    printf("RESULT name=guest-reads-pattern ok=%d value=%" PRIu64 " bad=%" PRIu64 "\n",
           bad == 0 && good > 0, good, bad);
    for (page = off; page < off + size; page += PAGE) {
        bar[page / 8] = ~pattern(page);
        if (bar[page / 8] == ~pattern(page))
            stamped++;
    }
    printf("RESULT name=guest-stamps-pages ok=%d value=%" PRIu64 "\n",
           stamped == size / PAGE, stamped);
    return bad == 0 && good > 0 && stamped == size / PAGE ? 0 : 1;
}

static int touch(volatile uint64_t *bar, uint64_t off, uint64_t size, uint64_t stride)
{
    uint64_t a, n = 0, sum = 0;
    double t0 = now();

    for (a = off; a < off + size; a += stride, n++)
        sum += bar[a / 8];
    printf("RESULT name=guest-touch ok=1 value=%" PRIu64 " seconds=%.6f sum=%" PRIx64 "\n",
           n, now() - t0, sum);
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
    if (!strcmp(argv[1], "check"))
        return check(bar, off, size);
    if (!strcmp(argv[1], "touch") && argc > 6)
        return touch(bar, off, size, strtoull(argv[6], NULL, 0));
    if (!strcmp(argv[1], "unbacked"))
        return unbacked(bar, off);
    if (!strcmp(argv[1], "bench") && argc > 6)
        return bench(bar, off, size, atoi(argv[6]));
    fprintf(stderr, "hostmem-guest: unknown command %s\n", argv[1]);
    return 2;
}
