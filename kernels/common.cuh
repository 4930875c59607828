// Shared helpers of the spafit kernels.
//
// Conventions of every kernel file:
// - tensors are contiguous row-major; a batch is [rows, features];
// - storage is float (f32) or __nv_bfloat16 (bf16); arithmetic and accumulation are f32;
// - every output is assigned, never accumulated into, unless the kernel's comment says so;
// - reductions run in a fixed order with fixed trees: no float atomics, so results are
//   bitwise reproducible run to run;
// - entry points are extern "C" and named <op>_<storage>, e.g. gelu_forward_bf16.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float load(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, long i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16* p, long i, float v) { p[i] = __float2bfloat16(v); }

// The counter-based generator of src/rng.rs, bit for bit: SplitMix64's finalizer applied to
// a Weyl step of the element index, xor-ed with the seed.
__device__ __forceinline__ uint64_t spafit_mix(uint64_t seed, uint64_t index) {
    uint64_t z = (index + 1ull) * 0x9E3779B97F4A7C15ull ^ seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Whether element `index` survives dropout with a 24-bit threshold (see rng.rs).
__device__ __forceinline__ bool spafit_keeps(uint64_t seed, uint64_t index, uint32_t threshold) {
    return (uint32_t)(spafit_mix(seed, index) >> 40) >= threshold;
}

// Sum of `v` over a block of blockDim.x threads (a power of two ≤ 1024), in a fixed tree.
// Every thread gets the result. `scratch` holds blockDim.x floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) scratch[threadIdx.x] += scratch[threadIdx.x + s];
        __syncthreads();
    }
    float total = scratch[0];
    __syncthreads();
    return total;
}

// Maximum over the block, same contract as block_sum.
__device__ __forceinline__ float block_max(float v, float* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) scratch[threadIdx.x] = fmaxf(scratch[threadIdx.x], scratch[threadIdx.x + s]);
        __syncthreads();
    }
    float m = scratch[0];
    __syncthreads();
    return m;
}
