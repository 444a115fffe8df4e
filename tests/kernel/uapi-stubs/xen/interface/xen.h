/* SPDX-License-Identifier: MIT */
/*
 * Stand-in for the kernel's <xen/interface/xen.h>, of which
 * include/uapi/xen/privcmd.h uses two types: as defined there for x86.
 */
#ifndef UAPI_STUB_XEN_INTERFACE_XEN_H
#define UAPI_STUB_XEN_INTERFACE_XEN_H
#include <stdint.h>
typedef uint16_t domid_t;
typedef unsigned long xen_pfn_t;
#endif
