/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * xen-postmortem: what an HVM guest's memory said when its vCPU died.
 *
 * A triple fault whose last fault was the CPU failing to read the IDT's
 * double-fault gate (CR2 = IDTR base + 0x80) has two possible causes on the
 * test bed: the guest's page tables or IDT were really broken in memory
 * (something wrote guest RAM it must not, or changed the p2m under the
 * tables), or the emulated CPU saw something memory does not hold (the
 * emulator's nested paging, docs/testbed-fault.md).  This program tells
 * them apart after the fact: the guest is kept (on_reboot / on_crash =
 * "preserve": a triple fault is a reboot to Xen), its vCPUs' contexts read
 * from Xen (the state saved when it died), and the walk the CPU would make
 * from CR3 to the IDT's #DF and #PF gates redone through dom0's foreign
 * mappings of the guest's RAM.
 *
 *   xen-postmortem --walk DOMID [NAME]
 *       one line "POSTMORTEM d=DOMID v=VCPU name=NAME ... verdict=V" per
 *       vCPU of a paused or shut-down HVM guest; V is "idt-readable"
 *       (every level present, every table a RAM frame below 4 GiB, the
 *       #DF gate present) or "idt-unreadable" (with the first broken
 *       step); exit status 0, 3 (some vCPU unreadable) or 1 (could not
 *       look)
 *   xen-postmortem --watch NAMES-FILE [LOG]
 *       every second, any domain Xen has shut down for reboot, crash or
 *       watchdog whose last line in NAMES-FILE is "NAME 1" (test guests
 *       whose config says "preserve" for those, tests/e2e/dom0/lib.sh) is
 *       walked as above, then destroyed with `xl destroy`: for the
 *       scenarios the guest went away as with "destroy", a moment later.
 *       A live guest of that list is announced once, "POSTMORTEM d=DOMID
 *       name=NAME watched": a death after it has its post-mortem.  Its
 *       lines go to stdout and are appended to LOG.  Runs until killed.
 *
 * Only what a 64-bit guest with 4-level paging needs (the test guests'
 * kernels); anything else is reported, not walked.  No header of Xen's is
 * needed: the two records used (struct hvm_hw_cpu, HVM save type 2, and
 * struct xen_domctl_getdomaininfo) are part of Xen's tools ABI; their
 * layout is copied below, with the sizes and offsets Xen 4.20's headers
 * give them asserted.
 */
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* public/arch-x86/hvm/save.h, struct hvm_hw_cpu (1032 bytes). */
struct hvm_hw_cpu {
    uint8_t fpu_regs[512];
    uint64_t rax, rbx, rcx, rdx, rbp, rsi, rdi, rsp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags;
    uint64_t cr0, cr2, cr3, cr4;
    uint64_t dr0, dr1, dr2, dr3, dr6, dr7;
    uint32_t cs_sel, ds_sel, es_sel, fs_sel, gs_sel, ss_sel, tr_sel, ldtr_sel;
    uint32_t cs_limit, ds_limit, es_limit, fs_limit, gs_limit, ss_limit;
    uint32_t tr_limit, ldtr_limit, idtr_limit, gdtr_limit;
    uint64_t cs_base, ds_base, es_base, fs_base, gs_base, ss_base;
    uint64_t tr_base, ldtr_base, idtr_base, gdtr_base;
    uint32_t cs_arbytes, ds_arbytes, es_arbytes, fs_arbytes, gs_arbytes;
    uint32_t ss_arbytes, tr_arbytes, ldtr_arbytes;
    uint64_t sysenter_cs, sysenter_esp, sysenter_eip;
    uint64_t shadow_gs;
    uint64_t msr_flags, msr_lstar, msr_star, msr_cstar, msr_syscall_mask;
    uint64_t msr_efer, msr_tsc_aux;
    uint64_t tsc;
    uint32_t pending_event;
    uint32_t error_code;
    uint32_t flags;
    uint32_t pad0;
};
_Static_assert(sizeof(struct hvm_hw_cpu) == 1032, "struct hvm_hw_cpu");
_Static_assert(__builtin_offsetof(struct hvm_hw_cpu, cr3) == 672, "cr3");
_Static_assert(__builtin_offsetof(struct hvm_hw_cpu, idtr_base) == 872,
               "idtr_base");
_Static_assert(__builtin_offsetof(struct hvm_hw_cpu, msr_efer) == 992,
               "msr_efer");
#define HVM_SAVE_CODE_CPU 2

/* public/domctl.h, struct xen_domctl_getdomaininfo (112 bytes). */
struct dominfo {
    uint16_t domain;
    uint16_t pad1;
    uint32_t flags;
    uint64_t tot_pages, max_pages, outstanding_pages, shr_pages, paged_pages;
    uint64_t shared_info_frame, cpu_time;
    uint32_t nr_online_vcpus, max_vcpu_id, ssidref;
    uint8_t handle[16];
    uint32_t cpupool;
    uint8_t gpaddr_bits, pad2[7];
    uint32_t emulation_flags, misc_flags;
};
_Static_assert(sizeof(struct dominfo) == 112, "struct dominfo");
#define DOMINF_DYING      (1U << 0)
#define DOMINF_HVM        (1U << 1)
#define DOMINF_SHUTDOWN   (1U << 2)
#define DOMINF_SHUTDOWN_REASON(f) (((f) >> 16) & 255)
#define SHUTDOWN_REBOOT   1
#define SHUTDOWN_CRASH    3
#define SHUTDOWN_WATCHDOG 4

#define PAGE_SHIFT 12
#define PAGE_SIZE  (1UL << PAGE_SHIFT)
#define PTE_P   (1ULL << 0)
#define PTE_PS  (1ULL << 7)
#define PTE_ADDR 0x000ffffffffff000ULL
#define CR0_PG  (1ULL << 31)
#define CR4_PAE (1ULL << 5)
#define CR4_LA57 (1ULL << 12)
#define EFER_LMA (1ULL << 10)

static struct {
    void *(*xc_open)(void *, void *, unsigned int);
    int (*xc_getinfolist)(void *, uint32_t, unsigned int, void *);
    int (*xc_getinfo_single)(void *, uint32_t, void *);
    int (*xc_hvm_partial)(void *, uint32_t, uint16_t, uint16_t, void *,
                          uint32_t);
    void *(*fm_open)(void *, unsigned int);
    void *(*fm_map)(void *, uint32_t, int, size_t, const uint64_t *, int *);
    int (*fm_unmap)(void *, void *, size_t);
} X;
static void *xch, *fmem;
static FILE *logf;              /* --watch's LOG, besides stdout */

/* A line on stdout and, with --watch LOG, in LOG. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
    if ( logf )
    {
        va_start(ap, fmt);
        vfprintf(logf, fmt, ap);
        va_end(ap);
        fflush(logf);
    }
}

static void *load(const char *const *names)
{
    for ( ; *names; names++ )
    {
        void *h = dlopen(*names, RTLD_NOW);

        if ( h )
            return h;
    }
    fprintf(stderr, "xen-postmortem: cannot load %s: %s\n", names[-1],
            dlerror());
    exit(1);
}

static void *sym(void *lib, const char *name)
{
    void *p = dlsym(lib, name);

    if ( !p )
    {
        fprintf(stderr, "xen-postmortem: missing symbol %s\n", name);
        exit(1);
    }
    return p;
}

static void open_xen(void)
{
    static const char *const xcl[] = { "libxenctrl.so.4.20", "libxenctrl.so",
                                       NULL };
    static const char *const fml[] = { "libxenforeignmemory.so.1", NULL };
    void *l = load(xcl);

    *(void **)&X.xc_open = sym(l, "xc_interface_open");
    *(void **)&X.xc_getinfolist = sym(l, "xc_domain_getinfolist");
    *(void **)&X.xc_getinfo_single = sym(l, "xc_domain_getinfo_single");
    *(void **)&X.xc_hvm_partial = sym(l, "xc_domain_hvm_getcontext_partial");
    l = load(fml);
    *(void **)&X.fm_open = sym(l, "xenforeignmemory_open");
    *(void **)&X.fm_map = sym(l, "xenforeignmemory_map");
    *(void **)&X.fm_unmap = sym(l, "xenforeignmemory_unmap");
    xch = X.xc_open(NULL, NULL, 0);
    fmem = X.fm_open(NULL, 0);
    if ( !xch || !fmem )
    {
        fprintf(stderr, "xen-postmortem: cannot open Xen's interfaces: %s\n",
                strerror(errno));
        exit(1);
    }
}

/* Read @len bytes at guest-physical address @gpa (within one page). */
static int read_gpa(uint16_t dom, uint64_t gpa, void *out, size_t len)
{
    uint64_t gfn = gpa >> PAGE_SHIFT;
    int err = 0;
    uint8_t *p = X.fm_map(fmem, dom, PROT_READ, 1, &gfn, &err);

    if ( !p )
        return -errno;
    if ( err )
    {
        X.fm_unmap(fmem, p, 1);
        return err < 0 ? err : -err;
    }
    memcpy(out, p + (gpa & (PAGE_SIZE - 1)), len);
    X.fm_unmap(fmem, p, 1);
    return 0;
}

struct walk {
    char steps[512];            /* "pml4[I]@GFN=ENTRY pdpt[I]@..." */
    char broken[160];           /* first broken step, or "" */
    uint64_t gpa;               /* the translation, if not broken */
};

static void add(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void add(char *buf, size_t size, const char *fmt, ...)
{
    size_t n = strlen(buf);
    va_list ap;

    if ( n >= size - 1 )
        return;
    va_start(ap, fmt);
    vsnprintf(buf + n, size - n, fmt, ap);
    va_end(ap);
}

/*
 * The CPU's walk for a supervisor read of @va under @cr3 (4-level paging):
 * each table, and the page reached, must be a frame of the guest below
 * 4 GiB (the test guests' RAM; the BAR lending touches only frames above
 * 4 GiB), each table mappable, each entry present.  Records every step.
 */
static void walk_va(uint16_t dom, uint64_t cr3, uint64_t va, struct walk *w)
{
    static const char *const lvl[] = { "pt", "pd", "pdpt", "pml4" };
    uint64_t table = cr3 & PTE_ADDR, gpa = 0;
    int level, rc;

    memset(w, 0, sizeof(*w));
    for ( level = 3; level >= 0; level-- )
    {
        unsigned int idx = (va >> (PAGE_SHIFT + 9 * level)) & 511;
        uint64_t e;

        if ( table >= (1ULL << 32) )
        {
            snprintf(w->broken, sizeof(w->broken),
                     "%s table at gfn %#" PRIx64 " is not below 4 GiB",
                     lvl[level], table >> PAGE_SHIFT);
            return;
        }
        rc = read_gpa(dom, table + idx * 8, &e, sizeof(e));
        if ( rc )
        {
            snprintf(w->broken, sizeof(w->broken),
                     "%s table at gfn %#" PRIx64 " not mappable (%s)",
                     lvl[level], table >> PAGE_SHIFT, strerror(-rc));
            return;
        }
        add(w->steps, sizeof(w->steps), "%s[%u]@%#" PRIx64 "=%016" PRIx64 " ",
            lvl[level], idx, table >> PAGE_SHIFT, e);
        if ( !(e & PTE_P) )
        {
            snprintf(w->broken, sizeof(w->broken),
                     "%s entry %u not present (%016" PRIx64 ")", lvl[level],
                     idx, e);
            return;
        }
        if ( level > 0 && level < 3 && (e & PTE_PS) )
        {
            uint64_t span = 1ULL << (PAGE_SHIFT + 9 * level);

            gpa = (e & PTE_ADDR & ~(span - 1)) | (va & (span - 1));
            break;
        }
        table = e & PTE_ADDR;
        gpa = table | (va & (PAGE_SIZE - 1));
    }
    if ( gpa >= (1ULL << 32) )
    {
        snprintf(w->broken, sizeof(w->broken),
                 "page at gpa %#" PRIx64 " is not below 4 GiB", gpa);
        return;
    }
    w->gpa = gpa;
}

/* An IDT gate (16 bytes in long mode), decoded. */
static void gate(uint16_t dom, uint64_t cr3, uint64_t idt, unsigned int vec,
                 char *out, size_t size, bool *readable)
{
    struct walk w;
    uint64_t g[2], handler;
    int rc;

    *readable = false;
    walk_va(dom, cr3, idt + vec * 16, &w);
    if ( w.broken[0] )
    {
        snprintf(out, size, "gate%u: %s (walk: %s)", vec, w.broken, w.steps);
        return;
    }
    rc = read_gpa(dom, w.gpa, g, sizeof(g));
    if ( rc )
    {
        snprintf(out, size, "gate%u: at gpa %#" PRIx64 " not mappable (%s)",
                 vec, w.gpa, strerror(-rc));
        return;
    }
    handler = (g[0] & 0xffff) | ((g[0] >> 32) & 0xffff0000ULL) |
              (g[1] << 32);
    *readable = (g[0] >> 47) & 1;
    snprintf(out, size,
             "gate%u: gpa %#" PRIx64 " %s type %u sel %#x ist %u handler %#"
             PRIx64 " (walk: %s)", vec, w.gpa,
             *readable ? "present" : "NOT-PRESENT",
             (unsigned int)(g[0] >> 40) & 0xf,
             (unsigned int)(g[0] >> 16) & 0xffff,
             (unsigned int)(g[0] >> 32) & 7, handler, w.steps);
}

/* One vCPU's POSTMORTEM line; 0 readable, 3 unreadable, 1 no look. */
static int postmortem_vcpu(uint16_t dom, unsigned int vcpu, const char *name,
                           unsigned int shutdown)
{
    struct hvm_hw_cpu c;
    char df[900], pf[900];
    bool df_ok = false, pf_ok = false;
    const char *why = NULL;

    memset(&c, 0, sizeof(c));
    if ( X.xc_hvm_partial(xch, dom, HVM_SAVE_CODE_CPU, vcpu, &c, sizeof(c)) )
    {
        say("POSTMORTEM d=%u v=%u name=%s verdict=no-context (%s)\n", dom,
            vcpu, name, strerror(errno));
        return 1;
    }
    if ( !(c.cr0 & CR0_PG) || !(c.cr4 & CR4_PAE) || !(c.msr_efer & EFER_LMA) )
        why = "not in long mode";
    else if ( c.cr4 & CR4_LA57 )
        why = "5-level paging";
    if ( why )
    {
        say("POSTMORTEM d=%u v=%u name=%s shutdown=%u rip=%04x:%016" PRIx64
            " cr0=%#" PRIx64 " cr4=%#" PRIx64 " efer=%#" PRIx64
            " verdict=not-walked (%s)\n", dom, vcpu, name, shutdown, c.cs_sel,
            c.rip, c.cr0, c.cr4, c.msr_efer, why);
        return 1;
    }
    if ( c.idtr_limit < 8 * 16 + 15 )
        snprintf(df, sizeof(df), "gate8: beyond the IDT's limit %#x",
                 c.idtr_limit);
    else
        gate(dom, c.cr3, c.idtr_base, 8, df, sizeof(df), &df_ok);
    if ( c.idtr_limit < 14 * 16 + 15 )
        snprintf(pf, sizeof(pf), "gate14: beyond the IDT's limit %#x",
                 c.idtr_limit);
    else
        gate(dom, c.cr3, c.idtr_base, 14, pf, sizeof(pf), &pf_ok);
    say("POSTMORTEM d=%u v=%u name=%s shutdown=%u rip=%04x:%016" PRIx64
        " cr2=%016" PRIx64 " cr3=%#" PRIx64 " idt=%016" PRIx64 "/%#x"
        " verdict=%s; %s; %s\n", dom, vcpu, name, shutdown, c.cs_sel, c.rip,
        c.cr2, c.cr3, c.idtr_base, c.idtr_limit,
        df_ok ? "idt-readable" : "idt-unreadable", df, pf);
    return df_ok ? 0 : 3;
}

/*
 * --walk: one POSTMORTEM line per vCPU (Xen's dump names the one that
 * died); the worst status of them: 1 could not look, 3 unreadable, else 0.
 */
static int postmortem(uint16_t dom, const char *name)
{
    struct dominfo di;
    unsigned int v, shutdown;
    int rc, worst = 0;

    memset(&di, 0, sizeof(di));
    if ( X.xc_getinfo_single(xch, dom, &di) || di.domain != dom )
    {
        say("POSTMORTEM d=%u name=%s verdict=no-domain (%s)\n", dom, name,
            strerror(errno));
        return 1;
    }
    shutdown = (di.flags & DOMINF_SHUTDOWN) ? DOMINF_SHUTDOWN_REASON(di.flags)
                                            : 255;
    for ( v = 0; v <= di.max_vcpu_id && v < 128; v++ )
    {
        rc = postmortem_vcpu(dom, v, name, shutdown);
        if ( rc == 1 || (rc == 3 && worst != 1) )
            worst = rc;
    }
    return worst;
}

/* The name Xen's toolstack gave @dom (xl domname), or "". */
static void domname(uint16_t dom, char *out, size_t size)
{
    char cmd[64];
    FILE *p;

    out[0] = 0;
    /* What `xl domname` reads, without starting libxl. */
    snprintf(cmd, sizeof(cmd), "xenstore-read /local/domain/%u/name 2>/dev/null",
             dom);
    p = popen(cmd, "r");
    if ( !p )
        return;
    if ( fgets(out, size, p) )
        out[strcspn(out, "\n")] = 0;
    pclose(p);
}

/* Whether the last line for @name in @names is "NAME 1". */
static bool listed(const char *names, const char *name)
{
    char line[256];
    size_t n = strlen(name);
    bool found = false;
    FILE *f;

    if ( !n || !(f = fopen(names, "r")) )
        return false;
    while ( fgets(line, sizeof(line), f) )
        if ( !strncmp(line, name, n) && line[n] == ' ' )
            found = line[n + 1] == '1';
    fclose(f);
    return found;
}

/*
 * Sets of domids, each kept until its domain is gone (a domid seen again
 * after that is another domain): those already looked at when dead
 * (walked, or not ours), and those whose name was already checked while
 * alive (announced as watched, or not ours).
 */
#define MAX_DOMS 64
struct domset {
    uint16_t dom[MAX_DOMS];
    unsigned int nr;
};

static bool domset_has(const struct domset *s, uint16_t dom)
{
    unsigned int i;

    for ( i = 0; i < s->nr; i++ )
        if ( s->dom[i] == dom )
            return true;
    return false;
}

static void domset_add(struct domset *s, uint16_t dom)
{
    if ( s->nr < MAX_DOMS )
        s->dom[s->nr++] = dom;
}

/* Keeps only the domains among the @n of @di. */
static void domset_prune(struct domset *s, const struct dominfo *di, int n)
{
    unsigned int k, kept = 0;
    int i;

    for ( k = 0; k < s->nr; k++ )
    {
        bool alive = false;

        for ( i = 0; i < n && !alive; i++ )
            alive = di[i].domain == s->dom[k];
        if ( alive )
            s->dom[kept++] = s->dom[k];
    }
    s->nr = kept;
}

static int watch(const char *names)
{
    /* Test beds run a few guests at once; a poll costs dom0 a hypercall
     * with a bounce buffer of this array, so both are kept small. */
    static struct dominfo di[MAX_DOMS];
    static struct domset seen, checked;
    const struct timespec tick = { 1, 0 };

    setvbuf(stdout, NULL, _IOLBF, 0);
    for ( ;; )
    {
        int n = X.xc_getinfolist(xch, 1, MAX_DOMS, di), i;

        domset_prune(&seen, di, n);
        domset_prune(&checked, di, n);
        for ( i = 0; i < n; i++ )
        {
            unsigned int reason = DOMINF_SHUTDOWN_REASON(di[i].flags);
            uint16_t dom = di[i].domain;
            char name[128], cmd[64];
            int rc;

            if ( !(di[i].flags & DOMINF_HVM) || (di[i].flags & DOMINF_DYING) )
                continue;
            if ( !(di[i].flags & DOMINF_SHUTDOWN) )
            {
                /*
                 * A live guest of ours is announced once: a guest that dies
                 * after this line has a post-mortem, or the watcher failed
                 * (tests/e2e/classify-failure asks for one). A name not
                 * written yet is asked again at the next poll.
                 */
                if ( domset_has(&checked, dom) )
                    continue;
                domname(dom, name, sizeof(name));
                if ( !name[0] )
                    continue;
                domset_add(&checked, dom);
                if ( listed(names, name) )
                    say("POSTMORTEM d=%u name=%s watched\n", dom, name);
                continue;
            }
            if ( (reason != SHUTDOWN_REBOOT && reason != SHUTDOWN_CRASH &&
                  reason != SHUTDOWN_WATCHDOG) || domset_has(&seen, dom) )
                continue;
            domset_add(&seen, dom);
            domname(dom, name, sizeof(name));
            if ( !listed(names, name) )
                continue;
            postmortem(dom, name);
            snprintf(cmd, sizeof(cmd), "timeout 60 xl destroy %u", dom);
            rc = system(cmd);
            say("POSTMORTEM d=%u name=%s destroyed (xl destroy: %d)\n", dom,
                   name, WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
        }
        nanosleep(&tick, NULL);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if ( argc >= 3 && !strcmp(argv[1], "--walk") )
    {
        open_xen();
        return postmortem(atoi(argv[2]), argc > 3 ? argv[3] : "-");
    }
    if ( (argc == 3 || argc == 4) && !strcmp(argv[1], "--watch") )
    {
        open_xen();
        if ( argc == 4 && !(logf = fopen(argv[3], "a")) )
        {
            fprintf(stderr, "xen-postmortem: %s: %s\n", argv[3],
                    strerror(errno));
            return 1;
        }
        return watch(argv[2]);
    }
    fprintf(stderr, "usage: xen-postmortem --walk DOMID [NAME] | "
                    "--watch NAMES-FILE [LOG]\n");
    return 2;
}
