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
 *                         writes are dropped; rep movs from OFFSET.. into
 *                         RAM fills exactly the bytes copied with ones, in
 *                         both directions, and rep movs into it is dropped
 *                         (see unbacked_rep)
 *   hostmem-guest hammer  VENDOR DEVICE OFFSET SIZE COUNT   COUNT accesses to
 *                         unregistered pages: all reads must be all-ones
 *   hostmem-guest revoke  VENDOR DEVICE OFFSET SIZE SECONDS   read, then wait
 *                         for the backend to replace the region's memory
 *   hostmem-guest loop    VENDOR DEVICE OFFSET SIZE   read the region forever
 *   hostmem-guest follow  VENDOR DEVICE OFFSET SIZE DATA SECONDS  stale-page
 *                         checks driven by dom0's hostmem-stale: control page
 *                         at OFFSET, data at DATA..+SIZE (see follow())
 *   hostmem-guest loopcheck VENDOR DEVICE OFFSET SIZE REGEND SECONDS [RATE [stamp]]
 *                         read one word per page of the region, round after
 *                         round for SECONDS (or until dom0 says "gh-stop" on
 *                         the console), each against the backend's
 *                         pattern (below REGEND) or all-ones (unregistered,
 *                         above); at most RATE rounds a second if given (0:
 *                         no bound); with "stamp", also write ~pattern into
 *                         that word of each registered page (see loop_check)
 *   hostmem-guest suite   VENDOR DEVICE OFFSET SIZE BENCH ROUNDS UNREG COUNT
 *                         the in-guest benchmarks in one run (see main)
 *   hostmem-guest insn    VENDOR DEVICE OFFSET SIZE REGEND [BOUNDARY]...  every instruction
 *                         form a guest may use on the BAR (rep movs/stos both
 *                         ways and both directions, movs, SSE/AVX, straddling
 *                         loads and stores), each on a fresh 2 MiB chunk of
 *                         OFFSET..+SIZE (registered) and again once lent,
 *                         byte for byte against the backend's memory; REGEND:
 *                         where the registered memory ends (unregistered above);
 *                         BOUNDARY: where one registration ends and the next
 *                         begins (above OFFSET+SIZE), for straddling accesses;
 *                         or reg:START:END, a registration above REGEND after
 *                         a hole, whose start gets straddling accesses too;
 *                         rep movsq/stosq whose first element straddles a
 *                         boundary are checked at REGEND and START
 *   hostmem-guest softreset VENDOR DEVICE OFFSET SIZE SECONDS   check's
 *                         pattern and stamps, then survive a soft reset of the
 *                         domain that dom0 triggers and check the region
 *                         again once the backend replaced its memory
 *                         (results on Xen's debug port 0xe9, see soft_reset())
 *   hostmem-guest barmove VENDOR DEVICE OFFSET SIZE COUNT   check's pattern
 *                         and stamps, then move the BAR COUNT times through
 *                         the function's config space (upper dword of BAR0:
 *                         8 GiB up, back, ...), ending where it began, reading
 *                         the region back every 256 moves; then every page
 *                         once more (see bar_moves())
 *   hostmem-guest bench   VENDOR DEVICE OFFSET SIZE ROUNDS   read/write
 *                         bandwidth through the BAR against guest RAM
 *   hostmem-guest bwsuite VENDOR DEVICE OFFSET SIZE BENCH ROUNDS PASSES UNREG COUNT
 *                         like suite, with the bandwidth measured in ROUNDS
 *                         interleaved rounds (median, min, max per side) and
 *                         the memory types the guest gives the BAR ("MEMTYPE"
 *                         lines, information, see memtype_probe)
 *   hostmem-guest wbcheck VENDOR DEVICE OFFSET SIZE   map the BAR write-back
 *                         as a GPU driver would (/dev/mem without O_SYNC,
 *                         the guest's MTRRs as firmware left them): the BAR
 *                         must be above 4 GiB and the mapping write-back;
 *                         then check's pattern and stamps through it
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
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/io.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

/* The figures of bwsuite in MB/s (guest-bw.h). */
#define BW_UNIT 1e6
#include "guest-bw.h"

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

/* The config file of the function whose resource0 is RES, opened for
 * FLAGS; -1 if RES does not end in resource0 or it cannot be opened. */
static int open_config(const char *res, int flags)
{
    char cfg[512];
    size_t n = strlen(res);

    if (n < 9 || strcmp(res + n - 9, "resource0"))
        return -1;
    snprintf(cfg, sizeof(cfg), "%.*sconfig", (int)(n - 9), res);
    return open(cfg, flags);
}

/* The function's first config dword (device << 16 | vendor) read now, from
 * config space itself (a config cycle, which the IOREQ server answers
 * while it claims the function); all ones if it cannot be read. */
static uint32_t config_id(int fd)
{
    uint32_t id;

    if (fd < 0 || pread(fd, &id, 4, 0) != 4)
        return ~0u;
    return id;
}

/* Reads the first two words of every page of a checked region: the stamp
 * check() left (~pattern) and the backend's pattern 512 bytes in. Returns
 * the pages that differ. */
static uint64_t stamped_region_bad(volatile uint64_t *bar, uint64_t off, uint64_t size)
{
    uint64_t page, bad = 0;

    for (page = off; page < off + size; page += PAGE)
        if (bar[page / 8] != ~pattern(page) || bar[(page + 512) / 8] != pattern(page + 512))
            bad++;
    return bad;
}

/* A guest moving its BAR at will (hostile, or a driver gone wrong): COUNT
 * rewrites of BAR0's upper dword through sysfs config (each a config write
 * the IOREQ server handles: revoke and unmap the old range, map the new),
 * alternating between where the BAR is and 8 GiB above, ending where it
 * began. Every 256 moves, once back in place, one page is read back (lent
 * again); at the end every page is. The lent memory must read right
 * throughout, and the loop must finish: a server that stalls on the moves
 * (its reports, its log) stalls the guest. */
static int bar_moves(const char *res, volatile uint64_t *bar, uint64_t off, uint64_t size,
                     uint64_t count)
{
    uint32_t hi0, hi;
    uint64_t i, mid_bad = 0, mid_reads = 0, bad;
    double t0, dt;
    int fd;

    if (check(bar, off, size))
        return 1;
    fd = open_config(res, O_RDWR);
    if (fd < 0 || pread(fd, &hi0, 4, 0x14) != 4) {
        printf("RESULT name=guest-bar-moves ok=0 value=config:%s\n", strerror(errno));
        return 1;
    }
    t0 = now();
    for (i = 1; i <= count; i++) {
        hi = (i == count || !(i & 1)) ? hi0 : hi0 + 2;
        if (pwrite(fd, &hi, 4, 0x14) != 4) {
            printf("RESULT name=guest-bar-moves ok=0 value=write:%s,at=%" PRIu64 "\n",
                   strerror(errno), i);
            close(fd);
            return 1;
        }
        if (hi == hi0 && i % 256 == 0) {
            uint64_t page = off + (i / 256 * PAGE) % size;

            mid_reads++;
            if (bar[page / 8] != ~pattern(page))
                mid_bad++;
        }
    }
    dt = now() - t0;
    if (pread(fd, &hi, 4, 0x14) != 4)
        hi = ~0u;
    close(fd);
    printf("guest: %" PRIu64 " BAR moves in %.3f s, upper dword 0x%x -> 0x%x\n", count, dt,
           hi0, hi);
    printf("RESULT name=guest-bar-moves ok=%d value=%" PRIu64 " seconds=%.3f back=%d\n",
           hi == hi0, count, dt, hi == hi0);
    bad = stamped_region_bad(bar, off, size);
    printf("RESULT name=guest-bar-data-after-moves ok=%d value=bad=%" PRIu64
           ",mid_reads=%" PRIu64 ",mid_bad=%" PRIu64 "\n",
           bad == 0 && mid_bad == 0, bad, mid_reads, mid_bad);
    return hi == hi0 && bad == 0 && mid_bad == 0 ? 0 : 1;
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

/* Soft reset (scenario 20-libxl-09). A soft reset (what Linux asks for
 * before it jumps into a kexec'd kernel) keeps the domain and its memory
 * but closes the guest's event channels and unmaps its vcpu_info: this
 * kernel has no console (hvc0), no timer and no clock from then on. So:
 * check the region (pattern, stamps: every page is then lent), say
 * GH-GUEST-SOFTRESET-READY on the console, and from there make no system
 * call: watch the first word of every page, timed by the TSC alone (for
 * SECONDS the guest runs, pauses not counted), until
 * each shows the backend's replacement (pattern ^ REPLACED: dom0 replaces
 * the memory once the soft reset is done), then check every page whole and
 * stamp it with ~pattern again (the backend counts those stamps; its
 * replacement erased the first ones). Results go to Xen's debug port 0xe9
 * (dom0 reads them with xl dmesg, "(dN)" lines), ending with
 * GH-GUEST-SOFTRESET-DONE rc=N. Values seen while waiting may only be the
 * guest's own stamp (before the replacement) or the replacement. */
static void e9_puts(const char *s)
{
    while (*s)
        outb((unsigned char)*s++, 0xe9);
}

static int soft_reset(volatile uint64_t *bar, uint64_t off, uint64_t size, int seconds)
{
    uint64_t pages = size / PAGE, i, seen_new = 0, other = 0, back = 0, polls = 0;
    uint64_t good = 0, stamped = 0, tsc_hz, t0, last, ran, deadline, last_other = 0;
    static unsigned char isnew[1 << 18];
    char line[256];
    double c0;
    int rc;

    if (pages == 0 || pages > sizeof(isnew)) {
        printf("RESULT name=guest-args ok=0 value=region-size\n");
        return 2;
    }
    if (ioperm(0xe9, 1, 1)) {
        printf("RESULT name=guest-softreset-ioperm ok=0 value=%s\n", strerror(errno));
        return 1;
    }
    rc = check(bar, off, size);
    /* The TSC's rate, while the clock still runs. */
    c0 = now();
    t0 = __rdtsc();
    while (now() - c0 < 0.2)
        ;
    tsc_hz = (uint64_t)((double)(__rdtsc() - t0) / (now() - c0));
    printf("guest: TSC %" PRIu64 " Hz; waiting up to %d s for the soft reset and the"
           " backend's replacement\n", tsc_hz, seconds);
    printf("GH-GUEST-SOFTRESET-READY\n");
    fflush(stdout);
    /* Leave the console time to drain before it goes away. */
    sleep(1);
    /* Time the guest ran, not wall time: a round that took more than a
     * second was a pause (the soft reset), counted as one second, and a TSC
     * that went back counts as nothing. */
    deadline = tsc_hz * (uint64_t)seconds;
    ran = 0;
    last = __rdtsc();
    e9_puts("GH-GUEST-SOFTRESET-WAITING\n");
    while (seen_new < pages && ran < deadline) {
        uint64_t t = __rdtsc();

        if (t > last)
            ran += t - last < tsc_hz ? t - last : tsc_hz;
        last = t;
        for (i = 0; i < pages; i++) {
            uint64_t a = off + i * PAGE, v = bar[a / 8];

            if (v == (pattern(a) ^ REPLACED)) {
                if (!isnew[i])
                    seen_new++;
                isnew[i] = 1;
            } else if (v == ~pattern(a)) {
                if (isnew[i])
                    back++;
            } else {
                other++;
                last_other = v;
            }
        }
        polls++;
    }
    snprintf(line, sizeof(line), "RESULT name=guest-softreset-sees-new ok=%d value=%" PRIu64
             "/%" PRIu64 " ran=%.3fs polls=%" PRIu64 "\n", seen_new == pages, seen_new,
             pages, (double)ran / (double)tsc_hz, polls);
    e9_puts(line);
    snprintf(line, sizeof(line), "RESULT name=guest-softreset-never-old ok=%d value=%" PRIu64
             "\n", back == 0, back);
    e9_puts(line);
    snprintf(line, sizeof(line), "RESULT name=guest-softreset-no-other ok=%d value=%" PRIu64
             " last=0x%" PRIx64 "\n", other == 0, other, last_other);
    e9_puts(line);
    /* Every page whole, then the stamps the backend counts. */
    for (i = 0; i < pages; i++) {
        uint64_t a = off + i * PAGE, w, ok = 1;

        for (w = 0; w < PAGE; w += 512)
            if (bar[(a + w) / 8] != (pattern(a + w) ^ REPLACED))
                ok = 0;
        good += ok;
    }
    for (i = 0; i < pages; i++) {
        uint64_t a = off + i * PAGE;

        bar[a / 8] = ~pattern(a);
        if (bar[a / 8] == ~pattern(a))
            stamped++;
    }
    snprintf(line, sizeof(line), "RESULT name=guest-softreset-reads-new ok=%d value=%" PRIu64
             "/%" PRIu64 "\n", good == pages, good, pages);
    e9_puts(line);
    snprintf(line, sizeof(line), "RESULT name=guest-softreset-stamps ok=%d value=%" PRIu64
             "/%" PRIu64 "\n", stamped == pages, stamped, pages);
    e9_puts(line);
    rc |= seen_new == pages && back == 0 && other == 0 && good == pages && stamped == pages ? 0 : 1;
    snprintf(line, sizeof(line), "GH-GUEST-SOFTRESET-DONE rc=%d\n", rc);
    e9_puts(line);
    /* Nothing this kernel can do any more: stay here until destroyed. */
    for (;;)
        __builtin_ia32_pause();
    return rc;
}

/* Stale-page checks driven by tests/kernel/hostmem-stale.c in dom0 (scenario
 * 71). The backend owns a control page at OFFSET and a data region at
 * DATA..+SIZE. For each generation it changes how its memory is backed
 * (fork, KSM, THP, migration, pageout, memfd truncate, ...), then writes the
 * generation's value into every word of the data region with its own
 * mappings, and only then publishes the generation in the control page. The
 * guest reads the first and last word of every data page and acknowledges:
 * a page that does not show the value the owner just wrote is a frame the
 * owner no longer maps at that offset, still mapped in the guest. */
enum { CTL_GEN, CTL_MODE, CTL_ACK, CTL_BAD, CTL_BAD_OFF, CTL_BAD_VAL, CTL_PASSES };
enum { FOLLOW_PATTERN, FOLLOW_UNIFORM, FOLLOW_STRESS, FOLLOW_DONE, FOLLOW_UNBACKED };

static uint64_t follow_value(uint64_t gen, uint64_t mode, uint64_t a)
{
    if (mode == FOLLOW_UNBACKED) /* no owner any more: all ones */
        return ~0ULL;
    return mode == FOLLOW_UNIFORM ? 0x4b534d0000000000ULL | gen : pattern(a) ^ (gen << 40);
}

static int follow(volatile uint64_t *bar, uint64_t ctl, uint64_t data, uint64_t size, int seconds)
{
    volatile uint64_t *c = bar + ctl / 8;
    uint64_t last = 0, rounds = 0, bad_rounds = 0, passes = 0;
    double deadline = now() + seconds;

    printf("GH-GUEST-FOLLOW-READY\n");
    fflush(stdout);
    while (now() < deadline) {
        uint64_t gen = c[CTL_GEN], mode = c[CTL_MODE], bad = 0, bad_off = 0, bad_val = 0, p;

        if (mode == FOLLOW_DONE)
            break;
        if (gen == last) {
            usleep(1000);
            continue;
        }
        if (mode == FOLLOW_STRESS) {
            /* Keep faulting while the backend churns its mappings. */
            c[CTL_ACK] = gen;
            while (c[CTL_GEN] == gen && now() < deadline) {
                for (p = 0; p < size; p += PAGE)
                    (void)bar[(data + p) / 8];
                c[CTL_PASSES] = ++passes;
            }
            last = gen;
            continue;
        }
        for (p = 0; p < size; p += PAGE) {
            uint64_t a = data + p, b = a + PAGE - 8, va = bar[a / 8], vb = bar[b / 8];

            if (va != follow_value(gen, mode, a) || vb != follow_value(gen, mode, b)) {
                if (!bad++) {
                    bad_off = p;
                    bad_val = va != follow_value(gen, mode, a) ? va : vb;
                }
            }
        }
        c[CTL_BAD] = bad;
        c[CTL_BAD_OFF] = bad_off;
        c[CTL_BAD_VAL] = bad_val;
        c[CTL_ACK] = gen;
        printf("RESULT name=guest-follow-gen%" PRIu64 " ok=%d value=%" PRIu64 "/%" PRIu64
               " first_bad=0x%" PRIx64 ":0x%016" PRIx64 "\n", gen, bad == 0, bad,
               (uint64_t)(size / PAGE), bad_off, bad_val);
        fflush(stdout);
        rounds++;
        bad_rounds += bad != 0;
        last = gen;
    }
    printf("RESULT name=guest-follow-done ok=%d value=rounds:%" PRIu64 ",bad_rounds:%" PRIu64 "\n",
           c[CTL_MODE] == FOLLOW_DONE && bad_rounds == 0, rounds, bad_rounds);
    return c[CTL_MODE] == FOLLOW_DONE && bad_rounds == 0 ? 0 : 1;
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

/* Whether dom0 typed "gh-stop" on the console (gh_guest_say in the test
 * bed's lib.sh, through xenconsoled's pty): a loop that only has to outlast
 * dom0's checks then ends early instead of running out its time bound. */
static int stop_requested(void)
{
    struct pollfd p = { .fd = 0, .events = POLLIN };
    char buf[128];
    ssize_t n;

    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLIN))
        return 0;
    n = read(0, buf, sizeof(buf) - 1);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    return strstr(buf, "gh-stop") != NULL;
}

/* Like loop_reads, for a bounded time, checking every value read: the
 * backend's pattern below REGEND, all-ones above (unregistered). The word
 * read in each page moves every round. One RESULT line at the end.
 * STAMP: each round also writes ~pattern into the word it checks in each
 * registered page, before the read in odd rounds (so that the request a
 * killed IOREQ server leaves in flight may be a write, and the first
 * access to a page revoked by its restart is a write in half the rounds),
 * after it in even rounds; a word stamped in an earlier round (from round
 * 512 on, the word index wraps) reads ~pattern. The backend then holds
 * ~pattern in the first R words of every registered page and its pattern
 * in all others, R = min(rounds, 512), printed as guest-loopcheck-stamped:
 * hostmem-backend checks every word on SIGUSR1.
 * RATE > 0 bounds the rounds per second: a scenario that needs the guest to
 * keep making progress, not volume, keeps its count of exits (each read of
 * an unlent page is one) small; on the test bed every exit is a chance of the
 * emulator's fault (docs/testbed-fault.md). */
static int loop_check(const char *res, volatile uint64_t *bar, uint64_t off, uint64_t size,
                      uint64_t regend, int seconds, double rate, int stamp)
{
    uint64_t a, w, v, want, rounds = 0, reads = 0, bad = 0, first_bad = 0;
    double start = now(), next = start + 1, end = start + seconds, due; /* due: seconds */
    int cfd = open_config(res, O_RDONLY);

    while (now() < end) {
        w = (rounds % (PAGE / 8)) * 8;
        for (a = off; a < off + size; a += PAGE) {
            int reg = a + w < regend, stamped = stamp && reg && rounds >= PAGE / 8;

            if (stamp && reg && (rounds & 1)) {
                bar[(a + w) / 8] = ~pattern(a + w);
                stamped = 1;
            }
            v = bar[(a + w) / 8];
            want = !reg ? ~0ULL : stamped ? ~pattern(a + w) : pattern(a + w);
            reads++;
            if (v != want && bad++ == 0) {
                first_bad = a + w;
                printf("guest: loopcheck: 0x%" PRIx64 " reads 0x%016" PRIx64
                       ", want 0x%016" PRIx64 "\n", a + w, v, want);
            }
            if (stamp && reg && !(rounds & 1))
                bar[(a + w) / 8] = ~pattern(a + w);
        }
        rounds++;
        if (rate > 0 && (due = start + rounds / rate - now()) > 0)
            usleep((useconds_t)(due * 1e6));
        if (now() >= next) {
            printf("guest: loop round %" PRIu64 " bad %" PRIu64 " id 0x%08x\n", rounds, bad,
                   config_id(cfd));
            fflush(stdout);
            next = now() + 1;
            if (stop_requested()) {
                printf("guest: loopcheck: dom0 said stop after %.1f s\n", now() - start);
                break;
            }
        }
    }
    printf("RESULT name=guest-loopcheck ok=%d value=%" PRIu64 " reads=%" PRIu64 " bad=%" PRIu64
           " first_bad=0x%" PRIx64 "\n", bad == 0 && rounds > 0, rounds, reads, bad, first_bad);
    if (stamp)
        printf("RESULT name=guest-loopcheck-stamped ok=%d value=%" PRIu64 "\n", rounds > 0,
               (uint64_t)(rounds < PAGE / 8 ? rounds : PAGE / 8));
    if (cfd >= 0)
        close(cfd);
    return bad == 0 && rounds > 0 ? 0 : 1;
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

/*
 * Interleaved bandwidth rounds (bwsuite). Every side runs the same loop
 * (8-byte volatile loads or stores, sequential, over BYTES bytes, PASSES
 * times per sample) over a buffer of the same size, warmed up the same way
 * (one write pass and one read pass before the first sample, so no sample
 * includes a first-touch fault, a copy-on-write, or the first write to a
 * page whose dirty bit is still clear). The sides take turns within each
 * round, in each of the six possible orders in turn, so slow phases of the
 * (shared, emulated) machine and whatever one side leaves behind for the
 * next (the emulator's TLB sizing, caches) hit every side alike.
 *
 * Three sides: the lent BAR pages, guest RAM mapped with 4 KiB entries
 * like the BAR ("ram4k", the reference), and a second buffer of guest RAM
 * made exactly like the first ("ram4kb"): the A/A control. Whatever
 * separates ram4kb from ram4k is the method's own error on this machine,
 * and a BAR/RAM ratio is only meaningful against it.
 */
/* AnonHugePages of this process (kB), to show that no RAM side got THP. */
static long anon_huge_kb(void)
{
    char line[256];
    long kb = -1;
    FILE *f = fopen("/proc/self/smaps_rollup", "r");

    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/*
 * The ratio of side A to side B for one operation (their medians and best
 * samples already computed), three ways: of the medians, of the best
 * samples, and the median of the per-round ratios
 * (A and B measured within the same round, a few hundred milliseconds apart,
 * so a slow phase of the machine cancels out) with its 95 % interval.
 */
static void bw_ratio(const char *tag, const char *op, const struct bw_side *a,
                     const struct bw_side *b, int rounds, int write)
{
    const double *va = write ? a->wr : a->rd, *vb = write ? b->wr : b->rd;
    double q[BW_MAX_ROUNDS], mnq, mxq, lo, hi, pm;
    int r;

    for (r = 0; r < rounds; r++)
        q[r] = va[r] / vb[r];
    pm = median_of(q, rounds, &mnq, &mxq, &lo, &hi);
    printf("RESULT name=%s-%s-ratio ok=1 value=%.3f a=%s b=%s paired_lo=%.3f paired_hi=%.3f"
           " of_medians=%.3f of_best=%.3f\n",
           tag, op, pm, a->name, b->name, lo, hi, a->med[write] / b->med[write],
           b->best[write] > 0 ? a->best[write] / b->best[write] : 0);
}

/* TAG names the RESULT lines (TAG-setup, TAG-sample, TAG-read, ...), BAR_SIDE
 * the BAR side in them. */
static int bw_rounds(const char *tag, const char *bar_side, volatile uint64_t *bar, uint64_t off,
                     uint64_t bytes, int rounds, int passes)
{
    static struct bw_side side[3];
    int ns = 3, r, k, op;
    double first_w, second_w;

    side[0] = (struct bw_side){ .name = bar_side, .p = bar + off / 8 };
    side[1] = (struct bw_side){ .name = "ram4k", .p = bw_ram(bytes) };
    side[2] = (struct bw_side){ .name = "ram4kb", .p = bw_ram(bytes) };
    if (!side[1].p || !side[2].p || rounds < 1 || rounds > BW_MAX_ROUNDS || passes < 1) {
        printf("RESULT name=%s-setup ok=0 value=args-or-mmap\n", tag);
        return 1;
    }
    printf("RESULT name=%s-setup ok=1 value=%" PRIu64 " rounds=%d passes=%d anon_huge_kb=%ld\n",
           tag, bytes, rounds, passes, anon_huge_kb());
    /* The BAR pages were first-touched by reads only: the first write pass
     * also sets the dirty bit of every 4 KiB guest PTE (and of the p2m
     * entries), one page walk per page. Timed on its own, then the second
     * pass, to show what a write measurement without a write warm-up costs. */
    first_w = bw_pass(side[0].p, bytes, 1, 1, 0);
    second_w = bw_pass(side[0].p, bytes, 1, 1, 1);
    printf("RESULT name=%s-bar-first-write ok=1 value=%.3f first_mbps=%.1f second_mbps=%.1f\n",
           tag, first_w / second_w, first_w, second_w);
    fflush(stdout);
    for (k = 0; k < ns; k++) {
        bw_pass(side[k].p, bytes, 1, 1, 2);
        bw_pass(side[k].p, bytes, 1, 0, 0);
    }
    for (r = 0; r < rounds; r++) {
        /* Round r takes the sides in the order of the r % 6th permutation:
         * every side runs equally often first, second and third, and after
         * each other side (a plain rotation would always run ram4k right
         * after the BAR and ram4kb right after ram4k). */
        static const int order[6][3] = {
            { 0, 1, 2 }, { 1, 2, 0 }, { 2, 0, 1 }, { 0, 2, 1 }, { 2, 1, 0 }, { 1, 0, 2 },
        };

        for (k = 0; k < ns; k++) {
            struct bw_side *s = &side[order[r % 6][k]];

            s->rd[r] = bw_sample(s->p, bytes, passes, 0, 0);
            s->wr[r] = bw_sample(s->p, bytes, passes, 1, r);
            printf("RESULT name=%s-sample ok=1 value=%d side=%s read_mbps=%.1f write_mbps=%.1f\n",
                   tag, r, s->name, s->rd[r], s->wr[r]);
        }
        fflush(stdout);
    }
    for (op = 0; op < 2; op++) {
        const char *opn = op ? "write" : "read";
        double mn, lo, hi;

        for (k = 0; k < ns; k++) {
            struct bw_side *s = &side[k];

            s->med[op] = median_of(op ? s->wr : s->rd, rounds, &mn, &s->best[op], &lo, &hi);
            printf("RESULT name=%s-%s ok=1 value=%.1f side=%s min=%.1f max=%.1f n=%d\n",
                   tag, opn, s->med[op], s->name, mn, s->best[op], rounds);
        }
        /* The figure: lent BAR against guest RAM; and the A/A control: the
         * same measurement between two identical RAM buffers. */
        bw_ratio(tag, opn, &side[0], &side[1], rounds, op);
        bw_ratio(tag, opn, &side[2], &side[1], rounds, op);
    }
    munmap((void *)side[1].p, bytes);
    munmap((void *)side[2].p, bytes);
    return 0;
}

/* The memory type the guest kernel gives BAR mappings: PAT entries of the
 * BAR's range (debugfs) and the guest's MTRRs (hvmloader marks the PCI hole
 * UC, and Linux turns a write-back request into UC- where the MTRR is not
 * WB). Maps the first BYTES of the BAR through resource0_wc and through
 * /dev/mem without O_SYNC (a write-back request) in turn, with no other
 * mapping of the BAR alive (a second mapping inherits the first one's type). */
static int memtype_show(const char *what, uint64_t base, uint64_t bytes)
{
    char line[256];
    FILE *f = fopen("/sys/kernel/debug/x86/pat_memtype_list", "r");
    int n = 0, wb = 0;

    if (!f) {
        printf("MEMTYPE what=%s type=unknown reason=no-pat_memtype_list\n", what);
        return 0;
    }
    while (fgets(line, sizeof(line), f)) {
        unsigned long long a, b;
        char *m = strstr(line, "[mem 0x");

        if (!m || sscanf(m, "[mem 0x%llx-0x%llx]", &a, &b) != 2 || b <= base || a >= base + bytes)
            continue;
        line[strcspn(line, "\n")] = 0;
        printf("guest: %s: %s\n", what, line);
        printf("MEMTYPE what=%s type=%s\n", what,
               strstr(line, "write-back") ? "WB" : strstr(line, "write-combining") ? "WC" :
               strstr(line, "uncached-minus") ? "UC-" : strstr(line, "uncached") ? "UC" : "other");
        n++;
        wb += !!strstr(line, "write-back");
    }
    fclose(f);
    if (!n)
        printf("MEMTYPE what=%s type=untracked\n", what);
    /* Write-back: every entry over the range says so. */
    return n > 0 && wb == n;
}

/* Lifts the guest's own UC MTRR from the BAR: hvmloader marks the whole PCI
 * hole UC with variable MTRRs, and Linux then turns every write-back request
 * there into UC-. Disables (through /proc/mtrr) each uncachable variable range
 * that lies wholly inside the BAR [BASE, BASE+SIZE), so no other device's
 * range changes type. Returns how many it disabled. */
static int mtrr_lift(uint64_t base, uint64_t size)
{
    char line[256], unit[4], type[64];
    int reg, n = 0, regs[16], nr = 0, i;
    unsigned long long rb, rs;
    FILE *f = fopen("/proc/mtrr", "r");

    while (f && fgets(line, sizeof(line), f)) {
        if (sscanf(line, "reg%d: base=0x%llx (%*[^)]), size=%llu%3s count=%*d: %63s", &reg, &rb,
                   &rs, unit, type) != 5)
            continue;
        rs <<= unit[0] == 'G' ? 30 : unit[0] == 'M' ? 20 : unit[0] == 'K' ? 10 : 0;
        if (!strcmp(type, "uncachable") && rb >= base && rb + rs <= base + size && nr < 16)
            regs[nr++] = reg;
    }
    if (f)
        fclose(f);
    for (i = 0; i < nr; i++) {
        f = fopen("/proc/mtrr", "w");
        if (f && fprintf(f, "disable=%d\n", regs[i]) > 0 && fclose(f) == 0) {
            n++;
            printf("guest: disabled MTRR reg%02d (uncachable, inside the BAR)\n", regs[i]);
        } else {
            printf("guest: could not disable MTRR reg%02d: %s\n", regs[i], strerror(errno));
            if (f)
                fclose(f);
        }
    }
    return n;
}

/* Returns a write-back /dev/mem mapping of the first BYTES of the BAR (NULL
 * if the guest kernel made none), for a bandwidth run through a mapping the
 * guest kernel made WB: the first write-back request if it got WB (the BAR
 * outside the guest's UC MTRRs, xen-patches 0012), else, if LIFT, the same
 * request after lifting the UC MTRRs inside the BAR. Sets *BAR_BASE. */
static volatile uint64_t *memtype_probe(const char *res, uint64_t bytes, int lift,
                                        uint64_t *bar_base)
{
    char dir[512], path[600], line[256];
    unsigned long long base = 0, end = 0;
    FILE *f;
    int fd;
    void *p;

    mkdir("/sys/kernel/debug", 0755);
    mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
    snprintf(dir, sizeof(dir), "%s", res);
    *strrchr(dir, '/') = 0;
    snprintf(path, sizeof(path), "%s/resource", dir);
    f = fopen(path, "r");
    if (!f || fscanf(f, "%llx %llx", &base, &end) != 2) {
        printf("MEMTYPE what=resource type=unknown reason=no-resource-file\n");
        if (f)
            fclose(f);
        return NULL;
    }
    fclose(f);
    *bar_base = base;
    printf("guest: BAR0 at 0x%llx-0x%llx\n", base, end);
    f = fopen("/proc/mtrr", "r");
    while (f && fgets(line, sizeof(line), f))
        printf("guest: mtrr: %s", line);
    if (f)
        fclose(f);
    f = fopen("/sys/kernel/debug/x86/pat_memtype_list", "r");
    if (f && fgets(line, sizeof(line), f))
        printf("guest: pat: %s", line);
    if (f)
        fclose(f);
    /* resource0 (what every other command maps): pgprot_device, UC-. */
    fd = open(res, O_RDWR | O_SYNC);
    p = fd < 0 ? MAP_FAILED : mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
        memtype_show("resource0", base, bytes);
        munmap(p, bytes);
    }
    if (fd >= 0)
        close(fd);
    /* resource0_wc (prefetchable BARs only): write-combining. */
    snprintf(path, sizeof(path), "%s_wc", res);
    fd = open(path, O_RDWR);
    p = fd < 0 ? MAP_FAILED : mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
        memtype_show("resource0_wc", base, bytes);
        munmap(p, bytes);
    } else {
        printf("MEMTYPE what=resource0_wc type=unmappable reason=%s\n", strerror(errno));
    }
    if (fd >= 0)
        close(fd);
    /* /dev/mem without O_SYNC: the kernel's write-back request. */
    fd = open("/dev/mem", O_RDWR);
    p = fd < 0 ? MAP_FAILED : mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, base);
    if (p != MAP_FAILED) {
        if (memtype_show("devmem-wb-request", base, bytes)) {
            close(fd);
            printf("MEMTYPE what=devmem-wb-request-mtrr-lifted type=not-tried reason=wb-already\n");
            return p;
        }
        munmap(p, bytes);
        p = MAP_FAILED;
    } else {
        printf("MEMTYPE what=devmem-wb-request type=unmappable reason=%s\n", strerror(errno));
    }
    if (fd >= 0)
        close(fd);
    if (fd < 0 || !lift)
        return NULL;
    /* The guest's MTRR lifted from the BAR: the same request again. */
    if (mtrr_lift(base, end - base + 1) > 0) {
        fd = open("/dev/mem", O_RDWR);
        p = fd < 0 ? MAP_FAILED : mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, base);
        if (fd >= 0)
            close(fd);
        if (p != MAP_FAILED) {
            memtype_show("devmem-wb-request-mtrr-lifted", base, bytes);
            return p;
        }
        printf("MEMTYPE what=devmem-wb-request-mtrr-lifted type=unmappable reason=%s\n",
               strerror(errno));
    } else {
        printf("MEMTYPE what=devmem-wb-request-mtrr-lifted type=not-tried reason=no-uc-mtrr-inside-bar\n");
    }
    return NULL;
}


