// GEMMs with a narrow output: at most 32 columns (or rows) beside a long other side. These are
// the LoRA bottleneck products of a training step — H = X·Aᵀ and G = s·dY·B ([rows, r]),
// dA = Gᵀ·X ([r, in]) and dB = s·dYᵀ·H ([out, r]) — and a classifier's few outputs. A
// tensor-core tile spends most of its width on padding there and leaves most SMs idle (on an
// H200 the four LoRA products took a quarter of a SPAFIT step, NOTES.md, 2026-12-04), while
// the work is memory-bound: r multiply-adds per element read. So: CUDA cores, one pass over
// the long operand, with loads in flight from every row at once. Same GemmParams, same
// results up to the order of the f32 sums.
//
// gemm_skinny_rows_{kk,kn}_c{8,16}: C[m, j] = Σ_k A[m, k]·B[k, j] with A K-major (X, dY) and
// n ≤ 32, in passes of NC columns (grid.y). A warp owns SKINNY_ROWS_PER_WARP rows; the lanes'
// partial sums meet in a reduce-scatter of shuffles (warp_sums_scattered), one lane storing
// each output, with the bits of a butterfly (a + b == b + a in IEEE arithmetic). Both
// segments.
// gemm_skinny_columns_{m,n}: layout mn (A[m, k] at a[k·lda + m], B[k, n] at b[k·ldb + n]: k
// runs over the rows of activations) with m ≤ 32 (`m`: dA) or n ≤ 32 (`n`: dB), in passes of
// SKINNY_COLUMN_NC narrow entries (grid.y). gridDim.z chunks split k evenly; with more than
// one, chunk z writes slice z of the f32 split-K workspace [split][m][n] and gemm_reduce_*
// (gemm.cu) adds the slices in z order; one chunk writes C. One segment.
//
// Numerics: with GEMM_ROUND_BF16 every operand is rounded to bf16 before it multiplies (the
// tensor cores' precision; the product of two bf16 values is exact in f32), else the f32
// values multiply; sums in f32, in a fixed order. Outputs are assigned. No atomics.
#include "common.cuh"
#include "gemm_params.cuh"

#define SKINNY_WARPS 8          // warps of every block (256 threads)
#define SKINNY_ROWS_PER_WARP 2  // rows kernels: rows of a warp
#define SKINNY_K_CHUNK 128      // rows kernels: k of one staged chunk (32 lanes × 4)
#define SKINNY_COLUMNS 128      // column kernels: long-side columns of a block (32 lanes × 4)
#define SKINNY_ROW_CHUNK 128    // column kernels: k (rows) of one staged chunk
#define SKINNY_COLUMN_NC 8      // column kernels: narrow-side entries of a pass

// Element i of an operand as the product will use it.
__device__ __forceinline__ float skinny_operand(const void* p, bool is_bf16, long long i, bool round) {
    if (is_bf16) return __bfloat162float(static_cast<const bf16*>(p)[i]);
    const float v = static_cast<const float*>(p)[i];
    return round ? __bfloat162float(__float2bfloat16(v)) : v;
}

// Whether an operand's rows can be read four elements at a time (one 16-byte load of f32 or
// 8-byte load of bf16: four times the bytes in flight per instruction, which is what these
// memory-bound kernels live on).
__device__ __forceinline__ bool skinny_vector(const void* p, bool is_bf16, long long ld) {
    return ld % 4 == 0 && reinterpret_cast<uintptr_t>(p) % (is_bf16 ? 8 : 16) == 0;
}

