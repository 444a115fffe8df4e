// SPDX-License-Identifier: MIT
/*
 * vk-compute: the Vulkan program of issue 18 stage 3. In the guest it runs
 * on Mesa's venus driver, whose host-visible memory is a virtio-gpu blob
 * lent through the gpu-hostmem window; on the build machine it runs on
 * lavapipe (test-lavapipe.sh). Nothing in it knows which.
 *
 *   vk-compute [-v] [-d INDEX] [-s MIB] [-b ROUNDS [-p PASSES]] [-H SECONDS]
 *
 *   -v         require Mesa's venus driver (VK_DRIVER_ID_MESA_VENUS)
 *   -d INDEX   the physical device to use (default 0, the first)
 *   -s MIB     size of each of the two buffers (default 64, at most 1024)
 *   -b ROUNDS  after the check, ROUNDS interleaved rounds of sequential
 *              read and write bandwidth of the mapped memory against guest
 *              RAM (measurement only, no threshold; see bandwidth())
 *   -p PASSES  passes over the buffer per bandwidth sample (default 2)
 *   -H SECONDS when everything passed, hold: print "vk-hold" and sleep
 *              SECONDS with both buffers still allocated and mapped (their
 *              blobs alive, their pages lent), then tear down as usual; so
 *              that the test bed can destroy the guest while it holds them
 *
 * Creates an instance (apiVersion 1.2 where the loader has it, else 1.1),
 * picks the physical device, allocates two buffers of MIB MiB in memory
 * that is HOST_VISIBLE | HOST_COHERENT, maps both, writes a pattern into
 * the first and a poison into the second, runs the compute shader of
 * transform.comp (out[i] = (in[i] * 2654435761) ^ i, its SPIR-V in
 * transform.spv.h, made by gen-spirv.sh), waits on a fence and checks every
 * word of both buffers through the mappings: the output against the
 * transform, the input still the pattern.
 *
 * libvulkan.so.1 is loaded at run time (dlopen): building needs only the
 * Vulkan headers (trixie's libvulkan-dev), running needs the loader and an
 * ICD (libvulkan1, mesa-vulkan-drivers), so it is linked dynamically against
 * trixie's C library, unlike the static programs of the busybox guest:
 * e2e-build: none (tests/e2e/build.d/progs.sh leaves it out).
 *
 * Prints "RESULT name=... ok=0|1 value=..." lines (values without spaces).
 * Exit status: 0 if every word is right and no Vulkan call failed; 1 on a
 * wrong word or a failed call (its RESULT line names the call and the
 * VkResult); 2 on a usage error.
 *
 * A test-only build (never the shipped one) can break the check on
 * purpose, to show that the check catches a wrong output:
 * -DVK_COMPUTE_MUTANT=1 expects a wrong value for exactly one word,
 * -DVK_COMPUTE_MUTANT=2 records the dispatch but leaves it out of the
 * command buffer (the shader never runs).
 */
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define VK_NO_PROTOTYPES
#include <vulkan/vulkan.h>

#include "transform.spv.h"

/* Shared with the busybox guest's programs, from tests/guest/ (the builds
 * copy them beside this file; in place: -I tests/guest): RESULT lines, and
 * the bandwidth method of hostmem-guest's bwsuite, in MiB/s. */
#include "guest-result.h"
#define BW_UNIT 1048576.0
#include "guest-bw.h"

#ifndef VK_COMPUTE_MUTANT
#define VK_COMPUTE_MUTANT 0
#endif

#define LOCAL_SIZE 64 /* transform.comp's local_size_x */
#define MAX_GROUPS 4096 /* the shader loops over the rest */
#define MAX_MIB 1024 /* word indexes stay within 32 bits */
#define FENCE_TIMEOUT_NS (600ull * 1000 * 1000 * 1000)

/* The input pattern and the shader's transform, on the CPU. */
static uint32_t pattern(uint32_t i)
{
    return (i * 0x9e3779b9u + 0x12345678u) ^ (i >> 7);
}

static uint32_t expect(uint32_t i)
{
    uint32_t v = (pattern(i) * 2654435761u) ^ i;
#if VK_COMPUTE_MUTANT == 1
    if (i == 12345)
        v ^= 1;
#endif
    return v;
}

/* What the output buffer holds before the shader runs. */
static uint32_t poison(uint32_t i)
{
    return 0xdeadbeefu ^ i;
}

