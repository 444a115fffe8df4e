// SPDX-License-Identifier: GPL-2.0-only
/*
 * hostmem-selftest: exercises the privcmd host memory lending ioctls
 * (IOCTL_PRIVCMD_HOSTMEM_*, docs/interfaces.md section 2) of the patched
 * xen-privcmd module, in dom0.
 *
 *   hostmem-selftest [--dom N | --make-domain] [--gfn G] [--seconds S]
 *                    [--require-lend]
 *
 * A guest is needed, as privcmd registers only for a guest instance that
 * exists: --dom N (a running HVM guest) or --make-domain. With a Xen that
 * implements XEN_DMOP_lend_pages, pages are lent at guest frames G... (default
 * 0x100000, i.e. 4 GiB: above the RAM of a small guest) and revocation by
 * munmap, MADV_DONTNEED, owner exit, fd close and concurrent invalidations
 * is checked. --make-domain creates a bare HVM domain (never run) with raw
 * Xen 4.20 domctls, lends to it, and at the end destroys it while pages
 * are lent, to check that revoking from a dead domain succeeds. The stall
 * test makes a second bare domain. When Xen cannot lend, those tests are reported as SKIP, or as failures with
 * --require-lend.
 *
 * Output: TAP ("ok N - name", "not ok N - name # why") plus one line
 * "RESULT name=<name> ok=0|1 value=<detail>" per test that ran. Exit
 * status 0 if every test that ran passed.
 *
 * The structures are declared here, as userspace has no copy of the
 * patched uAPI header; their sizes are checked against the contract.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <linux/dma-heap.h>
#include <linux/udmabuf.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef uint16_t domid_t;

struct privcmd_hostmem_register {
	uint64_t addr;
	uint64_t size;
	uint64_t offset;
	uint32_t id;
	domid_t dom;
	uint16_t flags;
	uint64_t unique_id;
	uint64_t reserved[1];
};

struct privcmd_hostmem_unregister {
	uint32_t id;
	domid_t dom;
	uint16_t flags;
	uint64_t reserved[2];
};

struct privcmd_hostmem_lend {
	uint64_t offset;
	uint64_t gfn;
	uint32_t nr_pages;
	domid_t dom;
	uint16_t flags;
	uint32_t nr_lent;
	uint32_t pad;
	uint64_t unique_id;
	uint64_t reserved[1];
};

#define PRIVCMD_HOSTMEM_REVOKE_ALL (1 << 0)

struct privcmd_hostmem_revoke {
	uint64_t gfn;
	uint32_t nr_pages;
	domid_t dom;
	uint16_t flags;
	uint64_t reserved[2];
};

struct privcmd_hostmem_region {
	uint64_t offset;
	uint64_t size;
	uint64_t lent_pages;
	uint32_t id;
	uint32_t owner_pid;
	uint64_t unique_id;
	uint64_t flags;
};

#define PRIVCMD_HOSTMEM_REGION_GONE (1 << 0)

struct privcmd_hostmem_query {
	domid_t dom;
	uint16_t flags;
	uint32_t nr_regions;
	uint64_t regions;
	uint64_t lent_pages;
	uint64_t reserved[2];
};

_Static_assert(sizeof(struct privcmd_hostmem_register) == 48, "register");
_Static_assert(sizeof(struct privcmd_hostmem_unregister) == 24, "unregister");
_Static_assert(sizeof(struct privcmd_hostmem_lend) == 48, "lend");
_Static_assert(sizeof(struct privcmd_hostmem_revoke) == 32, "revoke");
_Static_assert(sizeof(struct privcmd_hostmem_region) == 48, "region");
_Static_assert(sizeof(struct privcmd_hostmem_query) == 40, "query");

#define IOCTL_PRIVCMD_RESTRICT _IOC(_IOC_NONE, 'P', 6, sizeof(domid_t))
#define IOCTL_PRIVCMD_HOSTMEM_REGISTER \
	_IOW('P', 64, struct privcmd_hostmem_register)
#define IOCTL_PRIVCMD_HOSTMEM_UNREGISTER \
	_IOW('P', 65, struct privcmd_hostmem_unregister)
#define IOCTL_PRIVCMD_HOSTMEM_LEND _IOWR('P', 66, struct privcmd_hostmem_lend)
#define IOCTL_PRIVCMD_HOSTMEM_REVOKE \
	_IOW('P', 67, struct privcmd_hostmem_revoke)
#define IOCTL_PRIVCMD_HOSTMEM_QUERY \
	_IOWR('P', 68, struct privcmd_hostmem_query)
#define IOCTL_PRIVCMD_HOSTMEM_BACKEND _IO('P', 69)

struct privcmd_dm_op {
	domid_t dom;
	uint16_t num;
	uint64_t ubufs;
};

#define IOCTL_PRIVCMD_DM_OP \
	_IOC(_IOC_NONE, 'P', 5, sizeof(struct privcmd_dm_op))

/*
 * --make-domain: a bare HVM domain to lend to, made with raw domctls of
 * Xen 4.20 (interface version 0x17). Test use only: the domain never runs.
 */
struct privcmd_hypercall {
	uint64_t op;
	uint64_t arg[5];
};

#define IOCTL_PRIVCMD_HYPERCALL \
	_IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall))
#define HYPERVISOR_domctl 36
#define XEN_DOMCTL_INTERFACE_VERSION 0x17
#define XEN_DOMCTL_createdomain 1
#define XEN_DOMCTL_destroydomain 2
#define XEN_DOMCTL_max_vcpus 15
#define XEN_DOMCTL_set_paging_mempool_size 86
#define XEN_DOMCTL_get_domain_state 90
#define XEN_DOMCTL_CDF_hvm (1u << 0)
#define XEN_DOMCTL_CDF_hap (1u << 1)
#define XEN_X86_EMU_LAPIC (1u << 0)

struct xen_domctl_createdomain {
	uint32_t ssidref;
	uint8_t handle[16];
	uint32_t flags;
	uint32_t iommu_opts;
	uint32_t max_vcpus;
	uint32_t max_evtchn_port;
	int32_t max_grant_frames;
	int32_t max_maptrack_frames;
	uint32_t grant_opts;
	uint32_t altp2m_opts;
	uint32_t vmtrace_size;
	uint32_t cpupool_id;
	uint32_t emulation_flags;
	uint32_t misc_flags;
};

struct xen_domctl {
	uint32_t cmd;
	uint32_t interface_version;
	domid_t domain;
	uint16_t pad[3];
	union {
		struct xen_domctl_createdomain createdomain;
		uint64_t paging_mempool_size;
		uint32_t max_vcpus;
		struct {
			uint16_t state, pad0;
			uint32_t pad1;
			uint64_t unique_id;
		} get_domain_state;
		uint8_t pad[128];
	} u;
};

_Static_assert(sizeof(struct xen_domctl_createdomain) == 68, "createdomain");
_Static_assert(sizeof(struct xen_domctl) == 144, "domctl");

#define PRIVCMD "/dev/xen/privcmd"
#define PARAMS "/sys/module/xen_privcmd/parameters/"
#define MAX_REGIONS 1024

static long pg;
static domid_t dom = 0x7fe0;	/* registrations only: need not exist */
/*
 * The instance of @dom registrations and lends name: read from Xen when
 * there is a domain, any id but 0 otherwise.
 */
static uint64_t dom_uid = 1;
static bool have_guest;
static uint64_t gfn_base = 0x100000;
static unsigned int seconds = 5;
static bool require_lend;
static bool make_domain;
static const char *bar_path;	/* --bar: a sysfs resource file to map */
static int fd = -1;
static int tests, failures;

/* --- reporting ---------------------------------------------------------- */

static void result(const char *name, bool ok, const char *fmt, ...)
{
	char detail[256] = "";
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);

	tests++;
	if (!ok)
		failures++;
	printf("%sok %d - %s%s%s\n", ok ? "" : "not ", tests, name,
	       ok ? "" : " # ", ok ? "" : detail);
	printf("RESULT name=%s ok=%d value=%s\n", name, ok, detail[0] ? detail : "-");
	fflush(stdout);
}

static void skip(const char *name, const char *why)
{
	if (require_lend) {
		result(name, false, "not run: %s", why);
		return;
	}
	tests++;
	printf("ok %d - %s # SKIP %s\n", tests, name, why);
	fflush(stdout);
}

static const char *ename(int e)
{
	static char buf[32];

	switch (e) {
	case 0: return "0";
	case EINVAL: return "EINVAL";
	case EEXIST: return "EEXIST";
	case EFAULT: return "EFAULT";
	case EACCES: return "EACCES";
	case ENOSPC: return "ENOSPC";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case ESRCH: return "ESRCH";
	case ENOTTY: return "ENOTTY";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case EXDEV: return "EXDEV";
	case ENOSYS: return "ENOSYS";
	case ENXIO: return "ENXIO";
	default:
		snprintf(buf, sizeof(buf), "errno%d", e);
		return buf;
	}
}

/* Check that an ioctl result (0 or an errno) is the one expected. */
static void expect(const char *name, int got, int want)
{
	result(name, got == want, "got=%s want=%s", ename(got), ename(want));
}

/* --- ioctl wrappers: return 0 or errno ------------------------------------ */

static int xioctl(int f, unsigned long cmd, void *arg)
{
	return ioctl(f, cmd, arg) ? errno : 0;
}

static uint64_t unique_id_of(domid_t id);
static int create_domain(domid_t *out);
static int destroy_domain(domid_t id);

/*
 * The instance a call names: dom_uid for the guest under test (a test may
 * set it to another instance's on purpose), Xen's answer for any other.
 */
static uint64_t uid_for(domid_t d)
{
	return d == dom ? dom_uid : unique_id_of(d);
}

static int reg_on(int f, void *addr, uint64_t size, uint64_t offset,
		  uint32_t id, domid_t d)
{
	struct privcmd_hostmem_register r = {
		.addr = (uintptr_t)addr, .size = size, .offset = offset,
		.id = id, .dom = d, .unique_id = uid_for(d),
	};

	return xioctl(f, IOCTL_PRIVCMD_HOSTMEM_REGISTER, &r);
}