// Elements i .. i+3 of an operand (those past `valid` are 0), as the product will use them.
__device__ __forceinline__ void skinny_operand4(const void* p, bool is_bf16, long long i, bool vec, int valid,
                                                bool round, float v[4]) {
    if (vec && valid >= 4 && is_bf16) {
        // A bf16 is the high half of the f32 with the same value.
        const uint2 u = *reinterpret_cast<const uint2*>(static_cast<const bf16*>(p) + i);
        v[0] = __uint_as_float(u.x << 16), v[1] = __uint_as_float(u.x & 0xffff0000u);
        v[2] = __uint_as_float(u.y << 16), v[3] = __uint_as_float(u.y & 0xffff0000u);
    } else if (vec && valid >= 4) {
        const float4 f = *reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
        v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
        if (round)
#pragma unroll
            for (int e = 0; e < 4; ++e) v[e] = __bfloat162float(__float2bfloat16(v[e]));
    } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = e < valid ? skinny_operand(p, is_bf16, i + e, round) : 0.f;
    }
}

// C at `at` (column `col`) = alpha · sum (+ bias[col]), in C's dtype.
__device__ __forceinline__ void skinny_store(const GemmParams& p, long long at, int col, float sum) {
    float out = p.alpha * sum;
    if (p.bias)
        out += p.flags & GEMM_BIAS_BF16 ? load(static_cast<const bf16*>(p.bias), col)
                                        : static_cast<const float*>(p.bias)[col];
    if (p.flags & GEMM_C_BF16)
        store(static_cast<bf16*>(p.c), at, out);
    else
        static_cast<float*>(p.c)[at] = out;
}

// The warp's sums of the first N of a lane's values, a power of two up to 32: at each step a
// lane keeps half of its values and adds to them its partner's partials of the same values,
// sending the other half (N/2 + N/4 + ... shuffles, not 5·N). Afterwards lane l holds the whole
// sum of value l / (32 / N) in vals[0]. Bitwise the butterfly's sums (every
// `v += shfl_xor(v, offset)`): the same partials meet in the same tree, and a + b == b + a.
// Templates, not loops, so every index is a constant and the values stay in registers.
template <int N, int OFFSET = 16, int V>
__device__ __forceinline__ void warp_sums_scattered(float (&vals)[V], int lane) {
    static_assert(N >= 1 && N <= V && N <= 2 * OFFSET && (N & (N - 1)) == 0, "a power of two up to a warp");
    if constexpr (N > 1) {
        constexpr int HALF = N / 2;
        const bool upper = lane & OFFSET;
#pragma unroll
        for (int i = 0; i < HALF; ++i) {
            const float keep = upper ? vals[i + HALF] : vals[i];
            const float send = upper ? vals[i] : vals[i + HALF];
            vals[i] = keep + __shfl_xor_sync(0xffffffffu, send, OFFSET);
        }
    } else {
        vals[0] += __shfl_xor_sync(0xffffffffu, vals[0], OFFSET);
    }
    if constexpr (OFFSET > 1) warp_sums_scattered<(N > 1 ? N / 2 : 1), OFFSET / 2>(vals, lane);
}

// Rows kernels. Per chunk of SKINNY_K_CHUNK k, the block stages the narrow operand's
// [NC][chunk] slice in shared memory, rounded once there, and lane l multiplies its rows'
// k = 4l .. 4l+3 (one 16-byte load per row) into NC sums per row; the next chunk's rows are
// loaded before this chunk is multiplied, so a warp always has loads in flight.
template <bool B_KMAJOR, int NC>
__device__ void skinny_rows(const GemmParams& p) {
    constexpr int R = SKINNY_ROWS_PER_WARP, KC = SKINNY_K_CHUNK, THREADS = SKINNY_WARPS * 32;
    constexpr int LD = KC + 4;  // row padding: staging with j fastest spreads over the banks
    __shared__ __align__(16) float bs[NC * LD];
    const int lane = threadIdx.x % 32;
    const int row0 = (blockIdx.x * SKINNY_WARPS + threadIdx.x / 32) * R;
    const int j0 = blockIdx.y * NC;
    const bool round = p.flags & GEMM_ROUND_BF16;
    float acc[R][NC];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int j = 0; j < NC; ++j) acc[r][j] = 0.f;
