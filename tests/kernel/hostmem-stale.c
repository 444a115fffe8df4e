// SPDX-License-Identifier: GPL-2.0-only
/*
 * hostmem-stale: the dom0 side of scenario 71 (tests that would catch a
 * stale page). A backend that changes, under a running guest, how the
 * memory it lends is backed, and checks that the guest always sees what the
 * owner maps at each offset, never a frame the owner has let go.
 *
 *   hostmem-stale -d DOMID -u UNIQUE_ID [-s STRESS_SECONDS] [-w ACK_TIMEOUT]
 *                 [-c CASE] [-m CGROUP_DIR|sysrq]
 *
 * -c: run only CASE. -m: also run oom-reap, the owner being OOM-killed in
 * the memory cgroup v2 CGROUP_DIR (made and limited by the caller), or by
 * a forced global OOM kill (sysrq f) with "sysrq".
 *
 * UNIQUE_ID: the guest instance the memory is registered for (Xen's
 * unique id, as gpu-hostmem-ioreqd records it), as hostmem-backend takes it.
 *
 * BAR layout: a control page at offset 0 (shared anonymous memory, never
 * touched by the cases) and a data region of DATA_PAGES pages at offset
 * 2 MiB, backed by a 2 MiB aligned range of this process. The guest runs
 * "hostmem-guest follow" (tests/guest/hostmem-guest.c) on them.
 *
 * Each case: (1) set up the backing and fill it (generation g), publish g,
 * wait until the guest has read every page (so that every page is lent);
 * (2) do the invalidating operation, write generation g+1 into every word
 * through this process's own mappings, publish g+1 and wait for the guest's
 * verdict. A page showing anything else than g+1 in the guest is a page the
 * owner no longer maps there. /proc/self/pagemap tells how many frames the
 * operation replaced, so a case that changed nothing is reported as not
 * exercised (SKIP) instead of passing vacuously.
 *
 * Cases: fork-cow (private anonymous memory, parent writes after fork),
 * ksm (MADV_MERGEABLE), thp-split (partial mprotect and munmap of a THP),
 * thp-collapse (MADV_COLLAPSE), migrate (move_pages, then compaction),
 * pageout (MADV_PAGEOUT; needs swap), memfd-truncate (another process
 * truncates a memfd mapped shared), stress (random invalidations while the
 * guest reads, then a full check), owner-exit (a child owning the data
 * region is killed while the guest faults: all pages read unbacked),
 * oom-reap (the owner is OOM-killed and the OOM reaper unmaps its memory
 * before it exits: the reaper's non-blockable invalidation must revoke, or
 * refuse and leave the pages mapped; see case_oom_reap()).
 *
 * Output: "RESULT name=stale-<case> ok=0|1 value=..." and "SKIP
 * name=stale-<case> reason=..." lines; exit status 0 if no case failed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../examples/privcmd-hostmem.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef MPOL_MF_MOVE
#define MPOL_MF_MOVE (1 << 1)
#endif

#define PG 4096UL
#define DATA_PAGES 512UL
#define DATA_SIZE (DATA_PAGES * PG)
#define DATA_OFF 0x200000ULL

/* Must match follow() in tests/guest/hostmem-guest.c. */
enum { CTL_GEN, CTL_MODE, CTL_ACK, CTL_BAD, CTL_BAD_OFF, CTL_BAD_VAL, CTL_PASSES };
enum { FOLLOW_PATTERN, FOLLOW_UNIFORM, FOLLOW_STRESS, FOLLOW_DONE, FOLLOW_UNBACKED };

static volatile uint64_t *ctl;
static char *data;		/* DATA_SIZE bytes, 2 MiB aligned */
static uint64_t gen;
static unsigned int ack_timeout = 180, stress_seconds = 10;
static int failures;
static uint64_t unique_id;	/* the guest instance registered for */
static uint64_t pfn_before[DATA_PAGES];
static const char *only_case;	/* -c */
static const char *oom_mode;	/* -m: a cgroup v2 directory or "sysrq" */

static bool want(const char *name)
{
	return !only_case || !strcmp(only_case, name);
}

static uint64_t pattern(uint64_t off)
{
	return (off * 0x9e3779b97f4a7c15ULL) ^ 0x6770752d686f7374ULL;
}

static uint64_t value(uint64_t g, uint64_t mode, uint64_t a)
{
	if (mode == FOLLOW_UNBACKED)
		return ~0ULL;
	return mode == FOLLOW_UNIFORM ? 0x4b534d0000000000ULL | g :
	       pattern(a) ^ (g << 40);
}

static void fill(uint64_t g, uint64_t mode)
{
	uint64_t *w = (uint64_t *)data;

	for (uint64_t i = 0; i < DATA_SIZE / 8; i++)
		w[i] = value(g, mode, DATA_OFF + i * 8);
}

