/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * xen-lend-test: checks of the Xen series (xen-patches/) from dom0.
 *
 * Runs in a PV dom0 of a Xen built with xen-patches/, against a running
 * PVH guest booted with the image this program writes (--write-guest):
 * the guest loops reading guest-physical address GUEST_PROBE_ADDR and
 * stores what it read and a counter in its own RAM, where this program
 * reads them back through a foreign mapping.
 *
 *   xen-lend-test --write-guest FILE
 *       write the guest kernel (a 4 KiB ELF with a PVH entry point)
 *   xen-lend-test --dom D [--gfn G] [--no-destroy]
 *       run every check against guest D; by default the last check
 *       destroys D (xl destroy) and checks that the lent pages are freed
 *   xen-lend-test --dom D --limit N
 *       lend-limit: with Xen booted with max-lent-pages=N, lending N + 8
 *       pages stops with -ENOSPC after exactly N (reported in @done)
 *   xen-lend-test --dom D --no-opt-in
 *       retry-not-opted-in: a server created without
 *       XEN_DMOP_IOREQ_SERVER_RETRY answers RETRY: Xen treats it as any
 *       unknown state, as before the series (the guest is crashed)
 *
 * Checks (one "RESULT name=... ok=0|1 value=..." line each):
 *   lend             dom0 lends its own pages at free guest frames
 *   lend-double      the same frames again, elsewhere: -EEXIST
 *   lend-occupied    another frame onto a lent guest frame: -EEXIST
 *   lend-not-owned   frames dom0 does not own: -EPERM
 *   lend-restricted  a handle restricted to another domain: refused
 *   foreign-map      dom0 cannot map the lent guest frame via the guest
 *   revoke           revocation removes the mappings
 *   revoke-vacuous   revoking again, or a frame that is not there: 0
 *   revoke-wrong     revocation naming another frame leaves the entry
 *   relend           a revoked frame can be lent again
 *   retry-lend       RETRY server: the guest read faults, the server lends
 *                    a page and answers RETRY, the guest then reads RAM
 *   retry-unmapped   RETRY without mapping anything: Xen completes the
 *                    read as unbacked (~0) and the guest makes progress
 *   owner-free       the owner frees lent pages: they stay allocated
 *   destroy-frees    guest destroyed with pages lent: they are freed
 *
 * No Xen development headers are needed: the libraries are loaded at run
 * time and the few structures used are declared below (Xen 4.20 ABI).
 * Build: cc -O2 -Wall -o xen-lend-test xen-lend-test.c -ldl
 */

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE 4096UL
#define DOMID_SELF 0x7ff0U

/* The guest image: loaded at GUEST_BASE, results in its first page. */
#define GUEST_BASE        0x100000U
#define GUEST_CODE        0x100U
#define GUEST_RESULT      0x800U
#define GUEST_COUNTER     0x804U
#define GUEST_PROBE_ADDR  0x20000000U /* 512 MiB: a hole in a small guest */
#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* public/hvm/ioreq.h */
#define STATE_IOREQ_NONE      0
#define STATE_IOREQ_READY     1
#define STATE_IOREQ_INPROCESS 2
#define STATE_IORESP_READY    3
#define STATE_IORESP_RETRY    4
#define IOREQ_TYPE_COPY       1
#define IOREQ_READ            1
#define XEN_DMOP_IOREQ_SERVER_RETRY 1U
#define XENMEM_resource_ioreq_server 0
#define XENMEM_resource_ioreq_server_frame_ioreq(n) (1 + (n))

typedef struct {
    uint64_t addr;
    uint64_t data;
    uint32_t count;
    uint32_t size;
    uint32_t vp_eport;
    uint16_t pad0;
    uint8_t state:4;
    uint8_t data_is_ptr:1;
    uint8_t dir:1;
    uint8_t df:1;
    uint8_t pad1:1;
    uint8_t type;
} ioreq_t;

_Static_assert(sizeof(ioreq_t) == 32, "ioreq_t is 32 bytes");

/* ------------------------------------------------------------------ libs */

