/* A fake of the five Xen tool libraries for tests on machines without Xen:
 * open calls return a dummy handle, every other call fails with EBADF (or
 * the "nothing there" answer the real library gives), so the Rust wrappers
 * can be checked to fail cleanly, name the operation and keep the errno.
 *
 * With FAKEXS_ROOT set, xenstore is a directory tree instead (node = dir,
 * value = its ".value" file), shared by every process of a test; with
 * FAKE_DOMID (and FAKE_UUID, 32 hex digits) set, xc_domain_getinfolist
 * reports that domain (until a file FAKEXS_ROOT/.gone exists), and a file
 * FAKEXS_ROOT/.release fires the @releaseDomain watch once. FAKE_RETRY=1
 * makes the hypervisor accept the RETRY flag. Preloaded (LD_PRELOAD), it
 * also answers the privcmd ioctls on the file named by FAKE_PRIVCMD.
 * Switches a test turns on by creating a file: FAKEXS_ROOT/.no-open makes
 * the device-model, foreign-memory, event-channel and xenctrl opens fail
 * (EMFILE); FAKEXS_ROOT/.fail-server-state makes
 * xendevicemodel_set_ioreq_server_state fail (EIO); FAKEXS_ROOT/.answer-unsent
 * makes the ioreq page hold, in vCPU 0's slot, an answer (IORESP_READY)
 * nobody notified, as a device model killed between the two leaves it, and
 * xenevtchn_notify succeed, logged to FAKE_PRIVCMD_LOG ("notify port=P"). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static int dummy;
static int closes;
#define H ((void *)&dummy)
#define FAIL(e) do { errno = (e); return -1; } while (0)

int fake_closes(void) { return closes; }

/* One fake guest, set by the tests: domid, handle, vCPUs, dying. */
static int fake_domid = -1;
static uint8_t fake_handle[16];
static uint32_t fake_max_vcpu_id;
static uint32_t fake_flags;
void fake_set_domain(int domid, const uint8_t handle[16], uint32_t nr_vcpus, int dying)
{
    fake_domid = domid;
    memcpy(fake_handle, handle, 16);
    fake_max_vcpu_id = nr_vcpus - 1;
    fake_flags = (dying ? 1u : 0u) | 2u; /* dying, hvm_guest */
}
static int is_fake(uint16_t d) { return fake_domid >= 0 && d == fake_domid; }

/* Whether the test created FAKEXS_ROOT/name. */
static int fake_switch(const char *name)
{
    const char *r = getenv("FAKEXS_ROOT");
    char p[PATH_MAX];
    return r && snprintf(p, sizeof(p), "%s/%s", r, name) < (int)sizeof(p) && !access(p, F_OK);
}
#define NO_OPEN_SWITCH() do { if (fake_switch(".no-open")) { errno = EMFILE; return NULL; } } while (0)