/* Frames of the data pages now (0: not present). */
static void pfns(uint64_t *out)
{
	int f = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	ssize_t want = DATA_PAGES * sizeof(uint64_t);

	if (f < 0 || pread(f, out, want, (uintptr_t)data / PG * 8) != want)
		memset(out, 0, want);
	if (f >= 0)
		close(f);
	for (unsigned long i = 0; i < DATA_PAGES; i++)
		out[i] = out[i] >> 63 ? out[i] & ((1ULL << 55) - 1) : 0;
}

static void snap(void)
{
	pfns(pfn_before);
}

/* Data pages whose frame changed since snap() (or that went away). */
static unsigned long moved(void)
{
	static uint64_t now[DATA_PAGES];
	unsigned long n = 0;

	pfns(now);
	for (unsigned long i = 0; i < DATA_PAGES; i++)
		n += now[i] != pfn_before[i];
	return n;
}

/* Publish @g with @mode and wait for the guest to acknowledge it. */
static bool publish(uint64_t g, uint64_t mode)
{
	time_t end = time(NULL) + ack_timeout;

	ctl[CTL_MODE] = mode;
	__atomic_store_n(&ctl[CTL_GEN], g, __ATOMIC_SEQ_CST);
	while (ctl[CTL_ACK] != g) {
		if (time(NULL) > end)
			return false;
		usleep(2000);
	}
	return true;
}

/* The second half of a case: new generation written by the owner, checked. */
static void verdict(const char *name, uint64_t mode, const char *what,
		    bool exercised, const char *why)
{
	bool acked;

	gen++;
	fill(gen, mode);
	acked = publish(gen, mode);
	if (!acked) {
		printf("RESULT name=stale-%s ok=0 value=guest-did-not-ack-gen%" PRIu64
		       " %s\n", name, gen, what);
		failures++;
	} else if (ctl[CTL_BAD]) {
		printf("RESULT name=stale-%s ok=0 value=stale:%" PRIu64 "/%lu"
		       " first=+0x%" PRIx64 ":0x%016" PRIx64 " want:0x%016" PRIx64
		       " %s\n", name, ctl[CTL_BAD], DATA_PAGES, ctl[CTL_BAD_OFF],
		       ctl[CTL_BAD_VAL],
		       value(gen, mode, DATA_OFF + ctl[CTL_BAD_OFF]), what);
		failures++;
	} else if (!exercised) {
		printf("SKIP name=stale-%s reason=%s (%s)\n", name, why, what);
	} else {
		printf("RESULT name=stale-%s ok=1 value=0/%lu %s\n", name,
		       DATA_PAGES, what);
	}
	fflush(stdout);
}

/* The first half: fresh backing filled, every page read (lent) by the guest. */
static bool setup(const char *name, uint64_t mode)
{
	gen++;
	fill(gen, mode);
	if (!publish(gen, mode) || ctl[CTL_BAD]) {
		printf("RESULT name=stale-%s-setup ok=0 value=ack:%d bad:%" PRIu64
		       "\n", name, ctl[CTL_ACK] == gen, ctl[CTL_BAD]);
		failures++;
		fflush(stdout);
		return false;
	}
	snap();
	return true;
}

static bool map_private(bool huge)
{
	if (mmap(data, DATA_SIZE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
		return false;
	madvise(data, DATA_SIZE, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return true;
}

static void case_fork_cow(void)
{
	char what[96];
	unsigned long n;
	int p[2];
	pid_t pid;

	if (!map_private(false) || !setup("fork-cow", FOLLOW_PATTERN) ||
	    pipe(p))
		return;
	pid = fork();
	if (pid == 0) {
		char c;

		close(p[1]);
		/* Keep the old frames mapped until the parent is done. */
		if (read(p[0], &c, 1) < 0)
			_exit(1);
		_exit(0);
	}
	close(p[0]);
	/* The parent writes: every page is copied for it. */
	for (unsigned long i = 0; i < DATA_PAGES; i++)
		*(volatile char *)(data + i * PG) = data[i * PG];
	n = moved();
	snprintf(what, sizeof(what), "frames-replaced:%lu", n);
	verdict("fork-cow", FOLLOW_PATTERN, what, n > 0,
		"parent-kept-its-frames");
	close(p[1]);
	waitpid(pid, NULL, 0);
}

static int write_str(const char *path, const char *v)
{
	int f = open(path, O_WRONLY | O_CLOEXEC), rc = -1;

	if (f >= 0) {
		rc = write(f, v, strlen(v)) == (ssize_t)strlen(v) ? 0 : -1;
		close(f);
	}
	return rc;
}

static void case_ksm(void)
{
	char what[96];
	time_t end;
	unsigned long n = 0;

	if (access("/sys/kernel/mm/ksm/run", W_OK)) {
		printf("SKIP name=stale-ksm reason=no-ksm-in-dom0-kernel\n");
		return;
	}
	if (!map_private(false) || !setup("ksm", FOLLOW_UNIFORM))
		return;
	write_str("/sys/kernel/mm/ksm/pages_to_scan", "4096");
	write_str("/sys/kernel/mm/ksm/sleep_millisecs", "10");
	if (madvise(data, DATA_SIZE, MADV_MERGEABLE) ||
	    write_str("/sys/kernel/mm/ksm/run", "1")) {
		printf("SKIP name=stale-ksm reason=madvise-or-run:%s\n",
		       strerror(errno));
		return;
	}
	/* Identical pages: KSM replaces them with one shared frame. */
	for (end = time(NULL) + 30; time(NULL) < end; usleep(200000))
		if ((n = moved()) > DATA_PAGES / 2)
			break;
	write_str("/sys/kernel/mm/ksm/run", "0");
	snprintf(what, sizeof(what), "frames-merged:%lu", n);
	/* verdict() writes to the merged pages: copied again for us. */
	verdict("ksm", FOLLOW_UNIFORM, what, n > 0, "ksm-merged-nothing-in-30s");
	madvise(data, DATA_SIZE, MADV_UNMERGEABLE);
}

static long reg_lent(int fd, uint16_t dom, uint32_t id);

/*
 * AnonHugePages (KiB) of the mappings that start in the data region: how
 * much of it is mapped by PMDs, i.e. as transparent huge pages.
 */
static long region_huge_kb(void)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	uintptr_t lo = (uintptr_t)data, hi = lo + DATA_SIZE;
	bool in = false;
	char line[256];
	long kb = -1, v;
	uintptr_t a, b;

	while (f && fgets(line, sizeof(line), f)) {
		/* A mapping's first line: "start-end perms ...". */
		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &a, &b) == 2) {
			in = a >= lo && a < hi;
			continue;
		}
		if (in && sscanf(line, "AnonHugePages: %ld", &v) == 1)
			kb = (kb < 0 ? 0 : kb) + v;
	}
	if (f)
		fclose(f);
	return kb;
}