#pragma unroll
    for (int seg = 0; seg < 2; ++seg) {
        const GemmSegment s = gemm_segment(p, seg);
        const int K = s.k;
        const void *a = s.a, *b = s.b;
        const long long lda = s.lda, ldb = s.ldb;
        const bool a_bf16 = s.a_bf16, b_bf16 = s.b_bf16;
        // f32 rows only: with the 8-byte bf16 path too, ptxas gives the NC = 8 kernels 80
        // registers a thread instead of 64 (3 blocks an SM instead of 4). The mixed-precision
        // step hands these kernels f32 rows (X, dY: gemm.rs keeps a narrow product off the
        // rounded copies); bf16 ones come from the bf16-storage mode.
        const bool a_vec = !a_bf16 && skinny_vector(a, a_bf16, lda);
        float x[R][4], next[R][4] = {};
        auto load_rows = [&](int kc, float (*dst)[4]) {
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const int row = row0 + r, k = kc + 4 * lane;
                const int valid = row < p.m ? min(K - k, 4) : 0;
                skinny_operand4(a, a_bf16, (long long)row * lda + k, a_vec, valid, round, dst[r]);
            }
        };
        load_rows(0, x);
        for (int kc = 0; kc < K; kc += KC) {
            __syncthreads();  // the previous chunk's slice is consumed
            for (int e = threadIdx.x; e < NC * KC; e += THREADS) {
                // Consecutive threads walk the operand's contiguous dimension.
                const int j = B_KMAJOR ? e / KC : e % NC, kk = B_KMAJOR ? e % KC : e / NC;
                const int col = j0 + j, k = kc + kk;
                bs[j * LD + kk] = col < p.n && k < K
                                      ? skinny_operand(b, b_bf16, B_KMAJOR ? col * ldb + k : k * ldb + col, round)
                                      : 0.f;
            }
            __syncthreads();
            if (kc + KC < K) load_rows(kc + KC, next);
#pragma unroll
            for (int j = 0; j < NC; ++j) {
                const float4 w = *reinterpret_cast<const float4*>(bs + j * LD + 4 * lane);
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    acc[r][j] = fmaf(x[r][0], w.x, acc[r][j]);
                    acc[r][j] = fmaf(x[r][1], w.y, acc[r][j]);
                    acc[r][j] = fmaf(x[r][2], w.z, acc[r][j]);
                    acc[r][j] = fmaf(x[r][3], w.w, acc[r][j]);
                }
            }
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int e = 0; e < 4; ++e) x[r][e] = next[r][e];
        }
    }
    // Every lane takes part in every shuffle, rows past m included, so the warp stays whole.
    constexpr int V = R * NC;
    static_assert(V <= 32, "a warp's sums fit its lanes");
    float sums[V];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int j = 0; j < NC; ++j) sums[r * NC + j] = acc[r][j];
    warp_sums_scattered<V>(sums, lane);
    constexpr int LANES_PER_SUM = 32 / V;
    const int mine = lane / LANES_PER_SUM;
    const int row = row0 + mine / NC, col = j0 + mine % NC;
    if (lane % LANES_PER_SUM == 0 && row < p.m && col < p.n) skinny_store(p, (long long)row * p.ldc + col, col, sums[0]);
}

