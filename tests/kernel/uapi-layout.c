// SPDX-License-Identifier: MIT
/*
 * uapi-layout: examples/privcmd-hostmem.h, the copy of the gpu-hostmem
 * privcmd uAPI that examples and tests include and that the plugin's Rust
 * structs are checked against (plugin/xen/src/privcmd.rs), is the uAPI of
 * include/uapi/xen/privcmd.h as kernel-patches/ leave it: the same size,
 * field offsets and field sizes for every struct, the same ioctl numbers
 * and flags.
 *
 * Built by the test bed against the patched kernel header (tests/e2e/build
 * puts it first on the include path; uapi-stubs/ stands in for the two
 * kernel-internal headers it includes).  A mismatch fails the compile,
 * which leaves this program out of dom0; 01-xen-info runs it and fails
 * when it is missing.  At run time it compares the ioctl numbers and
 * flags, prints what it compared and exits non-zero on a difference.
 *
 * e2e-build-flags: -Isrc/tests/kernel/uapi-stubs
 */
#include <stddef.h>
#include <stdio.h>
#include <sys/ioctl.h>

#include <xen/privcmd.h>

#ifndef IOCTL_PRIVCMD_HOSTMEM_REGISTER
#error "the patched <xen/privcmd.h> is not first on the include path"
#endif

/* The kernel's values, taken before the example header's replace them. */
static const unsigned long k_ioctl[] = {
	IOCTL_PRIVCMD_HOSTMEM_REGISTER, IOCTL_PRIVCMD_HOSTMEM_UNREGISTER,
	IOCTL_PRIVCMD_HOSTMEM_LEND, IOCTL_PRIVCMD_HOSTMEM_REVOKE,
	IOCTL_PRIVCMD_HOSTMEM_QUERY, IOCTL_PRIVCMD_RESTRICT,
	IOCTL_PRIVCMD_HOSTMEM_BACKEND,
};
static const unsigned long k_flag[] = {
	PRIVCMD_HOSTMEM_REVOKE_ALL, PRIVCMD_HOSTMEM_REGION_GONE,
};

#undef IOCTL_PRIVCMD_HOSTMEM_REGISTER
#undef IOCTL_PRIVCMD_HOSTMEM_UNREGISTER
#undef IOCTL_PRIVCMD_HOSTMEM_LEND
#undef IOCTL_PRIVCMD_HOSTMEM_REVOKE
#undef IOCTL_PRIVCMD_HOSTMEM_QUERY
#undef IOCTL_PRIVCMD_RESTRICT
#undef IOCTL_PRIVCMD_HOSTMEM_BACKEND
#undef PRIVCMD_HOSTMEM_REVOKE_ALL
#undef PRIVCMD_HOSTMEM_REGION_GONE

/* The example header's structs, under names of their own. */
#define privcmd_hostmem_register ex_register
#define privcmd_hostmem_unregister ex_unregister
#define privcmd_hostmem_lend ex_lend
#define privcmd_hostmem_revoke ex_revoke
#define privcmd_hostmem_region ex_region
#define privcmd_hostmem_query ex_query
#include "../../examples/privcmd-hostmem.h"

static const unsigned long ex_ioctl[] = {
	IOCTL_PRIVCMD_HOSTMEM_REGISTER, IOCTL_PRIVCMD_HOSTMEM_UNREGISTER,
	IOCTL_PRIVCMD_HOSTMEM_LEND, IOCTL_PRIVCMD_HOSTMEM_REVOKE,
	IOCTL_PRIVCMD_HOSTMEM_QUERY, IOCTL_PRIVCMD_RESTRICT,
	IOCTL_PRIVCMD_HOSTMEM_BACKEND,
};
static const unsigned long ex_flag[] = {
	PRIVCMD_HOSTMEM_REVOKE_ALL, PRIVCMD_HOSTMEM_REGION_GONE,
};

#undef privcmd_hostmem_register
#undef privcmd_hostmem_unregister
#undef privcmd_hostmem_lend
#undef privcmd_hostmem_revoke
#undef privcmd_hostmem_region
#undef privcmd_hostmem_query

