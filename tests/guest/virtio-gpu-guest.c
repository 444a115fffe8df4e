// SPDX-License-Identifier: MIT
/*
 * virtio-gpu-guest: the guest side of e2e scenario 79 (issue 18 stage 1).
 * Runs inside an HVM guest (busybox initramfs) whose gpu-hostmem function
 * is a virtio-gpu device (device: virtio-gpu in dom0's gpu-hostmem.yaml).
 *
 *   virtio-gpu-guest probe [RESTART_WAIT]
 *
 * Loads the unmodified virtio_gpu driver and its dependencies from
 * /lib/modules/gh (in this order: virtio_dma_buf drm drm_kms_helper
 * drm_shmem_helper virtio-gpu), waits for the DRM nodes, prints the
 * kernel's log lines of the probe ("KLOG ..."), then through the DRM uAPI
 * only: GETPARAM (RESOURCE_BLOB, HOST_VISIBLE), RESOURCE_CREATE of a 64x64
 * 2D resource (the driver creates it on the host and attaches its backing
 * pages), MAP + mmap to write a pattern into the backing, TRANSFER_TO_HOST
 * and WAIT. The host answers each command; an error answer shows in the
 * kernel log as "response 0x... (command 0x...)", which is checked. Then
 * it prints GH-VG-PHASE1-DONE, waits until dom0 says "gh-go" on the console,
 * RESTART_WAIT seconds at most (dom0 kills the IOREQ server's worker
 * meanwhile) and draws a second resource.
 * Prints "RESULT name=... ok=0|1 value=..." lines; exit status 0 if all ok.
 */
#include <poll.h>
#include <sys/mman.h>
#include <time.h>

#include "virtio-gpu-common.h"

#define W 64
#define H 64
/* VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM */
#define FORMAT_BGRX 2

/* Creates a 64x64 2D resource (the driver attaches its backing), writes a
 * pattern through its mapping and transfers it to the host; RESULT lines
 * prefixed with `tag`. The resource stays (the fd holds it). */
static int draw(int fd, const char *tag)
{
    char name[96];
    char *log = klog();
    int errors_before = log ? klog_lines(log, "response 0x", 0) : 0;
    free(log);

    struct drm_virtgpu_resource_create rc = {
        .target = 2, /* PIPE_TEXTURE_2D */
        .format = FORMAT_BGRX,
        .bind = 2, /* VIRGL_BIND_RENDER_TARGET */
        .width = W,
        .height = H,
        .depth = 1,
        .array_size = 1,
        .size = W * H * 4,
        .stride = W * 4,
    };
    snprintf(name, sizeof(name), "%s-resource-create", tag);
    if (ioctl(fd, DRM_IOCTL_VIRTGPU_RESOURCE_CREATE, &rc) != 0) {
        result(name, 0, "errno-%d", errno);
        return 1;
    }
    result(name, 1, "bo=%u,res=%u", rc.bo_handle, rc.res_handle);

    snprintf(name, sizeof(name), "%s-map", tag);
    struct drm_virtgpu_map map = {.handle = rc.bo_handle};
    if (ioctl(fd, DRM_IOCTL_VIRTGPU_MAP, &map) != 0) {
        result(name, 0, "errno-%d", errno);
        return 1;
    }
    uint32_t *px = mmap(NULL, W * H * 4, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)map.offset);
    if (px == MAP_FAILED) {
        result(name, 0, "mmap-errno-%d", errno);
        return 1;
    }
    for (uint32_t i = 0; i < W * H; i++)
        px[i] = 0x9e3779b9u * (i + rc.res_handle);
    result(name, 1, "offset=0x%llx", (unsigned long long)map.offset);

    struct drm_virtgpu_3d_transfer_to_host t = {
        .bo_handle = rc.bo_handle,
        .box = {.x = 0, .y = 0, .z = 0, .w = W, .h = H, .d = 1},
    };
    int trc = ioctl(fd, DRM_IOCTL_VIRTGPU_TRANSFER_TO_HOST, &t);
    snprintf(name, sizeof(name), "%s-transfer-to-host", tag);
    result(name, trc == 0, "%d", trc == 0 ? 0 : errno);
    struct drm_virtgpu_3d_wait wt = {.handle = rc.bo_handle};
    int wrc = ioctl(fd, DRM_IOCTL_VIRTGPU_WAIT, &wt);
    snprintf(name, sizeof(name), "%s-wait", tag);
    result(name, wrc == 0, "%d", wrc == 0 ? 0 : errno);
    /* Let the control queue's answers arrive, then check that none was an
     * error (the driver logs those as "response 0x... (command 0x...)"). */
    usleep(500000);
    log = klog();
    int errors = log ? klog_lines(log, "response 0x", 0) - errors_before : -1;
    free(log);
    snprintf(name, sizeof(name), "%s-no-error-responses", tag);
    result(name, errors == 0, "%d", errors);
    munmap(px, W * H * 4);
    return failed;
}

