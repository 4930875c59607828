// LayerNorm over the last dimension: y = (x − mean) · rstd · γ + β, rstd = 1/sqrt(var + eps).
//
// Apply: the forward's y again from x and the saved mean and rstd, for a backward that
// recomputes it rather than keep it (see Backend::recomputes_linear_inputs).
// Forward: one warp per row, LN_ROWS rows a block, the row held in registers (LN_CACHED):
// the mean, then the centred variance, each sum a butterfly of shuffles that leaves every
// lane the same bits. Writes y, mean[row], rstd[row] (mean/rstd always f32). No block
// barrier: a block of one thread per element and two shared-memory trees (what this was)
// spent twenty barriers a row, most of a whole-model test's time on the CPU stand-in.
// Backward: dx — one warp per row, likewise held, and two butterflies (of g = dy·γ and g·x̂);
// dγ, dβ — column reductions over rows in the bias_grad pattern (32×8 threads per 32
// columns and a fixed chunk of rows, fixed order). Every output is assigned; no atomics.
#include "common.cuh"

// Rows a block (one warp each): src/backend/cuda/layernorm.rs launches with the same.
#define LN_ROWS 8

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Elements a lane holds in registers: a row of up to 32 × LN_CACHED (BERT-large's 1024) is
// read from memory once, every load issued before the first sum needs one; the rest of a
// longer row is read again in each pass. A lane's elements are summed in increasing order
// either way.
#define LN_CACHED 32

// One output, its roundings spelled out — (x − mean) and its product with rstd each rounded,
// then one fused multiply-add with γ and β — rather than left to the compiler's contraction,
// which nvcc applies and the CPU stand-in (-ffp-contract=off) does not: the forward and
// layernorm_apply, which recomputes an output from the saved mean and rstd for backward, give
// the same bits, and the stand-in those of a GPU.
__device__ __forceinline__ float ln_output(float v, float mu, float rs, float g, float b) {
    return __fmaf_rn(__fmul_rn(__fsub_rn(v, mu), rs), g, b);
}

// The forward's y from its saved mean and rstd, an element a thread (grid-stride), stored as O.
template <typename T, typename O>
__device__ void ln_apply(const T* x, const float* mean, const float* rstd, const T* gamma,
                         const T* beta, O* y, long total, int n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const long row = i / n;
        const int j = (int)(i - row * n);
        store(y, i, ln_output(load(x, i), mean[row], rstd[row], load(gamma, j), load(beta, j)));
    }
}

template <typename T>
__device__ void ln_forward(const T* x, const T* gamma, const T* beta, T* y, float* mean, float* rstd,
                           int rows, int n, float eps) {
    const long row = (long)blockIdx.x * LN_ROWS + threadIdx.x / 32;
    if (row >= rows) return;  // the whole warp: its shuffles stay full
    const int lane = threadIdx.x % 32;
    const long base = row * n;
    float held[LN_CACHED];
#pragma unroll
    for (int c = 0; c < LN_CACHED; ++c) {
        const int j = lane + 32 * c;
        held[c] = j < n ? load(x, base + j) : 0.f;
    }
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < LN_CACHED; ++c)
        if (lane + 32 * c < n) s += held[c];
    for (int j = lane + 32 * LN_CACHED; j < n; j += 32) s += load(x, base + j);
    const float mu = warp_sum(s) / n;
    float v = 0.f;
#pragma unroll
    for (int c = 0; c < LN_CACHED; ++c) {
        const float d = held[c] - mu;
        if (lane + 32 * c < n) v += d * d;
    }
    for (int j = lane + 32 * LN_CACHED; j < n; j += 32) {
        const float d = load(x, base + j) - mu;
        v += d * d;
    }
    const float rs = rsqrtf(warp_sum(v) / n + eps);