// Column kernels. Block (x, y, z) owns SKINNY_COLUMNS columns of the long side, the narrow
// entries j0 .. j0+NC (pass y) and the k range of chunk z. Per SKINNY_ROW_CHUNK rows the block
// stages the narrow operand's rows (rounded once); warp w takes rows w, w+8, ... of them, lane
// l the columns 4l .. 4l+3 (one load per row: 16 bytes of f32, 8 of bf16). The warps' sums
// meet in shared memory, added in warp order.
template <bool SMALL_M>
__device__ void skinny_columns(const GemmParams& p) {
    constexpr int NC = SKINNY_COLUMN_NC, RC = SKINNY_ROW_CHUNK, BC = SKINNY_COLUMNS, W = SKINNY_WARPS;
    constexpr int THREADS = W * 32;
    __shared__ __align__(16) float ns[RC * NC];
    __shared__ float part[W * NC * BC];
    const int wide = SMALL_M ? p.n : p.m, narrow = SMALL_M ? p.m : p.n;
    // The long side's operand, (k, c) at w[k·ldw + c], and the narrow side's, (k, j) at s[k·lds + j].
    const void* w = SMALL_M ? p.b[0] : p.a[0];
    const void* s = SMALL_M ? p.a[0] : p.b[0];
    const long long ldw = SMALL_M ? p.ldb[0] : p.lda[0], lds = SMALL_M ? p.lda[0] : p.ldb[0];
    const bool w_bf16 = p.flags & (SMALL_M ? GEMM_B0_BF16 : GEMM_A0_BF16);
    const bool s_bf16 = p.flags & (SMALL_M ? GEMM_A0_BF16 : GEMM_B0_BF16);
    const bool round = p.flags & GEMM_ROUND_BF16;
    const bool w_vec = skinny_vector(w, w_bf16, ldw);
    const int K = p.k[0];
    const int per = (K + p.split - 1) / p.split;
    const int k_begin = blockIdx.z * per, k_end = min(K, k_begin + per);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int c = blockIdx.x * BC + 4 * lane;
    const int j0 = blockIdx.y * NC;
    float acc[4][NC];
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int j = 0; j < NC; ++j) acc[u][j] = 0.f;
    for (int r0 = k_begin; r0 < k_end; r0 += RC) {
        const int rows = min(RC, k_end - r0);
        __syncthreads();  // the previous chunk's rows are consumed
        for (int e = threadIdx.x; e < RC * NC; e += THREADS) {
            const int r = e / NC, j = e % NC;
            ns[e] = r < rows && j0 + j < narrow ? skinny_operand(s, s_bf16, (long long)(r0 + r) * lds + j0 + j, round)
                                                : 0.f;
        }
        __syncthreads();
#pragma unroll 4
        for (int r = warp; r < rows; r += W) {
            float wv[4];
            skinny_operand4(w, w_bf16, (long long)(r0 + r) * ldw + c, w_vec, min(wide - c, 4), round, wv);
#pragma unroll
            for (int j = 0; j < NC; ++j) {
                const float sv = ns[r * NC + j];
#pragma unroll
                for (int u = 0; u < 4; ++u) acc[u][j] = fmaf(sv, wv[u], acc[u][j]);
            }
        }
    }
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int j = 0; j < NC; ++j) part[(warp * NC + j) * BC + 4 * lane + u] = acc[u][j];
    __syncthreads();
    for (int e = threadIdx.x; e < NC * BC; e += THREADS) {
        const int j = e / BC, cc = e % BC;
        const int col_wide = blockIdx.x * BC + cc, jj = j0 + j;
        if (col_wide >= wide || jj >= narrow) continue;
        float sum = 0.f;
        for (int v = 0; v < W; ++v) sum += part[(v * NC + j) * BC + cc];
        const int row = SMALL_M ? jj : col_wide, col = SMALL_M ? col_wide : jj;
        if (p.split > 1)
            static_cast<float*>(p.c)[((long long)blockIdx.z * p.m + row) * p.n + col] = sum;
        else
            skinny_store(p, (long long)row * p.ldc + col, col, sum);
    }
}

#define GEMM_SKINNY_ROWS(LAYOUT, B_KMAJOR, NC)                                                          \
    extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32)                                     \
        gemm_skinny_rows_##LAYOUT##_c##NC(GemmParams p) {                                               \
        skinny_rows<B_KMAJOR, NC>(p);                                                                   \
    }
#define GEMM_SKINNY_COLUMNS(SIDE, SMALL_M)                                                              \
    extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32) gemm_skinny_columns_##SIDE(GemmParams p) { \
        skinny_columns<SMALL_M>(p);                                                                     \
    }

GEMM_SKINNY_ROWS(kk, true, 8)
GEMM_SKINNY_ROWS(kk, true, 16)
GEMM_SKINNY_ROWS(kn, false, 8)
GEMM_SKINNY_ROWS(kn, false, 16)
GEMM_SKINNY_COLUMNS(m, true)
GEMM_SKINNY_COLUMNS(n, false)
