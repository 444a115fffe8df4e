/* SPDX-License-Identifier: MIT */
/*
 * Manual probe, not run by CI (tests/renderer-probe/README.md).
 *
 * A Vulkan client for venus over vtest: allocates two HOST_VISIBLE |
 * HOST_COHERENT allocations, maps both, writes a pattern into the first,
 * has the device copy it into the second (vkCmdCopyBuffer, so the bytes go
 * through the host's renderer) and checks every word read back through the
 * second mapping.  It prints its own mapping of each allocation (the line
 * of /proc/self/maps and the VmFlags of /proc/self/smaps) and, when
 * PROBE_PAUSE is set, stops with both allocations mapped until a line is
 * read on stdin, so the server's mappings can be inspected.
 *
 * Build: cc -O2 -Wall -Wextra -o venus-hostvis venus-hostvis.c -lvulkan
 * Usage: venus-hostvis [MiB]   (default 4)
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <vulkan/vulkan.h>

#define CHECK(call)                                                        \
    do {                                                                   \
        VkResult r_ = (call);                                              \
        if (r_ != VK_SUCCESS) {                                            \
            fprintf(stderr, "FAIL %s = %d (line %d)\n", #call, r_, __LINE__); \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

/* Print the /proc/self/maps line holding addr and that VMA's VmFlags. */
static void show_mapping(const char *what, const void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0;
    uintptr_t a = (uintptr_t)addr;

    if (!f) {
        perror("smaps");
        return;
    }
    while (fgets(line, sizeof(line), f)) {
        uintptr_t lo, hi;
        /* A VMA's first line is "lo-hi perms ..."; its fields are "Name: ...". */
        if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &lo, &hi) == 2) {
            in = a >= lo && a < hi;
            if (in)
                printf("%s: mapping %s", what, line);
            continue;
        }
        if (in && (!strncmp(line, "VmFlags:", 8) || !strncmp(line, "Rss:", 4)))
            printf("%s: %s", what, line);
    }
    fclose(f);
}

static uint32_t pattern(uint64_t i)
{
    return (uint32_t)(i * 2654435761u) ^ 0x5a5a5a5au;
}

struct alloc {
    VkBuffer buf;
    VkDeviceMemory mem;
    uint32_t *ptr;
};

static void make(VkDevice dev, VkPhysicalDevice pd, VkDeviceSize size, uint32_t type,
                 VkBufferUsageFlags usage, struct alloc *a)
{
    VkBufferCreateInfo bci = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
        .size = size,
        .usage = usage,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    };
    VkMemoryRequirements req;
    (void)pd;
    CHECK(vkCreateBuffer(dev, &bci, NULL, &a->buf));
    vkGetBufferMemoryRequirements(dev, a->buf, &req);
    if (!(req.memoryTypeBits & (1u << type))) {
        fprintf(stderr, "FAIL buffer cannot live in memory type %u\n", type);
        exit(1);
    }
    VkMemoryAllocateInfo mai = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
        .allocationSize = req.size,
        .memoryTypeIndex = type,
    };
    CHECK(vkAllocateMemory(dev, &mai, NULL, &a->mem));
    CHECK(vkBindBufferMemory(dev, a->buf, a->mem, 0));
    CHECK(vkMapMemory(dev, a->mem, 0, VK_WHOLE_SIZE, 0, (void **)&a->ptr));
}

