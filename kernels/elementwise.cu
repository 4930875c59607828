// Elementwise ops: GELU (erf form) and its derivative, tanh and ReLU and their derivatives
// from the output (ReLU keeps NaN, as PyTorch's does), residual add, in-place accumulate and scale, dropout, f32 ↔ bf16 casts, the
// per-block partial sums of squares behind gradient norms, and per-column scaling (DoRA).
//
// Decomposition: a grid-stride loop; the maps take four elements per thread per round
// (each_element), the sums of squares one (their per-thread order fixes their bits). Outputs are
// assigned except add_assign (acc += x) and scale (t *= s), which update in place.
// Dropout draws the CPU backend's mask: element i is kept iff the top 24 bits of
// spafit_mix(seed, i) are ≥ threshold; survivors are multiplied by keep_scale = 1/(1−p).
// scale_list_*, add_assign_list_* and sum_squares_list_* do the same as scale_*, add_assign_*
// and sum_squares_partial_* over a whole TensorList in one launch, with the same bits
// (gradient clipping, gradient accumulation over micro-batches, norms).
#include "common.cuh"
#include "tensor_list.cuh"

#define GRID_STRIDE(i, n) for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < (n); i += (long)gridDim.x * blockDim.x)

__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_grad(float x) {
    float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
    return cdf + x * 0.39894228040143268f * expf(-0.5f * x * x);
}

// out[i] = value(i) for every i < n of a grid-stride loop, four per thread per round a grid's
// stride apart: value(i) for all four (their loads in flight together), then the four stores.
// A loop of one element per round waits out each load's latency before the next (on an H200
// these kernels moved their bytes at about half the memory's rate that way). Per element the
// arithmetic is unchanged, so are the results.
template <typename T, typename Value>
__device__ __forceinline__ void each_element(long n, T* out, Value value) {
    const long stride = (long)gridDim.x * blockDim.x;
    for (long first = blockIdx.x * (long)blockDim.x + threadIdx.x; first < n; first += 4 * stride) {
        float v[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const long i = first + k * stride;
            v[k] = i < n ? value(i) : 0.f;
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const long i = first + k * stride;
            if (i < n) store(out, i, v[k]);
        }
    }
}