/* Waits at most SECONDS for dom0 to type WORD on the console (gh_guest_say
 * in the test bed's lib.sh, through xenconsoled's pty: this program's
 * standard input); returns 1 if it did. */
static int console_wait(const char *word, int seconds)
{
    struct timespec t0, t;
    struct pollfd p = { .fd = 0, .events = POLLIN };
    char buf[128];
    ssize_t n;
    long left;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        left = seconds * 1000L - ((t.tv_sec - t0.tv_sec) * 1000L + (t.tv_nsec - t0.tv_nsec) / 1000000);
        if (left <= 0 || poll(&p, 1, (int)left) != 1)
            return 0;
        n = read(0, buf, sizeof(buf) - 1);
        if (n <= 0)
            return 0;
        buf[n] = 0;
        if (strstr(buf, word))
            return 1;
    }
}

static int probe(int restart_wait)
{
    if (load_modules() != 0)
        return 1;
    int have_render = wait_node("/dev/dri/renderD128", 20) == 0;
    int have_card = wait_node("/dev/dri/card0", 1) == 0;
    result("guest-drm-nodes", have_render, "renderD128=%d,card0=%d", have_render, have_card);

    char *log = klog();
    if (!log) {
        result("guest-klog", 0, "errno-%d", errno);
        return 1;
    }
    klog_lines(log, NULL, 1);
    int window = klog_lines(log, "Host memory window: 0x", 0);
    int features = klog_lines(log, "+resource_blob +host_visible", 0);
    result("guest-host-memory-window", window > 0, "%d", window);
    result("guest-features-blob-host-visible", features > 0, "%d", features);
    free(log);
    if (!have_render)
        return 1;

    int fd = open("/dev/dri/renderD128", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        result("guest-open-render-node", 0, "errno-%d", errno);
        return 1;
    }
    int blob = -1, host_visible = -1;
    int rc1 = getparam(fd, VIRTGPU_PARAM_RESOURCE_BLOB, &blob);
    int rc2 = getparam(fd, VIRTGPU_PARAM_HOST_VISIBLE, &host_visible);
    result("guest-getparam", rc1 == 0 && rc2 == 0 && blob == 1 && host_visible == 1,
           "resource_blob=%d,host_visible=%d", blob, host_visible);

    if (draw(fd, "guest") != 0)
        return 1;
    /* Phase 2 (scenario 79 kills the IOREQ server's worker meanwhile; its
     * supervisor restarts it from the saved state): the queues go on where
     * they were and a new resource is drawn. The first resource is gone on
     * the host (2D resources live in the worker until stage 2), so it is
     * not used again. */
    printf("GH-VG-PHASE1-DONE\n");
    fflush(stdout);
    printf("guest: phase 2 %s\n", console_wait("gh-go", restart_wait) ? "on dom0's word" : "after the time bound");
    fflush(stdout);
    if (draw(fd, "guest-after-restart") != 0)
        return 1;
    close(fd);
    return failed;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && strcmp(argv[1], "probe") == 0)
        return probe(argc >= 3 ? atoi(argv[2]) : 0);
    fprintf(stderr, "usage: virtio-gpu-guest probe [RESTART_WAIT_SECONDS]\n");
    return 2;
}