static int reg(void *addr, uint64_t size, uint64_t offset, uint32_t id)
{
	return reg_on(fd, addr, size, offset, id, dom);
}

static int unreg_on(int f, uint32_t id, domid_t d)
{
	struct privcmd_hostmem_unregister u = { .id = id, .dom = d };

	return xioctl(f, IOCTL_PRIVCMD_HOSTMEM_UNREGISTER, &u);
}

static int unreg(uint32_t id)
{
	return unreg_on(fd, id, dom);
}

static int lend_on(int f, uint64_t offset, uint64_t gfn, uint32_t n,
		   domid_t d, uint32_t *nr_lent)
{
	struct privcmd_hostmem_lend l = {
		.offset = offset, .gfn = gfn, .nr_pages = n, .dom = d,
		.nr_lent = 0xdeadbeef, .unique_id = uid_for(d),
	};
	int rc = xioctl(f, IOCTL_PRIVCMD_HOSTMEM_LEND, &l);

	if (nr_lent)
		*nr_lent = l.nr_lent;
	return rc;
}

static int lend(uint64_t offset, uint64_t gfn, uint32_t n, uint32_t *nr_lent)
{
	return lend_on(fd, offset, gfn, n, dom, nr_lent);
}

static int revoke_on(int f, uint64_t gfn, uint32_t n, uint16_t flags, domid_t d)
{
	struct privcmd_hostmem_revoke r = {
		.gfn = gfn, .nr_pages = n, .dom = d, .flags = flags,
	};

	return xioctl(f, IOCTL_PRIVCMD_HOSTMEM_REVOKE, &r);
}

/*
 * The device model's file: restricted to the guest, registering nothing.
 * Only such a file may revoke everything lent to the guest.
 */
static int dm_fd(void)
{
	static int dmfd = -1;
	static domid_t dmdom;

	if (dmfd >= 0 && dmdom != dom) {
		close(dmfd);
		dmfd = -1;
	}
	if (dmfd < 0) {
		domid_t d = dom;

		dmfd = open(PRIVCMD, O_RDWR | O_CLOEXEC);
		if (dmfd >= 0 && xioctl(dmfd, IOCTL_PRIVCMD_RESTRICT, &d)) {
			close(dmfd);
			dmfd = -1;
		}
		dmdom = dom;
	}
	return dmfd;
}

static int revoke_all(void)
{
	return revoke_on(dm_fd(), 0, 0, PRIVCMD_HOSTMEM_REVOKE_ALL, dom);
}

struct snapshot {
	int rc;
	uint32_t nr;
	uint64_t lent;
	struct privcmd_hostmem_region r[MAX_REGIONS];
};

static struct snapshot q;

static int query_on(int f, domid_t d, struct snapshot *s)
{
	struct privcmd_hostmem_query k = {
		.dom = d, .nr_regions = MAX_REGIONS,
		.regions = (uintptr_t)s->r,
	};

	memset(s->r, 0xff, sizeof(s->r));	/* reserved must come back 0 */
	s->rc = xioctl(f, IOCTL_PRIVCMD_HOSTMEM_QUERY, &k);
	s->nr = k.nr_regions;
	s->lent = k.lent_pages;
	return s->rc;
}

static int query(void)
{
	return query_on(fd, dom, &q);
}

static const struct privcmd_hostmem_region *region(uint32_t id)
{
	for (uint32_t i = 0; i < q.nr && i < MAX_REGIONS; i++)
		if (q.r[i].id == id)
			return &q.r[i];
	return NULL;
}

static void *map_anon(size_t pages, int prot)
{
	void *p = mmap(NULL, pages * pg, prot, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}

static unsigned long param(const char *name, unsigned long dflt)
{
	char path[256];
	unsigned long v;
	FILE *f;

	snprintf(path, sizeof(path), PARAMS "%s", name);
	f = fopen(path, "r");
	if (!f)
		return dflt;
	if (fscanf(f, "%lu", &v) != 1)
		v = dflt;
	fclose(f);
	return v;
}

/* --- registration and argument checks ------------------------------------ */

static void test_register_query_unregister(void)
{
	char *m = map_anon(16, PROT_READ | PROT_WRITE);
	const struct privcmd_hostmem_region *r;

	expect("register-basic", reg(m, 16 * pg, 0, 1), 0);
	query();
	r = region(1);
	result("query-lists-registration",
	       q.rc == 0 && q.nr == 1 && r && r->offset == 0 &&
	       r->size == (uint64_t)16 * pg && r->lent_pages == 0 &&
	       r->owner_pid == (uint32_t)getpid() && q.lent == 0 &&
	       r->unique_id == dom_uid && !r->flags,
	       "rc=%s nr=%u lent=%" PRIu64 " pid=%u", ename(q.rc), q.nr,
	       q.lent, r ? r->owner_pid : 0);

	{
		struct privcmd_hostmem_query k = { .dom = dom };
		int rc = xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_QUERY, &k);

		result("query-zero-capacity-counts",
		       rc == 0 && k.nr_regions == 1, "rc=%s nr=%u", ename(rc),
		       k.nr_regions);
	}

	expect("register-same-id", reg(m, pg, 64 * pg, 1), EEXIST);
	expect("register-overlapping-offset", reg(m, pg, 15 * pg, 2), EEXIST);
	expect("register-overlap-inside", reg(m, 4 * pg, 4 * pg, 2), EEXIST);
	expect("register-overlap-around", reg(m, 16 * pg, 0, 2), EEXIST);
	expect("register-adjacent-offset", reg(m, 4 * pg, 16 * pg, 3), 0);

	query();
	result("query-ordered-by-offset",
	       q.nr == 2 && q.r[0].id == 1 && q.r[1].id == 3, "nr=%u", q.nr);

	expect("unregister-basic", unreg(1), 0);
	expect("unregister-unknown", unreg(1), ENOENT);
	expect("unregister-other", unreg(3), 0);
	query();
	result("query-empty-after-unregister", q.rc == 0 && q.nr == 0 &&
	       q.lent == 0, "nr=%u", q.nr);
	munmap(m, 16 * pg);
}

static void test_bad_inputs(void)
{
	char *m = map_anon(4, PROT_READ | PROT_WRITE);
	struct privcmd_hostmem_register r = {
		.addr = (uintptr_t)m, .size = pg, .id = 10, .dom = dom,
		.flags = 1, .unique_id = dom_uid,
	};
	unsigned long max_pages = param("hostmem_max_pages", 1UL << 20);

	expect("register-flags", xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_REGISTER, &r),
	       EINVAL);
	r.flags = 0;
	r.reserved[0] = 1;
	expect("register-reserved",
	       xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_REGISTER, &r), EINVAL);
	r.reserved[0] = 0;
	r.unique_id = 0;
	expect("register-unique-id-zero",
	       xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_REGISTER, &r), EINVAL);
	expect("register-unaligned-addr", reg(m + 8, pg, 0, 10), EINVAL);
	expect("register-unaligned-size", reg(m, pg + 8, 0, 10), EINVAL);
	expect("register-unaligned-offset", reg(m, pg, 8, 10), EINVAL);
	expect("register-size-zero", reg(m, 0, 0, 10), EINVAL);
	expect("register-addr-wraps", reg((void *)(uintptr_t)-pg, 2 * pg, 0, 10),
	       EINVAL);
	expect("register-offset-wraps", reg(m, 2 * pg, (uint64_t)-pg, 10),
	       EINVAL);
	expect("register-kernel-address",
	       reg((void *)0xffff888000000000UL, pg, 0, 10), EFAULT);
	expect("register-reserved-domid",
	       reg_on(fd, m, pg, 0, 10, 0x7ff2 /* DOMID_IO */), EINVAL);
	expect("register-too-large",
	       reg(m, (uint64_t)(max_pages + 1) * pg, 0, 10), ENOSPC);

	/* A hole in the middle. */
	munmap(m + pg, pg);
	expect("register-hole", reg(m, 3 * pg, 0, 10), EFAULT);
	munmap(m, 4 * pg);
	expect("register-unmapped", reg(m, pg, 0, 10), EFAULT);

	m = map_anon(2, PROT_NONE);
	expect("register-prot-none", reg(m, 2 * pg, 0, 10), EACCES);
	munmap(m, 2 * pg);
	m = map_anon(2, PROT_READ);
	expect("register-read-only", reg(m, 2 * pg, 0, 10), EACCES);
	munmap(m, 2 * pg);

	/* Half good, half PROT_NONE. */
	m = map_anon(2, PROT_READ | PROT_WRITE);
	mprotect(m + pg, pg, PROT_NONE);
	expect("register-partly-prot-none", reg(m, 2 * pg, 0, 10), EACCES);
	munmap(m, 2 * pg);

	query();
	result("bad-inputs-leave-nothing", q.rc == 0 && q.nr == 0,
	       "nr=%u", q.nr);
}

