/* SPDX-License-Identifier: MIT */
/*
 * Stand-in for the kernel's <linux/compiler.h>, which the kernel's
 * include/uapi/xen/privcmd.h includes and `make headers_install` strips:
 * lets tests/kernel/uapi-layout.c compile that header as the kernel
 * patches leave it, in user space.
 */
#ifndef __user
#define __user
#endif