/* Same offset and size of field F in the kernel's struct K and ours. */
#define SAME_FIELD(k, f)                                                     \
	_Static_assert(offsetof(struct privcmd_hostmem_##k, f) ==            \
			       offsetof(struct ex_##k, f) &&                 \
		       sizeof(((struct privcmd_hostmem_##k *)0)->f) ==       \
			       sizeof(((struct ex_##k *)0)->f),              \
		       #k "." #f)
#define SAME_SIZE(k)                                                         \
	_Static_assert(sizeof(struct privcmd_hostmem_##k) ==                 \
			       sizeof(struct ex_##k),                        \
		       "sizeof " #k)

SAME_SIZE(register);
SAME_FIELD(register, addr);
SAME_FIELD(register, size);
SAME_FIELD(register, offset);
SAME_FIELD(register, id);
SAME_FIELD(register, dom);
SAME_FIELD(register, flags);
SAME_FIELD(register, unique_id);
SAME_FIELD(register, reserved);

SAME_SIZE(unregister);
SAME_FIELD(unregister, id);
SAME_FIELD(unregister, dom);
SAME_FIELD(unregister, flags);
SAME_FIELD(unregister, reserved);

SAME_SIZE(lend);
SAME_FIELD(lend, offset);
SAME_FIELD(lend, gfn);
SAME_FIELD(lend, nr_pages);
SAME_FIELD(lend, dom);
SAME_FIELD(lend, flags);
SAME_FIELD(lend, nr_lent);
SAME_FIELD(lend, pad);
SAME_FIELD(lend, unique_id);
SAME_FIELD(lend, reserved);

SAME_SIZE(revoke);
SAME_FIELD(revoke, gfn);
SAME_FIELD(revoke, nr_pages);
SAME_FIELD(revoke, dom);
SAME_FIELD(revoke, flags);
SAME_FIELD(revoke, reserved);

SAME_SIZE(region);
SAME_FIELD(region, offset);
SAME_FIELD(region, size);
SAME_FIELD(region, lent_pages);
SAME_FIELD(region, id);
SAME_FIELD(region, owner_pid);
SAME_FIELD(region, unique_id);
SAME_FIELD(region, flags);

SAME_SIZE(query);
SAME_FIELD(query, dom);
SAME_FIELD(query, flags);
SAME_FIELD(query, nr_regions);
SAME_FIELD(query, regions);
SAME_FIELD(query, lent_pages);
SAME_FIELD(query, reserved);

int main(void)
{
	static const char *const ioctl_name[] = {
		"REGISTER", "UNREGISTER", "LEND", "REVOKE", "QUERY", "RESTRICT",
		"BACKEND",
	};
	static const char *const flag_name[] = {
		"REVOKE_ALL", "REGION_GONE",
	};
	int bad = 0;
	size_t i;

	_Static_assert(sizeof(ioctl_name) / sizeof(ioctl_name[0]) ==
		       sizeof(k_ioctl) / sizeof(k_ioctl[0]) &&
		       sizeof(ex_ioctl) == sizeof(k_ioctl), "one name per ioctl");

	for (i = 0; i < sizeof(k_ioctl) / sizeof(k_ioctl[0]); i++) {
		int ok = k_ioctl[i] == ex_ioctl[i];

		printf("uapi-layout: ioctl %s %s kernel=%#lx example=%#lx\n",
		       ioctl_name[i], ok ? "same" : "DIFFERENT", k_ioctl[i],
		       ex_ioctl[i]);
		bad |= !ok;
	}
	for (i = 0; i < sizeof(k_flag) / sizeof(k_flag[0]); i++) {
		int ok = k_flag[i] == ex_flag[i];

		printf("uapi-layout: flag %s %s kernel=%#lx example=%#lx\n",
		       flag_name[i], ok ? "same" : "DIFFERENT", k_flag[i],
		       ex_flag[i]);
		bad |= !ok;
	}
	printf("uapi-layout: structs same (checked at compile time) sizes register=%zu unregister=%zu lend=%zu revoke=%zu region=%zu query=%zu\n",
	       sizeof(struct privcmd_hostmem_register),
	       sizeof(struct privcmd_hostmem_unregister),
	       sizeof(struct privcmd_hostmem_lend),
	       sizeof(struct privcmd_hostmem_revoke),
	       sizeof(struct privcmd_hostmem_region),
	       sizeof(struct privcmd_hostmem_query));
	return bad;
}