static void test_memory_kinds(void)
{
	char dir[] = "/tmp/hostmem-selftest.XXXXXX";
	char path[64];
	void *m;
	int f;

	/* VM_IO | VM_PFNMAP: a privcmd mapping. */
	m = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED) {
		result("register-privcmd-mapping", false, "mmap:%s",
		       strerror(errno));
	} else {
		expect("register-privcmd-mapping", reg(m, 2 * pg, 0, 20),
		       EACCES);
		munmap(m, 2 * pg);
	}

	/*
	 * VM_IO without VM_PFNMAP: privcmd's hypercall buffers, kernel pages
	 * Xen reads a raw hypercall's arguments from.
	 */
	f = open("/dev/xen/hypercall", O_RDWR | O_CLOEXEC);
	m = f < 0 ? MAP_FAILED :
	    mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
	if (m == MAP_FAILED) {
		skip("register-hypercall-buffer", "cannot map /dev/xen/hypercall");
	} else {
		expect("register-hypercall-buffer", reg(m, pg, 0, 21), EACCES);
		munmap(m, pg);
	}
	if (f >= 0)
		close(f);

	/* A regular file that is not shmem: on ramfs. */
	if (!mkdtemp(dir)) {
		result("register-file-mapping", false, "mkdtemp:%s",
		       strerror(errno));
		goto shmem;
	}
	if (mount("none", dir, "ramfs", 0, NULL)) {
		result("register-file-mapping", false, "mount ramfs:%s",
		       strerror(errno));
		rmdir(dir);
		goto shmem;
	}
	snprintf(path, sizeof(path), "%s/f", dir);
	f = open(path, O_RDWR | O_CREAT, 0600);
	if (f < 0 || ftruncate(f, 2 * pg)) {
		result("register-file-mapping", false, "file:%s",
		       strerror(errno));
	} else {
		m = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
		if (m == MAP_FAILED) {
			result("register-file-mapping", false, "mmap:%s",
			       strerror(errno));
		} else {
			expect("register-file-mapping", reg(m, 2 * pg, 0, 22),
			       EACCES);
			munmap(m, 2 * pg);
		}
	}
	if (f >= 0)
		close(f);
	umount(dir);
	rmdir(dir);

shmem:
	/* Accepted: memfd, shared anonymous, private anonymous. */
	f = memfd_create("hostmem-selftest", 0);
	if (f < 0 || ftruncate(f, 4 * pg)) {
		result("register-memfd", false, "memfd:%s", strerror(errno));
	} else {
		m = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
		expect("register-memfd", m == MAP_FAILED ? errno :
		       reg(m, 4 * pg, 0, 23), 0);
		unreg(23);
		if (m != MAP_FAILED)
			munmap(m, 4 * pg);
	}
	if (f >= 0)
		close(f);

	m = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	expect("register-shared-anonymous", reg(m, 4 * pg, 0, 24), 0);
	unreg(24);
	munmap(m, 4 * pg);
}

static void test_restricted_fd(void)
{
	int rfd = open(PRIVCMD, O_RDWR | O_CLOEXEC);
	domid_t other = dom + 1, d = dom;
	char *m = map_anon(2, PROT_READ | PROT_WRITE);
	struct snapshot *s = malloc(sizeof(*s));
	uint32_t n;

	if (rfd < 0 || xioctl(rfd, IOCTL_PRIVCMD_RESTRICT, &d)) {
		result("restricted-fd", false, "open/restrict:%s",
		       strerror(errno));
		return;
	}
	expect("restricted-register-other-dom",
	       reg_on(rfd, m, 2 * pg, 0, 30, other), EPERM);
	expect("restricted-unregister-other-dom", unreg_on(rfd, 30, other),
	       EPERM);
	expect("restricted-lend-other-dom",
	       lend_on(rfd, 0, gfn_base, 1, other, &n), EPERM);
	expect("restricted-revoke-other-dom",
	       revoke_on(rfd, 0, 0, PRIVCMD_HOSTMEM_REVOKE_ALL, other), EPERM);
	expect("restricted-query-other-dom", query_on(rfd, other, s), EPERM);
	expect("restricted-register-own-dom",
	       reg_on(rfd, m, 2 * pg, 0, 31, dom), 0);
	expect("restricted-query-own-dom", query_on(rfd, dom, s), 0);
	result("restricted-query-sees-registration", s->nr == 1 &&
	       s->r[0].id == 31, "nr=%u", s->nr);

	/* Closing the file that registered drops its registrations. */
	close(rfd);
	query();
	result("close-drops-registrations", q.rc == 0 && q.nr == 0,
	       "nr=%u", q.nr);
	munmap(m, 2 * pg);
	free(s);
}

/*
 * Only the file that registered may unregister; revoking everything is for
 * the device model's file, not for a file holding registrations.
 */
static void test_ownership(void)
{
	int other = open(PRIVCMD, O_RDWR | O_CLOEXEC);
	char *m = map_anon(2, PROT_READ | PROT_WRITE);

	expect("ownership-register", reg(m, 2 * pg, 0, 32), 0);
	expect("unregister-by-other-file", unreg_on(other, 32, dom), EPERM);
	query();
	result("unregister-by-other-file-keeps", q.nr == 1 && region(32),
	       "nr=%u", q.nr);
	expect("revoke-all-by-registering-file",
	       revoke_on(fd, 0, 0, PRIVCMD_HOSTMEM_REVOKE_ALL, dom), EPERM);
	expect("revoke-all-by-dm-file", revoke_all(), 0);
	expect("unregister-by-registering-file", unreg(32), 0);
	close(other);
	munmap(m, 2 * pg);
}

/*
 * A backend's file (IOCTL_PRIVCMD_HOSTMEM_BACKEND) registers, unregisters
 * and queries for its guest and nothing else, for good: none of the device
 * model's rights (lend, revoke, DMOPs), no hypercall, no foreign mapping.
 * Only a file restricted to a guest can be narrowed. The same DMOP on a
 * file that is only restricted is the control.
 */
static void test_backend_fd(void)
{
	int bfd = open(PRIVCMD, O_RDWR | O_CLOEXEC);
	int rfd = open(PRIVCMD, O_RDWR | O_CLOEXEC);
	char *m = map_anon(2, PROT_READ | PROT_WRITE);
	struct snapshot *s = malloc(sizeof(*s));
	struct privcmd_hypercall h = { .op = 17 };	/* xen_version */
	struct privcmd_dm_op none = { .dom = dom, .num = 0 };
	domid_t d = dom;
	uint32_t n;
	void *p;

	expect("backend-unrestricted-file-refused",
	       xioctl(bfd, IOCTL_PRIVCMD_HOSTMEM_BACKEND, NULL), EINVAL);
	if (bfd < 0 || rfd < 0 || xioctl(bfd, IOCTL_PRIVCMD_RESTRICT, &d) ||
	    xioctl(rfd, IOCTL_PRIVCMD_RESTRICT, &d)) {
		result("backend-fd", false, "open/restrict:%s", strerror(errno));
		goto out;
	}
	expect("backend-control-restricted-dm-op",
	       xioctl(rfd, IOCTL_PRIVCMD_DM_OP, &none), 0);
	expect("backend-narrow", xioctl(bfd, IOCTL_PRIVCMD_HOSTMEM_BACKEND, NULL),
	       0);
	expect("backend-narrow-again",
	       xioctl(bfd, IOCTL_PRIVCMD_HOSTMEM_BACKEND, NULL), 0);
	expect("backend-register", reg_on(bfd, m, 2 * pg, 0, 40, dom), 0);
	expect("backend-query", query_on(bfd, dom, s), 0);
	result("backend-query-sees-registration", s->nr == 1 && s->r[0].id == 40,
	       "nr=%u", s->nr);
	expect("backend-lend-refused", lend_on(bfd, 0, gfn_base, 1, dom, &n),
	       EPERM);
	expect("backend-revoke-refused", revoke_on(bfd, gfn_base, 1, 0, dom),
	       EPERM);
	expect("backend-revoke-all-refused",
	       revoke_on(bfd, 0, 0, PRIVCMD_HOSTMEM_REVOKE_ALL, dom), EPERM);
	expect("backend-dm-op-refused", xioctl(bfd, IOCTL_PRIVCMD_DM_OP, &none),
	       EPERM);
	expect("backend-hypercall-refused",
	       xioctl(bfd, IOCTL_PRIVCMD_HYPERCALL, &h), EPERM);
	expect("backend-restrict-refused",
	       xioctl(bfd, IOCTL_PRIVCMD_RESTRICT, &d), EPERM);
	p = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED, bfd, 0);
	result("backend-mmap-refused", p == MAP_FAILED && errno == EPERM, "%s",
	       p == MAP_FAILED ? strerror(errno) : "mapped");
	if (p != MAP_FAILED)
		munmap(p, pg);
	expect("backend-unregister", unreg_on(bfd, 40, dom), 0);
out:
	if (bfd >= 0)
		close(bfd);
	if (rfd >= 0)
		close(rfd);
	munmap(m, 2 * pg);
	free(s);
}

/* The hostmem ioctls do not use 'P' 11 and 13 (other privcmd series do). */
static void test_ioctl_numbers(void)
{
	uint64_t zero[8] = { 0 };
	/* The sizes the first version of the series had there. */
	int rc11 = xioctl(fd, _IOW('P', 11, uint64_t[4]), zero);
	int rc13 = xioctl(fd, _IOWR('P', 13, uint64_t[4]), zero);

	result("ioctl-numbers-11-13-free", rc11 == ENOTTY && rc13 == ENOTTY,
	       "P11=%s P13=%s", ename(rc11), ename(rc13));
}

