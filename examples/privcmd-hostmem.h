/* SPDX-License-Identifier: MIT */
/*
 * privcmd-hostmem.h: the gpu-hostmem privcmd ioctls, for programs built
 * against kernel headers that predate them.  The definitions mirror
 * include/uapi/xen/privcmd.h of kernel-patches/ (see docs/interfaces.md);
 * with patched headers installed, <xen/privcmd.h> provides the same.
 */
#ifndef PRIVCMD_HOSTMEM_H
#define PRIVCMD_HOSTMEM_H

#include <linux/ioctl.h>
#include <linux/types.h>

#ifndef IOCTL_PRIVCMD_RESTRICT
#define IOCTL_PRIVCMD_RESTRICT _IOC(_IOC_NONE, 'P', 6, sizeof(__u16))
#endif

#ifndef IOCTL_PRIVCMD_HOSTMEM_REGISTER
struct privcmd_hostmem_register {
    __u64 addr;
    __u64 size;
    __u64 offset;
    __u32 id;
    __u16 dom;
    __u16 flags;
    __u64 unique_id;   /* the guest instance (Xen's unique id), not 0 */
    __u64 reserved[1];
};

struct privcmd_hostmem_unregister {
    __u32 id;
    __u16 dom;
    __u16 flags;
    __u64 reserved[2];
};

struct privcmd_hostmem_lend {
    __u64 offset;
    __u64 gfn;
    __u32 nr_pages;
    __u16 dom;
    __u16 flags;
    __u32 nr_lent;
    __u32 pad;
    __u64 unique_id;   /* the guest instance (Xen's unique id), not 0 */
    __u64 reserved[1];
};

#define PRIVCMD_HOSTMEM_REVOKE_ALL (1U << 0)
struct privcmd_hostmem_revoke {
    __u64 gfn;
    __u32 nr_pages;
    __u16 dom;
    __u16 flags;
    __u64 reserved[2];
};

struct privcmd_hostmem_region {
    __u64 offset;
    __u64 size;
    __u64 lent_pages;
    __u32 id;
    __u32 owner_pid;
    __u64 unique_id;
    __u64 flags;       /* PRIVCMD_HOSTMEM_REGION_GONE */
};
#define PRIVCMD_HOSTMEM_REGION_GONE (1U << 0)

struct privcmd_hostmem_query {
    __u16 dom;
    __u16 flags;
    __u32 nr_regions;
    __u64 regions;
    __u64 lent_pages;
    __u64 reserved[2];
};

#define IOCTL_PRIVCMD_HOSTMEM_REGISTER \
    _IOW('P', 64, struct privcmd_hostmem_register)
#define IOCTL_PRIVCMD_HOSTMEM_UNREGISTER \
    _IOW('P', 65, struct privcmd_hostmem_unregister)
#define IOCTL_PRIVCMD_HOSTMEM_LEND \
    _IOWR('P', 66, struct privcmd_hostmem_lend)
#define IOCTL_PRIVCMD_HOSTMEM_REVOKE \
    _IOW('P', 67, struct privcmd_hostmem_revoke)
#define IOCTL_PRIVCMD_HOSTMEM_QUERY \
    _IOWR('P', 68, struct privcmd_hostmem_query)
#define IOCTL_PRIVCMD_HOSTMEM_BACKEND _IO('P', 69)
#endif

#endif /* PRIVCMD_HOSTMEM_H */