static struct {
    void *(*dm_open)(void *, unsigned int);
    int (*dm_close)(void *);
    int (*dm_restrict)(void *, uint16_t);
    int (*dm_create)(void *, uint16_t, int, unsigned int, uint16_t *);
    int (*dm_map_range)(void *, uint16_t, uint16_t, int, uint64_t, uint64_t);
    int (*dm_set_state)(void *, uint16_t, uint16_t, int);
    int (*dm_destroy)(void *, uint16_t, uint16_t);
    int (*dm_lend)(void *, uint16_t, uint64_t, uint32_t, const uint64_t *,
                   uint32_t *);
    int (*dm_revoke)(void *, uint16_t, uint64_t, uint32_t, const uint64_t *,
                     uint32_t *);
    void *(*fm_open)(void *, unsigned int);
    void *(*fm_map)(void *, uint32_t, int, size_t, const unsigned long *,
                    int *);
    int (*fm_unmap)(void *, void *, size_t);
    void *(*fm_map_resource)(void *, uint16_t, unsigned int, unsigned int,
                             unsigned long, unsigned long, void **, int, int);
    int (*fm_unmap_resource)(void *, void *);
    void *(*ev_open)(void *, unsigned int);
    int (*ev_fd)(void *);
    int (*ev_bind)(void *, uint32_t, uint32_t);
    int (*ev_pending)(void *);
    int (*ev_unmask)(void *, uint32_t);
    int (*ev_notify)(void *, uint32_t);
    int (*ev_unbind)(void *, uint32_t);
    void *(*xc_open)(void *, void *, unsigned int);
    int (*xc_increase)(void *, uint32_t, unsigned long, unsigned int,
                       unsigned int, unsigned long *);
    int (*xc_decrease)(void *, uint32_t, unsigned long, unsigned int,
                       unsigned long *);
    int (*xc_getinfo_single)(void *, uint32_t, void *);
    int (*xc_setmaxmem)(void *, uint32_t, uint64_t);
} X;

static void *dm, *fm, *xce, *xch;
static int failures;

static void *must_dlopen(const char *const *names)
{
    for ( ; *names; names++ )
    {
        void *h = dlopen(*names, RTLD_NOW);

        if ( h )
            return h;
    }
    fprintf(stderr, "cannot load %s: %s\n", names[-1], dlerror());
    exit(2);
}

static void *sym(void *lib, const char *name)
{
    void *p = dlsym(lib, name);

    if ( !p )
    {
        fprintf(stderr, "missing symbol %s (is the library patched?)\n",
                name);
        exit(2);
    }
    return p;
}

