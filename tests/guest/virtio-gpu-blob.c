// SPDX-License-Identifier: MIT
/*
 * virtio-gpu-blob: the guest side of e2e scenario 79-virtio-gpu-blob (issue
 * 18 stage 2). Runs inside an HVM guest whose gpu-hostmem function is a
 * virtio-gpu device with a renderer offering the test-only capset
 * (device: virtio-gpu, virtio_gpu.renderer and virtio_gpu.test_capset in
 * dom0's gpu-hostmem.yaml).
 *
 *   virtio-gpu-blob run [HOLD_SECONDS]
 *   virtio-gpu-blob venus [HOLD_SECONDS]
 *
 * Loads the unmodified virtio_gpu driver from /lib/modules/gh, then through
 * the DRM uAPI only: GETPARAM (3D_FEATURES, RESOURCE_BLOB, HOST_VISIBLE,
 * CONTEXT_INIT, SUPPORTED_CAPSET_IDs with bit 30), GET_CAPS of capset 30,
 * CONTEXT_INIT with capset 30, RESOURCE_CREATE_BLOB (HOST3D, USE_MAPPABLE,
 * blob_id 0, 16 pages), MAP and mmap: every word must be the host's
 * pattern (word i = i * 2654435761 ^ resource id, written by
 * gpu-hostmem-renderer); then it stamps the first word of every page with
 * the complement, which the renderer counts when the blob is unmapped,
 * and submits a command stream (EXECBUFFER, the device's SUBMIT_3D) of one
 * test capset command storing GUEST_CMD_VALUE at word CMD_WORD of the
 * blob, waits for it (VIRTGPU_WAIT on the blob) and reads the word
 * through the window: the renderer's store, seen through the lent page.
 * Prints GH-VG-BLOB-MAPPED and holds the mapping until dom0, done reading
 * gpu-hostmem status, writes HOST_ACK into the blob's second word through
 * the renderer's memfd (at most HOLD_SECONDS: a handshake, not a fixed
 * time, so a slow host cannot miss the mapping; the guest reading it also
 * shows a host write reaching a lent page), then closes the GEM handle
 * (the driver sends UNMAP_BLOB and UNREF: the host unregisters and
 * revokes), prints GH-VG-BLOB-UNREF and waits 8 s. No command may get an
 * error answer (the driver logs those as "response 0x...").
 * `venus` (scenario 79-virtio-gpu-venus, virtio_gpu.backend: venus) does
 * the same with capset 4: GET_CAPS of venus version 0 (160 bytes, a
 * wire_format_version not 0), CONTEXT_INIT with capset 4, and a blob_id 0
 * blob, which virglrenderer makes as a fresh memfd (venus's shm blob, as
 * Mesa's venus driver makes its command ring): every word must read 0;
 * then a venus command stream (EXECBUFFER: vkSetReplyCommandStreamMESA
 * naming the blob, vkEnumerateInstanceVersion asking for a reply) whose
 * reply the host's render server writes into the blob, read through the
 * window (polled: the device answers the fence when the renderer queued
 * the stream, before the render server ran it); then the guest writes a
 * pattern over the whole blob and reads it back.
 * Prints "RESULT name=... ok=0|1 value=..." lines; exit status 0 if all ok.
 */
#include <sys/mman.h>
#include <time.h>

#include "virtio-gpu-common.h"

#define TEST_CAPSET 30
#define VENUS_CAPSET 4
#define VENUS_CAPS_SIZE 160
#define BLOB_PAGES 16
#define PAGE 4096
/* "!KCA" in memory: what dom0 writes into word 1 of the blob. */
#define HOST_ACK 0x41434b21u
#define UNREF_WAIT 8
/* The test capset's command: store a value at a word of a resource's blob
 * (gpu-hostmem-renderer's TEST_CMD_STORE). */
#define TEST_CMD_STORE 1
#define CMD_WORD 3
#define GUEST_CMD_VALUE 0x21425553u /* "SUB!" */
/* venus-protocol (virglrenderer 1.1.0, vn_protocol_renderer_defines.h). */
#define VN_SET_REPLY_COMMAND_STREAM 178
#define VN_ENUMERATE_INSTANCE_VERSION 137
#define VN_GENERATE_REPLY 1
#define VENUS_REPLY_WAIT 20

/* EXECBUFFER of `words` dwords with the blob `bo` in its list, then
 * VIRTGPU_WAIT on it; 0 or an errno. */