/*
 * THP split and collapse under lent pages. Each counts as exercised only
 * if every data page was lent when the operation ran (privcmd's count) and
 * the operation did what it is for: for the split, the data region was one
 * PMD-mapped huge page, is no longer after the partial mprotect, and the
 * page unmapped and mapped again got a new frame; for the collapse,
 * MADV_COLLAPSE succeeded, the region is PMD-mapped and its frames
 * changed. Otherwise the verdict is SKIP with what happened (scenario 71
 * fails a SKIP where THP must work: a PVH dom0).
 */
static void case_thp(int fd, uint16_t dom)
{
	char what[192];
	long huge0, huge_split, huge1, lent0, lent1;
	unsigned long n;
	int rc;

	if (access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK)) {
		/* A Xen PV dom0, for one, has no transparent huge pages. */
		printf("SKIP name=stale-thp-split reason=no-thp-in-dom0-kernel\n");
		printf("SKIP name=stale-thp-collapse reason=no-thp-in-dom0-kernel\n");
		return;
	}
	if (!map_private(true) || !setup("thp-split", FOLLOW_PATTERN))
		return;
	huge0 = region_huge_kb();
	lent0 = reg_lent(fd, dom, 2);
	/* Split the PMD: a few pages read-only and back, one replaced. */
	mprotect(data + 3 * PG, 2 * PG, PROT_READ);
	mprotect(data + 3 * PG, 2 * PG, PROT_READ | PROT_WRITE);
	huge_split = region_huge_kb();
	munmap(data + 7 * PG, PG);
	mmap(data + 7 * PG, PG, PROT_READ | PROT_WRITE,
	     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	lent1 = reg_lent(fd, dom, 2);
	n = moved();
	snprintf(what, sizeof(what),
		 "huge_kb:%ld->%ld lent:%ld->%ld frames-replaced:%lu",
		 huge0, huge_split, lent0, lent1, n);
	verdict("thp-split", FOLLOW_PATTERN, what,
		huge0 >= 2048 && huge_split < huge0 &&
		lent0 == (long)DATA_PAGES && n > 0,
		huge0 < 2048 ? "no-thp-to-split" :
		huge_split >= huge0 ? "pmd-not-split" :
		lent0 != (long)DATA_PAGES ? "pages-not-lent" :
		"no-frame-replaced");

	/* Small pages, then collapsed into a huge page (new frames). */
	if (!map_private(false) || !setup("thp-collapse", FOLLOW_PATTERN))
		return;
	huge0 = region_huge_kb();
	lent0 = reg_lent(fd, dom, 2);
	madvise(data, DATA_SIZE, MADV_HUGEPAGE);
	rc = madvise(data, DATA_SIZE, MADV_COLLAPSE) ? errno : 0;
	huge1 = region_huge_kb();
	lent1 = reg_lent(fd, dom, 2);
	n = moved();
	snprintf(what, sizeof(what),
		 "collapse:%s huge_kb:%ld->%ld lent:%ld->%ld frames-replaced:%lu",
		 rc ? strerror(rc) : "ok", huge0, huge1, lent0, lent1, n);
	verdict("thp-collapse", FOLLOW_PATTERN, what,
		!rc && huge1 >= 2048 && lent0 == (long)DATA_PAGES && n > 0,
		rc ? "collapse-refused" :
		huge1 < 2048 ? "not-pmd-mapped-after-collapse" :
		lent0 != (long)DATA_PAGES ? "pages-not-lent" :
		"collapse-replaced-no-frame");
}