/* libxendevicemodel */
void *xendevicemodel_open(void *l, unsigned f) { (void)l; (void)f; NO_OPEN_SWITCH(); return H; }
int xendevicemodel_close(void *h) { (void)h; closes++; return 0; }
int xendevicemodel_create_ioreq_server(void *h, uint16_t d, int b, uint16_t *id)
{
    if (!is_fake(d) || b != 0)
        FAIL(EBADF);
    *id = 3;
    return 0;
}
/* An unpatched hypervisor refuses the flag with EINVAL. */
int xendevicemodel_create_ioreq_server_flags(void *h, uint16_t d, int b, unsigned fl, uint16_t *id)
{
    const char *r = getenv("FAKE_RETRY");
    if (!r || strcmp(r, "1") || !is_fake(d) || fl != 1 || b != 0)
        FAIL(EINVAL);
    *id = 3;
    return 0;
}
int xendevicemodel_get_ioreq_server_info(void *h, uint16_t d, uint16_t id, uint64_t *a, uint64_t *b, uint32_t *p) { FAIL(EBADF); }
int xendevicemodel_map_io_range_to_ioreq_server(void *h, uint16_t d, uint16_t id, int m, uint64_t s, uint64_t e)
{
    if (!is_fake(d) || id != 3)
        FAIL(EBADF);
    return 0;
}
int xendevicemodel_unmap_io_range_from_ioreq_server(void *h, uint16_t d, uint16_t id, int m, uint64_t s, uint64_t e)
{
    if (!is_fake(d) || id != 3)
        FAIL(EBADF);
    return 0;
}
int xendevicemodel_map_pcidev_to_ioreq_server(void *h, uint16_t d, uint16_t id, uint16_t s, uint8_t b, uint8_t dv, uint8_t f)
{
    if (!is_fake(d) || id != 3)
        FAIL(EBADF);
    return 0;
}
int xendevicemodel_unmap_pcidev_from_ioreq_server(void *h, uint16_t d, uint16_t id, uint16_t s, uint8_t b, uint8_t dv, uint8_t f)
{
    if (!is_fake(d) || id != 3)
        FAIL(EBADF);
    return 0;
}
int xendevicemodel_set_ioreq_server_state(void *h, uint16_t d, uint16_t id, int en)
{
    if (!is_fake(d) || id != 3)
        FAIL(ENOENT);
    if (fake_switch(".fail-server-state"))
        FAIL(EIO);
    return 0;
}
static int destroyed;
int fake_destroyed(void) { return destroyed; }
int xendevicemodel_destroy_ioreq_server(void *h, uint16_t d, uint16_t id)
{
    const char *log = getenv("FAKE_PRIVCMD_LOG");
    FILE *f;
    if (!is_fake(d) || id != 3)
        FAIL(ENOENT);
    destroyed++;
    if (log && (f = fopen(log, "a"))) {
        fprintf(f, "destroy dom=%u id=%u\n", d, id);
        fclose(f);
    }
    return 0;
}
#ifndef FAKE_NO_RETRY_STATS
/* Xen's RETRY counters of the fake guest: zero, or what the file
 * $FAKEXS_ROOT/.retry-stats says ("completed resent refused"), so that a
 * test can make them move. Built with -DFAKE_NO_RETRY_STATS, the library
 * lacks the call, as one without the gpu-hostmem series does. */
int xendevicemodel_get_retry_stats(void *h, uint16_t d, uint64_t *c, uint64_t *r, uint64_t *f)
{
    char p[PATH_MAX];
    unsigned long long v[3] = { 0, 0, 0 };
    FILE *fp;
    if (!is_fake(d))
        FAIL(EBADF);
    if (getenv("FAKEXS_ROOT") &&
        snprintf(p, sizeof(p), "%s/.retry-stats", getenv("FAKEXS_ROOT")) < (int)sizeof(p) &&
        (fp = fopen(p, "r"))) {
        if (fscanf(fp, "%llu %llu %llu", &v[0], &v[1], &v[2]) != 3)
            v[0] = v[1] = v[2] = 0;
        fclose(fp);
    }
    *c = v[0];
    *r = v[1];
    *f = v[2];
    return 0;
}
#endif
int xendevicemodel_restrict(void *h, uint16_t d) { if (!is_fake(d)) FAIL(EBADF); return 0; }

int xendevicemodel_nr_vcpus(void *h, uint16_t d, unsigned *n)
{
    if (!is_fake(d))
        FAIL(ESRCH);
    *n = fake_max_vcpu_id + 1;
    return 0;
}

#ifndef FAKE_NO_RETRY_STATS
/* XEN_DMOP_get_instance of the fake guest: as xc_domain_get_domain_state
 * (unique id = first 8 bytes of the handle; FAKE_DOMID and .gone apply),
 * flags bit 0 = dying. Calls are counted, so that a test can tell which
 * source answered the identity checks. Absent with FAKE_NO_RETRY_STATS,
 * as from a library without the gpu-hostmem series. */