#define ELEMENTWISE_ENTRIES(T, S)                                                                 \
    extern "C" __global__ void gelu_forward_##S(const T* x, T* y, long n) {                       \
        each_element(n, y, [&](long i) { return gelu(load(x, i)); });                             \
    }                                                                                             \
    /* Over its input: each element is read, then written, by the same thread. */             \
    extern "C" __global__ void gelu_in_place_##S(T* x, long n) {                                  \
        each_element(n, x, [&](long i) { return gelu(load(x, i)); });                             \
    }                                                                                             \
    extern "C" __global__ void gelu_backward_##S(const T* dy, const T* x, T* dx, long n) {        \
        each_element(n, dx, [&](long i) { return load(dy, i) * gelu_grad(load(x, i)); });         \
    }                                                                                             \
    extern "C" __global__ void tanh_forward_##S(const T* x, T* y, long n) {                       \
        each_element(n, y, [&](long i) { return tanhf(load(x, i)); });                            \
    }                                                                                             \
    extern "C" __global__ void tanh_backward_##S(const T* dy, const T* y, T* dx, long n) {        \
        each_element(n, dx,                                                                       \
            [&](long i) {                                                                         \
                float t = load(y, i);                                                             \
                return load(dy, i) * (1.f - t * t);                                               \
            });                                                                                   \
    }                                                                                             \
    extern "C" __global__ void relu_forward_##S(const T* x, T* y, long n) {                       \
        each_element(n, y,                                                                        \
            [&](long i) {                                                                         \
                float v = load(x, i);                                                             \
                return v <= 0.f ? 0.f : v;                                                        \
            });                                                                                   \
    }                                                                                             \
    extern "C" __global__ void relu_backward_##S(const T* dy, const T* y, T* dx, long n) {        \
        each_element(n, dx, [&](long i) { return load(y, i) <= 0.f ? 0.f : load(dy, i); });       \
    }                                                                                             \
    extern "C" __global__ void add_##S(const T* a, const T* b, T* c, long n) {                    \
        each_element(n, c, [&](long i) { return load(a, i) + load(b, i); });                      \
    }                                                                                             \
    extern "C" __global__ void add_assign_##S(T* acc, const T* x, long n) {                       \
        each_element(n, acc, [&](long i) { return load(acc, i) + load(x, i); });                  \
    }                                                                                             \
    extern "C" __global__ void scale_##S(T* t, float s, long n) {                                 \
        each_element(n, t, [&](long i) { return load(t, i) * s; });                               \
    }                                                                                             \
    /* y[i] = z[i]·scale[c] (+ bias[c]), c = i mod cols: DoRA's rescaled output columns. */     \
    extern "C" __global__ void scale_columns_##S(const T* z, const float* scale, const T* bias, T* y, \
                                                 long n, int cols) {                              \
        each_element(n, y, [&](long i) {                                                          \
            const int c = (int)(i % cols);                                                        \
            const float v = load(z, i) * scale[c];                                                \
            return bias ? v + load(bias, c) : v;                                                  \
        });                                                                                       \
    }                                                                                             \
    extern "C" __global__ void dropout_##S(const T* x, T* y, long n, unsigned long long seed,     \
                                           unsigned int threshold, float keep_scale) {            \
        each_element(n, y,                                                                        \
                     [&](long i) { return spafit_keeps(seed, i, threshold) ? load(x, i) * keep_scale : 0.f; }); \
    }                                                                                             \
    /* Per-block partial Σ x² (f32); the host adds the partials in order, in f64. */              \
    extern "C" __global__ void sum_squares_partial_##S(const T* x, float* partial, long n) {      \
        extern __shared__ float scratch[];                                                        \
        float acc = 0.f;                                                                          \
        GRID_STRIDE(i, n) {                                                                       \
            float v = load(x, i);                                                                 \
            acc += v * v;                                                                         \
        }                                                                                         \
        float total = block_sum(acc, scratch);                                                    \
        if (threadIdx.x == 0) partial[blockIdx.x] = total;                                        \
    }                                                                                             \
    extern "C" __global__ void scale_list_##S(TensorList list, float s) {                         \
        ListBlock b = list_block(list);                                                           \
        T* t = (T*)list.operand[b.tensor][0];                                                     \
        LIST_STRIDE(i, b, list.n[b.tensor]) store(t, i, load(t, i) * s);                          \
    }                                                                                             \
    /* acc += x for each pair of the list: operand 0 the accumulator, operand 1 the addend. */  \
    extern "C" __global__ void add_assign_list_##S(TensorList list) {                             \
        ListBlock b = list_block(list);                                                           \
        T* acc = (T*)list.operand[b.tensor][0];                                                   \
        const T* x = (const T*)list.operand[b.tensor][1];                                         \
        LIST_STRIDE(i, b, list.n[b.tensor]) store(acc, i, load(acc, i) + load(x, i));             \
    }                                                                                             \
    /* Each tensor's partials land at its own blocks' indices: partial[first_block[t] + k]. */    \
    extern "C" __global__ void sum_squares_list_##S(TensorList list, float* partial) {            \
        extern __shared__ float scratch[];                                                        \
        ListBlock b = list_block(list);                                                           \
        const T* x = (const T*)list.operand[b.tensor][0];                                         \
        float acc = 0.f;                                                                          \
        LIST_STRIDE(i, b, list.n[b.tensor]) {                                                     \
            float v = load(x, i);                                                                 \
            acc += v * v;                                                                         \
        }                                                                                         \
        float total = block_sum(acc, scratch);                                                    \
        if (threadIdx.x == 0) partial[blockIdx.x] = total;                                        \
    }

ELEMENTWISE_ENTRIES(float, f32)
ELEMENTWISE_ENTRIES(bf16, bf16)

// gelu_forward_f32's output stored rounded to bf16, as the cast the linear maps' products read
// would round it (Backend::gelu_forward_for_products): the cast's bits without the f32 tensor
// between: 6 bytes an element where there were 14.
extern "C" __global__ void gelu_forward_for_products_f32(const float* x, bf16* y, long n) {
    each_element(n, y, [&](long i) { return gelu(x[i]); });
}
extern "C" __global__ void cast_f32_to_bf16(const float* x, bf16* y, long n) {
    each_element(n, y, [&](long i) { return x[i]; });
}
extern "C" __global__ void cast_bf16_to_f32(const bf16* x, float* y, long n) {
    each_element(n, y, [&](long i) { return __bfloat162float(x[i]); });
}