static void case_migrate(void)
{
	static void *pages[DATA_PAGES];
	static int nodes[DATA_PAGES], status[DATA_PAGES];
	char what[128];
	unsigned long n;
	long rc;

	if (!map_private(false) || !setup("migrate", FOLLOW_PATTERN))
		return;
	for (unsigned long i = 0; i < DATA_PAGES; i++) {
		pages[i] = data + i * PG;
		nodes[i] = 0;
	}
	/* One node: move_pages() has nowhere to go; compaction moves pages. */
	rc = syscall(SYS_move_pages, 0, DATA_PAGES, pages, nodes, status,
		     MPOL_MF_MOVE);
	n = moved();
	if (!n)
		write_str("/proc/sys/vm/compact_memory", "1");
	n = moved();
	snprintf(what, sizeof(what), "move_pages:%ld frames-moved:%lu", rc, n);
	verdict("migrate", FOLLOW_PATTERN, what, n > 0,
		"neither-move_pages-nor-compaction-moved-a-frame");
}

static void case_pageout(void)
{
	char what[96];
	unsigned long n;
	int rc;

	if (!map_private(false) || !setup("pageout", FOLLOW_PATTERN))
		return;
	rc = madvise(data, DATA_SIZE, MADV_PAGEOUT) ? errno : 0;
	n = moved();
	snprintf(what, sizeof(what), "madvise:%s frames-paged-out:%lu",
		 rc ? strerror(rc) : "ok", n);
	verdict("pageout", FOLLOW_PATTERN, what, n > 0,
		"nothing-paged-out(no-swap?)");
}

static void case_memfd_truncate(void)
{
	char what[96];
	unsigned long n;
	pid_t pid;
	int mfd, st = 0;

	mfd = syscall(SYS_memfd_create, "hostmem-stale", 0);
	if (mfd < 0 || ftruncate(mfd, DATA_SIZE) ||
	    mmap(data, DATA_SIZE, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_FIXED, mfd, 0) == MAP_FAILED) {
		printf("RESULT name=stale-memfd-truncate ok=0 value=memfd:%s\n",
		       strerror(errno));
		failures++;
		if (mfd >= 0)
			close(mfd);
		return;
	}
	if (!setup("memfd-truncate", FOLLOW_PATTERN)) {
		close(mfd);
		return;
	}
	/* Another process drops every page of the file, then regrows it. */
	pid = fork();
	if (pid == 0)
		_exit(ftruncate(mfd, 0) || ftruncate(mfd, DATA_SIZE) ? 1 : 0);
	waitpid(pid, &st, 0);
	n = moved();
	snprintf(what, sizeof(what), "child:%d frames-dropped:%lu",
		 WIFEXITED(st) ? WEXITSTATUS(st) : -1, n);
	verdict("memfd-truncate", FOLLOW_PATTERN, what, n > 0,
		"truncate-dropped-nothing");
	close(mfd);
}

static unsigned int rnd(unsigned int *seed, unsigned int n)
{
	*seed = *seed * 1103515245 + 12345;
	return (*seed >> 8) % n;
}