static const char *vk_result_name(VkResult r)
{
    switch (r) {
#define N(x)                                                                                       \
    case x:                                                                                        \
        return #x
        N(VK_SUCCESS);
        N(VK_NOT_READY);
        N(VK_TIMEOUT);
        N(VK_INCOMPLETE);
        N(VK_ERROR_OUT_OF_HOST_MEMORY);
        N(VK_ERROR_OUT_OF_DEVICE_MEMORY);
        N(VK_ERROR_INITIALIZATION_FAILED);
        N(VK_ERROR_DEVICE_LOST);
        N(VK_ERROR_MEMORY_MAP_FAILED);
        N(VK_ERROR_LAYER_NOT_PRESENT);
        N(VK_ERROR_EXTENSION_NOT_PRESENT);
        N(VK_ERROR_FEATURE_NOT_PRESENT);
        N(VK_ERROR_INCOMPATIBLE_DRIVER);
        N(VK_ERROR_TOO_MANY_OBJECTS);
        N(VK_ERROR_FORMAT_NOT_SUPPORTED);
        N(VK_ERROR_UNKNOWN);
        N(VK_ERROR_OUT_OF_POOL_MEMORY);
        N(VK_ERROR_INVALID_EXTERNAL_HANDLE);
        N(VK_ERROR_INVALID_SHADER_NV);
#undef N
    default:
        return "VK_RESULT_OTHER";
    }
}

/* A failed Vulkan call: its RESULT line (the function's name, the VkResult
 * by number and name, the source line) and the exit status. */