static void test_lend_revoke_args(void)
{
	unsigned long lend_max = param("hostmem_lend_max_pages", 4096);
	struct privcmd_hostmem_lend l = {
		.nr_pages = 1, .dom = dom, .unique_id = dom_uid,
	};
	struct privcmd_hostmem_revoke rv = { .nr_pages = 1, .dom = dom };
	struct privcmd_hostmem_query qq = { .dom = dom, .flags = 1 };
	uint32_t n = 0;
	int rc;

	l.flags = 1;
	expect("lend-flags", xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_LEND, &l), EINVAL);
	l.flags = 0;
	l.pad = 1;
	expect("lend-pad", xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_LEND, &l), EINVAL);
	expect("lend-zero-pages", lend(0, gfn_base, 0, &n), EINVAL);
	expect("lend-unaligned-offset", lend(8, gfn_base, 1, &n), EINVAL);
	expect("lend-too-many-pages", lend(0, gfn_base, lend_max + 1, &n),
	       EINVAL);
	expect("lend-gfn-wraps", lend(0, (uint64_t)-1, 2, &n), EINVAL);
	n = 7;
	rc = lend(0x40000000, gfn_base, 4, &n);
	result("lend-unregistered-lends-nothing", rc == 0 && n == 0,
	       "rc=%s nr_lent=%u", ename(rc), n);

	rv.flags = 2;
	expect("revoke-flags", xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_REVOKE, &rv),
	       EINVAL);
	rv.flags = 0;
	rv.reserved[1] = 1;
	expect("revoke-reserved", xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_REVOKE, &rv),
	       EINVAL);
	expect("revoke-zero-pages", revoke_on(fd, gfn_base, 0, 0, dom), EINVAL);
	expect("revoke-wraps", revoke_on(fd, (uint64_t)-1, 2, 0, dom), EINVAL);
	expect("revoke-nothing-lent", revoke_on(fd, gfn_base, 16, 0, dom), 0);
	expect("revoke-all-nothing-lent", revoke_all(), 0);
	expect("revoke-all-with-range",
	       revoke_on(dm_fd(), gfn_base, 16, PRIVCMD_HOSTMEM_REVOKE_ALL, dom),
	       EINVAL);
	expect("query-flags", xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_QUERY, &qq),
	       EINVAL);
	qq.flags = 0;
	qq.reserved[0] = 1;
	expect("query-reserved", xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_QUERY, &qq),
	       EINVAL);
	l.pad = 0;
	l.reserved[0] = 1;
	expect("lend-reserved", xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_LEND, &l),
	       EINVAL);
	l.reserved[0] = 0;
	l.unique_id = 0;
	l.offset = 0x40000000;		/* nothing registered there */
	expect("lend-unique-id-zero", xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_LEND, &l),
	       EINVAL);
	{
		struct privcmd_hostmem_unregister u = {
			.id = 1, .dom = dom, .reserved = { 1, 0 },
		};

		expect("unregister-reserved",
		       xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_UNREGISTER, &u), EINVAL);
	}
}

static void test_limits(void)
{
	unsigned long max = param("hostmem_max_regions", 64);
	char *m = map_anon(1, PROT_READ | PROT_WRITE);
	unsigned long i;
	int rc = 0;

	if (max > 4096) {
		skip("register-count-limit", "hostmem_max_regions too large");
		munmap(m, pg);
		return;
	}
	for (i = 0; i < max && !rc; i++)
		rc = reg(m, pg, i * pg, 100 + i);
	result("register-up-to-limit", rc == 0, "at=%lu rc=%s", i, ename(rc));
	expect("register-over-limit", reg(m, pg, i * pg, 100 + i), ENOSPC);
	for (i = 0; i < max; i++)
		unreg(100 + i);
	query();
	result("limit-cleanup", q.nr == 0, "nr=%u", q.nr);
	munmap(m, pg);
}

/*
 * Locking: a lend stalled in the owner's page fault (here: userfaultfd on
 * the registered range, never answered until the end) must not hold up a
 * lend for another guest, nor the close of a file that has nothing to do
 * with it. Each must finish within STALL_BOUND_MS while the stall lasts.
 */
#define STALL_BOUND_MS 5000

struct stall_job {
	int done[2];		/* written to when the job has finished */
	int rc;
	domid_t d;
	int kind;		/* 0: the stalled lend, 1: other guest, 2: close */
	int f;
	char *m;
};

static void *stall_job_run(void *arg)
{
	struct stall_job *j = arg;
	uint32_t n = 0;

	switch (j->kind) {
	case 0:
		j->rc = lend_on(j->f, 0, gfn_base + 0x800, 4, j->d, &n);
		break;
	case 1: {
		/* Register, lend, and close with the registration in place. */
		int f = open(PRIVCMD, O_RDWR | O_CLOEXEC);

		j->rc = reg_on(f, j->m, pg, 0x100000, 301, j->d);
		if (!j->rc) {
			j->rc = lend_on(f, 0x100000, gfn_base + 0x900, 1,
					j->d, &n);
			/* Xen without lending; a domid that does not exist. */
			if (j->rc == EOPNOTSUPP || j->rc == ENOSYS ||
			    (j->rc == ESRCH && !have_guest))
				j->rc = 0;
		}
		close(f);
		break;
	}
	default:
		j->rc = close(open(PRIVCMD, O_RDWR | O_CLOEXEC)) ? errno : 0;
		break;
	}
	if (write(j->done[1], "x", 1) != 1)
		j->rc = EIO;
	return NULL;
}

static bool stall_wait(struct stall_job *j, int ms)
{
	struct pollfd p = { .fd = j->done[0], .events = POLLIN };

	return poll(&p, 1, ms) == 1;
}

static void stall_start(struct stall_job *j, pthread_t *t, int kind, int f,
			domid_t d, char *m)
{
	j->kind = kind;
	j->f = f;
	j->d = d;
	j->m = m;
	j->rc = -1;
	if (pipe(j->done) || pthread_create(t, NULL, stall_job_run, j))
		j->rc = errno;
}

static void test_stall_isolation(void)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register ur = { .mode = UFFDIO_REGISTER_MODE_MISSING };
	struct stall_job js = { 0 }, jo = { 0 }, jc = { 0 };
	struct uffdio_zeropage zp = { 0 };
	struct pollfd p;
	pthread_t ts, to, tc;
	domid_t stalled = 0, other = dom;
	char *m = map_anon(4, PROT_READ | PROT_WRITE);
	char *o = map_anon(1, PROT_READ | PROT_WRITE);
	bool stalled_ok, other_ok, close_ok, still;
	int uffd, f;

	/*
	 * Two guests that exist (privcmd registers only for a live
	 * instance): the one under test, and a bare one made here.
	 */
	if (!have_guest || create_domain(&stalled)) {
		skip("stall-other-guest-lend", "no second domain");
		skip("stall-unrelated-close", "no second domain");
		munmap(m, 4 * pg);
		munmap(o, pg);
		return;
	}
	uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
		skip("stall-other-guest-lend", "no userfaultfd");
		skip("stall-unrelated-close", "no userfaultfd");
		goto out_unmap;
	}
	ur.range.start = (uintptr_t)m;
	ur.range.len = 4 * pg;
	f = open(PRIVCMD, O_RDWR | O_CLOEXEC);
	if (ioctl(uffd, UFFDIO_REGISTER, &ur) ||
	    reg_on(f, m, 4 * pg, 0, 300, stalled)) {
		result("stall-setup", false, "uffd-register/register: %s",
		       strerror(errno));
		close(f);
		goto out_uffd;
	}
	o[0] = 1;

	/* The backend of the second guest stalls in its page fault... */
	stall_start(&js, &ts, 0, f, stalled, NULL);
	p = (struct pollfd){ .fd = uffd, .events = POLLIN };
	stalled_ok = poll(&p, 1, STALL_BOUND_MS) == 1;
	result("stall-lend-waits-in-fault", stalled_ok && !stall_wait(&js, 0),
	       "fault-seen=%d lend-returned=%s", stalled_ok,
	       stall_wait(&js, 0) ? ename(js.rc) : "no");

	/* ...while another guest's backend lends, and a file is closed. */
	stall_start(&jo, &to, 1, -1, other, o);
	stall_start(&jc, &tc, 2, -1, 0, NULL);
	other_ok = stall_wait(&jo, STALL_BOUND_MS);
	close_ok = stall_wait(&jc, STALL_BOUND_MS);
	still = !stall_wait(&js, 0);
	result("stall-other-guest-lend", stalled_ok && other_ok && still &&
	       jo.rc == 0, "finished=%d rc=%s stall-held=%d", other_ok,
	       other_ok ? ename(jo.rc) : "-", still);
	result("stall-unrelated-close", stalled_ok && close_ok && still &&
	       jc.rc == 0, "finished=%d stall-held=%d", close_ok, still);

	/* End the stall: the lend goes on (whatever Xen answers). */
	zp.range = ur.range;
	ioctl(uffd, UFFDIO_ZEROPAGE, &zp);
	pthread_join(ts, NULL);
	pthread_join(to, NULL);
	pthread_join(tc, NULL);
	expect("stall-unregister", unreg_on(f, 300, stalled), 0);
	close(f);
	close(js.done[0]);
	close(js.done[1]);
	close(jo.done[0]);
	close(jo.done[1]);
	close(jc.done[0]);
	close(jc.done[1]);
out_uffd:
	close(uffd);
out_unmap:
	munmap(m, 4 * pg);
	munmap(o, pg);
	destroy_domain(stalled);
}

/* Owner exit without lending: the registration stays (the file is open) */
static void test_owner_exit_bookkeeping(void)
{
	pid_t pid = fork();
	int status, rc;
	uint32_t n = 9;

	if (pid == 0) {
		char *m = map_anon(4, PROT_READ | PROT_WRITE);

		_exit(reg(m, 4 * pg, 0, 40) ? 1 : 0);
	}
	waitpid(pid, &status, 0);
	query();
	result("owner-exit-registration-stays",
	       WIFEXITED(status) && WEXITSTATUS(status) == 0 && q.nr == 1 &&
	       region(40), "nr=%u", q.nr);
	rc = lend(0, gfn_base, 4, &n);
	result("owner-exit-lends-nothing", rc == 0 && n == 0,
	       "rc=%s nr_lent=%u", ename(rc), n);
	expect("owner-exit-unregister", unreg(40), 0);
}

/* --- lending -------------------------------------------------------------- */



static uint64_t lent_now(void)
{
	query();
	return q.lent;
}

static void fill(char *m, size_t pages, uint32_t gen)
{
	for (size_t i = 0; i < pages; i++)
		for (size_t j = 0; j < (size_t)pg; j += sizeof(uint64_t))
			*(uint64_t *)(m + i * pg + j) =
				((uint64_t)gen << 32) | (i << 12) | j;
}

/*
 * The same page lent, revoked and lent again, at the same and at another
 * GFN: what every BAR move and every revoke-then-refault does. Run first,
 * since a Xen that fails this makes the later tests fail for the same
 * reason.
 */