static int execbuffer(int fd, uint32_t bo, const uint32_t *words, uint32_t n)
{
    struct drm_virtgpu_execbuffer eb = {.size = n * 4,
                                        .command = (uint64_t)(uintptr_t)words,
                                        .bo_handles = (uint64_t)(uintptr_t)&bo,
                                        .num_bo_handles = 1,
                                        .fence_fd = -1};
    if (ioctl(fd, DRM_IOCTL_VIRTGPU_EXECBUFFER, &eb) != 0)
        return errno;
    struct drm_virtgpu_3d_wait wt = {.handle = bo};
    return ioctl(fd, DRM_IOCTL_VIRTGPU_WAIT, &wt) != 0 ? errno : 0;
}

static int errors_in_log(void)
{
    char *log = klog();
    int n = log ? klog_lines(log, "response 0x", 0) : -1;
    free(log);
    return n;
}

static uint32_t pattern(uint32_t res, uint32_t i)
{
    return i * 2654435761u ^ res;
}

static int run(int hold, int venus)
{
    int capset = venus ? VENUS_CAPSET : TEST_CAPSET;
    if (load_modules() != 0)
        return 1;
    int have_render = wait_node("/dev/dri/renderD128", 20) == 0;
    result("guest-drm-nodes", have_render, "renderD128=%d", have_render);
    char *log = klog();
    if (log) {
        klog_lines(log, NULL, 1);
        free(log);
    }
    if (!have_render)
        return 1;
    int fd = open("/dev/dri/renderD128", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        result("guest-open-render-node", 0, "errno-%d", errno);
        return 1;
    }
    int errors_before = errors_in_log();

    int virgl = -1, blob = -1, host_visible = -1, ctx_init = -1, capsets = 0;
    int rc = getparam(fd, VIRTGPU_PARAM_3D_FEATURES, &virgl) |
             getparam(fd, VIRTGPU_PARAM_RESOURCE_BLOB, &blob) |
             getparam(fd, VIRTGPU_PARAM_HOST_VISIBLE, &host_visible) |
             getparam(fd, VIRTGPU_PARAM_CONTEXT_INIT, &ctx_init) |
             getparam(fd, VIRTGPU_PARAM_SUPPORTED_CAPSET_IDs, &capsets);
    result("guest-getparam",
           rc == 0 && virgl == 1 && blob == 1 && host_visible == 1 && ctx_init == 1 &&
               (capsets & (1 << capset)),
           "3d=%d,resource_blob=%d,host_visible=%d,context_init=%d,capsets=0x%x", virgl, blob,
           host_visible, ctx_init, (unsigned)capsets);

    uint8_t caps[VENUS_CAPS_SIZE] = {0};
    struct drm_virtgpu_get_caps gc = {.cap_set_id = capset,
                                      .cap_set_ver = venus ? 0 : 1,
                                      .addr = (uint64_t)(uintptr_t)caps,
                                      .size = venus ? VENUS_CAPS_SIZE : 16};
    rc = ioctl(fd, DRM_IOCTL_VIRTGPU_GET_CAPS, &gc);
    if (venus) {
        uint32_t wire;
        memcpy(&wire, caps, 4);
        result("guest-get-caps", rc == 0 && wire != 0, "%s,wire_format_version=%u",
               rc == 0 ? "read" : strerror(errno), wire);
    } else {
        result("guest-get-caps", rc == 0 && memcmp(caps, "gpu-hostmem-test", 16) == 0, "%s",
               rc == 0 ? "read" : strerror(errno));
    }

    struct drm_virtgpu_context_set_param p = {.param = VIRTGPU_CONTEXT_PARAM_CAPSET_ID,
                                              .value = capset};
    struct drm_virtgpu_context_init ci = {.num_params = 1,
                                          .ctx_set_params = (uint64_t)(uintptr_t)&p};
    rc = ioctl(fd, DRM_IOCTL_VIRTGPU_CONTEXT_INIT, &ci);
    result("guest-context-init", rc == 0, "%d", rc == 0 ? 0 : errno);
    if (rc != 0)
        return 1;

    struct drm_virtgpu_resource_create_blob cb = {
        .blob_mem = VIRTGPU_BLOB_MEM_HOST3D,
        .blob_flags = VIRTGPU_BLOB_FLAG_USE_MAPPABLE,
        .size = BLOB_PAGES * PAGE,
        .blob_id = 0,
    };
    rc = ioctl(fd, DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB, &cb);
    result("guest-create-blob", rc == 0, "bo=%u,res=%u", cb.bo_handle, cb.res_handle);
    if (rc != 0)
        return 1;

    struct drm_virtgpu_map map = {.handle = cb.bo_handle};
    rc = ioctl(fd, DRM_IOCTL_VIRTGPU_MAP, &map);
    if (rc != 0) {
        result("guest-map", 0, "errno-%d", errno);
        return 1;
    }
    volatile uint32_t *w =
        mmap(NULL, BLOB_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)map.offset);
    if (w == MAP_FAILED) {
        result("guest-map", 0, "mmap-errno-%d", errno);
        return 1;
    }
    result("guest-map", 1, "offset=0x%llx", (unsigned long long)map.offset);

    /* The host's bytes, through the window (each page faults once and is
     * lent; then plain memory): its pattern, or venus's fresh memfd. */
    uint32_t bad = 0, first_bad = 0, words = BLOB_PAGES * PAGE / 4;
    for (uint32_t i = 0; i < words; i++) {
        if (w[i] != (venus ? 0 : pattern(cb.res_handle, i))) {
            if (!bad)
                first_bad = i;
            bad++;
        }
    }
    result(venus ? "guest-read-zeros" : "guest-read-host-pattern", bad == 0,
           "words=%u,bad=%u,first_bad=%u,word0=0x%08x", words, bad, first_bad, w[0]);
    if (venus) {
        /* A venus command stream with a reply into this blob at 0. */
        const uint32_t vn[] = {VN_SET_REPLY_COMMAND_STREAM, 0, 1, 0, cb.res_handle, 0, 0, PAGE, 0,
                               VN_ENUMERATE_INSTANCE_VERSION, VN_GENERATE_REPLY, 1, 0};
        int erc = execbuffer(fd, cb.bo_handle, vn, sizeof(vn) / 4);
        time_t t0 = time(NULL);
        while (erc == 0 && w[0] != VN_ENUMERATE_INSTANCE_VERSION &&
               time(NULL) - t0 < VENUS_REPLY_WAIT)
            usleep(10000);
        result("guest-venus-reply",
               erc == 0 && w[0] == VN_ENUMERATE_INSTANCE_VERSION && w[1] == 0 && w[2] == 1 &&
                   w[3] == 0 && w[4] >= ((1u << 22) | (1u << 12)),
               "execbuffer=%d,reply=%08x:%08x:%08x:%08x,version=0x%08x,%lds", erc, w[0], w[1],
               w[2], w[3], w[4], (long)(time(NULL) - t0));
        /* The guest's bytes over the whole blob, read back. */
        for (uint32_t i = 0; i < words; i++)
            w[i] = ~pattern(cb.res_handle, i);
        bad = 0;
        for (uint32_t i = 0; i < words; i++)
            bad += w[i] != ~pattern(cb.res_handle, i);
        result("guest-write-read-back", bad == 0, "words=%u,bad=%u", words, bad);
    } else {
        /* The guest's bytes, for the host to find. */
        for (uint32_t pg = 0; pg < BLOB_PAGES; pg++)
            w[pg * PAGE / 4] = ~pattern(cb.res_handle, pg * PAGE / 4);
        result("guest-stamped", 1, "pages=%u", BLOB_PAGES);

        /* A command stream of the context, run by the renderer before the
         * device answers (and so before the fence signals). */
        const uint32_t cmd[4] = {TEST_CMD_STORE, cb.res_handle, CMD_WORD, GUEST_CMD_VALUE};
        int erc = execbuffer(fd, cb.bo_handle, cmd, 4);
        result("guest-submit", erc == 0 && w[CMD_WORD] == GUEST_CMD_VALUE, "execbuffer=%d,word%u=0x%08x",
               erc, CMD_WORD, w[CMD_WORD]);
    }
    printf("GH-VG-BLOB-MAPPED res=%u\n", cb.res_handle);
    fflush(stdout);
    time_t start = time(NULL);
    while (w[1] != HOST_ACK && time(NULL) - start < hold)
        usleep(100000);
    result("guest-host-ack", w[1] == HOST_ACK, "word1=0x%08x,%lds", w[1],
           (long)(time(NULL) - start));

    munmap((void *)w, BLOB_PAGES * PAGE);
    struct drm_gem_close gcl = {.handle = cb.bo_handle};
    rc = ioctl(fd, DRM_IOCTL_GEM_CLOSE, &gcl);
    result("guest-unref", rc == 0, "%d", rc == 0 ? 0 : errno);
    usleep(500000);
    printf("GH-VG-BLOB-UNREF res=%u\n", cb.res_handle);
    fflush(stdout);
    sleep(UNREF_WAIT);
    int errors = errors_in_log() - errors_before;
    result("guest-no-error-responses", errors == 0, "%d", errors);
    close(fd);
    return failed;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && (strcmp(argv[1], "run") == 0 || strcmp(argv[1], "venus") == 0))
        return run(argc >= 3 ? atoi(argv[2]) : 0, strcmp(argv[1], "venus") == 0);
    fprintf(stderr, "usage: virtio-gpu-blob run|venus [HOLD_SECONDS]\n");
    return 2;
}