#define VK_CHECK(call)                                                                             \
    do {                                                                                           \
        VkResult r_ = (call);                                                                      \
        if (r_ != VK_SUCCESS) {                                                                    \
            result("vk-error", 0, "%.*s,result=%d,%s,line=%d", (int)strcspn(#call, "("), #call,  \
                   (int)r_, vk_result_name(r_), __LINE__);                                         \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)

/* The Vulkan entry points used, loaded from libvulkan.so.1 at run time:
 * global ones through vkGetInstanceProcAddr(NULL, ...), instance ones
 * through the instance, device ones through vkGetDeviceProcAddr. */
#define GLOBAL_FNS(X) X(vkCreateInstance) X(vkEnumerateInstanceVersion)
#define INSTANCE_FNS(X)                                                                            \
    X(vkDestroyInstance)                                                                           \
    X(vkEnumeratePhysicalDevices)                                                                  \
    X(vkGetPhysicalDeviceProperties)                                                               \
    X(vkGetPhysicalDeviceProperties2)                                                              \
    X(vkGetPhysicalDeviceMemoryProperties)                                                         \
    X(vkGetPhysicalDeviceQueueFamilyProperties)                                                    \
    X(vkEnumerateDeviceExtensionProperties)                                                        \
    X(vkCreateDevice)                                                                              \
    X(vkGetDeviceProcAddr)
#define DEVICE_FNS(X)                                                                              \
    X(vkDestroyDevice)                                                                             \
    X(vkGetDeviceQueue)                                                                            \
    X(vkCreateBuffer)                                                                              \
    X(vkDestroyBuffer)                                                                             \
    X(vkGetBufferMemoryRequirements)                                                               \
    X(vkAllocateMemory)                                                                            \
    X(vkFreeMemory)                                                                                \
    X(vkBindBufferMemory)                                                                          \
    X(vkMapMemory)                                                                                 \
    X(vkUnmapMemory)                                                                               \
    X(vkCreateShaderModule)                                                                        \
    X(vkDestroyShaderModule)                                                                       \
    X(vkCreateDescriptorSetLayout)                                                                 \
    X(vkDestroyDescriptorSetLayout)                                                                \
    X(vkCreatePipelineLayout)                                                                      \
    X(vkDestroyPipelineLayout)                                                                     \
    X(vkCreateComputePipelines)                                                                    \
    X(vkDestroyPipeline)                                                                           \
    X(vkCreateDescriptorPool)                                                                      \
    X(vkDestroyDescriptorPool)                                                                     \
    X(vkAllocateDescriptorSets)                                                                    \
    X(vkUpdateDescriptorSets)                                                                      \
    X(vkCreateCommandPool)                                                                         \
    X(vkDestroyCommandPool)                                                                        \
    X(vkAllocateCommandBuffers)                                                                    \
    X(vkBeginCommandBuffer)                                                                        \
    X(vkEndCommandBuffer)                                                                          \
    X(vkCmdBindPipeline)                                                                           \
    X(vkCmdBindDescriptorSets)                                                                     \
    X(vkCmdPushConstants)                                                                          \
    X(vkCmdDispatch)                                                                               \
    X(vkCmdPipelineBarrier)                                                                        \
    X(vkCreateFence)                                                                               \
    X(vkDestroyFence)                                                                              \
    X(vkQueueSubmit)                                                                               \
    X(vkWaitForFences)

#define DECLARE(f) static PFN_##f f;
static PFN_vkGetInstanceProcAddr vkGetInstanceProcAddr;
GLOBAL_FNS(DECLARE)
INSTANCE_FNS(DECLARE)
DEVICE_FNS(DECLARE)
#undef DECLARE

/* Every object the run makes, destroyed in reverse by teardown(). */
struct vk {
    void *lib;
    VkInstance inst;
    VkPhysicalDevice pd;
    VkPhysicalDeviceProperties props;
    uint32_t queue_family;
    VkDevice dev;
    VkQueue queue;
    uint32_t mem_type;
    struct buf {
        VkBuffer buf;
        VkDeviceMemory mem;
        volatile uint32_t *ptr;
    } src, dst;
    VkShaderModule shader;
    VkDescriptorSetLayout dsl;
    VkPipelineLayout layout;
    VkPipeline pipeline;
    VkDescriptorPool dpool;
    VkCommandPool cpool;
    VkFence fence;
};

static int load_loader(struct vk *vk)
{
    vk->lib = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!vk->lib) {
        result("vk-loader", 0, "dlopen-libvulkan.so.1-failed");
        fprintf(stderr, "vk-compute: %s\n", dlerror());
        return -1;
    }
    vkGetInstanceProcAddr = (PFN_vkGetInstanceProcAddr)dlsym(vk->lib, "vkGetInstanceProcAddr");
    if (!vkGetInstanceProcAddr) {
        result("vk-loader", 0, "no-vkGetInstanceProcAddr");
        return -1;
    }
#define LOAD(f) f = (PFN_##f)vkGetInstanceProcAddr(NULL, #f);
    GLOBAL_FNS(LOAD)
#undef LOAD
    if (!vkCreateInstance) {
        result("vk-loader", 0, "no-vkCreateInstance");
        return -1;
    }
    return 0;
}

/* A name for a RESULT value: spaces and commas become '_'. */
static const char *token(const char *s)
{
    static char out[4][VK_MAX_DESCRIPTION_SIZE];
    static int next;
    char *o = out[next++ % 4];
    size_t i;

    for (i = 0; s[i] && i + 1 < VK_MAX_DESCRIPTION_SIZE; i++)
        o[i] = s[i] == ' ' || s[i] == ',' || s[i] == '\t' ? '_' : s[i];
    o[i] = 0;
    return i ? o : "-";
}

static int has_device_extension(VkPhysicalDevice pd, const char *name)
{
    uint32_t n = 0, i;
    VkExtensionProperties *ext;
    int found = 0;

    if (vkEnumerateDeviceExtensionProperties(pd, NULL, &n, NULL) != VK_SUCCESS || n == 0)
        return 0;
    ext = calloc(n, sizeof(*ext));
    if (!ext)
        return 0;
    if (vkEnumerateDeviceExtensionProperties(pd, NULL, &n, ext) == VK_SUCCESS)
        for (i = 0; i < n; i++)
            found |= !strcmp(ext[i].extensionName, name);
    free(ext);
    return found;
}

/* Instance, physical device DEVICE (its driver checked against venus if
 * REQUIRE_VENUS), a queue family with compute, the logical device and its
 * queue. */
static int open_device(struct vk *vk, uint32_t device, int require_venus)
{
    uint32_t loader_version = VK_API_VERSION_1_0, n = 0, i;
    VkPhysicalDevice *pds;
    VkPhysicalDeviceDriverProperties driver = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES,
    };
    int have_driver;
    VkQueueFamilyProperties *qf;

    if (vkEnumerateInstanceVersion)
        vkEnumerateInstanceVersion(&loader_version);
    VkApplicationInfo app = {
        .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
        .pApplicationName = "vk-compute",
        .apiVersion = loader_version >= VK_API_VERSION_1_2 ? VK_API_VERSION_1_2 : VK_API_VERSION_1_1,
    };
    VkInstanceCreateInfo ici = {
        .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
        .pApplicationInfo = &app,
    };
    VK_CHECK(vkCreateInstance(&ici, NULL, &vk->inst));
#define LOAD(f) f = (PFN_##f)vkGetInstanceProcAddr(vk->inst, #f);
    INSTANCE_FNS(LOAD)
#undef LOAD
    if (!vkGetPhysicalDeviceProperties2 || !vkCreateDevice || !vkGetDeviceProcAddr) {
        result("vk-loader", 0, "instance-functions-missing");
        return -1;
    }

    VK_CHECK(vkEnumeratePhysicalDevices(vk->inst, &n, NULL));
    if (device >= n) {
        result("vk-device", 0, "no-device-%u,devices=%u", device, n);
        return -1;
    }
    pds = calloc(n, sizeof(*pds));
    if (!pds) {
        result("vk-device", 0, "calloc");
        return -1;
    }
    {
        VkResult r = vkEnumeratePhysicalDevices(vk->inst, &n, pds);
        if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
            free(pds);
            VK_CHECK(r);
        }
    }
    vk->pd = pds[device];
    free(pds);
    vkGetPhysicalDeviceProperties(vk->pd, &vk->props);

    /* The driver id is core in 1.2 and VK_KHR_driver_properties before. */
    have_driver = vk->props.apiVersion >= VK_API_VERSION_1_2 ||
                  has_device_extension(vk->pd, VK_KHR_DRIVER_PROPERTIES_EXTENSION_NAME);
    if (have_driver) {
        VkPhysicalDeviceProperties2 p2 = {
            .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
            .pNext = &driver,
        };
        vkGetPhysicalDeviceProperties2(vk->pd, &p2);
    }
    result("vk-device", !require_venus || driver.driverID == VK_DRIVER_ID_MESA_VENUS,
           "%s,index=%u,of=%u,api=%u.%u.%u,driver_id=%d,driver=%s,driver_info=%s,loader=%u.%u.%u%s",
           token(vk->props.deviceName), device, n, VK_API_VERSION_MAJOR(vk->props.apiVersion),
           VK_API_VERSION_MINOR(vk->props.apiVersion), VK_API_VERSION_PATCH(vk->props.apiVersion),
           (int)driver.driverID, have_driver ? token(driver.driverName) : "unknown",
           have_driver ? token(driver.driverInfo) : "unknown",
           VK_API_VERSION_MAJOR(loader_version), VK_API_VERSION_MINOR(loader_version),
           VK_API_VERSION_PATCH(loader_version), require_venus ? ",venus-required" : "");
    if (require_venus && driver.driverID != VK_DRIVER_ID_MESA_VENUS)
        return -1;

    vkGetPhysicalDeviceQueueFamilyProperties(vk->pd, &n, NULL);
    qf = calloc(n ? n : 1, sizeof(*qf));
    if (!qf) {
        result("vk-queue", 0, "calloc");
        return -1;
    }
    vkGetPhysicalDeviceQueueFamilyProperties(vk->pd, &n, qf);
    vk->queue_family = UINT32_MAX;
    for (i = 0; i < n && vk->queue_family == UINT32_MAX; i++)
        if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT)
            vk->queue_family = i;
    free(qf);
    if (vk->queue_family == UINT32_MAX) {
        result("vk-queue", 0, "no-compute-queue-family,families=%u", n);
        return -1;
    }

    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
        .queueFamilyIndex = vk->queue_family,
        .queueCount = 1,
        .pQueuePriorities = &prio,
    };
    VkDeviceCreateInfo dci = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
        .queueCreateInfoCount = 1,
        .pQueueCreateInfos = &qci,
    };
    VK_CHECK(vkCreateDevice(vk->pd, &dci, NULL, &vk->dev));