/* ------------------------------------------------------------------ insn
 * Every instruction form a guest may use on the BAR, each as the first
 * access to a fresh (never touched, so not lent) 2 MiB chunk and again once
 * the chunk is lent, compared byte for byte with what the backend holds:
 * its pattern (pattern(o) at every 8-byte BAR offset o) for reads, and for
 * writes the bytes written, read back with plain loads once lent (a lent
 * page *is* the backend's page).  A form that loses data on the first touch
 * shows wrong bytes even though the repeat on the lent chunk is exact.
 */
#define CHUNK (2ULL << 20)

static uint64_t insn_next;           /* next fresh chunk (BAR offset) */
static uint64_t insn_end;            /* end of the registered region */
static uint64_t insn_regend;         /* end of registered memory in the BAR */
static uint64_t insn_reg2, insn_reg2end;  /* a registration above a hole */
static int insn_failed;

static int registered(uint64_t b)
{
    return b < insn_regend || (b >= insn_reg2 && b < insn_reg2end);
}

/* The byte the backend holds at BAR offset b (all ones where nobody
 * registered). */
static uint8_t backend_byte(uint64_t b)
{
    uint64_t w;

    if (!registered(b))
        return 0xff;
    w = pattern(b & ~7ULL);
    return (uint8_t)(w >> (8 * (b & 7)));
}

