// SPDX-License-Identifier: MIT
// The compute shader of vk-compute (issue 18 stage 3): one 32-bit word of
// the output per word of the input, out[i] = (in[i] * 2654435761) ^ i,
// over `count` words. A grid-stride loop, so that any count is covered by
// however many workgroups were dispatched (at most 65535 per dimension is
// all a device has to offer). vk-compute.c's expect() is the same
// transform on the CPU; gen-spirv.sh makes transform.spv.h from this file.
#version 450

layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer Src {
    uint src[];
};
layout(std430, set = 0, binding = 1) writeonly buffer Dst {
    uint dst[];
};
layout(push_constant) uniform Params {
    uint count;
} params;

void main()
{
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;

    for (uint i = gl_GlobalInvocationID.x; i < params.count; i += stride)
        dst[i] = (src[i] * 2654435761u) ^ i;
}
