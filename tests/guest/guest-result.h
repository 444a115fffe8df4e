/* SPDX-License-Identifier: MIT */
/*
 * RESULT lines of the guest programs that print them through result()
 * (virtio-gpu-common.h's programs, vk-compute): "RESULT name=NAME ok=0|1
 * value=...", flushed at once; a failed one sets `failed`, the program's
 * exit status. Included once per program (each is compiled alone); its
 * content counts in the keys of the products that build them
 * (tests/e2e/build: progs hashes every file of tests/guest, guest-vk names
 * it).
 */
#ifndef GH_GUEST_RESULT_H
#define GH_GUEST_RESULT_H

#include <stdarg.h>
#include <stdio.h>

/* Set by a failed result(): the program's exit status. */
static int failed;

static void result(const char *name, int ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void result(const char *name, int ok, const char *fmt, ...)
{
    va_list ap;
    printf("RESULT name=%s ok=%d value=", name, ok);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (!ok)
        failed = 1;
}

#endif