#define LOAD(f)                                                                                    \
    if (!(f = (PFN_##f)vkGetDeviceProcAddr(vk->dev, #f))) {                                        \
        result("vk-loader", 0, "no-%s", #f);                                                       \
        return -1;                                                                                 \
    }
    DEVICE_FNS(LOAD)
#undef LOAD
    vkGetDeviceQueue(vk->dev, vk->queue_family, 0, &vk->queue);
    return 0;
}

/* A storage buffer of SIZE bytes in a HOST_VISIBLE | HOST_COHERENT memory
 * type (the first that the buffer can live in), mapped. */
static int make_buffer(struct vk *vk, struct buf *b, VkDeviceSize size, const char *what)
{
    const VkMemoryPropertyFlags want =
        VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    VkPhysicalDeviceMemoryProperties mp;
    VkMemoryRequirements req;
    uint32_t i;
    void *p;

    VkBufferCreateInfo bci = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
        .size = size,
        .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    };
    VK_CHECK(vkCreateBuffer(vk->dev, &bci, NULL, &b->buf));
    vkGetBufferMemoryRequirements(vk->dev, b->buf, &req);
    vkGetPhysicalDeviceMemoryProperties(vk->pd, &mp);
    vk->mem_type = UINT32_MAX;
    for (i = 0; i < mp.memoryTypeCount && vk->mem_type == UINT32_MAX; i++)
        if ((req.memoryTypeBits & (1u << i)) && (mp.memoryTypes[i].propertyFlags & want) == want)
            vk->mem_type = i;
    if (vk->mem_type == UINT32_MAX) {
        result("vk-memory", 0, "no-host-visible-coherent-type,types=%u,bits=0x%x",
               mp.memoryTypeCount, req.memoryTypeBits);
        return -1;
    }
    VkMemoryAllocateInfo mai = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
        .allocationSize = req.size,
        .memoryTypeIndex = vk->mem_type,
    };
    VK_CHECK(vkAllocateMemory(vk->dev, &mai, NULL, &b->mem));
    VK_CHECK(vkBindBufferMemory(vk->dev, b->buf, b->mem, 0));
    VK_CHECK(vkMapMemory(vk->dev, b->mem, 0, VK_WHOLE_SIZE, 0, &p));
    b->ptr = p;
    result("vk-memory", 1, "%s,type=%u,flags=0x%x,heap=%u,bytes=%" PRIu64 ",mapped=%p", what,
           vk->mem_type, mp.memoryTypes[vk->mem_type].propertyFlags,
           mp.memoryTypes[vk->mem_type].heapIndex, (uint64_t)req.size, p);
    return 0;
}