static void test_relend_after_revoke(void)
{
	char *m = map_anon(1, PROT_READ | PROT_WRITE);
	uint32_t n = 0;
	int rc1, rc2, rc3;

	fill(m, 1, 4);
	reg(m, pg, 0, 45);
	rc1 = lend(0, gfn_base, 1, &n);
	revoke_on(fd, gfn_base, 1, 0, dom);
	rc2 = lend(0, gfn_base, 1, &n);
	revoke_all();
	rc3 = lend(0, gfn_base + 7, 1, &n);
	revoke_all();
	query();
	result("relend-after-revoke", !rc1 && !rc2 && !rc3 && q.lent == 0,
	       "first=%s same-gfn=%s other-gfn=%s lent=%" PRIu64, ename(rc1),
	       ename(rc2), ename(rc3), q.lent);
	unreg(45);
	munmap(m, pg);
}

static void test_lend_basic(void)
{
	char *m = map_anon(32, PROT_READ | PROT_WRITE);
	uint32_t n = 0;
	int rc;

	fill(m, 32, 1);
	expect("lend-register", reg(m, 32 * pg, 0, 50), 0);
	rc = lend(0, gfn_base, 32, &n);
	result("lend-all", rc == 0 && n == 32, "rc=%s nr_lent=%u", ename(rc), n);
	query();
	result("query-counts-lent", q.lent == 32 && region(50) &&
	       region(50)->lent_pages == 32, "lent=%" PRIu64, q.lent);
	rc = lend(0, gfn_base, 32, &n);
	query();
	result("lend-again-is-idempotent", rc == 0 && n == 32 &&
	       q.lent == 32, "rc=%s nr_lent=%u lent=%" PRIu64, ename(rc),
	       n, q.lent);
	rc = lend(0, gfn_base + 1000, 1, &n);
	expect("lend-same-page-elsewhere", rc, EEXIST);
	rc = lend(31 * pg, gfn_base + 31, 8, &n);
	result("lend-past-registration-end", rc == 0 && n == 1,
	       "rc=%s nr_lent=%u", ename(rc), n);

	expect("revoke-range", revoke_on(fd, gfn_base, 8, 0, dom), 0);
	query();
	result("revoke-range-counts", q.lent == 24, "lent=%" PRIu64, q.lent);
	expect("revoke-all", revoke_all(), 0);
	query();
	result("revoke-all-counts", q.lent == 0, "lent=%" PRIu64, q.lent);

	/* munmap of part of a lent range revokes those pages. */
	lend(0, gfn_base, 32, &n);
	munmap(m + 16 * pg, 16 * pg);
	query();
	result("munmap-revokes", q.lent == 16, "lent=%" PRIu64, q.lent);
	rc = lend(0, gfn_base, 32, &n);
	result("lend-unmapped-fails", rc == EFAULT && n == 16,
	       "rc=%s nr_lent=%u", ename(rc), n);

	/* MADV_DONTNEED revokes; the next lend gives the new pages. */
	madvise(m, 4 * pg, MADV_DONTNEED);
	query();
	result("dontneed-revokes", q.lent == 12, "lent=%" PRIu64, q.lent);
	rc = lend(0, gfn_base, 16, &n);
	query();
	result("relend-after-dontneed", rc == 0 && n == 16 && q.lent == 16,
	       "rc=%s nr_lent=%u lent=%" PRIu64, ename(rc), n, q.lent);

	/* mprotect to read-only revokes: the guest may not write any more. */
	mprotect(m, pg, PROT_READ);
	query();
	result("mprotect-revokes", q.lent == 15, "lent=%" PRIu64, q.lent);
	rc = lend(0, gfn_base, 1, &n);
	expect("lend-read-only-refused", rc, EACCES);

	expect("unregister-lent", unreg(50), 0);
	query();
	result("unregister-revokes", q.lent == 0 && q.nr == 0,
	       "lent=%" PRIu64 " nr=%u", q.lent, q.nr);
	munmap(m, 16 * pg);
}

/* A udmabuf of a sealed memfd of @pages pages, mapped shared; NULL if none. */
static char *map_udmabuf(size_t pages, int *memfd, int *buf, const char **why)
{
	struct udmabuf_create c = { .flags = UDMABUF_FLAGS_CLOEXEC };
	int dev = open("/dev/udmabuf", O_RDWR | O_CLOEXEC);
	char *m;

	*memfd = *buf = -1;
	*why = "no /dev/udmabuf";
	if (dev < 0)
		return NULL;
	*why = "memfd";
	*memfd = memfd_create("hostmem-udmabuf", MFD_ALLOW_SEALING);
	if (*memfd < 0 || ftruncate(*memfd, pages * pg) ||
	    fcntl(*memfd, F_ADD_SEALS, F_SEAL_SHRINK))
		goto fail;
	c.memfd = *memfd;
	c.size = pages * pg;
	*why = "UDMABUF_CREATE";
	*buf = ioctl(dev, UDMABUF_CREATE, &c);
	if (*buf < 0)
		goto fail;
	*why = "mmap of the udmabuf";
	m = mmap(NULL, pages * pg, PROT_READ | PROT_WRITE, MAP_SHARED, *buf, 0);
	if (m == MAP_FAILED)
		goto fail;
	close(dev);
	return m;
fail:
	close(dev);
	return NULL;
}

/*
 * A memory BAR of a PCI device, mapped through sysfs (VM_IO|VM_PFNMAP):
 * --bar's, or the first one found.
 */
static char *map_pci_bar(char *name, size_t len)
{
	DIR *d;
	struct dirent *e;
	char *m = NULL;

	if (bar_path) {
		int f = open(bar_path, O_RDWR | O_CLOEXEC);

		snprintf(name, len, "%s", bar_path);
		m = f < 0 ? MAP_FAILED :
		    mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
		if (f >= 0)
			close(f);
		return m == MAP_FAILED ? NULL : m;
	}

	d = opendir("/sys/bus/pci/devices");

	while (d && !m && (e = readdir(d))) {
		char path[300];
		struct stat st;

		if (e->d_name[0] == '.')
			continue;
		for (int bar = 0; bar < 6 && !m; bar++) {
			int f;

			snprintf(path, sizeof(path),
				 "/sys/bus/pci/devices/%s/resource%d",
				 e->d_name, bar);
			f = open(path, O_RDWR | O_CLOEXEC);
			if (f < 0)
				continue;
			if (!fstat(f, &st) && st.st_size >= pg) {
				m = mmap(NULL, pg, PROT_READ | PROT_WRITE,
					 MAP_SHARED, f, 0);
				if (m == MAP_FAILED)
					m = NULL;
				else
					snprintf(name, len, "%s/resource%d",
						 e->d_name, bar);
			}
			close(f);
		}
	}
	if (d)
		closedir(d);
	return m;
}

/*
 * The page mapped at @m (one page, unmapped here) registers as @id but is
 * never lent: "register-@what" and "lend-@what-refused" (EACCES, nothing
 * lent), the result naming @where if not empty.
 */
static void expect_lend_refused(const char *what, const char *where, char *m,
				uint32_t id)
{
	char reg_name[64], lend_name[64];
	uint32_t n = 0;
	int rc;

	snprintf(reg_name, sizeof(reg_name), "register-%s", what);
	snprintf(lend_name, sizeof(lend_name), "lend-%s-refused", what);
	expect(reg_name, reg(m, pg, 0, id), 0);
	rc = lend(0, gfn_base, 1, &n);
	query();
	result(lend_name, rc == EACCES && q.lent == 0, "%s%src=%s lent=%" PRIu64,
	       where, *where ? " " : "", ename(rc), q.lent);
	unreg(id);
	munmap(m, pg);
}

/*
 * VM_PFNMAP mappings, as a renderer gets its dma-bufs: the RAM behind them
 * is lent and revoked like anonymous memory; anything that is not reference
 * counted RAM is refused.
 */
static void test_lend_pfnmap(void)
{
	struct dma_heap_allocation_data a = {
		.len = 64 * pg, .fd_flags = O_RDWR | O_CLOEXEC,
	};
	int memfd, buf, heap;
	const char *why;
	char name[300];
	uint32_t n = 0;
	char *m;
	int rc;

	/* udmabuf: a memfd's pages inserted with vmf_insert_pfn(). */
	m = map_udmabuf(32, &memfd, &buf, &why);
	if (!m) {
		result("lend-udmabuf", false, "%s: %s", why, strerror(errno));
	} else {
		fill(m, 32, 7);
		expect("register-udmabuf", reg(m, 32 * pg, 0, 60), 0);
		rc = lend(0, gfn_base, 32, &n);
		query();
		result("lend-udmabuf", rc == 0 && n == 32 && q.lent == 32,
		       "rc=%s nr_lent=%u lent=%" PRIu64, ename(rc), n, q.lent);
		/* Closing the dma-buf fd keeps the mapping, and the pages. */
		close(buf);
		close(memfd);
		query();
		result("udmabuf-fd-close-keeps", q.lent == 32,
		       "lent=%" PRIu64, q.lent);
		munmap(m + 16 * pg, 16 * pg);
		query();
		result("udmabuf-munmap-revokes", q.lent == 16,
		       "lent=%" PRIu64, q.lent);
		rc = lend(16 * pg, gfn_base + 16, 16, &n);
		expect("lend-udmabuf-unmapped-fails", rc, EFAULT);
		expect("unregister-udmabuf", unreg(60), 0);
		query();
		result("udmabuf-unregister-revokes", q.lent == 0,
		       "lent=%" PRIu64, q.lent);
		munmap(m, 16 * pg);
	}

	/* The system dma-heap: compound pages, remap_pfn_range() (VM_IO too). */
	heap = open("/dev/dma_heap/system", O_RDONLY | O_CLOEXEC);
	if (heap < 0 || ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &a)) {
		result("lend-dma-heap", false, "%s: %s",
		       heap < 0 ? "open" : "DMA_HEAP_IOCTL_ALLOC",
		       strerror(errno));
	} else {
		m = mmap(NULL, 64 * pg, PROT_READ | PROT_WRITE, MAP_SHARED,
			 a.fd, 0);
		if (m == MAP_FAILED) {
			result("lend-dma-heap", false, "mmap: %s",
			       strerror(errno));
		} else {
			fill(m, 64, 8);
			expect("register-dma-heap", reg(m, 64 * pg, 0, 61), 0);
			rc = lend(0, gfn_base, 64, &n);
			query();
			result("lend-dma-heap", rc == 0 && n == 64 &&
			       q.lent == 64, "rc=%s nr_lent=%u lent=%" PRIu64,
			       ename(rc), n, q.lent);
			munmap(m, 64 * pg);
			query();
			result("dma-heap-munmap-revokes", q.lent == 0,
			       "lent=%" PRIu64, q.lent);
			unreg(61);
		}
		close(a.fd);
	}
	if (heap >= 0)
		close(heap);

	/* /dev/mem's first MiB: reserved pages, never lent. */
	buf = open("/dev/mem", O_RDWR | O_SYNC | O_CLOEXEC);
	m = buf < 0 ? MAP_FAILED :
	    mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED, buf, 0);
	if (m == MAP_FAILED) {
		skip("lend-dev-mem-refused", "cannot map /dev/mem");
	} else {
		expect_lend_refused("dev-mem", "", m, 62);
	}
	if (buf >= 0)
		close(buf);

	/* A PCI BAR: MMIO, no struct page (what a GPU's VRAM would be). */
	m = map_pci_bar(name, sizeof(name));
	if (!m && bar_path) {
		result("lend-pci-bar-refused", false, "cannot map %s: %s",
		       bar_path, strerror(errno));
	} else if (!m) {
		skip("lend-pci-bar-refused", "no PCI memory BAR to map");
	} else {
		expect_lend_refused("pci-bar", name, m, 63);
	}
}