int xc_domain_getinfolist(void *h, uint32_t first, unsigned max, void *info);
static int instance_calls;
int fake_instance_calls(void) { return instance_calls; }
int xendevicemodel_get_instance(void *h, uint16_t d, uint64_t *uid, unsigned *flags)
{
    uint8_t info[112];

    instance_calls++;
    (void)xc_domain_getinfolist(h, d, 1, info);
    if (!is_fake(d))
        FAIL(ESRCH);
    memcpy(uid, fake_handle, 8);
    if (flags)
        *flags = fake_flags & 1u;
    return 0;
}
#endif
static int shutdowns, shutdown_reason = -1;
int fake_shutdowns(void) { return shutdowns; }
int fake_shutdown_reason(void) { return shutdown_reason; }
static int intx_level = -1;
int fake_intx_level(void) { return intx_level; }
int xendevicemodel_set_pci_intx_level(void *h, uint16_t d, uint16_t seg, uint8_t bus,
                                      uint8_t dev, uint8_t intx, unsigned int level)
{
    (void)h; (void)seg; (void)bus; (void)dev;
    if (!is_fake(d))
        FAIL(EBADF);
    if (intx > 3)
        FAIL(EINVAL);
    intx_level = (int)level;
    return 0;
}
/* Logged to FAKE_PRIVCMD_LOG too ("shutdown dom=D reason=R"). */
int xendevicemodel_shutdown(void *h, uint16_t d, unsigned int reason)
{
    const char *log = getenv("FAKE_PRIVCMD_LOG");
    FILE *f;
    (void)h;
    if (!is_fake(d))
        FAIL(EBADF);
    shutdowns++;
    shutdown_reason = (int)reason;
    if (log && (f = fopen(log, "a"))) {
        fprintf(f, "shutdown dom=%u reason=%u\n", d, reason);
        fclose(f);
    }
    return 0;
}

/* libxenforeignmemory */
void *xenforeignmemory_open(void *l, unsigned f) { NO_OPEN_SWITCH(); return H; }
int xenforeignmemory_close(void *h) { closes++; return 0; }
/* The ioreq page of the fake server: vCPU i gets remote port 10 + i. */
static _Alignas(4096) uint8_t ioreq_page[4096];
static int mapped;
int fake_mapped(void) { return mapped; }
void *xenforeignmemory_map_resource(void *h, uint16_t d, unsigned t, unsigned id, unsigned long fr,
                                    unsigned long n, void **addr, int prot, int fl)
{
    uint32_t i;
    if (!is_fake(d) || t != 0 || id != 3 || fr != 1 || n != 1 || *addr != NULL) {
        errno = EBADF;
        return NULL;
    }
    memset(ioreq_page, 0, sizeof(ioreq_page));
    for (i = 0; i <= fake_max_vcpu_id; i++) {
        uint32_t port = 10 + i;
        memcpy(ioreq_page + 32 * i + 24, &port, 4);
    }
    if (fake_switch(".answer-unsent"))
        ioreq_page[30] = 3; /* vCPU 0: state STATE_IORESP_READY, flags 0 */
    *addr = ioreq_page;
    mapped++;
    return H;
}
int xenforeignmemory_unmap_resource(void *h, void *r) { mapped--; return 0; }
int xenforeignmemory_restrict(void *h, uint16_t d) { if (!is_fake(d)) FAIL(EBADF); return 0; }
/* Guest frames: every frame of the fake guest below 0x100000 maps to a
 * page whose byte j is (gfn + j) & 0xff; frames from 0x100000 up fail
 * with -EFAULT in err[] (a hole), as privcmd reports a frame it cannot
 * map. Another domain fails the whole call. */
static int guest_mapped;
int fake_guest_mapped(void) { return guest_mapped; }
void *xenforeignmemory_map(void *h, uint32_t d, int prot, size_t n, const unsigned long *gfns,
                           int *err)
{
    size_t i, j;
    uint8_t *p;
    if (!is_fake(d) || n == 0) {
        errno = EBADF;
        return NULL;
    }
    p = aligned_alloc(4096, n * 4096);
    if (!p)
        return NULL;
    for (i = 0; i < n; i++) {
        err[i] = gfns[i] >= 0x100000 ? -EFAULT : 0;
        for (j = 0; j < 4096; j++)
            p[i * 4096 + j] = (uint8_t)(gfns[i] + j);
    }
    guest_mapped += (int)n;
    return p;
}
int xenforeignmemory_unmap(void *h, void *addr, size_t n)
{
    free(addr);
    guest_mapped -= (int)n;
    return 0;
}

