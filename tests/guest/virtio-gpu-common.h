/* SPDX-License-Identifier: MIT */
/*
 * What the virtio-gpu guest programs (virtio-gpu-guest.c, virtio-gpu-blob.c)
 * share: RESULT lines (guest-result.h, shared with vk-compute), loading the unmodified virtio_gpu driver from
 * /lib/modules/gh, waiting for a DRM node, reading the kernel log and
 * VIRTGPU_GETPARAM. Each program includes it once (they are compiled alone,
 * tests/e2e/README.md); its content counts in the key of the test programs'
 * build product, which hashes every file of tests/guest.
 */
#ifndef GH_VIRTIO_GPU_COMMON_H
#define GH_VIRTIO_GPU_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <drm/drm.h>
#include <drm/virtgpu_drm.h>

#include "guest-result.h"

#define MODDIR "/lib/modules/gh"


/* Loads virtio_gpu and its dependencies from MODDIR, in this order. The
 * first is optional: a module in the test guest kernel (tests/e2e/guest/
 * kernel.config: DRM=m selects it as a module), built into the trixie
 * kernel, so absent from MODDIR there. */
static int load_modules(void)
{
    static const char *const mods[] = {"drm_panel_orientation_quirks", "virtio_dma_buf", "drm",
                                       "drm_kms_helper", "drm_shmem_helper", "virtio-gpu"};
    char path[128];
    int loaded = 0;
    for (size_t i = 0; i < sizeof(mods) / sizeof(mods[0]); i++) {
        snprintf(path, sizeof(path), MODDIR "/%s.ko", mods[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 && i == 0 && errno == ENOENT)
            continue;
        if (fd < 0) {
            result("guest-modules", 0, "open-%s-errno-%d", mods[i], errno);
            return -1;
        }
        long rc = syscall(SYS_finit_module, fd, "", 0);
        int e = errno;
        close(fd);
        if (rc != 0 && e != EEXIST) {
            result("guest-modules", 0, "load-%s-errno-%d", mods[i], e);
            return -1;
        }
        loaded++;
    }
    result("guest-modules", 1, "%d", loaded);
    return 0;
}

/* 0 once `path` exists, -1 after `seconds`. */
static int wait_node(const char *path, int seconds)
{
    struct stat st;
    for (int i = 0; i < seconds * 10; i++) {
        if (stat(path, &st) == 0)
            return 0;
        usleep(100000);
    }
    return -1;
}

/* The kernel log, or NULL. */
static char *klog(void)
{
    int len = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
    if (len <= 0)
        len = 1 << 20;
    char *buf = calloc(1, (size_t)len + 1);
    if (!buf)
        return NULL;
    int n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, len);
    if (n < 0) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    return buf;
}

/* Counts the log lines with `needle`; prints the device's lines ("KLOG ...")
 * if `print`. */
static int klog_lines(const char *log, const char *needle, int print)
{
    int count = 0;
    const char *p = log;
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char line[512];
        size_t l = len < sizeof(line) - 1 ? len : sizeof(line) - 1;
        memcpy(line, p, l);
        line[l] = 0;
        if (print && (strstr(line, "virtio") || strstr(line, "drm") || strstr(line, "Host memory") ||
                      strstr(line, "0000:00:05")))
            printf("KLOG %s\n", line);
        if (needle && strstr(line, needle))
            count++;
        p = nl ? nl + 1 : NULL;
    }
    fflush(stdout);
    return count;
}

static int getparam(int fd, uint64_t param, int *value)
{
    struct drm_virtgpu_getparam gp = {.param = param, .value = (uint64_t)(uintptr_t)value};
    return ioctl(fd, DRM_IOCTL_VIRTGPU_GETPARAM, &gp);
}

#endif