/* What a write test stores at BAR offset b: not the backend's pattern. */
static uint8_t written_byte(uint64_t b)
{
    return (uint8_t)(backend_byte(b) ^ 0xa5 ^ (b >> 12));
}

static uint64_t fresh_chunks(unsigned n)
{
    uint64_t c = insn_next;

    if (insn_next + n * CHUNK > insn_end)
        return ~0ULL;
    insn_next += n * CHUNK;
    return c;
}

/* Compare len bytes at buf with want(BAR offset off + i). */
static int cmp_bytes(const char *form, const char *when, const volatile uint8_t *buf,
                     uint64_t off, uint64_t len, uint8_t (*want)(uint64_t))
{
    uint64_t i, bad = 0, first = ~0ULL;

    for (i = 0; i < len; i++)
        if (buf[i] != want(off + i)) {
            if (first == ~0ULL)
                first = i;
            bad++;
        }
    printf("RESULT name=guest-insn-%s-%s ok=%d value=%" PRIu64 " bytes=%" PRIu64
           " offset=0x%" PRIx64 " first_bad=%" PRId64 "\n", form, when, bad == 0, bad, len,
           off, first == ~0ULL ? (int64_t)-1 : (int64_t)first);
    if (bad) {
        printf("guest: %s (%s): %" PRIu64 " of %" PRIu64 " bytes wrong, first at +%" PRIu64
               ": 0x%02x, want 0x%02x\n", form, when, bad, len, first, buf[first],
               want(off + first));
        insn_failed = 1;
    }
    return bad != 0;
}