static void load_libs(void)
{
    static const char *const dml[] = { "libxendevicemodel.so.1", NULL };
    static const char *const fml[] = { "libxenforeignmemory.so.1", NULL };
    static const char *const evl[] = { "libxenevtchn.so.1", NULL };
    static const char *const xcl[] = { "libxenctrl.so.4.20", "libxenctrl.so",
                                       NULL };
    void *l;

    l = must_dlopen(dml);
    *(void **)&X.dm_open = sym(l, "xendevicemodel_open");
    *(void **)&X.dm_close = sym(l, "xendevicemodel_close");
    *(void **)&X.dm_restrict = sym(l, "xendevicemodel_restrict");
    *(void **)&X.dm_create = sym(l, "xendevicemodel_create_ioreq_server_flags");
    *(void **)&X.dm_map_range =
        sym(l, "xendevicemodel_map_io_range_to_ioreq_server");
    *(void **)&X.dm_set_state = sym(l, "xendevicemodel_set_ioreq_server_state");
    *(void **)&X.dm_destroy = sym(l, "xendevicemodel_destroy_ioreq_server");
    *(void **)&X.dm_lend = sym(l, "xendevicemodel_lend_pages");
    *(void **)&X.dm_revoke = sym(l, "xendevicemodel_revoke_pages");

    l = must_dlopen(fml);
    *(void **)&X.fm_open = sym(l, "xenforeignmemory_open");
    *(void **)&X.fm_map = sym(l, "xenforeignmemory_map");
    *(void **)&X.fm_unmap = sym(l, "xenforeignmemory_unmap");
    *(void **)&X.fm_map_resource = sym(l, "xenforeignmemory_map_resource");
    *(void **)&X.fm_unmap_resource = sym(l, "xenforeignmemory_unmap_resource");

    l = must_dlopen(evl);
    *(void **)&X.ev_open = sym(l, "xenevtchn_open");
    *(void **)&X.ev_fd = sym(l, "xenevtchn_fd");
    *(void **)&X.ev_bind = sym(l, "xenevtchn_bind_interdomain");
    *(void **)&X.ev_pending = sym(l, "xenevtchn_pending");
    *(void **)&X.ev_unmask = sym(l, "xenevtchn_unmask");
    *(void **)&X.ev_notify = sym(l, "xenevtchn_notify");
    *(void **)&X.ev_unbind = sym(l, "xenevtchn_unbind");

    l = must_dlopen(xcl);
    *(void **)&X.xc_open = sym(l, "xc_interface_open");
    *(void **)&X.xc_increase = sym(l, "xc_domain_increase_reservation_exact");
    *(void **)&X.xc_decrease = sym(l, "xc_domain_decrease_reservation_exact");
    *(void **)&X.xc_getinfo_single = sym(l, "xc_domain_getinfo_single");
    *(void **)&X.xc_setmaxmem = sym(l, "xc_domain_setmaxmem");

    dm = X.dm_open(NULL, 0);
    fm = X.fm_open(NULL, 0);
    xce = X.ev_open(NULL, 0);
    xch = X.xc_open(NULL, NULL, 0);
    if ( !dm || !fm || !xce || !xch )
    {
        fprintf(stderr, "cannot open the Xen interfaces: %s\n",
                strerror(errno));
        exit(2);
    }
}

/* --------------------------------------------------------------- helpers */

static void result(const char *name, bool ok, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    char *p;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    for ( p = buf; *p; p++ )
        if ( *p == ' ' || *p == '\t' || *p == '\n' )
            *p = '_';
    printf("RESULT name=xen-%s ok=%d value=%s\n", name, ok, buf);
    fflush(stdout);
    if ( !ok )
        failures++;
}

/*
 * Pages of a domain: tot_pages and max_pages are at offsets 8 and 16 of
 * xc_domaininfo_t (struct xen_domctl_getdomaininfo), unchanged for years.
 */
static long dom_pages(uint32_t domid, bool max)
{
    uint64_t info[512];

    memset(info, 0, sizeof(info));
    if ( X.xc_getinfo_single(xch, domid, info) )
        return -1;
    if ( (uint16_t)info[0] != domid )
        return -1;
    return (long)info[max ? 2 : 1];
}

static long tot_pages(uint32_t domid)
{
    return dom_pages(domid, false);
}

static int do_lend(uint16_t dom, uint64_t gfn, uint32_t nr, const uint64_t *f,
                uint32_t *done)
{
    int rc = X.dm_lend(dm, dom, gfn, nr, f, done);

    return rc ? -errno : 0;
}

