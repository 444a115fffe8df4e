/* SPDX-License-Identifier: MIT */
/*
 * The bandwidth method the guest programs share (hostmem-guest's bwsuite,
 * vk-compute -b; docs/benchmarks.md, "Method of the bandwidth figures"):
 * one sample is PASSES sequential passes of 8-byte volatile loads or stores
 * over a buffer, the RAM sides are anonymous guest RAM mapped with 4 KiB
 * entries, and a figure is a median with a distribution-free 95 % interval.
 * Each program keeps its own rounds and RESULT lines.
 *
 * BW_UNIT: bytes per unit of the figures, defined by the program before it
 * includes this (hostmem-guest 1e6, MB/s; vk-compute 1048576.0, MiB/s).
 * Included once per program (each is compiled alone); its content counts in
 * the keys of the products that build them (tests/e2e/build: progs hashes
 * every file of tests/guest, guest-vk names it).
 */
#ifndef GH_GUEST_BW_H
#define GH_GUEST_BW_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#ifndef BW_UNIT
#error "define BW_UNIT (bytes per unit of the figures) before including guest-bw.h"
#endif

#define BW_MAX_ROUNDS 256
#define BW_PAGE 4096ULL

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One side of the rounds: its buffer and every sample, in BW_UNIT/s. */
struct bw_side {
    const char *name;
    volatile uint64_t *p;
    double rd[BW_MAX_ROUNDS], wr[BW_MAX_ROUNDS];
    double med[2], best[2]; /* per operation (0 read, 1 write), after the rounds */
};

static double bw_pass(volatile uint64_t *p, uint64_t bytes, int passes, int write, uint64_t seed)
{
    uint64_t i, sum = 0, n = bytes / 8;
    double t0 = now(), dt;
    int r;

    for (r = 0; r < passes; r++)
        for (i = 0; i < n; i++) {
            if (write)
                p[i] = i ^ seed;
            else
                sum += p[i];
        }
    dt = now() - t0;
    if (sum == 42)
        printf("#\n");
    return (double)bytes * passes / dt / BW_UNIT;
}

/*
 * bw_pass, taken again (up to twice) when it reports above 1 TB/s (1 TiB/s
 * in MiB: BW_UNIT units of BW_UNIT bytes a second): a guest clock glitch
 * (seen once under nested emulation: CLOCK_MONOTONIC barely advanced over
 * 128 MiB of writes), not a measurement.
 */
static double bw_sample(volatile uint64_t *p, uint64_t bytes, int passes, int write, uint64_t seed)
{
    double v = 0;
    int again;

    for (again = 0; again < 3; again++)
        if ((v = bw_pass(p, bytes, passes, write, seed)) < BW_UNIT)
            break;
    return v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/*
 * Median of V[0..N) (N at most BW_MAX_ROUNDS), with its minimum, maximum and
 * a distribution-free 95 % confidence interval of the median: the order
 * statistics k and n + 1 - k with k = floor(n / 2 - 0.98 sqrt(n)) (normal
 * approximation of the binomial; 1-based, at least 1).
 */
static double median_of(const double *v, int n, double *mn, double *mx, double *lo, double *hi)
{
    double s[BW_MAX_ROUNDS], root = n;
    int k, i;

    for (i = 0; i < 32; i++) /* sqrt(n), without libm */
        root = (root + n / root) / 2;
    k = (int)(n / 2.0 - 0.98 * root);
    if (k < 1)
        k = 1;
    memcpy(s, v, n * sizeof(*v));
    qsort(s, n, sizeof(*s), cmp_double);
    *mn = s[0];
    *mx = s[n - 1];
    *lo = s[k - 1];
    *hi = s[n - k];
    return n & 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* Anonymous guest RAM of BYTES, 2 MiB aligned, populated by writing it, with
 * transparent huge pages forbidden so the guest maps it with 4 KiB entries
 * like the BAR. */
static volatile uint64_t *bw_ram(uint64_t bytes)
{
    uint64_t len = bytes + (2ULL << 20), i;
    uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED)
        return NULL;
    p = (uint8_t *)(((uintptr_t)p + (2ULL << 20) - 1) & ~((2ULL << 20) - 1));
    madvise(p, bytes, MADV_NOHUGEPAGE);
    for (i = 0; i < bytes; i += BW_PAGE)
        p[i] = 1;
    return (volatile uint64_t *)p;
}

#endif