/* The compute pipeline of transform.comp: two storage buffers, the word
 * count as a push constant. */
static int make_pipeline(struct vk *vk)
{
    VkShaderModuleCreateInfo smci = {
        .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
        .codeSize = sizeof(vk_compute_spv),
        .pCode = vk_compute_spv,
    };
    VK_CHECK(vkCreateShaderModule(vk->dev, &smci, NULL, &vk->shader));
    VkDescriptorSetLayoutBinding bind[2] = {
        { .binding = 0,
          .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
          .descriptorCount = 1,
          .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT },
        { .binding = 1,
          .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
          .descriptorCount = 1,
          .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT },
    };
    VkDescriptorSetLayoutCreateInfo dslci = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
        .bindingCount = 2,
        .pBindings = bind,
    };
    VK_CHECK(vkCreateDescriptorSetLayout(vk->dev, &dslci, NULL, &vk->dsl));
    VkPushConstantRange pcr = {
        .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
        .size = sizeof(uint32_t),
    };
    VkPipelineLayoutCreateInfo plci = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
        .setLayoutCount = 1,
        .pSetLayouts = &vk->dsl,
        .pushConstantRangeCount = 1,
        .pPushConstantRanges = &pcr,
    };
    VK_CHECK(vkCreatePipelineLayout(vk->dev, &plci, NULL, &vk->layout));
    VkComputePipelineCreateInfo cpci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {
            .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
            .stage = VK_SHADER_STAGE_COMPUTE_BIT,
            .module = vk->shader,
            .pName = "main",
        },
        .layout = vk->layout,
    };
    VK_CHECK(vkCreateComputePipelines(vk->dev, VK_NULL_HANDLE, 1, &cpci, NULL, &vk->pipeline));
    VkDescriptorPoolSize ps = {
        .type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
        .descriptorCount = 2,
    };
    VkDescriptorPoolCreateInfo dpci = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
        .maxSets = 1,
        .poolSizeCount = 1,
        .pPoolSizes = &ps,
    };
    VK_CHECK(vkCreateDescriptorPool(vk->dev, &dpci, NULL, &vk->dpool));
    return 0;
}

/* Records and submits the dispatch over WORDS words, waits on its fence. */
static int run_shader(struct vk *vk, uint32_t words, double *seconds)
{
    VkDescriptorSet set;
    VkCommandBuffer cb;
    uint32_t groups = (words + LOCAL_SIZE - 1) / LOCAL_SIZE;
    double t0;

    if (groups > MAX_GROUPS)
        groups = MAX_GROUPS;
    VkDescriptorSetAllocateInfo dsai = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
        .descriptorPool = vk->dpool,
        .descriptorSetCount = 1,
        .pSetLayouts = &vk->dsl,
    };
    VK_CHECK(vkAllocateDescriptorSets(vk->dev, &dsai, &set));
    VkDescriptorBufferInfo dbi[2] = {
        { .buffer = vk->src.buf, .range = VK_WHOLE_SIZE },
        { .buffer = vk->dst.buf, .range = VK_WHOLE_SIZE },
    };
    VkWriteDescriptorSet w[2];
    for (int i = 0; i < 2; i++)
        w[i] = (VkWriteDescriptorSet){
            .sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
            .dstSet = set,
            .dstBinding = i,
            .descriptorCount = 1,
            .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            .pBufferInfo = &dbi[i],
        };
    vkUpdateDescriptorSets(vk->dev, 2, w, 0, NULL);

    VkCommandPoolCreateInfo cpci = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
        .queueFamilyIndex = vk->queue_family,
    };
    VK_CHECK(vkCreateCommandPool(vk->dev, &cpci, NULL, &vk->cpool));
    VkCommandBufferAllocateInfo cbai = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
        .commandPool = vk->cpool,
        .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
        .commandBufferCount = 1,
    };
    VK_CHECK(vkAllocateCommandBuffers(vk->dev, &cbai, &cb));
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
        .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
    };
    VK_CHECK(vkBeginCommandBuffer(cb, &bi));
    /* Host writes before the submission are visible to the device
     * (vkQueueSubmit's implicit host barrier); the shader's writes are made
     * visible to the host by this barrier and the fence. */
    vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, vk->pipeline);
    vkCmdBindDescriptorSets(cb, VK_PIPELINE_BIND_POINT_COMPUTE, vk->layout, 0, 1, &set, 0, NULL);
    vkCmdPushConstants(cb, vk->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(words), &words);