/*
 * RAM mapped as TTM maps a buffer (tests/kernel/pfnmap-test.c): one block
 * allocated without __GFP_COMP, so the pages after the first have no
 * reference count, mapped VM_PFNMAP | VM_IO; the driver's eviction zaps
 * the mapping and moves the buffer to a new block.
 */
#define GH_PFNMAP_EVICT _IO('G', 1)
static void test_lend_unreferenced(void)
{
	int f = open("/dev/gh-pfnmap-test", O_RDWR | O_CLOEXEC);
	uint64_t first;
	uint32_t n = 0;
	char *m;
	int rc;

	if (f < 0) {
		skip("lend-unreferenced-pages", "no /dev/gh-pfnmap-test "
		     "(modprobe gh-pfnmap-test)");
		return;
	}
	m = mmap(NULL, 8 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
	if (m == MAP_FAILED) {
		result("lend-unreferenced-pages", false, "mmap: %s",
		       strerror(errno));
		close(f);
		return;
	}
	first = *(volatile uint64_t *)(m + 7 * pg);
	expect("register-unreferenced", reg(m, 8 * pg, 0, 64), 0);
	rc = lend(0, gfn_base, 8, &n);
	query();
	result("lend-unreferenced-pages", rc == 0 && n == 8 && q.lent == 8,
	       "rc=%s nr_lent=%u lent=%" PRIu64 " generation=%" PRIu64,
	       ename(rc), n, q.lent, first);

	/* The driver moves the buffer: its zap revokes every lent page. */
	rc = ioctl(f, GH_PFNMAP_EVICT) ? errno : 0;
	query();
	result("unreferenced-evict-revokes", rc == 0 && q.lent == 0,
	       "evict=%s lent=%" PRIu64, ename(rc), q.lent);
	rc = lend(0, gfn_base, 8, &n);
	query();
	result("relend-after-evict", rc == 0 && n == 8 && q.lent == 8 &&
	       *(volatile uint64_t *)(m + 7 * pg) == first + 1,
	       "rc=%s nr_lent=%u lent=%" PRIu64 " generation=%" PRIu64,
	       ename(rc), n, q.lent, *(volatile uint64_t *)(m + 7 * pg));

	munmap(m, 8 * pg);
	query();
	result("unreferenced-munmap-revokes", q.lent == 0,
	       "lent=%" PRIu64, q.lent);
	unreg(64);
	close(f);
}

static void test_lend_owner_exit(void)
{
	int ready[2], done[2];
	uint64_t before;
	pid_t pid;
	char c;

	if (pipe(ready) || pipe(done)) {
		result("owner-exit-revokes", false, "pipe");
		return;
	}
	pid = fork();
	if (pid == 0) {
		char *m = map_anon(8, PROT_READ | PROT_WRITE);
		uint32_t n = 0;

		fill(m, 8, 2);
		c = reg(m, 8 * pg, 0, 60) || lend(0, gfn_base, 8, &n) ||
		    n != 8 ? 'n' : 'y';
		if (write(ready[1], &c, 1) != 1 || read(done[0], &c, 1) != 1)
			_exit(1);
		_exit(0);
	}
	if (read(ready[0], &c, 1) != 1)
		c = 'n';
	before = lent_now();
	if (write(done[1], "x", 1) != 1)
		c = 'n';
	waitpid(pid, NULL, 0);
	query();
	result("owner-exit-revokes", c == 'y' && before == 8 &&
	       q.lent == 0 && region(60),
	       "child=%c before=%" PRIu64 " after=%" PRIu64, c, before, q.lent);
	unreg(60);
	close(ready[0]);
	close(ready[1]);
	close(done[0]);
	close(done[1]);
}

static void test_lend_fd_close(void)
{
	int f = open(PRIVCMD, O_RDWR | O_CLOEXEC);
	char *m = map_anon(8, PROT_READ | PROT_WRITE);
	uint32_t n = 0;
	uint64_t before;

	int rc1 = reg_on(f, m, 8 * pg, 0, 70, dom);
	int rc2 = lend(0, gfn_base, 8, &n);

	before = lent_now();
	close(f);
	query();
	result("fd-close-revokes", !rc1 && !rc2 && before == 8 &&
	       q.lent == 0 && q.nr == 0,
	       "register=%s lend=%s before=%" PRIu64 " after=%" PRIu64
	       " nr=%u first-id=%u", ename(rc1), ename(rc2), before, q.lent,
	       q.nr, q.nr ? q.r[0].id : 0);
	munmap(m, 8 * pg);
}

/* Concurrent lends and invalidations for a bounded time. */
#define STRESS_PAGES 512

static char *stress_mem;
static volatile bool stress_stop;
static unsigned long stress_lends, stress_invals, stress_errors;

static unsigned int rnd(unsigned int *seed, unsigned int n)
{
	*seed = *seed * 1103515245 + 12345;
	return (*seed >> 8) % n;
}

static void *stress_lender(void *arg)
{
	unsigned int seed = (uintptr_t)arg;

	while (!stress_stop) {
		unsigned int first = rnd(&seed, STRESS_PAGES);
		unsigned int n = 1 + rnd(&seed, STRESS_PAGES - first);
		uint32_t lent;
		int rc = lend((uint64_t)first * pg, gfn_base + first, n, &lent);

		if (rc && rc != EFAULT) /* EFAULT: raced with an unmap */
			__atomic_add_fetch(&stress_errors, 1, __ATOMIC_RELAXED);
		__atomic_add_fetch(&stress_lends, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static void *stress_invalidator(void *arg)
{
	unsigned int seed = (uintptr_t)arg;

	while (!stress_stop) {
		unsigned int first = rnd(&seed, STRESS_PAGES);
		unsigned int n = 1 + rnd(&seed, 16 < STRESS_PAGES - first ?
					     16 : STRESS_PAGES - first);
		char *p = stress_mem + (size_t)first * pg;

		switch (rnd(&seed, 3)) {
		case 0:
			madvise(p, n * pg, MADV_DONTNEED);
			break;
		case 1:	/* replace the pages: unmap and map again */
			mmap(p, n * pg, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
			break;
		default: /* new data: a fresh generation */
			fill(p, n, rnd(&seed, 1000));
			break;
		}
		__atomic_add_fetch(&stress_invals, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static void test_lend_stress(void)
{
	pthread_t t[4];
	uint64_t after;
	int i;

	stress_mem = map_anon(STRESS_PAGES, PROT_READ | PROT_WRITE);
	if (reg(stress_mem, (uint64_t)STRESS_PAGES * pg, 0, 80)) {
		result("stress", false, "register");
		return;
	}
	for (i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, i & 1 ? stress_invalidator :
			       stress_lender, (void *)(uintptr_t)(i + 1));
	sleep(seconds);
	stress_stop = true;
	for (i = 0; i < 4; i++)
		pthread_join(t[i], NULL);

	query();
	result("stress-no-errors", stress_errors == 0 && q.lent <= STRESS_PAGES,
	       "lends=%lu invalidations=%lu errors=%lu lent=%" PRIu64,
	       stress_lends, stress_invals, stress_errors, q.lent);
	/* Every page still lent must be revoked by discarding them all. */
	madvise(stress_mem, (size_t)STRESS_PAGES * pg, MADV_DONTNEED);
	after = lent_now();
	result("stress-no-leak", after == 0 && region(80) &&
	       region(80)->lent_pages == 0, "lent=%" PRIu64, after);
	unreg(80);
	munmap(stress_mem, (size_t)STRESS_PAGES * pg);
}

/* --- a bare HVM domain (--make-domain) ---------------------------------- */

static void *hbuf;

/* A page Xen may read and write: arguments of raw hypercalls. */
static int map_hbuf(void)
{
	int hfd;

	if (hbuf)
		return 0;
	hfd = open("/dev/xen/hypercall", O_RDWR | O_CLOEXEC);
	hbuf = hfd < 0 ? MAP_FAILED :
	       mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED, hfd, 0);
	if (hfd >= 0)
		close(hfd);
	if (hbuf == MAP_FAILED) {
		hbuf = NULL;
		return errno;
	}
	return 0;
}

static int domctl(struct xen_domctl *d)
{
	struct privcmd_hypercall h = { .op = HYPERVISOR_domctl };
	int rc = map_hbuf();

	if (rc)
		return rc;
	d->interface_version = XEN_DOMCTL_INTERFACE_VERSION;
	memcpy(hbuf, d, sizeof(*d));
	h.arg[0] = (uintptr_t)hbuf;
	rc = ioctl(fd, IOCTL_PRIVCMD_HYPERCALL, &h) < 0 ? errno : 0;
	memcpy(d, hbuf, sizeof(*d));
	return rc;
}

/*
 * Xen lends only inside the MMIO ranges which an ioreq server of the
 * caller claims in the guest (ENXIO elsewhere), as a device model claims
 * its BAR. dm_op() issues one DMOP of @len bytes (the struct xen_dm_op in
 * @op) through the raw hypercall ioctl and copies it back.
 */
#define HYPERVISOR_dm_op 41
#define XEN_DMOP_create_ioreq_server 1
#define XEN_DMOP_map_io_range_to_ioreq_server 3
#define XEN_DMOP_unmap_io_range_from_ioreq_server 4
#define XEN_DMOP_IO_RANGE_MEMORY 1

struct xen_dm_op_range {
	uint32_t op, pad;
	uint16_t id, pad2;
	uint32_t type;
	uint64_t start, end;
};

_Static_assert(sizeof(struct xen_dm_op_range) == 32, "dm_op range");

static int dm_op(domid_t d, void *op, size_t len)
{
	struct privcmd_hypercall h = { .op = HYPERVISOR_dm_op };
	uint64_t *bufs;
	int rc = map_hbuf();

	if (rc)
		return rc;
	bufs = hbuf;
	bufs[0] = (uintptr_t)hbuf + 256;	/* xen_dm_op_buf: handle, size */
	bufs[1] = 64;
	memset((char *)hbuf + 256, 0, 64);
	memcpy((char *)hbuf + 256, op, len);
	h.arg[0] = d;
	h.arg[1] = 1;
	h.arg[2] = (uintptr_t)hbuf;
	rc = ioctl(fd, IOCTL_PRIVCMD_HYPERCALL, &h) < 0 ? errno : 0;
	memcpy(op, (char *)hbuf + 256, len);
	return rc;
}

/* A new (never enabled) ioreq server of dom0 for @d, its id in *id. */
static int ioreq_server(domid_t d, uint16_t *id)
{
	/* op, pad, then struct xen_dm_op_create_ioreq_server */
	struct { uint32_t op, pad; uint8_t bufioreq, flags, pad2[2];
		 uint16_t id; } c = { .op = XEN_DMOP_create_ioreq_server };
	int rc = dm_op(d, &c, sizeof(c));

	*id = c.id;
	return rc;
}

/* Claim (@map) or give up pages [@gfn, @gfn + @n) of @d with server @id. */
static int claim_on(domid_t d, uint16_t id, uint64_t gfn, uint64_t n,
		    bool map)
{
	struct xen_dm_op_range r = {
		.op = map ? XEN_DMOP_map_io_range_to_ioreq_server :
			    XEN_DMOP_unmap_io_range_from_ioreq_server,
		.id = id, .type = XEN_DMOP_IO_RANGE_MEMORY,
		.start = gfn << 12, .end = ((gfn + n) << 12) - 1,
	};

	return dm_op(d, &r, sizeof(r));
}

/* The pages which this selftest lends at: [gfn_base, gfn_base + 64 Ki). */
#define CLAIMED_PAGES 0x10000

static int claim_lend_range(domid_t d)
{
	uint16_t id;
	int rc = ioreq_server(d, &id);

	return rc ? rc : claim_on(d, id, gfn_base, CLAIMED_PAGES, true);
}

/* A bare HVM domain; at domid *out if that is not 0. */
static int create_domain(domid_t *out)
{
	struct xen_domctl d = { .cmd = XEN_DOMCTL_createdomain };
	int rc;

	d.domain = *out;
	d.u.createdomain.flags = XEN_DOMCTL_CDF_hvm | XEN_DOMCTL_CDF_hap;
	d.u.createdomain.max_vcpus = 1;
	d.u.createdomain.max_evtchn_port = 1023;
	d.u.createdomain.max_grant_frames = -1;
	d.u.createdomain.max_maptrack_frames = -1;
	d.u.createdomain.grant_opts = 1;
	d.u.createdomain.emulation_flags = XEN_X86_EMU_LAPIC;
	rc = domctl(&d);
	if (rc)
		return rc;
	*out = d.domain;

	/*
	 * A vCPU, as the toolstack makes: until a domain has one, Xen writes
	 * its p2m without the reference counting of p2m_entry_modify().
	 */
	memset(&d, 0, sizeof(d));
	d.cmd = XEN_DOMCTL_max_vcpus;
	d.domain = *out;
	d.u.max_vcpus = 1;
	rc = domctl(&d);
	if (rc)
		return rc;

	/* Room for the p2m pages that lending at 4 GiB needs. */
	memset(&d, 0, sizeof(d));
	d.cmd = XEN_DOMCTL_set_paging_mempool_size;
	d.domain = *out;
	d.u.paging_mempool_size = 4 << 20;
	return domctl(&d);
}

static int destroy_domain(domid_t id)
{
	struct xen_domctl d;
	int rc, tries = 0;

	do {
		memset(&d, 0, sizeof(d));
		d.cmd = XEN_DOMCTL_destroydomain;
		d.domain = id;
		rc = domctl(&d);
	} while ((rc == EAGAIN || rc == EINTR) && ++tries < 1000);
	return rc;
}

/* The unique id of the instance of domain @id (0: none, or an error). */
static uint64_t unique_id_of(domid_t id)
{
	struct xen_domctl d = { .cmd = XEN_DOMCTL_get_domain_state };

	d.domain = id;
	if (domctl(&d))
		return 0;
	return d.u.get_domain_state.unique_id;
}

/* Lent pages of a domain that is destroyed: revoking succeeds. */
static void test_lend_domain_gone(void)
{
	char *m = map_anon(8, PROT_READ | PROT_WRITE);
	uint32_t n = 0;
	int rc;

	fill(m, 8, 3);
	reg(m, 8 * pg, 0, 90);
	rc = lend(0, gfn_base, 4, &n);
	result("gone-lend", rc == 0 && n == 4, "rc=%s nr_lent=%u", ename(rc), n);
	rc = destroy_domain(dom);
	result("gone-destroy-domain", rc == 0, "rc=%s", ename(rc));
	madvise(m, 2 * pg, MADV_DONTNEED);
	query();
	result("gone-invalidate-revokes", q.lent == 2, "lent=%" PRIu64, q.lent);
	/*
	 * Pages 2-3 are still recorded as lent, but their Xen entries went
	 * with the domain: lending them again must ask Xen, not count them.
	 */
	n = 7;
	rc = lend(2 * pg, gfn_base + 2, 2, &n);
	query();
	result("gone-relend-asks-xen", rc == ESRCH && n == 0 && q.lent == 0,
	       "rc=%s nr_lent=%u lent=%" PRIu64, ename(rc), n, q.lent);
	rc = lend(0, gfn_base, 8, &n);
	result("gone-lend-fails", rc == ESRCH && n == 0, "rc=%s nr_lent=%u",
	       ename(rc), n);
	expect("gone-revoke-all", revoke_all(), 0);
	query();
	result("gone-revoke-all-counts", q.lent == 0, "lent=%" PRIu64, q.lent);
	expect("gone-unregister", unreg(90), 0);
	munmap(m, 8 * pg);
}

/*
 * Destroy domain @d and make a new one at the same domid (the old one may
 * take a moment to go): 0 and *@got = the domid made, or an errno.
 */
static int remake_domain(domid_t d, domid_t *got)
{
	int rc = destroy_domain(d), tries;

	for (tries = 0; !rc && tries < 50; tries++) {
		*got = d;
		rc = create_domain(got);
		if (rc != EEXIST)
			break;
		usleep(100000);
		if (tries < 49)
			rc = 0;
	}
	return rc;
}

/*
 * I5, domain identity: a registration is made for guest A, A is destroyed
 * with pages lent, and a new domain B gets A's domid before anything
 * touches the registration. The stale registration must never lend into
 * B: a device model still serving A is refused by Xen (EXDEV) and the
 * registration is marked gone, B's device model does not use it at all,
 * and B's backend can register the same id and offsets, whose lend then
 * finds B's GFNs free (nothing of A's registration went there).
 */
static void test_domid_reuse(void)
{
	char *m = map_anon(2, PROT_READ | PROT_WRITE);
	char *p = map_anon(1, PROT_READ | PROT_WRITE);
	const struct privcmd_hostmem_region *r;
	uint64_t uid_a = 0, uid_b = 0;
	domid_t again = dom;
	uint32_t n = 0, n2 = 9;
	int rc, rc2, rc3, tries;

	fill(m, 2, 5);
	fill(p, 1, 6);
	/* The domain of the previous test may take a moment to go. */
	for (tries = 0; tries < 50; tries++) {
		again = dom;
		rc = create_domain(&again);
		if (rc != EEXIST)
			break;
		usleep(100000);
	}
	result("reuse-make-domain", rc == 0 && again == dom, "rc=%s dom=%u",
	       ename(rc), again);
	if (rc)
		goto out;
	uid_a = dom_uid = unique_id_of(dom);
	/* A new instance: its device model claims the GFNs again. */
	rc2 = claim_lend_range(dom);
	reg(m, 2 * pg, 0, 95);
	rc = lend(0, gfn_base, 2, &n);
	result("reuse-lend", rc2 == 0 && rc == 0 && n == 2 && uid_a,
	       "claim:rc=%s rc=%s nr_lent=%u unique-id=%#" PRIx64, ename(rc2),
	       ename(rc), n, uid_a);
	rc = remake_domain(dom, &again);
	uid_b = rc ? 0 : unique_id_of(dom);
	if (!rc)
		rc = claim_lend_range(dom);
	result("reuse-same-domid", rc == 0 && again == dom && uid_b &&
	       uid_b != uid_a, "rc=%s dom=%u unique-id:old=%#" PRIx64
	       ",new=%#" PRIx64, ename(rc), again, uid_a, uid_b);
	if (rc)
		goto out_unreg;

	/* A device model still serving A: Xen refuses, A's pages revoked. */
	n = 7;
	rc = lend(0, gfn_base, 2, &n);
	query();
	r = region(95);
	result("reuse-stale-lend-refused",
	       rc == EXDEV && n == 0 && r && r->lent_pages == 0 &&
	       (r->flags & PRIVCMD_HOSTMEM_REGION_GONE) && q.lent == 0,
	       "rc=%s nr_lent=%u region-lent=%" PRIu64 " gone=%d lent=%" PRIu64,
	       ename(rc), n, r ? r->lent_pages : 0,
	       r ? !!(r->flags & PRIVCMD_HOSTMEM_REGION_GONE) : -1, q.lent);

	/* B's device model: A's registration is not B's and lends nothing. */
	dom_uid = uid_b;
	n = 7;
	rc = lend(0, gfn_base, 2, &n);
	/*
	 * B's backend registers the same id and offset: the gone one does
	 * not keep it out, and B's GFN is free for it.
	 */
	rc2 = reg(p, pg, 0, 95);
	rc3 = lend(0, gfn_base, 1, &n2);
	result("reuse-stale-registration-never-lends",
	       rc == 0 && n == 0 && rc2 == 0 && rc3 == 0 && n2 == 1,
	       "stale:rc=%s,nr_lent=%u new-registration:rc=%s "
	       "new-lend:rc=%s,nr_lent=%u", ename(rc), n, ename(rc2),
	       ename(rc3), n2);
	revoke_all();
out_unreg:
	unreg(95);
	unreg(95);
out:
	munmap(m, 2 * pg);
	munmap(p, pg);
}

/*
 * Xen lends only where the caller's own ioreq server claims the guest's
 * MMIO: outside [gfn_base, gfn_base + CLAIMED_PAGES), at a page claimed
 * and given up again, the lend fails with ENXIO and nothing is lent; the
 * same page inside the claimed range is the positive control.
 */
static void test_lend_unclaimed(void)
{
	char *m = map_anon(1, PROT_READ | PROT_WRITE);
	const uint64_t out = gfn_base + CLAIMED_PAGES + 0x100;
	uint32_t n1 = 9, n2 = 9, n3 = 9;
	int rc1, rc2, rc3, rcs, rcm, rcu;
	uint64_t lent1, lent2;
	uint16_t id = 0;

	fill(m, 1, 7);
	reg(m, pg, 0, 48);
	rc1 = lend(0, out, 1, &n1);
	lent1 = lent_now();
	rcs = ioreq_server(dom, &id);
	rcm = rcs ? rcs : claim_on(dom, id, out + 1, 1, true);
	rcu = rcm ? rcm : claim_on(dom, id, out + 1, 1, false);
	rc2 = lend(0, out + 1, 1, &n2);
	lent2 = lent_now();
	revoke_all();
	rc3 = lend(0, gfn_base + 0x40, 1, &n3);
	revoke_all();
	unreg(48);
	munmap(m, pg);
	result("lend-unclaimed-refused",
	       rc1 == ENXIO && n1 == 0 && lent1 == 0 && rcu == 0 &&
	       rc2 == ENXIO && n2 == 0 && lent2 == 0 && rc3 == 0 && n3 == 1,
	       "unclaimed:rc=%s,nr_lent=%u,lent=%" PRIu64 " claim-unmap:rc=%s "
	       "unmapped:rc=%s,nr_lent=%u,lent=%" PRIu64 " claimed:rc=%s,"
	       "nr_lent=%u", ename(rc1), n1, lent1, ename(rcu), ename(rc2), n2,
	       lent2, ename(rc3), n3);
}

/*
 * A registration of an instance that is gone counts no more towards the
 * guest's limits: a backend that filled guest A's limit and never
 * unregistered does not keep the backend of B, A's successor at the same
 * domid, out (ENOSPC before). And a registration names an instance that
 * exists: A's once it is gone (EXDEV), a domid nobody has (ESRCH).
 */
static void test_gone_limits(void)
{
	unsigned long max = param("hostmem_max_regions", 64), i;
	char *m = map_anon(1, PROT_READ | PROT_WRITE);
	uint64_t uid_a = dom_uid, uid_b = 0;
	domid_t again = dom;
	int rc = 0;

	if (max > 4096) {
		skip("gone-registrations-do-not-count",
		     "hostmem_max_regions too large");
		goto out;
	}
	for (i = 0; i < max && !rc; i++)
		rc = reg(m, pg, i * pg, 400 + i);
	result("gone-limit-filled", rc == 0 && i == max, "at=%lu rc=%s", i,
	       ename(rc));
	expect("gone-limit-reached", reg(m, pg, max * pg, 400 + max), ENOSPC);

	rc = remake_domain(dom, &again);
	uid_b = rc ? 0 : unique_id_of(dom);
	result("gone-limit-new-instance", rc == 0 && again == dom && uid_b &&
	       uid_b != uid_a, "rc=%s dom=%u", ename(rc), again);
	if (rc)
		goto out_unreg;
	dom_uid = uid_b;

	/* A's registrations are still there, but A is gone. */
	rc = reg(m, pg, 0x10000000, 600);
	result("gone-registrations-do-not-count", rc == 0,
	       "register-for-new-instance:rc=%s (A holds %lu)", ename(rc), max);
	unreg(600);

	dom_uid = uid_a;
	expect("register-gone-instance", reg(m, pg, 0x20000000, 601), EXDEV);
	dom_uid = uid_b;
	{
		/* A real unique id, at a domid nobody has. */
		struct privcmd_hostmem_register r = {
			.addr = (uintptr_t)m, .size = pg, .id = 602,
			.dom = 0x7fe3, .unique_id = uid_b,
		};

		expect("register-no-such-domain",
		       xioctl(fd, IOCTL_PRIVCMD_HOSTMEM_REGISTER, &r), ESRCH);
	}
out_unreg:
	for (i = 0; i < max; i++)
		unreg(400 + i);
out:
	munmap(m, pg);
}

static void test_lending(void)
{
	static const char *const names[] = {
		"lend-all", "owner-exit-revokes", "fd-close-revokes",
		"stress-no-leak",
	};
	const char *why = NULL;
	char *m;
	uint32_t n = 0;
	int rc;

	if (!have_guest) {
		why = "no guest given (--dom)";
	} else {
		/*
		 * The probe's page stays mapped until the end, so that a Xen
		 * that fails to release it cannot hand it to the next test.
		 */
		m = map_anon(1, PROT_READ | PROT_WRITE);
		reg(m, pg, 0, 49);
		rc = lend(0, gfn_base, 1, &n);
		revoke_all();
		unreg(49);
		if (rc == EOPNOTSUPP || rc == ENOSYS)
			why = "Xen cannot lend pages (EOPNOTSUPP/ENOSYS)";
		else if (rc)
			why = ename(rc);
		if (rc && rc != EOPNOTSUPP && rc != ENOSYS) {
			result("lend-probe", false, "rc=%s", ename(rc));
			return;
		}
	}
	if (why) {
		for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
			skip(names[i], why);
		return;
	}
	test_relend_after_revoke();
	test_lend_unclaimed();
	test_lend_basic();
	test_lend_pfnmap();
	test_lend_unreferenced();
	test_lend_owner_exit();
	test_lend_fd_close();
	test_lend_stress();
	if (make_domain)
		test_lend_domain_gone();
	if (make_domain)
		test_domid_reuse();
	if (make_domain)
		test_gone_limits();
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--dom") && i + 1 < argc) {
			dom = strtoul(argv[++i], NULL, 0);
			have_guest = true;
		} else if (!strcmp(argv[i], "--gfn") && i + 1 < argc) {
			gfn_base = strtoull(argv[++i], NULL, 0);
		} else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
			seconds = strtoul(argv[++i], NULL, 0);
		} else if (!strcmp(argv[i], "--make-domain")) {
			make_domain = true;
		} else if (!strcmp(argv[i], "--require-lend")) {
			require_lend = true;
		} else if (!strcmp(argv[i], "--bar") && i + 1 < argc) {
			bar_path = argv[++i];
		} else {
			fprintf(stderr, "usage: %s [--dom N] [--gfn G] "
				"[--seconds S] [--make-domain] [--require-lend] "
				"[--bar SYSFS_RESOURCE]\n", argv[0]);
			return 2;
		}
	}
	pg = sysconf(_SC_PAGESIZE);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("TAP version 13\n");

	fd = open(PRIVCMD, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		result("open-privcmd", false, "%s", strerror(errno));
		return 1;
	}
	if (query() == ENOTTY || q.rc == EOPNOTSUPP) {
		result("hostmem-ioctls-present", false, "query:%s",
		       ename(q.rc));
		return 1;
	}
	if (q.nr) {
		result("domain-starts-empty", false, "dom %u has %u regions",
		       dom, q.nr);
		return 1;
	}

	if (make_domain) {
		domid_t made = 0;
		int rc = have_guest ? EINVAL : create_domain(&made);

		if (!rc)
			dom = made;

		result("make-domain", rc == 0, "rc=%s dom=%u", ename(rc), dom);
		if (rc)
			return 1;
		have_guest = true;
		printf("# made HVM domain %u\n", dom);
	}
	if (have_guest) {
		/* The instance every registration and lend names. */
		dom_uid = unique_id_of(dom);
		result("domain-unique-id", dom_uid != 0,
		       "dom=%u unique-id=%#" PRIx64, dom, dom_uid);
		if (!dom_uid)
			return 1;
		/* As the device model claims its BAR: the GFNs lent at. */
		expect("lend-claim-range", claim_lend_range(dom), 0);
	}

	test_register_query_unregister();
	test_bad_inputs();
	test_memory_kinds();
	test_restricted_fd();
	test_backend_fd();
	test_ownership();
	test_ioctl_numbers();
	test_lend_revoke_args();
	test_limits();
	test_owner_exit_bookkeeping();
	test_stall_isolation();
	test_lending();

	if (make_domain && dom != 0x7fe0)
		destroy_domain(dom);	/* idempotent: ESRCH if already gone */

	printf("1..%d\n", tests);
	printf("# %d tests, %d failed\n", tests, failures);
	return failures ? 1 : 0;
}