static void rep_movsb(volatile void *dst, const volatile void *src, uint64_t n)
{
    asm volatile("cld; rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
}

static void rep_movsq(volatile void *dst, const volatile void *src, uint64_t n)
{
    asm volatile("cld; rep movsq" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
}

/* Backwards (direction flag set): dst and src point at the LAST byte. */
static void rep_movsb_down(volatile void *dst, const volatile void *src, uint64_t n)
{
    asm volatile("std; rep movsb; cld" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
}

static void rep_movsq_down(volatile void *dst, const volatile void *src, uint64_t n)
{
    asm volatile("std; rep movsq; cld" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
}

static void rep_stosb(volatile void *dst, uint8_t v, uint64_t n)
{
    asm volatile("cld; rep stosb" : "+D"(dst), "+c"(n) : "a"(v) : "memory");
}

static void rep_stosq(volatile void *dst, uint64_t v, uint64_t n)
{
    asm volatile("cld; rep stosq" : "+D"(dst), "+c"(n) : "a"(v) : "memory");
}

/* The RAM bytes [lo, hi) of buf must be 0xff and the rest of buf still
 * pattern(i); prints a RESULT line named NAME. */
static int ones_exactly(const char *name, const uint8_t *buf, uint64_t len, uint64_t lo,
                        uint64_t hi)
{
    uint64_t i, bad = 0, first = len;

    for (i = 0; i < len; i++) {
        uint8_t want = i >= lo && i < hi ? 0xff : (uint8_t)((i * 7 + 1) & 0x7f);

        if (buf[i] != want) {
            bad++;
            if (first == len)
                first = i;
        }
    }
    printf("RESULT name=%s ok=%d value=bad=%" PRIu64 ",first=%" PRId64 ",bytes=%" PRIu64 "\n",
           name, bad == 0, bad, first == len ? (int64_t)-1 : (int64_t)first, hi - lo);
    return bad != 0;
}

static void pattern_fill(uint8_t *buf, uint64_t len)
{
    uint64_t i;

    for (i = 0; i < len; i++)
        buf[i] = (uint8_t)((i * 7 + 1) & 0x7f);
}

/* String copies (data_is_ptr requests) between unregistered BAR offsets
 * OFF.. and two pages of this process's RAM (never 0xff before): the
 * bytes copied from the BAR are all ones, exactly count * size of them in
 * the direction of DF, the bytes around untouched; a copy to the BAR is
 * dropped. Each copy stays within one page of RAM, so Xen sends one
 * request for it: 3 reads and 1 write (dom0 checks the server's count). */
static int unbacked_rep(volatile uint64_t *bar, uint64_t off)
{
    volatile uint8_t *b = (volatile uint8_t *)bar;
    uint8_t *ram = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int bad = 0;
    uint64_t after;

    if (ram == MAP_FAILED) {
        printf("RESULT name=guest-unbacked-rep ok=0 value=mmap-failed\n");
        return 1;
    }
    /* A whole page, upwards. */
    pattern_fill(ram, 2 * PAGE);
    rep_movsb(ram, b + off, PAGE);
    bad |= ones_exactly("guest-unbacked-rep-movsb-fills-ones", ram, 2 * PAGE, 0, PAGE);
    /* 32 quadwords into the middle of the second page. */
    pattern_fill(ram, 2 * PAGE);
    rep_movsq(ram + PAGE + 64, b + off + 0x100, 32);
    bad |= ones_exactly("guest-unbacked-rep-movsq-fills-ones", ram, 2 * PAGE, PAGE + 64,
                        PAGE + 64 + 256);
    /* 100 bytes downwards (DF set), ending at byte 4000 of the second page. */
    pattern_fill(ram, 2 * PAGE);
    rep_movsb_down(ram + PAGE + 4000, b + off + 0x2000 + 99, 100);
    bad |= ones_exactly("guest-unbacked-std-rep-movsb-fills-ones", ram, 2 * PAGE,
                        PAGE + 3901, PAGE + 4001);
    /* RAM to the BAR: dropped. */
    pattern_fill(ram, 2 * PAGE);
    rep_movsb(b + off + 0x3000, ram, 256);
    after = bar[(off + 0x3000) / 8];
    printf("RESULT name=guest-unbacked-rep-movsb-to-bar-dropped ok=%d value=0x%" PRIx64 "\n",
           after == ~0ULL, after);
    bad |= after != ~0ULL;
    bad |= ones_exactly("guest-unbacked-rep-movsb-to-bar-source-kept", ram, 2 * PAGE, 0, 0);
    munmap(ram, 2 * PAGE);
    return bad;
}

static void movsq_once(volatile void *dst, const volatile void *src)
{
    asm volatile("cld; movsq" : "+D"(dst), "+S"(src) : : "memory");
}

static void sse_copy16(volatile void *dst, const volatile void *src)
{
    asm volatile("movdqu (%1), %%xmm0; movdqu %%xmm0, (%0)" : : "r"(dst), "r"(src)
                 : "xmm0", "memory");
}

static void avx_copy32(volatile void *dst, const volatile void *src)
{
    asm volatile("vmovdqu (%1), %%ymm0; vmovdqu %%ymm0, (%0); vzeroupper" : : "r"(dst),
                 "r"(src) : "xmm0", "memory");
}

static int have_avx(void)
{
    unsigned a = 1, b, c = 0, d;
    unsigned lo, hi;

    asm volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    if (!(c & (1u << 28)) || !(c & (1u << 27)))   /* AVX, OSXSAVE */
        return 0;
    asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6) == 6;
}

/* Fill a RAM buffer with what a write test stores at BAR offset off.. */
static void fill_written(uint8_t *ram, uint64_t off, uint64_t len)
{
    uint64_t i;

    for (i = 0; i < len; i++)
        ram[i] = written_byte(off + i);
}

/* Read len bytes at BAR offset off with plain 8-byte loads into ram. */
static void plain_read(volatile uint64_t *bar, uint64_t off, uint8_t *ram, uint64_t len)
{
    uint64_t i;

    for (i = 0; i < len; i += 8) {
        uint64_t w = bar[(off + i) / 8];

        memcpy(ram + i, &w, len - i < 8 ? len - i : 8);
    }
}

enum form {
    F_MEMCPY_FROM, F_MEMCPY_TO, F_MOVSB_FROM, F_MOVSQ_FROM, F_MOVSB_TO, F_MOVSQ_TO,
    F_MOVSB_DOWN_FROM, F_MOVSB_DOWN_TO, F_MOVSB_BAR2BAR, F_STOSB, F_STOSQ, F_MOVS1_FROM,
    F_MOVS1_TO, F_SSE_FROM, F_SSE_TO, F_AVX_FROM, F_AVX_TO, F_NR
};

static const char *const form_name[F_NR] = {
    "memcpy-from-bar", "memcpy-to-bar", "rep-movsb-from-bar", "rep-movsq-from-bar",
    "rep-movsb-to-bar", "rep-movsq-to-bar", "std-rep-movsb-from-bar", "std-rep-movsb-to-bar",
    "rep-movsb-bar-to-bar", "rep-stosb", "rep-stosq", "movsq-from-bar", "movsq-to-bar",
    "sse-from-bar", "sse-to-bar", "avx-from-bar", "avx-to-bar",
};

/*
 * Run one form on the chunk(s) at BAR offset c (c2 for the second chunk of
 * bar-to-bar); when says "first" or "lent".  Reads land in ram (checked
 * against the backend's bytes); writes store written_byte() and are checked
 * by reading back with plain loads.
 */
static void run_form(volatile uint64_t *bar, enum form f, uint64_t c, uint64_t c2,
                     const char *when, uint8_t *ram, uint8_t *src)
{
    volatile uint8_t *b = (volatile uint8_t *)bar;
    const char *n = form_name[f];
    /* The reproducer: 1 MiB from 512 KiB into a fresh chunk. */
    uint64_t off = c + (512 << 10), len = 1 << 20;

    memset(ram, 0, len + 64);
    switch (f) {
    case F_MEMCPY_FROM:
        memcpy(ram, (const void *)(b + off), len);
        cmp_bytes(n, when, ram, off, len, backend_byte);
        break;
    case F_MEMCPY_TO:
        fill_written(src, off, len);
        memcpy((void *)(b + off), src, len);
        plain_read(bar, off, ram, len);
        cmp_bytes(n, when, ram, off, len, written_byte);
        break;
    case F_MOVSB_FROM:
        rep_movsb(ram, b + off, len);
        cmp_bytes(n, when, ram, off, len, backend_byte);
        break;
    case F_MOVSQ_FROM:
        rep_movsq(ram, b + off, len / 8);
        cmp_bytes(n, when, ram, off, len, backend_byte);
        break;
    case F_MOVSB_TO:
        fill_written(src, off, len);
        rep_movsb(b + off, src, len);
        plain_read(bar, off, ram, len);
        cmp_bytes(n, when, ram, off, len, written_byte);
        break;
    case F_MOVSQ_TO:
        fill_written(src, off, len);
        rep_movsq(b + off, src, len / 8);
        plain_read(bar, off, ram, len);
        cmp_bytes(n, when, ram, off, len, written_byte);
        break;
    case F_MOVSB_DOWN_FROM:
        rep_movsb_down(ram + len - 1, b + off + len - 1, len);
        cmp_bytes(n, when, ram, off, len, backend_byte);
        break;
    case F_MOVSB_DOWN_TO:
        fill_written(src, off, len);
        rep_movsb_down(b + off + len - 1, src + len - 1, len);
        plain_read(bar, off, ram, len);
        cmp_bytes(n, when, ram, off, len, written_byte);
        break;
    case F_MOVSB_BAR2BAR:
        /* 64 KiB from chunk c (fresh: the read side faults) to chunk c2
         * (fresh: the write side faults too); c2 then holds c's bytes. */
        len = 64 << 10;
        off = c + CHUNK / 2;
        rep_movsb(b + c2 + CHUNK / 2, b + off, len);
        plain_read(bar, c2 + CHUNK / 2, ram, len);
        cmp_bytes(n, when, ram, off, len, backend_byte);
        break;
    case F_STOSB: {
        uint64_t i, bad = 0;

        rep_stosb(b + off, 0x3c, len);
        plain_read(bar, off, ram, len);
        for (i = 0; i < len; i++)
            bad += ram[i] != 0x3c;
        printf("RESULT name=guest-insn-%s-%s ok=%d value=%" PRIu64 " bytes=%" PRIu64
               " offset=0x%" PRIx64 "\n", n, when, bad == 0, bad, len, off);
        insn_failed |= bad != 0;
        break;
    }
    case F_STOSQ: {
        uint64_t i, bad = 0, v = 0x0123456789abcdefULL;

        rep_stosq(b + off, v, len / 8);
        for (i = 0; i < len / 8; i++)
            bad += bar[off / 8 + i] != v;
        printf("RESULT name=guest-insn-%s-%s ok=%d value=%" PRIu64 " words=%" PRIu64
               " offset=0x%" PRIx64 "\n", n, when, bad == 0, bad, len / 8, off);
        insn_failed |= bad != 0;
        break;
    }
    case F_MOVS1_FROM:
        movsq_once(ram, b + off);
        cmp_bytes(n, when, ram, off, 8, backend_byte);
        break;
    case F_MOVS1_TO:
        fill_written(src, off, 8);
        movsq_once(b + off, src);
        plain_read(bar, off, ram, 8);
        cmp_bytes(n, when, ram, off, 8, written_byte);
        break;
    case F_SSE_FROM:
        sse_copy16(ram, b + off + 8);   /* 16 bytes, 8-aligned */
        cmp_bytes(n, when, ram, off + 8, 16, backend_byte);
        break;
    case F_SSE_TO:
        fill_written(src, off + 8, 16);
        sse_copy16(b + off + 8, src);
        plain_read(bar, off + 8, ram, 16);
        cmp_bytes(n, when, ram, off + 8, 16, written_byte);
        break;
    case F_AVX_FROM:
        avx_copy32(ram, b + off + 8);
        cmp_bytes(n, when, ram, off + 8, 32, backend_byte);
        break;
    case F_AVX_TO:
        fill_written(src, off + 8, 32);
        avx_copy32(b + off + 8, src);
        plain_read(bar, off + 8, ram, 32);
        cmp_bytes(n, when, ram, off + 8, 32, written_byte);
        break;
    default:
        break;
    }
}

/* An unaligned 8-byte load and store across the boundary at BAR offset at
 * (between two fresh chunks, or registered and unregistered memory). */
static void straddle(volatile uint64_t *bar, uint64_t at, const char *what, const char *when,
                     uint8_t *ram)
{
    volatile uint8_t *b = (volatile uint8_t *)bar;
    char n[64];
    uint64_t v, i;

    /* load: 3 bytes below the boundary, 5 above; on the second call
     * ("lent") the bytes the first call's store wrote are expected */
    v = *(volatile uint64_t *)(b + at - 3);
    memcpy(ram, &v, 8);
    snprintf(n, sizeof(n), "straddle-load-%s", what);
    if (strcmp(when, "lent")) {
        cmp_bytes(n, when, ram, at - 3, 8, backend_byte);
    } else {
        uint64_t bad = 0;

        for (i = 0; i < 8; i++) {
            uint64_t o = at - 3 + i;
            uint8_t want = !registered(o) ? 0xff : o < at + 3 ? written_byte(o) :
                           backend_byte(o);

            bad += ram[i] != want;
        }
        printf("RESULT name=guest-insn-%s-%s ok=%d value=%" PRIu64 " offset=0x%" PRIx64 "\n",
               n, when, bad == 0, bad, at - 3);
        insn_failed |= bad != 0;
    }
    /* store: 5 bytes below the boundary, 3 above; read back byte by byte:
     * bytes above regend are dropped (read all ones), the rest are ours */
    for (i = 0; i < 8; i++)
        ram[i] = written_byte(at - 5 + i);
    memcpy(&v, ram, 8);
    *(volatile uint64_t *)(b + at - 5) = v;
    for (i = 0; i < 8; i++)
        ram[i] = b[at - 5 + i];
    snprintf(n, sizeof(n), "straddle-store-%s", what);
    {
        uint64_t bad = 0;

        for (i = 0; i < 8; i++) {
            uint64_t o = at - 5 + i;
            uint8_t want = !registered(o) ? 0xff : written_byte(o);

            bad += ram[i] != want;
        }
        printf("RESULT name=guest-insn-%s-%s ok=%d value=%" PRIu64 " offset=0x%" PRIx64 "\n",
               n, when, bad == 0, bad, at - 5);
        insn_failed |= bad != 0;
    }
}

/* Count the bytes at BAR offsets o.. (read back with plain byte loads, or
 * copied to ram if got is not NULL) that differ from want(o + i) where
 * registered, from all ones elsewhere; print the form's RESULT. */
static void rep_check(volatile uint8_t *b, const uint8_t *got, uint64_t o, uint64_t len,
                      uint8_t (*want)(uint64_t), const char *form, const char *what,
                      const char *when)
{
    uint64_t i, bad = 0;

    for (i = 0; i < len; i++) {
        uint8_t w = registered(o + i) ? want(o + i) : 0xff;

        bad += (got ? got[i] : b[o + i]) != w;
    }
    printf("RESULT name=guest-insn-straddle-%s-%s-%s ok=%d value=%" PRIu64 " offset=0x%" PRIx64
           "\n", form, what, when, bad == 0, bad, o);
    insn_failed |= bad != 0;
}

static uint64_t stos_value, stos_at;  /* what rep stosq stored, from where */

static uint8_t stos_byte(uint64_t b)
{
    return (uint8_t)(stos_value >> (8 * ((b - stos_at) & 7)));
}

/* String instructions whose first 8-byte element straddles the boundary at
 * BAR offset at (3 bytes below it, 5 above), two elements: rep stosq, rep
 * movsq to the BAR, rep movsq from it, and from it with DF set (the first
 * element the straddling one, the second below it).  Xen must split the
 * straddling element at the page boundary (each part to its own owner):
 * sent as one request over both pages, the registered part read all ones
 * or was dropped. */
static void straddle_rep(volatile uint64_t *bar, uint64_t at, const char *what,
                         const char *when, uint8_t *ram, uint8_t *src)
{
    volatile uint8_t *b = (volatile uint8_t *)bar;
    uint64_t o = at - 3, i;

    /* a value of its own per boundary and per call */
    stos_value = 0x3c5a96e1d2b4f087ULL ^ (at << 7) ^ (*when == 'l' ? 0x0101010101010101ULL : 0);
    stos_at = o;
    rep_stosq(b + o, stos_value, 2);
    rep_check(b, NULL, o, 16, stos_byte, "rep-stosq", what, when);

    for (i = 0; i < 16; i++)
        src[i] = written_byte(o + i) ^ (*when == 'l');
    rep_movsq(b + o, src, 2);
    {
        uint64_t bad = 0;

        for (i = 0; i < 16; i++)
            bad += b[o + i] != (registered(o + i) ? src[i] : 0xff);
        printf("RESULT name=guest-insn-straddle-rep-movsq-to-bar-%s-%s ok=%d value=%" PRIu64
               " offset=0x%" PRIx64 "\n", what, when, bad == 0, bad, o);
        insn_failed |= bad != 0;
    }
    /* the BAR now holds src's bytes where registered */
    memset(ram, 0, 32);
    rep_movsq(ram, b + o, 2);
    {
        uint64_t bad = 0;

        for (i = 0; i < 16; i++)
            bad += ram[i] != (registered(o + i) ? src[i] : 0xff);
        printf("RESULT name=guest-insn-straddle-rep-movsq-from-bar-%s-%s ok=%d value=%" PRIu64
               " offset=0x%" PRIx64 "\n", what, when, bad == 0, bad, o);
        insn_failed |= bad != 0;
    }
    /* DF set: the straddling element at o first, then the one at o - 8,
     * whose bytes (some written by straddle()) are read first with plain
     * byte loads */
    for (i = 0; i < 8; i++)
        src[16 + i] = b[o - 8 + i];
    memset(ram, 0, 32);
    rep_movsq_down(ram + 8, b + o, 2);
    {
        uint64_t bad = 0;

        for (i = 0; i < 16; i++) {
            uint64_t x = o - 8 + i;
            uint8_t w = x < o ? src[16 + i] : registered(x) ? src[x - o] : 0xff;

            bad += ram[i] != w;
        }
        printf("RESULT name=guest-insn-straddle-std-rep-movsq-from-bar-%s-%s ok=%d value=%" PRIu64
               " offset=0x%" PRIx64 "\n", what, when, bad == 0, bad, o - 8);
        insn_failed |= bad != 0;
    }
}

static int insn(volatile uint64_t *bar, uint64_t off, uint64_t size, uint64_t regend,
                char **bounds, int nbounds)
{
    uint8_t *ram = malloc((1 << 20) + 64), *src = malloc((1 << 20) + 64);
    int avx = have_avx();
    unsigned f;

    if (!ram || !src || off % CHUNK || size % CHUNK || regend < off + size) {
        printf("RESULT name=guest-args ok=0 value=insn-layout\n");
        return 2;
    }
    insn_next = off;
    insn_end = off + size;
    insn_regend = regend;
    for (f = 0; f < (unsigned)nbounds; f++) {
        char *e;

        if (strncmp(bounds[f], "reg:", 4))
            continue;
        insn_reg2 = strtoull(bounds[f] + 4, &e, 0);
        insn_reg2end = *e == ':' ? strtoull(e + 1, NULL, 0) : 0;
        if (insn_reg2 < regend + 4096 || insn_reg2end < insn_reg2 + 4096) {
            printf("RESULT name=guest-args ok=0 value=insn-registration\n");
            return 2;
        }
    }
    printf("guest: insn: chunks 0x%" PRIx64 "..0x%" PRIx64 ", registered up to 0x%" PRIx64
           ", avx=%d\n", off, off + size, regend, avx);
    for (f = 0; f < F_NR; f++) {
        uint64_t c, c2 = 0;

        if ((f == F_AVX_FROM || f == F_AVX_TO) && !avx) {
            printf("guest: %s: the CPU has no AVX, not run\n", form_name[f]);
            continue;
        }
        c = fresh_chunks(f == F_MOVSB_BAR2BAR ? 2 : 1);
        if (c == ~0ULL) {
            printf("RESULT name=guest-insn-chunks ok=0 value=too-few\n");
            return 2;
        }
        if (f == F_MOVSB_BAR2BAR)
            c2 = c + CHUNK;
        run_form(bar, f, c, c2, "first", ram, src);
        run_form(bar, f, c, c2, "lent", ram, src);
        fflush(stdout);
    }
    /* Straddling two fresh chunks, then registered into unregistered. */
    {
        uint64_t c = fresh_chunks(2);

        if (c == ~0ULL) {
            printf("RESULT name=guest-insn-chunks ok=0 value=too-few\n");
            return 2;
        }
        straddle(bar, c + CHUNK, "chunks", "first", ram);
        straddle(bar, c + CHUNK, "chunks", "lent", ram);
        straddle(bar, regend, "registration-end", "first", ram);
        straddle(bar, regend, "registration-end", "lent", ram);
        straddle_rep(bar, regend, "registration-end", "first", ram, src);
        straddle_rep(bar, regend, "registration-end", "lent", ram, src);
    }
    /* More boundaries (between two registrations), untouched so far. */
    for (f = 0; f < (unsigned)nbounds; f++) {
        uint64_t at = strtoull(bounds[f], NULL, 0);

        if (!strncmp(bounds[f], "reg:", 4))
            continue;

        if (at < insn_end + CHUNK || at + CHUNK > regend) {
            printf("RESULT name=guest-args ok=0 value=insn-boundary\n");
            return 2;
        }
        straddle(bar, at, "registrations", "first", ram);
        straddle(bar, at, "registrations", "lent", ram);
    }
    /* A registration above a hole ("reg:START:END"): its start has an
     * unregistered page below, which stays emulated, so a straddling
     * element there is always sent as a request. */
    if (insn_reg2) {
        straddle(bar, insn_reg2, "hole-to-registration", "first", ram);
        straddle(bar, insn_reg2, "hole-to-registration", "lent", ram);
        straddle_rep(bar, insn_reg2, "hole-to-registration", "first", ram, src);
        straddle_rep(bar, insn_reg2, "hole-to-registration", "lent", ram, src);
    }
    printf("RESULT name=guest-insn-all ok=%d value=%s\n", !insn_failed,
           insn_failed ? "some-form-wrong" : "every-form-exact");
    return insn_failed;
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
    if (!strcmp(argv[1], "unbacked")) {
        int r = unbacked(bar, off);

        return unbacked_rep(bar, off) | r;
    }
    if (!strcmp(argv[1], "hammer") && argc > 6)
        return hammer(bar, off, size, strtoull(argv[6], NULL, 0));
    if (!strcmp(argv[1], "revoke") && argc > 6)
        return revoke_watch(bar, off, size, atoi(argv[6]));
    if (!strcmp(argv[1], "barmove") && argc > 6)
        return bar_moves(res, bar, off, size, strtoull(argv[6], NULL, 0));
    if (!strcmp(argv[1], "softreset") && argc > 6)
        return soft_reset(bar, off, size, atoi(argv[6]));
    if (!strcmp(argv[1], "loop"))
        return loop_reads(bar, off, size);
    if (!strcmp(argv[1], "follow") && argc > 7) {
        uint64_t data = strtoull(argv[6], NULL, 0);

        if (data >= bar_size || size > bar_size - data) {
            printf("RESULT name=guest-args ok=0 value=outside-bar\n");
            return 2;
        }
        return follow(bar, off, data, size, atoi(argv[7]));
    }
    if (!strcmp(argv[1], "loopcheck") && argc > 7)
        return loop_check(res, bar, off, size, strtoull(argv[6], NULL, 0), atoi(argv[7]),
                          argc > 8 ? atof(argv[8]) : 0, argc > 9 && !strcmp(argv[9], "stamp"));
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
    if (!strcmp(argv[1], "bwsuite") && argc > 10) {
        /* Like suite: first touch of OFFSET..+SIZE, then the bandwidth of
         * the first BENCH bytes against guest RAM in ROUNDS interleaved
         * rounds of PASSES passes each, COUNT accesses to unregistered pages
         * at UNREG (the emulated BAR), and last the memory types (after
         * unmapping the BAR: a mapping alive would impose its type). */
        uint64_t bsz = strtoull(argv[6], NULL, 0), unreg = strtoull(argv[9], NULL, 0);
        volatile uint64_t *wb;
        uint64_t base;
        int rc;

        if (bsz > size || off != 0 || unreg >= bar_size || bar_size - unreg < (1 << 20)) {
            printf("RESULT name=guest-args ok=0 value=outside-bar\n");
            return 2;
        }
        touch(bar, off, size, PAGE);
        printf("GH-GUEST-TOUCHED\n");
        fflush(stdout);
        rc = bw_rounds("bw", "bar", bar, off, bsz, atoi(argv[7]), atoi(argv[8]));
        rc |= hammer(bar, unreg, 1 << 20, strtoull(argv[10], NULL, 0));
        fflush(stdout);
        munmap((void *)bar, bar_size);
        wb = memtype_probe(res, bsz, 1, &base);
        /* The same rounds through the mapping the guest made write-back. */
        if (wb)
            rc |= bw_rounds("bwwb", "barwb", wb, 0, bsz, atoi(argv[7]), atoi(argv[8]));
        return rc;
    }
    if (!strcmp(argv[1], "wbcheck") && size > 0) {
        /* Nothing else maps the BAR: a mapping alive imposes its type. */
        volatile uint64_t *wb;
        uint64_t base = 0;
        int rc;

        munmap((void *)bar, bar_size);
        wb = memtype_probe(res, off + size, 0, &base);
        printf("RESULT name=guest-bar-above-4g ok=%d value=0x%" PRIx64 "\n",
               base >= (1ULL << 32), base);
        printf("RESULT name=guest-bar-write-back ok=%d value=%s\n", wb != NULL,
               wb ? "WB" : "not-WB");
        if (!wb)
            return 1;
        rc = check(wb, off, size);
        return rc | (base >= (1ULL << 32) ? 0 : 1);
    }
    if (!strcmp(argv[1], "bench") && argc > 6)
        return bench(bar, off, size, atoi(argv[6]));
    if (!strcmp(argv[1], "insn") && argc > 6)
        return insn(bar, off, size, strtoull(argv[6], NULL, 0), argv + 7, argc - 7);
    fprintf(stderr, "hostmem-guest: unknown command %s\n", argv[1]);
    return 2;
}