#if VK_COMPUTE_MUTANT != 2
    vkCmdDispatch(cb, groups, 1, 1);
#endif
    VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_HOST_READ_BIT,
    };
    vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0,
                         1, &mb, 0, NULL, 0, NULL);
    VK_CHECK(vkEndCommandBuffer(cb));
    VkFenceCreateInfo fci = { .sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO };
    VK_CHECK(vkCreateFence(vk->dev, &fci, NULL, &vk->fence));
    VkSubmitInfo si = {
        .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
        .commandBufferCount = 1,
        .pCommandBuffers = &cb,
    };
    t0 = now();
    VK_CHECK(vkQueueSubmit(vk->queue, 1, &si, vk->fence));
    VK_CHECK(vkWaitForFences(vk->dev, 1, &vk->fence, VK_TRUE, FENCE_TIMEOUT_NS));
    *seconds = now() - t0;
    result("vk-dispatch", 1, "%u,groups=%u,local_size=%u,seconds=%.3f", words, groups, LOCAL_SIZE,
           *seconds);
    return 0;
}

/*
 * Bandwidth of the mapped memory against guest RAM, as hostmem-guest's
 * bwsuite measures the BAR (tests/e2e/scenarios/80-bench-bar.sh): the same
 * loop (8-byte volatile loads or stores, sequential, PASSES passes per
 * sample) over buffers of the same size, each warmed up by one write pass
 * and one read pass, the sides taking turns in each of the six orders in
 * turn. Sides: the mapped output buffer ("mapped"), anonymous RAM mapped
 * with 4 KiB entries ("ram4k", the reference) and a second such buffer
 * ("ram4kb", the A/A control: whatever separates it from ram4k is the
 * method's own error). MiB/s = 2^20 bytes per second.
 */
/* The guest's CPU time so far (/proc/stat's "cpu" line, in clock ticks):
 * all of it, and the part stolen from this guest's vCPUs by the hypervisor
 * (Xen ran another domain's vCPU on the physical CPU meanwhile). -1 if
 * unreadable. */
static int cpu_ticks(uint64_t *total, uint64_t *steal)
{
    uint64_t v[8] = { 0 };
    FILE *f = fopen("/proc/stat", "r");
    int n, i;

    if (!f)
        return -1;
    n = fscanf(f, "cpu %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
               " %" SCNu64 " %" SCNu64,
               &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n != 8)
        return -1;
    for (*total = 0, i = 0; i < 8; i++)
        *total += v[i];
    *steal = v[7];
    return 0;
}

static void bw_ratio(const char *op, const struct bw_side *a, const struct bw_side *b, int rounds,
                     int write)
{
    const double *va = write ? a->wr : a->rd, *vb = write ? b->wr : b->rd;
    double q[BW_MAX_ROUNDS], mnq, mxq, lo, hi, pm;
    int r;

    for (r = 0; r < rounds; r++)
        q[r] = va[r] / vb[r];
    pm = median_of(q, rounds, &mnq, &mxq, &lo, &hi);
    result("vkbw-ratio", 1, "%.3f,op=%s,a=%s,b=%s,paired_lo=%.3f,paired_hi=%.3f,of_medians=%.3f",
           pm, op, a->name, b->name, lo, hi, a->med[write] / b->med[write]);
}