#pragma unroll
    for (int c = 0; c < LN_CACHED; ++c) {
        const int j = lane + 32 * c;
        if (j < n) store(y, base + j, ln_output(held[c], mu, rs, load(gamma, j), load(beta, j)));
    }
    for (int j = lane + 32 * LN_CACHED; j < n; j += 32) {
        store(y, base + j, ln_output(load(x, base + j), mu, rs, load(gamma, j), load(beta, j)));
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

// g = dy·γ and d = x − mean held per element as the forward holds x.
template <typename T>
__device__ void ln_backward_input(const T* dy, const T* x, const float* mean, const float* rstd,
                                  const T* gamma, T* dx, int rows, int n) {
    const long row = (long)blockIdx.x * LN_ROWS + threadIdx.x / 32;
    if (row >= rows) return;  // the whole warp: its shuffles stay full
    const int lane = threadIdx.x % 32;
    const long base = row * n;
    const float mu = mean[row], rs = rstd[row];
    float g_held[LN_CACHED], d_held[LN_CACHED];
#pragma unroll
    for (int c = 0; c < LN_CACHED; ++c) {
        const int j = lane + 32 * c;
        const bool in = j < n;
        g_held[c] = in ? load(dy, base + j) * load(gamma, j) : 0.f;
        d_held[c] = in ? load(x, base + j) - mu : 0.f;
    }
    float sg = 0.f, sgx = 0.f;
#pragma unroll
    for (int c = 0; c < LN_CACHED; ++c) {
        if (lane + 32 * c < n) {
            sg += g_held[c];
            sgx += g_held[c] * d_held[c] * rs;
        }
    }
    for (int j = lane + 32 * LN_CACHED; j < n; j += 32) {
        const float g = load(dy, base + j) * load(gamma, j);
        sg += g;
        sgx += g * (load(x, base + j) - mu) * rs;
    }
    const float mean_g = warp_sum(sg) / n;
    const float mean_gx = warp_sum(sgx) / n;
#pragma unroll
    for (int c = 0; c < LN_CACHED; ++c) {
        const int j = lane + 32 * c;
        if (j < n) store(dx, base + j, rs * (g_held[c] - mean_g - d_held[c] * rs * mean_gx));
    }
    for (int j = lane + 32 * LN_CACHED; j < n; j += 32) {
        float xhat = (load(x, base + j) - mu) * rs;
        store(dx, base + j, rs * (load(dy, base + j) * load(gamma, j) - mean_g - xhat * mean_gx));
    }
}

// dγ[c] = Σ_r dy[r,c]·x̂[r,c] and dβ[c] = Σ_r dy[r,c]; either output may be null. Rows come in
// chunks (blockIdx.y) as in bias_grad.cu: with one chunk the block stores the sums, with several
// it writes f32 partials per chunk ([chunk][n], part_g for dγ and part_b for dβ) that
// column_chunks_sum_* adds in order.
template <typename T>
__device__ void ln_backward_params(const T* dy, const T* x, const float* mean, const float* rstd,
                                   T* dgamma, T* dbeta, float* part_g, float* part_b, int rows, int n,
                                   int rows_per_chunk) {
    __shared__ float pg[8][33];
    __shared__ float pb[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
    const bool want_g = dgamma || part_g;  // dγ requested: x, mean and rstd are read
    float ag = 0.f, ab = 0.f;
    if (c < n) {
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            float g = load(dy, (long)r * n + c);
            ab += g;
            if (want_g) ag += g * (load(x, (long)r * n + c) - mean[r]) * rstd[r];
        }
    }
    pg[threadIdx.y][threadIdx.x] = ag;
    pb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    for (int s = 4; s > 0; s >>= 1) {
        if (threadIdx.y < s) {
            pg[threadIdx.y][threadIdx.x] += pg[threadIdx.y + s][threadIdx.x];
            pb[threadIdx.y][threadIdx.x] += pb[threadIdx.y + s][threadIdx.x];
        }
        __syncthreads();
    }
    if (threadIdx.y == 0 && c < n) {
        const long at = (long)blockIdx.y * n + c;
        if (part_g)
            part_g[at] = pg[0][threadIdx.x];
        else if (dgamma)
            store(dgamma, c, pg[0][threadIdx.x]);
        if (part_b)
            part_b[at] = pb[0][threadIdx.x];
        else if (dbeta)
            store(dbeta, c, pb[0][threadIdx.x]);
    }
}

#define LAYERNORM_ENTRIES(T, S)                                                                  \
    extern "C" __global__ void layernorm_forward_##S(const T* x, const T* gamma, const T* beta,  \
                                                     T* y, float* mean, float* rstd, int rows,   \
                                                     int n, float eps) {                         \
        ln_forward(x, gamma, beta, y, mean, rstd, rows, n, eps);                                 \
    }                                                                                            \
    extern "C" __global__ void layernorm_apply_##S(const T* x, const float* mean,                \
                                                   const float* rstd, const T* gamma,            \
                                                   const T* beta, T* y, long total, int n) {     \
        ln_apply(x, mean, rstd, gamma, beta, y, total, n);                                       \
    }                                                                                            \
    extern "C" __global__ void layernorm_backward_input_##S(const T* dy, const T* x,             \
                                                            const float* mean, const float* rstd,\
                                                            const T* gamma, T* dx, int rows,     \
                                                            int n) {                             \
        ln_backward_input(dy, x, mean, rstd, gamma, dx, rows, n);                                \
    }                                                                                            \
    extern "C" __global__ void layernorm_backward_params_##S(const T* dy, const T* x,            \
                                                             const float* mean,                  \
                                                             const float* rstd, T* dgamma,       \
                                                             T* dbeta, float* part_g,            \
                                                             float* part_b, int rows, int n,     \
                                                             int rows_per_chunk) {               \
        ln_backward_params(dy, x, mean, rstd, dgamma, dbeta, part_g, part_b, rows, n,            \
                           rows_per_chunk);                                                      \
    }

LAYERNORM_ENTRIES(float, f32)
LAYERNORM_ENTRIES(bf16, bf16)

// layernorm_apply_f32's y stored rounded to bf16, as the cast the linear maps' products read
// would round it (Backend::layernorm_apply_for_products): the cast's bits without the f32
// tensor between: 6 bytes an element where there were 14.
extern "C" __global__ void layernorm_apply_for_products_f32(const float* x, const float* mean,
                                                            const float* rstd, const float* gamma,
                                                            const float* beta, bf16* y, long total,
                                                            int n) {
    ln_apply(x, mean, rstd, gamma, beta, y, total, n);
}