static int do_revoke(uint16_t dom, uint64_t gfn, uint32_t nr, const uint64_t *f,
                  uint32_t *done)
{
    int rc = X.dm_revoke(dm, dom, gfn, nr, f, done);

    return rc ? -errno : 0;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------ guest image */

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static void put16(uint8_t *p, uint16_t v)
{
    memcpy(p, &v, 2);
}

static int write_guest(const char *path)
{
    static uint8_t img[PAGE_SIZE];
    uint8_t *e = img, *ph, *n, *c;
    const uint32_t entry = GUEST_BASE + GUEST_CODE;
    FILE *f;

    /* ELF32 header */
    memcpy(e, "\x7f" "ELF\x01\x01\x01", 7);
    put16(e + 16, 2);                    /* ET_EXEC */
    put16(e + 18, 3);                    /* EM_386 */
    put32(e + 20, 1);
    put32(e + 24, entry);
    put32(e + 28, 52);                   /* e_phoff */
    put16(e + 40, 52);                   /* e_ehsize */
    put16(e + 42, 32);                   /* e_phentsize */
    put16(e + 44, 2);                    /* e_phnum */
    put16(e + 46, 40);

    /* PT_LOAD: the whole file at GUEST_BASE */
    ph = img + 52;
    put32(ph + 0, 1);
    put32(ph + 4, 0);
    put32(ph + 8, GUEST_BASE);
    put32(ph + 12, GUEST_BASE);
    put32(ph + 16, sizeof(img));
    put32(ph + 20, sizeof(img));
    put32(ph + 24, 7);
    put32(ph + 28, PAGE_SIZE);

    /* PT_NOTE: XEN_ELFNOTE_PHYS32_ENTRY, all a PVH kernel needs */
    ph += 32;
    n = img + 0x80;
    put32(ph + 0, 4);
    put32(ph + 4, 0x80);
    put32(ph + 8, GUEST_BASE + 0x80);
    put32(ph + 12, GUEST_BASE + 0x80);
    put32(ph + 16, 20);
    put32(ph + 20, 20);
    put32(ph + 24, 4);
    put32(ph + 28, 4);
    put32(n + 0, 4);
    put32(n + 4, 4);
    put32(n + 8, XEN_ELFNOTE_PHYS32_ENTRY);
    memcpy(n + 12, "Xen", 4);
    put32(n + 16, entry);

    /*
     * 32-bit protected mode, paging off:
     *        cli
     * loop:  mov eax, [GUEST_PROBE_ADDR]
     *        mov [RESULT], eax
     *        inc dword [COUNTER]
     *        jmp loop
     */
    c = img + GUEST_CODE;
    *c++ = 0xfa;
    *c++ = 0xa1; put32(c, GUEST_PROBE_ADDR); c += 4;
    *c++ = 0xa3; put32(c, GUEST_BASE + GUEST_RESULT); c += 4;
    *c++ = 0xff; *c++ = 0x05; put32(c, GUEST_BASE + GUEST_COUNTER); c += 4;
    *c++ = 0xeb; *c++ = (uint8_t)-18;

    f = fopen(path, "wb");
    if ( !f || fwrite(img, sizeof(img), 1, f) != 1 || fclose(f) )
    {
        perror(path);
        return 1;
    }
    return 0;
}

/* The guest's result page, mapped read-only through the foreign interface. */
static volatile uint32_t *guest_page;

static void map_guest_page(uint16_t dom)
{
    unsigned long gfn = GUEST_BASE >> 12;
    int err = 0;

    guest_page = X.fm_map(fm, dom, PROT_READ, 1, &gfn, &err);
    if ( !guest_page || err )
    {
        fprintf(stderr, "cannot map the guest's result page: %s\n",
                strerror(err ? -err : errno));
        guest_page = NULL;
    }
}

static uint32_t guest_word(unsigned int off)
{
    return guest_page ? guest_page[off / 4] : 0;
}

/* ---------------------------------------------------------- RETRY server */

struct server {
    uint16_t dom, id;
    void *res;
    ioreq_t *page;
    int port;
    /* What the server does on a read fault. */
    enum { SERVE_LEND, SERVE_RETRY_ONLY } mode;
    uint64_t frame;          /* page lent in SERVE_LEND mode */
    uint64_t lent_gfn;
    unsigned int requests, retries_answered, lends;
};

static int server_start(struct server *s, uint16_t dom, unsigned int flags)
{
    void *addr = NULL;

    memset(s, 0, sizeof(*s));
    s->dom = dom;
    s->port = -1;
    s->lent_gfn = ~0ULL;

    if ( X.dm_create(dm, dom, 0, flags, &s->id) )
        return -errno;

    s->res = X.fm_map_resource(fm, dom, XENMEM_resource_ioreq_server, s->id,
                               XENMEM_resource_ioreq_server_frame_ioreq(0), 1,
                               &addr, PROT_READ | PROT_WRITE, 0);
    if ( !s->res )
        return -errno;
    s->page = addr;

    if ( X.dm_map_range(dm, dom, s->id, 1, GUEST_PROBE_ADDR,
                        GUEST_PROBE_ADDR + 2 * 1024 * 1024 - 1) ||
         X.dm_set_state(dm, dom, s->id, 1) )
        return -errno;

    /* One vCPU in the test guest. */
    s->port = X.ev_bind(xce, dom, s->page[0].vp_eport);
    if ( s->port < 0 )
        return -errno;

    return 0;
}

static void server_stop(struct server *s)
{
    if ( s->port >= 0 )
        X.ev_unbind(xce, s->port);
    if ( s->res )
        X.fm_unmap_resource(fm, s->res);
    X.dm_destroy(dm, s->dom, s->id);
}

/* Serve requests for the given time. */
static void server_run(struct server *s, double seconds)
{
    double end = now() + seconds;
    struct pollfd pfd = { .fd = X.ev_fd(xce), .events = POLLIN };

    while ( now() < end )
    {
        volatile ioreq_t *p = &s->page[0];
        int port;

        if ( poll(&pfd, 1, 100) <= 0 )
            continue;
        port = X.ev_pending(xce);
        if ( port < 0 )
            continue;
        X.ev_unmask(xce, port);
        if ( port != s->port )
            continue;

        if ( p->state != STATE_IOREQ_READY )
            continue;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        p->state = STATE_IOREQ_INPROCESS;
        s->requests++;

        if ( p->type == IOREQ_TYPE_COPY && p->dir == IOREQ_READ &&
             !p->data_is_ptr )
        {
            uint64_t gfn = p->addr >> 12;

            if ( s->mode == SERVE_LEND && s->lent_gfn == ~0ULL )
            {
                uint32_t done = 0;

                if ( do_lend(s->dom, gfn, 1, &s->frame, &done) == 0 )
                {
                    s->lent_gfn = gfn;
                    s->lends++;
                }
            }
            s->retries_answered++;
            __atomic_thread_fence(__ATOMIC_RELEASE);
            p->state = STATE_IORESP_RETRY;
        }
        else
        {
            /* Anything else: an unbacked access. */
            p->data = ~0ULL;
            __atomic_thread_fence(__ATOMIC_RELEASE);
            p->state = STATE_IORESP_READY;
        }
        X.ev_notify(xce, s->port);
    }
}

/* ------------------------------------------------------------------ main */

/*
 * A server that did not opt in answers RETRY: the old code path for an
 * unknown state crashes the guest.  Domain info flags: shutdown is bit 2,
 * the reason (3 = crash) in bits 16-23; a destroyed domain is gone.
 */
static int not_opted_in(uint16_t dom)
{
    struct server s;
    uint64_t info[512];
    uint32_t flags = 0;
    bool gone = false, crashed = false;
    int i, rc;

    rc = server_start(&s, dom, 0);
    if ( rc )
    {
        result("retry-not-opted-in", false, "server:%s", strerror(-rc));
        return 1;
    }
    s.mode = SERVE_RETRY_ONLY;
    server_run(&s, 1.0);
    for ( i = 0; i < 50 && !gone && !crashed; i++ )
    {
        memset(info, 0, sizeof(info));
        if ( X.xc_getinfo_single(xch, dom, info) ||
             (uint16_t)info[0] != dom )
            gone = true;
        else
        {
            flags = info[0] >> 32;
            crashed = (flags & (1U << 2)) && ((flags >> 16) & 0xff) == 3;
        }
        usleep(100000);
    }
    result("retry-not-opted-in", s.requests >= 1 && (gone || crashed),
           "requests=%u,domain=%s,flags=%#x", s.requests,
           gone ? "gone" : crashed ? "crashed" : "running", flags);
    if ( !gone )
        server_stop(&s);
    return failures ? 1 : 0;
}

#define NR_PAGES 1024U

static int limit_test(uint16_t dom, uint64_t gfn, unsigned long limit)
{
    unsigned long n = limit + 8, i;
    unsigned long *ul = calloc(n, sizeof(*ul));
    uint64_t *fr = calloc(n, sizeof(*fr));
    long max0 = dom_pages(0, true);
    uint32_t done = 0, rdone = 0;
    int rc, rrc;

    if ( !ul || !fr || max0 <= 0 ||
         X.xc_setmaxmem(xch, 0, (max0 + n + 64) * (PAGE_SIZE / 1024)) ||
         X.xc_increase(xch, DOMID_SELF, n, 0, 0, ul) )
    {
        result("lend-limit", false, "setup:%s", strerror(errno));
        return 1;
    }
    for ( i = 0; i < n; i++ )
        fr[i] = ul[i];

    rc = do_lend(dom, gfn, n, fr, &done);
    rrc = do_revoke(dom, gfn, n, fr, &rdone);
    result("lend-limit", rc == -ENOSPC && done == limit && rrc == 0,
           "limit=%lu,lend:rc=%d,done=%u,revoke:rc=%d", limit, rc, done, rrc);

    X.xc_decrease(xch, DOMID_SELF, n, 0, ul);
    X.xc_setmaxmem(xch, 0, max0 * (PAGE_SIZE / 1024));
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    uint16_t dom = 0;
    uint64_t gfn = 0x30000;
    bool have_dom = false, destroy = true, opt_in_test = false;
    unsigned long limit = 0;
    unsigned long frames_ul[NR_PAGES + 1];
    uint64_t frames[NR_PAGES + 1], bogus[2];
    uint32_t done;
    long t0, t1, t2, t3 = -1, max0;
    char buf[64];
    FILE *f;
    int i, rc;

    for ( i = 1; i < argc; i++ )
    {
        if ( !strcmp(argv[i], "--write-guest") && i + 1 < argc )
            return write_guest(argv[++i]);
        else if ( !strcmp(argv[i], "--dom") && i + 1 < argc )
        {
            dom = strtoul(argv[++i], NULL, 0);
            have_dom = true;
        }
        else if ( !strcmp(argv[i], "--gfn") && i + 1 < argc )
            gfn = strtoull(argv[++i], NULL, 0);
        else if ( !strcmp(argv[i], "--no-destroy") )
            destroy = false;
        else if ( !strcmp(argv[i], "--no-opt-in") )
            opt_in_test = true;
        else if ( !strcmp(argv[i], "--limit") && i + 1 < argc )
            limit = strtoul(argv[++i], NULL, 0);
        else
        {
            fprintf(stderr, "usage: %s --write-guest FILE | --dom D "
                    "[--gfn G] [--no-destroy]\n", argv[0]);
            return 2;
        }
    }
    if ( !have_dom )
    {
        fprintf(stderr, "--dom is required\n");
        return 2;
    }

    /* Frames are MFNs for a PV caller; a PVH dom0 would name GFNs. */
    f = fopen("/sys/hypervisor/guest_type", "r");
    if ( f && fgets(buf, sizeof(buf), f) && strcmp(buf, "PV\n") &&
         strcmp(buf, "PV") )
    {
        printf("RESULT name=xen-lend ok=skip value=dom0-is-%s", buf);
        return 77;
    }
    if ( f )
        fclose(f);

    load_libs();

    if ( opt_in_test )
        return not_opted_in(dom);
    if ( limit )
        return limit_test(dom, gfn, limit);

    /*
     * Pages owned by dom0 whose MFNs we know: a fresh reservation (the
     * dom0 kernel never sees them), above dom0's maximum, raised for it.
     */
    t0 = tot_pages(0);
    max0 = dom_pages(0, true);
    if ( max0 > 0 &&
         X.xc_setmaxmem(xch, 0, (max0 + NR_PAGES + 64) * (PAGE_SIZE / 1024)) )
        fprintf(stderr, "note: cannot raise dom0's maximum: %s\n",
                strerror(errno));
    rc = X.xc_increase(xch, DOMID_SELF, NR_PAGES + 1, 0, 0, frames_ul);
    if ( rc )
    {
        result("lend", false, "cannot-allocate-dom0-pages:%s",
               strerror(errno));
        return 1;
    }
    t1 = tot_pages(0);
    for ( i = 0; i <= (int)NR_PAGES; i++ )
        frames[i] = frames_ul[i];

    /* Fill them with a pattern, through dom0's own foreign mapping. */
    {
        int err[NR_PAGES + 1];
        uint32_t *m = X.fm_map(fm, DOMID_SELF, PROT_READ | PROT_WRITE,
                               NR_PAGES + 1, frames_ul, err);

        if ( m )
        {
            for ( i = 0; i <= (int)NR_PAGES; i++ )
                m[i * (PAGE_SIZE / 4)] = 0xc0de0000U | i;
            X.fm_unmap(fm, m, NR_PAGES + 1);
        }
        else
            fprintf(stderr, "note: cannot map own frames (%s), the guest "
                    "read check uses the lent page content anyway\n",
                    strerror(errno));
    }

    /* lend */
    done = 0;
    rc = do_lend(dom, gfn, NR_PAGES, frames, &done);
    result("lend", rc == 0 && done == NR_PAGES, "rc=%d,done=%u,pages=%u",
           rc, done, NR_PAGES);

    /* lend-double: the same frames, at other guest frames */
    done = 0;
    rc = do_lend(dom, gfn + 2 * NR_PAGES, 4, frames, &done);
    result("lend-double", rc == -EEXIST && done == 0, "rc=%d,done=%u", rc,
           done);

    /* lend-occupied: the spare frame onto a lent guest frame */
    done = 0;
    rc = do_lend(dom, gfn, 1, &frames[NR_PAGES], &done);
    result("lend-occupied", rc == -EEXIST && done == 0, "rc=%d,done=%u", rc,
           done);

    /* lend-not-owned: a Xen frame and a frame that does not exist */
    bogus[0] = 0x1;
    bogus[1] = 1ULL << 40;
    done = 0;
    rc = do_lend(dom, gfn + 3 * NR_PAGES, 1, &bogus[0], &done);
    {
        int rc2 = do_lend(dom, gfn + 3 * NR_PAGES, 1, &bogus[1], &done);

        result("lend-not-owned", rc == -EPERM && rc2 == -EPERM,
               "xen-frame:rc=%d,invalid-frame:rc=%d", rc, rc2);
    }

    /* lend-restricted: privcmd refuses a handle restricted elsewhere */
    {
        void *dm2 = X.dm_open(NULL, 0);
        uint16_t other = dom + 100;

        rc = -ENOSYS;
        if ( dm2 && !X.dm_restrict(dm2, other) )
        {
            rc = X.dm_lend(dm2, dom, gfn + 3 * NR_PAGES, 1,
                           &frames[NR_PAGES], &done) ? -errno : 0;
            X.dm_close(dm2);
        }
        result("lend-restricted", rc == -EPERM, "rc=%d", rc);
    }

    /* foreign-map: nobody maps a lent page through the guest */
    {
        unsigned long g = gfn;
        int err = 0;
        void *m = X.fm_map(fm, dom, PROT_READ, 1, &g, &err);

        result("foreign-map", !m || err, "map=%s,err=%d", m ? "ok" : "failed",
               m ? err : -errno);
        if ( m )
            X.fm_unmap(fm, m, 1);
    }

    /* revoke the first half */
    done = 0;
    rc = do_revoke(dom, gfn, NR_PAGES / 2, frames, &done);
    {
        uint32_t d2 = 0;
        /* A revoked frame can be lent again. */
        int rc2 = do_lend(dom, gfn + 2 * NR_PAGES, 1, &frames[0], &d2);
        int rc3 = do_revoke(dom, gfn + 2 * NR_PAGES, 1, &frames[0], &d2);

        result("revoke", rc == 0 && done == NR_PAGES / 2, "rc=%d,done=%u",
               rc, done);
        result("relend", rc2 == 0 && rc3 == 0, "lend:rc=%d,revoke:rc=%d",
               rc2, rc3);
    }

    /* revoke-vacuous: again, and where nothing was ever lent */
    done = 0;
    rc = do_revoke(dom, gfn, NR_PAGES / 2, frames, &done);
    {
        uint32_t d2 = 0;
        int rc2 = do_revoke(dom, gfn + 5 * NR_PAGES, 1, &frames[NR_PAGES], &d2);

        result("revoke-vacuous", rc == 0 && done == NR_PAGES / 2 && rc2 == 0,
               "again:rc=%d,done=%u,never-lent:rc=%d", rc, done, rc2);
    }

    /* revoke-wrong: naming another frame leaves the entry in place */
    {
        uint32_t d2 = 0;
        int rc2 = do_revoke(dom, gfn + NR_PAGES / 2, 1, &frames[NR_PAGES], &d2);
        /* Still lent: lending the frame elsewhere must fail. */
        int rc3 = do_lend(dom, gfn + 3 * NR_PAGES, 1, &frames[NR_PAGES / 2], &d2);

        result("revoke-wrong", rc2 == 0 && rc3 == -EEXIST,
               "revoke:rc=%d,still-lent:rc=%d", rc2, rc3);
    }

    /* RETRY, with the guest looping on reads of GUEST_PROBE_ADDR. */
    map_guest_page(dom);
    if ( guest_page )
    {
        struct server s;
        uint32_t c0, c1, c2, c3, r;

        rc = server_start(&s, dom, XEN_DMOP_IOREQ_SERVER_RETRY);
        if ( rc )
        {
            result("retry-lend", false, "server:%s", strerror(-rc));
            result("retry-unmapped", false, "server:%s", strerror(-rc));
        }
        else
        {
            /* retry-lend: lend the spare frame on the first fault */
            s.mode = SERVE_LEND;
            s.frame = frames[NR_PAGES];
            c0 = guest_word(GUEST_COUNTER);
            server_run(&s, 2.0);
            c1 = guest_word(GUEST_COUNTER);
            r = guest_word(GUEST_RESULT);
            result("retry-lend",
                   s.lends == 1 && r == (0xc0de0000U | NR_PAGES) &&
                   c1 - c0 > 1000 && s.requests <= 4,
                   "lends=%u,requests=%u,result=%#x,loops=%u", s.lends,
                   s.requests, r, c1 - c0);

            /* retry-unmapped: take it away, answer RETRY regardless */
            done = 0;
            do_revoke(dom, s.lent_gfn, 1, &s.frame, &done);
            s.mode = SERVE_RETRY_ONLY;
            s.requests = 0;
            c2 = guest_word(GUEST_COUNTER);
            server_run(&s, 2.0);
            c3 = guest_word(GUEST_COUNTER);
            r = guest_word(GUEST_RESULT);
            result("retry-unmapped",
                   r == 0xffffffffU && s.requests > 10 &&
                   c3 - c2 + 1 >= s.requests,
                   "requests=%u,result=%#x,loops=%u", s.requests, r,
                   c3 - c2);
            server_stop(&s);
        }
    }
    else
    {
        result("retry-lend", false, "no-guest-page");
        result("retry-unmapped", false, "no-guest-page");
    }

    /*
     * owner-free: dom0 gives back all its frames.  The NR_PAGES / 2 still
     * lent must stay allocated (each lent entry holds a reference), so
     * the guest never maps a frame which Xen could hand to someone else.
     */
    rc = X.xc_decrease(xch, DOMID_SELF, NR_PAGES + 1, 0, frames_ul);
    t2 = tot_pages(0);
    if ( max0 > 0 )
        X.xc_setmaxmem(xch, 0, max0 * (PAGE_SIZE / 1024));
    result("owner-free", rc == 0 && t2 - t0 == NR_PAGES / 2,
           "rc=%d,dom0-pages:before=%ld,allocated=%ld,after-free=%ld", rc,
           t0, t1, t2);

    if ( !destroy )
        return failures ? 1 : 0;

    /* destroy-frees: teardown drops the references left */
    if ( guest_page )
        X.fm_unmap(fm, (void *)guest_page, 1);
    snprintf(buf, sizeof(buf), "xl destroy %u", dom);
    rc = system(buf);
    for ( i = 0; i < 100; i++ )
    {
        t3 = tot_pages(0);
        if ( t3 == t0 )
            break;
        usleep(100000);
    }
    result("destroy-frees", rc == 0 && t3 == t0,
           "xl-destroy=%d,dom0-pages:before=%ld,after-destroy=%ld", rc, t0,
           t3);

    return failures ? 1 : 0;
}
