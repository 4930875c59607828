// Kernels with deliberate bugs (and their fixed twins), for tests/integration/cuda_emulator.rs: the CPU
// stand-in must turn each bug into an error value or a visible difference, never a silent
// pass or a crashed test process. They are compiled for the GPU too but never launched there.
#include "common.cuh"
#include "tensor_core.cuh"

// Writes out[0..n], one element past the end of an n-element buffer.
extern "C" __global__ void selftest_write_past_end(float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = 1.0f;
}

// Reads 16 KiB past the end: beyond the 0xFF slack the after-launch check sees, into the
// trailing guard pages.
extern "C" __global__ void selftest_read_far_past_end(const float* in, float* out, int n) {
    if (threadIdx.x == 0) out[0] = in[n + 4096];
}

extern "C" __global__ void selftest_read(const float* in, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i];
}

// out[i] = the value thread (i + 1) % blockDim wrote to shared memory. Without the barrier a
// thread may read its neighbour's slot before the neighbour has written it.
template <bool BARRIER>
__device__ void rotate(const float* in, float* out) {
    __shared__ float slot[256];
    int t = threadIdx.x;
    slot[t] = in[t];
    if (BARRIER) __syncthreads();
    out[t] = slot[(t + 1) % blockDim.x];
}
extern "C" __global__ void selftest_missing_barrier(const float* in, float* out) { rotate<false>(in, out); }
extern "C" __global__ void selftest_with_barrier(const float* in, float* out) { rotate<true>(in, out); }

// Uses `bytes` of dynamic shared memory (every byte written, then summed).
extern "C" __global__ void selftest_dynamic_shared(float* out, int bytes) {
    extern __shared__ __align__(16) unsigned char dyn[];
    for (int i = threadIdx.x; i < bytes; i += blockDim.x) dyn[i] = 1;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.f;
        for (int i = 0; i < bytes; ++i) s += dyn[i];
        out[blockIdx.x] = s;
    }
}

// Reads shared memory no thread wrote (it must read as NaN bytes on the stand-in).
extern "C" __global__ void selftest_uninitialized_shared(float* out) {
    __shared__ float never_written[32];
    out[threadIdx.x] = never_written[threadIdx.x];
}

// Lanes of one warp in two different shuffles: divergent collectives.
extern "C" __global__ void selftest_divergent_shuffle(float* out) {
    float v = threadIdx.x;
    if (threadIdx.x % 2 == 0)
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    else
        v = __shfl_xor_sync(0xffffffffu, v, 2);
    out[threadIdx.x] = v;
}

// A shuffle whose mask leaves out live lanes (partial-warp collectives are not emulated).
extern "C" __global__ void selftest_partial_mask(float* out) {
    float v = __shfl_down_sync(0x0000ffffu, float(threadIdx.x), 1);
    out[threadIdx.x] = v;
}

// Threads of one block waiting at two different barriers.
extern "C" __global__ void selftest_divergent_barrier(float* out) {
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.f;
}

// Reads a cp.async destination before waiting for it.
extern "C" __global__ void selftest_cp_async_without_wait(const float* in, float* out) {
    __shared__ __align__(16) float buf[32 * 4];
    int l = threadIdx.x;
    cp_async_16(&buf[l * 4], in + l * 4, 16);
    cp_async_commit();
    for (int i = 0; i < 4; ++i) out[l * 4 + i] = buf[l * 4 + i];
    cp_async_wait<0>();
}

// cp.async from a source that is not 16-byte aligned.
extern "C" __global__ void selftest_misaligned_cp_async(const float* in) {
    __shared__ __align__(16) float buf[32 * 4];
    cp_async_16(&buf[threadIdx.x * 4], in + 1, 16);
    cp_async_commit();
    cp_async_wait<0>();
}

// Thread 5 loads a float4 from an address 4 bytes past a 16-byte boundary, the others from
// aligned ones.
extern "C" __global__ void selftest_misaligned_vector_load(float* data) {
    const float4 v = *reinterpret_cast<const float4*>(data + (threadIdx.x == 5) + 4 * threadIdx.x);
    data[4 * threadIdx.x] = v.x + v.w;
}

// mma.sync with only 16 lanes: the instruction needs the whole warp.
extern "C" __global__ void selftest_mma_half_warp(float* out) {
    uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0}, d[4];
    if (threadIdx.x < 16) {
        mma_m16n8k16_bf16(d, a, b, c);
        out[threadIdx.x] = d[0];
    }
}

// Cost of emulation, for benches/emulator.rs: `rounds` block barriers, and `rounds`
// mma.sync per warp.
extern "C" __global__ void selftest_barriers(float* out, int rounds) {
    float v = threadIdx.x;
    for (int i = 0; i < rounds; ++i) {
        v = v * 0.5f + 1.f;
        __syncthreads();
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

extern "C" __global__ void selftest_mma_chain(float* out, int rounds) {
    uint32_t a[4] = {0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u};  // bf16 1.0 pairs
    uint32_t b[2] = {0x3c003c00u, 0x3c003c00u};                            // bf16 2^-7 pairs
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int i = 0; i < rounds; ++i) mma_m16n8k16_bf16(acc, a, b, acc);
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc[0];
}

// Writes global memory that an in-flight cp.async still reads (the hardware may read it at
// any point until the wait).
extern "C" __global__ void selftest_cp_async_source_race(float* data) {
    __shared__ __align__(16) float buf[32 * 4];
    int l = threadIdx.x;
    cp_async_16(&buf[l * 4], data + l * 4, 16);
    cp_async_commit();
    data[l * 4] = 2.0f;
    cp_async_wait<0>();
}