/* libxenevtchn: the fd is the read end of a pipe nobody writes to. */
static int evtchn_pipe[2] = { -1, -1 };
void *xenevtchn_open(void *l, unsigned f)
{
    NO_OPEN_SWITCH();
    return pipe(evtchn_pipe) ? NULL : H;
}
int xenevtchn_close(void *h)
{
    closes++;
    close(evtchn_pipe[0]);
    close(evtchn_pipe[1]);
    evtchn_pipe[0] = evtchn_pipe[1] = -1;
    return 0;
}
int xenevtchn_fd(void *h) { return evtchn_pipe[0]; }
int xenevtchn_notify(void *h, uint32_t p)
{
    const char *log = getenv("FAKE_PRIVCMD_LOG");
    FILE *f;
    (void)h;
    if (!fake_switch(".answer-unsent"))
        FAIL(EBADF);
    if (log && (f = fopen(log, "a"))) {
        fprintf(f, "notify port=%u\n", p);
        fclose(f);
    }
    return 0;
}
static int bound;
int fake_bound(void) { return bound; }
int xenevtchn_bind_interdomain(void *h, uint32_t d, uint32_t p)
{
    if (!is_fake(d) || p == 0)
        FAIL(EBADF);
    bound++;
    return (int)p + 100;
}
int xenevtchn_unbind(void *h, uint32_t p) { bound--; return 0; }
int xenevtchn_pending(void *h) { FAIL(EAGAIN); }
int xenevtchn_unmask(void *h, uint32_t p) { FAIL(EBADF); }
int xenevtchn_restrict(void *h, uint16_t d) { if (!is_fake(d)) FAIL(EBADF); return 0; }

/* libxenstore */
static const char *xs_root(void) { return getenv("FAKEXS_ROOT"); }
static int xs_node(const char *p, char *out, size_t n)
{
    const char *r = xs_root();
    if (!r || !p || p[0] != '/' || strstr(p, ".."))
        return -1;
    return snprintf(out, n, "%s%s", r, p) >= (int)n ? -1 : 0;
}
static int mkdirs(char *path)
{
    char *q;
    for (q = path + 1; *q; q++) {
        if (*q == '/') {
            *q = 0;
            if (mkdir(path, 0755) && errno != EEXIST) { *q = '/'; return -1; }
            *q = '/';
        }
    }
    return (mkdir(path, 0755) && errno != EEXIST) ? -1 : 0;
}
static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f) { return remove(p); }

static void xc_log(const char *what);
void *xs_open(unsigned long f) { xc_log("xs-open"); return H; }
void xs_close(void *h) { xc_log("xs-close"); closes++; }
void *xs_read(void *h, uint32_t t, const char *p, unsigned *len)
{
    char node[PATH_MAX], val[PATH_MAX + 8];
    struct stat st;
    char *buf;
    FILE *fp;
    size_t n = 0;
    if (xs_node(p, node, sizeof(node)) || stat(node, &st) || !S_ISDIR(st.st_mode)) {
        errno = ENOENT;
        return NULL;
    }
    buf = calloc(1, 4097);
    snprintf(val, sizeof(val), "%s/.value", node);
    if ((fp = fopen(val, "r"))) {
        n = fread(buf, 1, 4096, fp);
        fclose(fp);
    }
    if (len)
        *len = (unsigned)n;
    return buf;
}
/* A write replaces the value at once, as xenstored's does: a reader in
 * another process never sees it empty or half written (written aside,
 * then renamed over the old one). */