static int bandwidth(volatile uint64_t *mapped, uint64_t bytes, int rounds, int passes)
{
    static struct bw_side side[3];
    static const int order[6][3] = {
        { 0, 1, 2 }, { 1, 2, 0 }, { 2, 0, 1 }, { 0, 2, 1 }, { 2, 1, 0 }, { 1, 0, 2 },
    };
    int r, k, op, have_ticks;
    uint64_t total0 = 0, steal0 = 0, total1 = 0, steal1 = 0;
    double t0;

    side[0] = (struct bw_side){ .name = "mapped", .p = mapped };
    side[1] = (struct bw_side){ .name = "ram4k", .p = bw_ram(bytes) };
    side[2] = (struct bw_side){ .name = "ram4kb", .p = bw_ram(bytes) };
    if (!side[1].p || !side[2].p) {
        result("vkbw-setup", 0, "mmap-%d", errno);
        return -1;
    }
    result("vkbw-setup", 1, "%" PRIu64 ",rounds=%d,passes=%d", bytes, rounds, passes);
    have_ticks = cpu_ticks(&total0, &steal0) == 0;
    t0 = now();
    for (k = 0; k < 3; k++) {
        bw_pass(side[k].p, bytes, 1, 1, 2);
        bw_pass(side[k].p, bytes, 1, 0, 0);
    }
    for (r = 0; r < rounds; r++)
        for (k = 0; k < 3; k++) {
            struct bw_side *s = &side[order[r % 6][k]];

            s->rd[r] = bw_sample(s->p, bytes, passes, 0, 0);
            s->wr[r] = bw_sample(s->p, bytes, passes, 1, r);
            result("vkbw-sample", 1, "%d,side=%s,read_mibps=%.1f,write_mibps=%.1f", r, s->name,
                   s->rd[r], s->wr[r]);
        }
    /* Time the hypervisor gave to other vCPUs while this one had work: a
     * measure of contention inside the emulated machine (dom0's renderer,
     * its render server), not of the host's. */
    if (have_ticks && cpu_ticks(&total1, &steal1) == 0)
        result("vkbw-cpu", 1, "%.1f,ticks=%" PRIu64 ",steal_ticks=%" PRIu64 ",steal_pct=%.1f",
               now() - t0, total1 - total0, steal1 - steal0,
               total1 > total0 ? 100.0 * (steal1 - steal0) / (total1 - total0) : 0.0);
    for (op = 0; op < 2; op++) {
        const char *opn = op ? "write" : "read";
        double mn, lo, hi;

        for (k = 0; k < 3; k++) {
            struct bw_side *s = &side[k];

            s->med[op] = median_of(op ? s->wr : s->rd, rounds, &mn, &s->best[op], &lo, &hi);
            result(op ? "vkbw-write" : "vkbw-read", 1, "%.1f,side=%s,min=%.1f,max=%.1f,n=%d",
                   s->med[op], s->name, mn, s->best[op], rounds);
        }
        bw_ratio(opn, &side[0], &side[1], rounds, op);
        bw_ratio(opn, &side[2], &side[1], rounds, op);
    }
    return 0;
}

static void teardown(struct vk *vk)
{
    if (vk->dev) {
        if (vk->fence)
            vkDestroyFence(vk->dev, vk->fence, NULL);
        if (vk->cpool)
            vkDestroyCommandPool(vk->dev, vk->cpool, NULL);
        if (vk->dpool)
            vkDestroyDescriptorPool(vk->dev, vk->dpool, NULL);
        if (vk->pipeline)
            vkDestroyPipeline(vk->dev, vk->pipeline, NULL);
        if (vk->layout)
            vkDestroyPipelineLayout(vk->dev, vk->layout, NULL);
        if (vk->dsl)
            vkDestroyDescriptorSetLayout(vk->dev, vk->dsl, NULL);
        if (vk->shader)
            vkDestroyShaderModule(vk->dev, vk->shader, NULL);
        struct buf *b[2] = { &vk->dst, &vk->src };
        for (int i = 0; i < 2; i++) {
            if (b[i]->ptr)
                vkUnmapMemory(vk->dev, b[i]->mem);
            if (b[i]->buf)
                vkDestroyBuffer(vk->dev, b[i]->buf, NULL);
            if (b[i]->mem)
                vkFreeMemory(vk->dev, b[i]->mem, NULL);
        }
        vkDestroyDevice(vk->dev, NULL);
    }
    if (vk->inst)
        vkDestroyInstance(vk->inst, NULL);
    /* The loader stays loaded: drivers may have registered exit handlers. */
}

static int usage(void)
{
    fprintf(stderr,
            "usage: vk-compute [-v] [-d INDEX] [-s MIB] [-b ROUNDS [-p PASSES]] [-H SECONDS]\n");
    return 2;
}

static int parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
    char *end;

    errno = 0;
    *out = strtoul(s, &end, 10);
    return errno || end == s || *end || *out < min || *out > max ? -1 : 0;
}