int main(int argc, char **argv)
{
    uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 0) : 4;
    VkDeviceSize size = mib << 20;
    uint64_t words = size / 4, bad = 0;
    VkApplicationInfo app = {
        .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
        .pApplicationName = "venus-hostvis",
        .apiVersion = VK_API_VERSION_1_1,
    };
    VkInstanceCreateInfo ici = {
        .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
        .pApplicationInfo = &app,
    };
    VkInstance inst;
    uint32_t n = 1;
    VkPhysicalDevice pd;
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceMemoryProperties mp;
    const VkMemoryPropertyFlags want =
        VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    uint32_t type = UINT32_MAX;

    CHECK(vkCreateInstance(&ici, NULL, &inst));
    {
        VkResult r = vkEnumeratePhysicalDevices(inst, &n, &pd);
        if ((r != VK_SUCCESS && r != VK_INCOMPLETE) || n == 0) {
            fprintf(stderr, "FAIL no physical device (%d)\n", r);
            return 1;
        }
    }
    vkGetPhysicalDeviceProperties(pd, &props);
    printf("device: %s (api %u.%u.%u)\n", props.deviceName, VK_VERSION_MAJOR(props.apiVersion),
           VK_VERSION_MINOR(props.apiVersion), VK_VERSION_PATCH(props.apiVersion));
    vkGetPhysicalDeviceMemoryProperties(pd, &mp);
    for (uint32_t i = 0; i < mp.memoryTypeCount; i++) {
        printf("memory type %u: flags 0x%x heap %u\n", i, mp.memoryTypes[i].propertyFlags,
               mp.memoryTypes[i].heapIndex);
        if (type == UINT32_MAX && (mp.memoryTypes[i].propertyFlags & want) == want)
            type = i;
    }
    if (type == UINT32_MAX) {
        fprintf(stderr, "FAIL no HOST_VISIBLE|HOST_COHERENT memory type\n");
        return 1;
    }

    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
        .queueFamilyIndex = 0,
        .queueCount = 1,
        .pQueuePriorities = &prio,
    };
    VkDeviceCreateInfo dci = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
        .queueCreateInfoCount = 1,
        .pQueueCreateInfos = &qci,
    };
    VkDevice dev;
    VkQueue q;
    CHECK(vkCreateDevice(pd, &dci, NULL, &dev));
    vkGetDeviceQueue(dev, 0, 0, &q);

    struct alloc src, dst;
    make(dev, pd, size, type, VK_BUFFER_USAGE_TRANSFER_SRC_BIT, &src);
    make(dev, pd, size, type, VK_BUFFER_USAGE_TRANSFER_DST_BIT, &dst);
    printf("allocated 2 x %" PRIu64 " MiB in type %u, mapped at %p and %p\n", mib, type,
           (void *)src.ptr, (void *)dst.ptr);
    show_mapping("src", src.ptr);
    show_mapping("dst", dst.ptr);

    for (uint64_t i = 0; i < words; i++) {
        src.ptr[i] = pattern(i);
        dst.ptr[i] = 0;
    }
    /* Read back through the same mapping. */
    for (uint64_t i = 0; i < words; i++)
        bad += src.ptr[i] != pattern(i);
    printf("readback through the mapping: %" PRIu64 " of %" PRIu64 " words wrong\n", bad, words);

    VkCommandPoolCreateInfo cpci = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
        .queueFamilyIndex = 0,
    };
    VkCommandPool pool;
    CHECK(vkCreateCommandPool(dev, &cpci, NULL, &pool));
    VkCommandBufferAllocateInfo cbai = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
        .commandPool = pool,
        .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
        .commandBufferCount = 1,
    };
    VkCommandBuffer cb;
    CHECK(vkAllocateCommandBuffers(dev, &cbai, &cb));
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
        .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
    };
    CHECK(vkBeginCommandBuffer(cb, &bi));
    VkBufferCopy region = {.size = size};
    vkCmdCopyBuffer(cb, src.buf, dst.buf, 1, &region);
    VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_HOST_READ_BIT,
    };
    vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb,
                         0, NULL, 0, NULL);
    CHECK(vkEndCommandBuffer(cb));
    VkSubmitInfo si = {
        .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
        .commandBufferCount = 1,
        .pCommandBuffers = &cb,
    };
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    VkFence fence;
    CHECK(vkCreateFence(dev, &fci, NULL, &fence));
    CHECK(vkQueueSubmit(q, 1, &si, fence));
    CHECK(vkWaitForFences(dev, 1, &fence, VK_TRUE, 10ull * 1000 * 1000 * 1000));

    bad = 0;
    for (uint64_t i = 0; i < words; i++)
        bad += dst.ptr[i] != pattern(i);
    printf("device copy read back: %" PRIu64 " of %" PRIu64 " words wrong\n", bad, words);

    if (getenv("PROBE_PAUSE")) {
        char line[8];
        printf("paused (pid %d): press enter\n", (int)getpid());
        fflush(stdout);
        if (!fgets(line, sizeof(line), stdin))
            line[0] = 0;
    }

    vkDestroyFence(dev, fence, NULL);
    vkDestroyCommandPool(dev, pool, NULL);
    vkUnmapMemory(dev, src.mem);
    vkUnmapMemory(dev, dst.mem);
    vkDestroyBuffer(dev, src.buf, NULL);
    vkDestroyBuffer(dev, dst.buf, NULL);
    vkFreeMemory(dev, src.mem, NULL);
    vkFreeMemory(dev, dst.mem, NULL);
    vkDestroyDevice(dev, NULL);
    vkDestroyInstance(inst, NULL);
    printf("%s\n", bad ? "FAIL" : "PASS");
    return bad ? 1 : 0;
}