bool xs_write(void *h, uint32_t t, const char *p, const void *d, unsigned len)
{
    char node[PATH_MAX], val[PATH_MAX + 8], tmp[PATH_MAX + 32];
    FILE *fp;
    if (xs_node(p, node, sizeof(node)) || mkdirs(node)) { errno = EACCES; return false; }
    snprintf(val, sizeof(val), "%s/.value", node);
    snprintf(tmp, sizeof(tmp), "%s/.value.%ld", node, (long)getpid());
    if (!(fp = fopen(tmp, "w"))) { errno = EACCES; return false; }
    fwrite(d, 1, len, fp);
    if (fclose(fp) || rename(tmp, val)) { unlink(tmp); errno = EACCES; return false; }
    return true;
}
bool xs_rm(void *h, uint32_t t, const char *p)
{
    char node[PATH_MAX];
    struct stat st;
    if (xs_node(p, node, sizeof(node)) || stat(node, &st)) { errno = ENOENT; return false; }
    nftw(node, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return true;
}
char **xs_directory(void *h, uint32_t t, const char *p, unsigned *n) { errno = ENOENT; return NULL; }
bool xs_watch(void *h, const char *p, const char *tok) { if (xs_root()) return true; errno = EBADF; return false; }
bool xs_unwatch(void *h, const char *p, const char *tok) { return true; }
static int xs_pipe[2] = { -1, -1 };
int xs_fileno(void *h)
{
    if (!xs_root())
        FAIL(EBADF);
    if (xs_pipe[0] < 0 && pipe(xs_pipe))
        return -1;
    return xs_pipe[0];
}
char **xs_check_watch(void *h)
{
    char p[PATH_MAX];
    char **w;
    if (!xs_root() || snprintf(p, sizeof(p), "%s/.release", xs_root()) >= (int)sizeof(p) || unlink(p)) {
        errno = EAGAIN;
        return NULL;
    }
    /* One block: two pointers, then the strings, as libxenstore does. */
    w = malloc(2 * sizeof(char *) + 64);
    w[0] = (char *)(w + 2);
    strcpy(w[0], "@releaseDomain");
    w[1] = w[0] + strlen(w[0]) + 1;
    strcpy(w[1], "gpu-hostmem-release");
    return w;
}
uint32_t xs_transaction_start(void *h) { if (xs_root()) return 1; errno = EBADF; return 0; }
bool xs_transaction_end(void *h, uint32_t t, bool a) { if (xs_root()) return true; errno = EBADF; return false; }

/* libxenctrl: getinfolist answers with the next domain, as Xen does when
 * the asked one does not exist. */
/* With FAKE_XC_LOG set, each xenctrl handle (xenstore connection) opened
 * or closed appends "open PID" or "close PID" ("xs-open PID", "xs-close
 * PID") to that file: a test counts the handles a process holds. */
static void xc_log(const char *what)
{
    const char *p = getenv("FAKE_XC_LOG");
    FILE *fp;
    if (p && (fp = fopen(p, "a"))) {
        fprintf(fp, "%s %d\n", what, (int)getpid());
        fclose(fp);
    }
}
void *xc_interface_open(void *l, void *d, unsigned f)
{
    NO_OPEN_SWITCH();
    xc_log("open");
    return H;
}
int xc_interface_close(void *h) { xc_log("close"); closes++; return 0; }
int xc_domain_getinfolist(void *h, uint32_t first, unsigned max, void *info)
{
    uint16_t next = (uint16_t)(first + 1);
    const char *envd = getenv("FAKE_DOMID"), *envu = getenv("FAKE_UUID");
    if (first == 0xffff)
        FAIL(EPERM);
    if (envd && envu && strlen(envu) == 32 && fake_domid == -1) {
        uint8_t hd[16];
        int i;
        for (i = 0; i < 16; i++) {
            unsigned b;
            sscanf(envu + 2 * i, "%2x", &b);
            hd[i] = (uint8_t)b;
        }
        fake_set_domain(atoi(envd), hd, 1, 0);
    }
    memset(info, 0, 112);
    if (xs_root()) {
        char g[PATH_MAX];
        snprintf(g, sizeof(g), "%s/.gone", xs_root());
        if (!access(g, F_OK))
            fake_domid = -2;
    }
    if (fake_domid >= 0 && first == (uint32_t)fake_domid) {
        uint16_t d = (uint16_t)fake_domid;
        memcpy(info, &d, 2);
        memcpy((uint8_t *)info + 4, &fake_flags, 4);
        memcpy((uint8_t *)info + 68, &fake_max_vcpu_id, 4);
        memcpy((uint8_t *)info + 76, fake_handle, 16);
        return 1;
    }
    memcpy(info, &next, sizeof(next));
    return 1;
}

/* XEN_DOMCTL_get_domain_state: the fake guest's unique id is the first 8
 * bytes of its handle (little endian); no such domain: ESRCH. The call to
 * getinfolist applies FAKE_DOMID and FAKEXS_ROOT/.gone. */
int xc_domain_get_domain_state(void *h, uint32_t domid, unsigned *state,
                               uint64_t *unique_id)
{
    uint8_t info[112];

    if (domid > 0xffff || xc_domain_getinfolist(h, domid, 1, info) < 0)
        FAIL(ESRCH);
    if (fake_domid < 0 || domid != (uint32_t)fake_domid)
        FAIL(ESRCH);
    if (state)
        *state = 1;
    if (unique_id)
        memcpy(unique_id, fake_handle, 8);
    return 0;
}

/* The fake guest's paging pool: 1 MiB; no such domain: ESRCH. */
int xc_get_paging_mempool_size(void *h, uint32_t domid, uint64_t *size)
{
    if (fake_domid < 0 || domid != (uint32_t)fake_domid)
        FAIL(ESRCH);
    *size = 1 << 20;
    return 0;
}

/* privcmd, when preloaded: the ioctls of docs/interfaces.md on the file
 * named by FAKE_PRIVCMD succeed (nothing registered, nothing lent); any
 * other fd goes to the real ioctl. */
static int revokes;
int fake_revokes(void) { return revokes; }
static int is_fake_privcmd(int fd)
{
    const char *want = getenv("FAKE_PRIVCMD");
    char link[64], path[PATH_MAX];
    ssize_t n;
    if (!want)
        return 0;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof(path) - 1);
    if (n < 0)
        return 0;
    path[n] = 0;
    return !strcmp(path, want);
}
int ioctl(int fd, unsigned long req, ...)
{
    static int (*real)(int, unsigned long, void *);
    va_list ap;
    void *arg;
    va_start(ap, req);
    arg = va_arg(ap, void *);
    va_end(ap);
    if (is_fake_privcmd(fd) && ((req >> 8) & 0xff) == 'P') {
        switch (req & 0xff) {
        case 6: { /* RESTRICT */
            const char *log = getenv("FAKE_PRIVCMD_LOG");
            FILE *f;
            if (log && (f = fopen(log, "a"))) {
                fprintf(f, "restrict dom=%u pid=%d\n", *(uint16_t *)arg, (int)getpid());
                fclose(f);
            }
            return 0;
        }
        case 66: /* HOSTMEM_LEND: nothing registered */
            ((uint32_t *)arg)[6] = 0;
            return 0;
        case 67: { /* HOSTMEM_REVOKE: logged to FAKE_PRIVCMD_LOG */
            const char *log = getenv("FAKE_PRIVCMD_LOG");
            FILE *f;
            revokes++;
            if (log && (f = fopen(log, "a"))) {
                fprintf(f, "revoke dom=%u flags=%u\n", ((uint16_t *)arg)[6], ((uint16_t *)arg)[7]);
                fclose(f);
            }
            return 0;
        }
        case 68: /* HOSTMEM_QUERY */
            ((uint32_t *)arg)[1] = 0;
            ((uint64_t *)arg)[2] = 0;
            return 0;
        case 69: { /* HOSTMEM_BACKEND: logged to FAKE_PRIVCMD_LOG */
            const char *log = getenv("FAKE_PRIVCMD_LOG");
            FILE *f;
            if (log && (f = fopen(log, "a"))) {
                fprintf(f, "narrow-to-backend\n");
                fclose(f);
            }
            return 0;
        }
        }
        errno = ENOTTY;
        return -1;
    }
    if (!real)
        real = (int (*)(int, unsigned long, void *))dlsym(RTLD_NEXT, "ioctl");
    return real(fd, req, arg);
}