int main(int argc, char **argv)
{
    struct vk vk = { 0 };
    unsigned long mib = 64, device = 0, rounds = 0, passes = 2, hold = 0;
    int require_venus = 0, c;
    uint64_t bytes, bad_dst = 0, bad_src = 0, first_bad = UINT64_MAX;
    uint32_t words, i;
    double t0 = now(), t_open, t_alloc, t_write, t_dispatch = 0, t_check;

    setvbuf(stdout, NULL, _IOLBF, 0);
    while ((c = getopt(argc, argv, "vd:s:b:p:H:")) != -1) {
        switch (c) {
        case 'v':
            require_venus = 1;
            break;
        case 'd':
            if (parse_uint(optarg, 0, 1024, &device))
                return usage();
            break;
        case 's':
            if (parse_uint(optarg, 1, MAX_MIB, &mib))
                return usage();
            break;
        case 'b':
            if (parse_uint(optarg, 1, BW_MAX_ROUNDS, &rounds))
                return usage();
            break;
        case 'p':
            if (parse_uint(optarg, 1, 1000, &passes))
                return usage();
            break;
        case 'H':
            if (parse_uint(optarg, 1, 86400, &hold))
                return usage();
            break;
        default:
            return usage();
        }
    }
    if (optind != argc)
        return usage();
    bytes = (uint64_t)mib << 20;
    words = (uint32_t)(bytes / 4);
    if (VK_COMPUTE_MUTANT)
        printf("vk-compute: MUTANT build %d (a test-only build: its check must fail)\n",
               VK_COMPUTE_MUTANT);

    if (load_loader(&vk) || open_device(&vk, (uint32_t)device, require_venus))
        goto out;
    t_open = now();
    /* Printed at once: on venus under nested emulation this step alone
     * takes seconds, and a run that fails later should still tell it. */
    result("vk-open", 1, "%.3f,queue_family=%u", t_open - t0, vk.queue_family);
    if (bytes > vk.props.limits.maxStorageBufferRange) {
        result("vk-limits", 0, "size-%" PRIu64 "-above-maxStorageBufferRange-%u", bytes,
               vk.props.limits.maxStorageBufferRange);
        goto out;
    }
    if (make_buffer(&vk, &vk.src, bytes, "src") || make_buffer(&vk, &vk.dst, bytes, "dst") ||
        make_pipeline(&vk))
        goto out;
    t_alloc = now();
    for (i = 0; i < words; i++) {
        vk.src.ptr[i] = pattern(i);
        vk.dst.ptr[i] = poison(i);
    }
    t_write = now();
    if (run_shader(&vk, words, &t_dispatch))
        goto out;
    /* Every word, through the mappings: the output against the transform,
     * the input unchanged (the shader only reads it). */
    t_check = now();
    for (i = 0; i < words; i++) {
        uint32_t got = vk.dst.ptr[i];

        if (got != expect(i)) {
            if (bad_dst == 0) {
                first_bad = i;
                printf("vk-compute: word %u is 0x%08x, expected 0x%08x (input 0x%08x)\n", i, got,
                       expect(i), pattern(i));
            }
            bad_dst++;
        }
        bad_src += vk.src.ptr[i] != pattern(i);
    }
    t_check = now() - t_check;
    result("vk-compute", bad_dst == 0 && bad_src == 0,
           "%" PRIu64 ",words=%u,mib=%lu,wrong_src=%" PRIu64 ",first_wrong=%" PRId64
           ",check_seconds=%.3f",
           bad_dst, words, mib, bad_src, first_bad == UINT64_MAX ? -1 : (int64_t)first_bad,
           t_check);
    result("vk-timing", 1, "%.3f,open=%.3f,alloc_map=%.3f,write=%.3f,dispatch_wait=%.3f,check=%.3f",
           now() - t0, t_open - t0, t_alloc - t_open, t_write - t_alloc, t_dispatch, t_check);
    if (rounds && !failed)
        bandwidth((volatile uint64_t *)vk.dst.ptr, bytes, (int)rounds, (int)passes);
    if (hold && !failed) {
        /* Everything still allocated and mapped; the test bed destroys the
         * guest now (79-venus-vk-compute). */
        result("vk-hold", 1, "%lu,src=%p,dst=%p", hold, (void *)vk.src.ptr, (void *)vk.dst.ptr);
        sleep((unsigned int)hold);
        result("vk-hold-end", 1, "not-destroyed-after-%lus", hold);
    }
out:
    teardown(&vk);
    if (!failed && !vk.fence) /* stopped before the check without a RESULT line */
        result("vk-compute", 0, "not-run");
    return failed ? 1 : 0;
}