/* Random invalidations while the guest keeps faulting, then a full check. */
static void case_stress(void)
{
	unsigned long ops = 0;
	unsigned int seed = 7;
	uint64_t passes0;
	char what[96];
	time_t end;

	if (!map_private(false) || !setup("stress", FOLLOW_PATTERN))
		return;
	gen++;
	passes0 = ctl[CTL_PASSES];
	if (!publish(gen, FOLLOW_STRESS)) {
		printf("RESULT name=stale-stress ok=0 value=guest-did-not-start\n");
		failures++;
		return;
	}
	for (end = time(NULL) + stress_seconds; time(NULL) < end; ops++) {
		unsigned int first = rnd(&seed, DATA_PAGES);
		unsigned int n = 1 + rnd(&seed, DATA_PAGES - first < 32 ?
					 DATA_PAGES - first : 32);
		char *p = data + (size_t)first * PG;

		switch (rnd(&seed, 4)) {
		case 0:
			madvise(p, n * PG, MADV_DONTNEED);
			break;
		case 1:
			mmap(p, n * PG, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
			break;
		case 2:
			mprotect(p, n * PG, PROT_READ);
			mprotect(p, n * PG, PROT_READ | PROT_WRITE);
			break;
		default:
			for (unsigned int i = 0; i < n * PG / 8; i++)
				((uint64_t *)p)[i] = rnd(&seed, 1 << 30);
			break;
		}
		usleep(1000);
	}
	snprintf(what, sizeof(what), "ops:%lu guest-passes:%" PRIu64, ops,
		 ctl[CTL_PASSES] - passes0);
	verdict("stress", FOLLOW_PATTERN, what, ctl[CTL_PASSES] > passes0,
		"guest-made-no-pass-during-stress");
}

/*
 * The owner exits (SIGKILL) while the guest keeps faulting on its pages:
 * a child owns the data region instead of us; once it is gone every page
 * must read as unbacked (all ones), none as the dead owner's memory.
 */
static void case_owner_exit(int fd, uint16_t dom)
{
	struct privcmd_hostmem_unregister u = { .id = 2, .dom = dom };
	uint64_t g = gen + 1, passes0;
	int ready[2], st = 0;
	char c = 'n';
	pid_t pid;

	/* Our own registration of the data offsets goes first. */
	if (ioctl(fd, IOCTL_PRIVCMD_HOSTMEM_UNREGISTER, &u) || pipe(ready)) {
		printf("RESULT name=stale-owner-exit ok=0 value=unregister:%s\n",
		       strerror(errno));
		failures++;
		return;
	}
	pid = fork();
	if (pid == 0) {
		struct privcmd_hostmem_register r = { 0 };
		uint64_t *m = mmap(NULL, DATA_SIZE, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		int f = open("/dev/xen/privcmd", O_RDWR | O_CLOEXEC);

		if (m == MAP_FAILED || f < 0 ||
		    ioctl(f, IOCTL_PRIVCMD_RESTRICT, &dom))
			_exit(1);
		for (uint64_t i = 0; i < DATA_SIZE / 8; i++)
			m[i] = value(g, FOLLOW_PATTERN, DATA_OFF + i * 8);
		r.addr = (uintptr_t)m;
		r.size = DATA_SIZE;
		r.offset = DATA_OFF;
		r.id = 3;
		r.dom = dom;
		r.unique_id = unique_id;
		c = ioctl(f, IOCTL_PRIVCMD_HOSTMEM_REGISTER, &r) ? 'n' : 'y';
		if (write(ready[1], &c, 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	if (pid < 0 || read(ready[0], &c, 1) != 1 || c != 'y') {
		printf("RESULT name=stale-owner-exit ok=0 value=child-not-ready\n");
		failures++;
		if (pid > 0)
			kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return;
	}
	/* Every page of the child's lent to the guest... */
	gen = g;
	if (!publish(gen, FOLLOW_PATTERN) || ctl[CTL_BAD]) {
		printf("RESULT name=stale-owner-exit-setup ok=0 value=ack:%d bad:%"
		       PRIu64 "\n", ctl[CTL_ACK] == gen, ctl[CTL_BAD]);
		failures++;
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return;
	}
	/* ...the guest faulting on them all the time, and the owner dies. */
	passes0 = ctl[CTL_PASSES];
	publish(++gen, FOLLOW_STRESS);
	sleep(1);
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	sleep(2);
	gen++;
	if (!publish(gen, FOLLOW_UNBACKED)) {
		printf("RESULT name=stale-owner-exit ok=0 value=guest-did-not-ack\n");
		failures++;
	} else if (ctl[CTL_BAD]) {
		printf("RESULT name=stale-owner-exit ok=0 value=not-unbacked:%" PRIu64
		       "/%lu first=+0x%" PRIx64 ":0x%016" PRIx64 "\n",
		       ctl[CTL_BAD], DATA_PAGES, ctl[CTL_BAD_OFF],
		       ctl[CTL_BAD_VAL]);
		failures++;
	} else {
		printf("RESULT name=stale-owner-exit ok=1 value=0/%lu killed:%d"
		       " guest-passes-meanwhile:%" PRIu64 "\n", DATA_PAGES,
		       WIFSIGNALED(st), ctl[CTL_PASSES] - passes0);
	}
}


/* Pages the kernel counts as lent from registration @id at DATA_OFF (-1: none). */
static long reg_lent(int fd, uint16_t dom, uint32_t id)
{
	static struct privcmd_hostmem_region regs[64];
	struct privcmd_hostmem_query q = {
		.dom = dom, .nr_regions = 64, .regions = (uintptr_t)regs,
	};

	if (ioctl(fd, IOCTL_PRIVCMD_HOSTMEM_QUERY, &q))
		return -1;
	for (uint32_t i = 0; i < q.nr_regions && i < 64; i++)
		if (regs[i].id == id && regs[i].offset == DATA_OFF)
			return regs[i].lent_pages;
	return -1;
}

/* Does a record of the kernel log contain @what? */
static bool kmsg_has(const char *what)
{
	int f = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	bool found = false;
	char rec[2048];
	ssize_t n;

	while (f >= 0 && !found) {
		n = read(f, rec, sizeof(rec) - 1);
		if (n < 0 && errno == EPIPE)
			continue;	/* overwritten while we read */
		if (n <= 0)
			break;
		rec[n] = 0;
		found = strstr(rec, what);
	}
	if (f >= 0)
		close(f);
	return found;
}

/* The oom_kill count of the memory cgroup @cg (-1: unreadable). */
static long oom_kills(const char *cg)
{
	char path[512], line[128];
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "%s/memory.events", cg);
	f = fopen(path, "re");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "oom_kill %ld", &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

/* waitpid() for at most @secs seconds; false if @pid is still there. */
static bool wait_for(pid_t pid, int *st, int secs)
{
	for (int i = 0; i < secs * 10; i++) {
		pid_t r = waitpid(pid, st, WNOHANG);

		if (r == pid || (r < 0 && errno != EINTR))
			return r == pid;
		usleep(100000);
	}
	return false;
}

struct oom_child {
	int ok, uffd;		/* the child's userfaultfd, as its fd number */
	uint64_t hold;		/* a page it handles with that userfaultfd */
};

/*
 * The owner of lent pages is OOM-killed and the OOM reaper unmaps its
 * memory: __oom_reap_task_mm() invalidates with a non-blockable range, and
 * privcmd must then either revoke before returning (the pages are freed
 * right after) or refuse, leaving them mapped for exit_mmap().
 *
 * A victim that exits on its own unmaps everything itself (blockable) before
 * the reaper's delay is up, so the victim's mm is kept from exit_mmap(): a
 * second process reads (process_vm_readv) a page the victim handles with
 * userfaultfd, which holds mm_users until the fault is answered or the
 * userfaultfd released; we keep a copy of that fd (pidfd_getfd) until the
 * checks are done. The registration is made on our privcmd file, so it
 * outlives the victim's files too: before the holder lets go, only the
 * reaper can have revoked the pages.
 *
 * Checked: the victim died of SIGKILL from the OOM killer ("Killed process
 * PID" in the kernel log; with a cgroup, its oom_kill count went up), the
 * reaper reaped it ("oom_reaper: reaped process PID"), the kernel counts no
 * page of it lent any more, the guest reads every page as unbacked (not
 * the dead owner's data, nor a reused frame), and after the holder goes
 * (exit_mmap) the registration is still at 0 and unregisters.
 */
static void case_oom_reap(int fd, uint16_t dom, const char *mode)
{
	struct privcmd_hostmem_unregister u = { .id = 2, .dom = dom };
	bool sysrq = !strcmp(mode, "sysrq"), reaped, gave_up, by_oom;
	int ready[2], go[2], st = 0, hst = 0, pidfd = -1, uffd = -1, urc;
	long lent0, lent_reaped, lent_exit, kills0 = 0, kills1 = 0;
	uint64_t g = gen + 1, bad = 0, passes0;
	struct pollfd pf = { .events = POLLIN };
	struct oom_child info = { 0 };
	char msg[96], what[384];
	pid_t pid, holder = -1;
	bool acked = false;
	time_t end;

	if (ioctl(fd, IOCTL_PRIVCMD_HOSTMEM_UNREGISTER, &u) && errno != ENOENT) {
		printf("RESULT name=stale-oom-reap ok=0 value=unregister:%s\n",
		       strerror(errno));
		failures++;
		return;
	}
	if (pipe(ready) || pipe(go)) {
		printf("RESULT name=stale-oom-reap ok=0 value=pipe:%s\n",
		       strerror(errno));
		failures++;
		return;
	}
	pid = fork();
	if (pid == 0) {
		struct privcmd_hostmem_register r = { 0 };
		struct uffdio_api api = { .api = UFFD_API };
		struct uffdio_register ur = { 0 };
		char path[512], c;
		uint64_t *m;
		char *hold;

		close(ready[0]);
		close(go[1]);
		/* Into the cgroup first: what we touch from now on is charged there. */
		snprintf(path, sizeof(path), "%s/cgroup.procs", mode);
		if (!sysrq && write_str(path, "0"))
			_exit(10);
		write_str("/proc/self/oom_score_adj", "1000");
		m = mmap(NULL, DATA_SIZE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		hold = mmap(NULL, PG, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		info.uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
		if (m == MAP_FAILED || hold == MAP_FAILED || info.uffd < 0 ||
		    ioctl(info.uffd, UFFDIO_API, &api))
			_exit(11);
		ur.range.start = (uintptr_t)hold;
		ur.range.len = PG;
		ur.mode = UFFDIO_REGISTER_MODE_MISSING;
		if (ioctl(info.uffd, UFFDIO_REGISTER, &ur))
			_exit(12);
		madvise(m, DATA_SIZE, MADV_NOHUGEPAGE);
		for (uint64_t i = 0; i < DATA_SIZE / 8; i++)
			m[i] = value(g, FOLLOW_PATTERN, DATA_OFF + i * 8);
		/* On the parent's file (inherited): it outlives us. */
		r.addr = (uintptr_t)m;
		r.size = DATA_SIZE;
		r.offset = DATA_OFF;
		r.id = 3;
		r.dom = dom;
		r.unique_id = unique_id;
		info.ok = !ioctl(fd, IOCTL_PRIVCMD_HOSTMEM_REGISTER, &r);
		info.hold = (uintptr_t)hold;
		if (write(ready[1], &info, sizeof(info)) != sizeof(info) ||
		    read(go[0], &c, 1) != 1)
			_exit(13);
		if (sysrq)
			for (;;)
				pause();
		/* Allocate until the OOM killer takes us. */
		for (;;) {
			char *p = mmap(NULL, 1UL << 20, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			if (p == MAP_FAILED)
				_exit(14);
			memset(p, 0x5a, 1UL << 20);
		}
	}
	close(ready[1]);
	close(go[0]);
	if (pid < 0 || read(ready[0], &info, sizeof(info)) != sizeof(info) ||
	    !info.ok) {
		printf("RESULT name=stale-oom-reap ok=0 value=child-not-ready\n");
		goto fail_kill;
	}
	pidfd = syscall(SYS_pidfd_open, pid, 0);
	uffd = pidfd < 0 ? -1 : syscall(SYS_pidfd_getfd, pidfd, info.uffd, 0);
	if (uffd < 0) {
		printf("RESULT name=stale-oom-reap ok=0 value=pidfd_getfd:%s\n",
		       strerror(errno));
		goto fail_kill;
	}
	/* Every page of the child's lent to the guest. */
	gen = g;
	if (!publish(gen, FOLLOW_PATTERN) || ctl[CTL_BAD]) {
		printf("RESULT name=stale-oom-reap-setup ok=0 value=ack:%d bad:%"
		       PRIu64 "\n", ctl[CTL_ACK] == gen, ctl[CTL_BAD]);
		goto fail_kill;
	}
	lent0 = reg_lent(fd, dom, 3);
	holder = fork();
	if (holder == 0) {
		char b;
		struct iovec l = { .iov_base = &b, .iov_len = 1 };
		struct iovec rv = { .iov_base = (void *)(uintptr_t)info.hold,
				    .iov_len = 1 };

		/* Only we keep the userfaultfd: closing it must let go. */
		close(uffd);
		_exit(process_vm_readv(pid, &l, 1, &rv, 1, 0) == 1 ? 0 : 1);
	}
	/* The holder's fault is pending: it holds the victim's mm. */
	pf.fd = uffd;
	if (holder < 0 || poll(&pf, 1, 10000) != 1) {
		printf("RESULT name=stale-oom-reap ok=0 value=holder-not-blocked\n");
		goto fail_kill;
	}
	/* The guest faulting all the time while the owner is killed. */
	passes0 = ctl[CTL_PASSES];
	publish(++gen, FOLLOW_STRESS);
	sleep(1);
	if (!sysrq)
		kills0 = oom_kills(mode);
	if (write(go[1], "g", 1) != 1 ||
	    (sysrq && write_str("/proc/sysrq-trigger", "f"))) {
		printf("RESULT name=stale-oom-reap ok=0 value=trigger:%s\n",
		       strerror(errno));
		goto fail_kill;
	}
	if (!wait_for(pid, &st, 60)) {
		printf("RESULT name=stale-oom-reap ok=0 value=not-oom-killed-in-60s\n");
		goto fail_kill;
	}
	if (!sysrq)
		kills1 = oom_kills(mode);
	snprintf(msg, sizeof(msg), "Killed process %d (", (int)pid);
	by_oom = kmsg_has(msg);
	/*
	 * The reaper starts OOM_REAPER_DELAY (2 s) after the kill, and retries
	 * a refused or contended mm 10 times, 100 ms apart.
	 */
	reaped = gave_up = false;
	for (end = time(NULL) + 30; time(NULL) < end && !reaped && !gave_up;
	     usleep(200000)) {
		snprintf(msg, sizeof(msg), "oom_reaper: reaped process %d (",
			 (int)pid);
		reaped = kmsg_has(msg);
		snprintf(msg, sizeof(msg), "oom_reaper: unable to reap pid:%d (",
			 (int)pid);
		gave_up = kmsg_has(msg);
	}
	lent_reaped = reg_lent(fd, dom, 3);
	/* Before the holder lets go: what the guest sees after the reaper. */
	gen++;
	acked = publish(gen, FOLLOW_UNBACKED);
	bad = ctl[CTL_BAD];
	/* Now the victim's mm goes (exit_mmap, blockable). */
	close(uffd);
	uffd = -1;
	if (!wait_for(holder, &hst, 30)) {
		kill(holder, SIGKILL);
		waitpid(holder, &hst, 0);
	}
	holder = -1;
	lent_exit = reg_lent(fd, dom, 3);
	u.id = 3;
	urc = ioctl(fd, IOCTL_PRIVCMD_HOSTMEM_UNREGISTER, &u) ? errno : 0;
	snprintf(what, sizeof(what),
		 "status:%#x oom-log:%d oom_kill:%ld->%ld reaper:%s lent:%ld->%ld->%ld"
		 " guest-bad:%" PRIu64 "/%lu guest-passes-meanwhile:%" PRIu64
		 " holder:%#x unregister:%d", st, by_oom, kills0, kills1,
		 reaped ? "reaped" : gave_up ? "gave-up" : "did-not-run",
		 lent0, lent_reaped, lent_exit, bad, DATA_PAGES,
		 ctl[CTL_PASSES] - passes0, hst, urc);
	if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && by_oom &&
	    (sysrq || kills1 > kills0) && reaped &&
	    lent0 == (long)DATA_PAGES && lent_reaped == 0 && acked && !bad &&
	    WIFEXITED(hst) && lent_exit == 0 && !urc) {
		printf("RESULT name=stale-oom-reap ok=1 value=%s\n", what);
	} else {
		printf("RESULT name=stale-oom-reap ok=0 value=%s%s\n", what,
		       acked ? "" : " guest-did-not-ack");
		failures++;
	}
	close(pidfd);
	close(go[1]);
	close(ready[0]);
	return;

fail_kill:
	failures++;
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	if (uffd >= 0)
		close(uffd);
	if (holder > 0)
		waitpid(holder, NULL, 0);
	if (pidfd >= 0)
		close(pidfd);
	close(go[1]);
	close(ready[0]);
	u.id = 3;
	ioctl(fd, IOCTL_PRIVCMD_HOSTMEM_UNREGISTER, &u);
}

int main(int argc, char **argv)
{
	struct privcmd_hostmem_register r = { 0 };
	long domid = -1;
	uint16_t dom;
	char *res;
	int fd, opt;

	while ((opt = getopt(argc, argv, "d:u:s:w:c:m:")) != -1) {
		switch (opt) {
		case 'd':
			domid = strtol(optarg, NULL, 0);
			break;
		case 'u':
			unique_id = strtoull(optarg, NULL, 0);
			break;
		case 's':
			stress_seconds = strtoul(optarg, NULL, 0);
			break;
		case 'w':
			ack_timeout = strtoul(optarg, NULL, 0);
			break;
		case 'c':
			only_case = optarg;
			break;
		case 'm':
			oom_mode = optarg;
			break;
		default:
			domid = -1;
			optind = argc;
		}
	}
	if (domid <= 0 || domid >= 0x7ff0 || !unique_id) {
		fprintf(stderr, "usage: %s -d DOMID -u UNIQUE_ID [-s STRESS_SECONDS] [-w ACK_TIMEOUT] [-c CASE] [-m CGROUP_DIR|sysrq]\n",
			argv[0]);
		return 2;
	}
	dom = domid;
	setvbuf(stdout, NULL, _IOLBF, 0);

	fd = open("/dev/xen/privcmd", O_RDWR | O_CLOEXEC);
	if (fd < 0 || ioctl(fd, IOCTL_PRIVCMD_RESTRICT, &dom)) {
		perror("hostmem-stale: privcmd");
		return 1;
	}
	ctl = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
		   -1, 0);
	res = mmap(NULL, 2 * DATA_SIZE, PROT_NONE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ctl == MAP_FAILED || res == MAP_FAILED) {
		perror("hostmem-stale: mmap");
		return 1;
	}
	data = (char *)(((uintptr_t)res + DATA_SIZE - 1) & ~(DATA_SIZE - 1));
	if (!map_private(false)) {
		perror("hostmem-stale: mmap data");
		return 1;
	}

	r.addr = (uintptr_t)ctl;
	r.size = PG;
	r.offset = 0;
	r.id = 1;
	r.dom = dom;
	r.unique_id = unique_id;
	if (ioctl(fd, IOCTL_PRIVCMD_HOSTMEM_REGISTER, &r)) {
		perror("hostmem-stale: register control page");
		return 1;
	}
	r.addr = (uintptr_t)data;
	r.size = DATA_SIZE;
	r.offset = DATA_OFF;
	r.id = 2;
	if (ioctl(fd, IOCTL_PRIVCMD_HOSTMEM_REGISTER, &r)) {
		perror("hostmem-stale: register data");
		return 1;
	}
	printf("READY\n");

	if (want("fork-cow"))
		case_fork_cow();
	if (want("ksm"))
		case_ksm();
	if (want("thp"))
		case_thp(fd, dom);
	if (want("migrate"))
		case_migrate();
	if (want("pageout"))
		case_pageout();
	if (want("memfd-truncate"))
		case_memfd_truncate();
	if (want("stress"))
		case_stress();
	if (want("owner-exit"))
		case_owner_exit(fd, dom);
	if (oom_mode && want("oom-reap"))
		case_oom_reap(fd, dom, oom_mode);

	ctl[CTL_MODE] = FOLLOW_DONE;
	__atomic_store_n(&ctl[CTL_GEN], ++gen, __ATOMIC_SEQ_CST);
	printf("# %d case(s) failed\n", failures);
	/* Stay until the guest has seen FOLLOW_DONE; exiting revokes all. */
	sleep(2);
	return failures ? 1 : 0;
}
