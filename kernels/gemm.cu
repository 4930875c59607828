// Linear maps with fused LoRA and every GEMM of their backward, as one kernel family:
//
//     C[m, n] = alpha · Σ_s Σ_k A_s[m, k] · B_s[k, n]  (+ bias[n])
//
// over one or two segments s that share the output, so `[X | H]·[W | s·B]ᵀ` (the LoRA term
// as r extra reduction columns) is a single GEMM. Operand layouts, per template:
//   A_KMAJOR: A[m, k] at a[m·lda + k] (K contiguous), else a[k·lda + m] (M contiguous);
//   B_KMAJOR: B[k, n] at b[n·ldb + k] (a weight W[out][in] as Wᵀ), else b[k·ldb + n].
// The linear map's GEMMs: Y = X·Wᵀ (A K, B K); dX = dY·W, G = dY·B_lora (A K, B N);
// dW = dYᵀ·X, dA = Gᵀ·X, dB = dYᵀ·H (A M, B N).
//
// Tensor cores (gemm_tc_*): mma.sync m16n8k16 on bf16 with f32 accumulation, fed by
// ldmatrix from padded shared memory (rows padded by 8 elements: conflict-free ldmatrix
// rows) filled by a STAGES-deep pipeline, all through tensor_core.cuh. A BM×BN block tile of
// WM×WN warps, BK-deep k-tiles. Each operand (per segment), the bias and the output is bf16 or
// f32 in global memory (GemmParams::flags): bf16 operands whose rows are 16-byte aligned are
// staged with cp.async, f32 operands are loaded, rounded to bf16 on the way into shared memory
// (the mixed-precision path: f32 activations, bf16 frozen weights, bf16 tensor-core math) and
// anything unaligned (an odd K or LoRA rank) element by element. Edges are zero-filled, so any
// M, N, K works.
// Exact f32 (gemm_f32_*): a plain 64×64 tiled kernel (16×16 threads, 4×4 outputs each), FMA.
//
// Outputs are assigned. Deterministic: each output element is one thread's sum in a fixed
// k order; with split-K (gridDim.z = split > 1, for long reductions into small outputs) block z
// sums a fixed range of k-tiles into its own f32 workspace slice and gemm_reduce_* adds the
// slices in z order. No atomics.
#include "common.cuh"
#include "gemm_params.cuh"
#include "tensor_core.cuh"

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Two adjacent outputs in one store (the address aligned for it).
__device__ __forceinline__ void store_pair(float* c, const float v[2]) {
    *reinterpret_cast<float2*>(c) = make_float2(v[0], v[1]);
}
__device__ __forceinline__ void store_pair(bf16* c, const float v[2]) {
    *reinterpret_cast<__nv_bfloat162*>(c) = __floats2bfloat162_rn(v[0], v[1]);
}
// v[0] at c[0] and, where the row has a second column (`both`), v[1] at c[1]: in one store
// where `pair` says the address is aligned for it, rounded as store() rounds either way.
template <typename T>
__device__ __forceinline__ void store_two(T* c, const float v[2], bool pair, bool both) {
    if (pair && both) {
        store_pair(c, v);
    } else {
        store(c, 0, v[0]);
        if (both) store(c, 1, v[1]);
    }
}

// The k-tiles [begin, end) of block z over both segments.
__device__ __forceinline__ void tile_range(const GemmParams& p, int bk, int* t0, int* begin, int* end) {
    *t0 = ceil_div(p.k[0], bk);
    int total = *t0 + ceil_div(p.k[1], bk);
    int per = ceil_div(total, p.split);
    *begin = blockIdx.z * per;
    *end = min(total, *begin + per);
}

// ---------------------------------------------------------------- bf16, tensor cores

template <bool A_KMAJOR, bool B_KMAJOR, int BM, int BN, int BK, int WM, int WN, int STAGES>
struct TcGemm {
    static constexpr int THREADS = WM * WN * 32;
    static constexpr int WTM = BM / WM, WTN = BN / WN;  // one warp's tile
    static constexpr int MI = WTM / 16, NI = WTN / 8;   // mma tiles per warp
    static constexpr int PAD = 8;
    static constexpr int A_COLS = (A_KMAJOR ? BK : BM) + PAD;
    static constexpr int B_COLS = (B_KMAJOR ? BK : BN) + PAD;
    static constexpr int A_TILE = (A_KMAJOR ? BM : BK) * A_COLS;
    static constexpr int B_TILE = (B_KMAJOR ? BN : BK) * B_COLS;
    static constexpr int SMEM_BYTES = STAGES * (A_TILE + B_TILE) * 2;
    static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile: multiples of 16");
    static_assert(BK % 16 == 0, "BK: multiple of 16");

    // Stages rows × 8-element chunks of one operand tile. `rows` runs over the contiguous
    // dimension's partner (m or n for K-major, k otherwise); `valid` is how many of the 8
    // elements at a chunk exist. bf16 sources go by cp.async when aligned; f32 sources are
    // rounded to bf16 on the way.
    template <int ROWS, int COLS, int LD_SMEM>
    static __device__ __forceinline__ void stage(bf16* dst, const void* src, bool src_bf16, long long ld, int row0,
                                                 int row_limit, int col0, int col_limit) {
        constexpr int CHUNKS = ROWS * (COLS / 8);
        const bool vec = src_bf16 ? ld % 8 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0
                                  : ld % 4 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0;
        // The common case, uniform across the block: an aligned bf16 tile wholly inside the
        // operand. Each thread's chunks sit at fixed offsets, so staging is one address and
        // one cp.async per chunk; the general loop below spends some twenty integer
        // instructions per chunk on bounds, and on an H200 the integer pipe, not the tensor
        // cores, was the kernel's busiest (ncu).
        if constexpr (CHUNKS % THREADS == 0) {
            if (src_bf16 && vec && row0 + ROWS <= row_limit && col0 + COLS <= col_limit) {
                const bf16* s = static_cast<const bf16*>(src) + (long long)row0 * ld + col0;
#pragma unroll
                for (int j = 0; j < CHUNKS / THREADS; ++j) {
                    const int c = threadIdx.x + j * THREADS;
                    const int r = c / (COLS / 8), cc = (c % (COLS / 8)) * 8;
                    cp_async_16(dst + r * LD_SMEM + cc, s + r * ld + cc, 16);
                }
                return;
            }
        }
        for (int c = threadIdx.x; c < CHUNKS; c += THREADS) {
            int r = c / (COLS / 8), cc = (c % (COLS / 8)) * 8;
            int gr = row0 + r, gc = col0 + cc;
            int valid = gr < row_limit ? min(max(col_limit - gc, 0), 8) : 0;
            bf16* d = dst + r * LD_SMEM + cc;
            const long long at = valid ? gr * ld + gc : 0;
            if (src_bf16) {
                const bf16* s = static_cast<const bf16*>(src) + at;
                if (vec) {
                    cp_async_16(d, s, valid * 2);
                } else {
#pragma unroll
                    for (int e = 0; e < 8; ++e) d[e] = e < valid ? s[e] : __float2bfloat16(0.f);
                }
            } else {
                const float* s = static_cast<const float*>(src) + at;
                float v[8];
                if (vec && valid == 8) {
                    const float4 lo = *reinterpret_cast<const float4*>(s);
                    const float4 hi = *reinterpret_cast<const float4*>(s + 4);
                    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
                    v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
                } else {
#pragma unroll
                    for (int e = 0; e < 8; ++e) v[e] = e < valid ? s[e] : 0.f;
                }
#pragma unroll
                for (int e = 0; e < 8; ++e) d[e] = __float2bfloat16(v[e]);
            }
        }
    }

    static __device__ void load_tile(const GemmParams& p, bf16* As, bf16* Bs, int tile, int t0, int m0, int n0) {
        const int seg = tile < t0 ? 0 : 1;
        const int kbase = (tile - (seg ? t0 : 0)) * BK;
        // gemm_segment's values, spelled out: through it ptxas schedules this kernel
        // differently (other PTX for the large tile, other register counts for the small
        // ones), and the kernel as it is was the one timed on an H200.
        const int K = seg ? p.k[1] : p.k[0];
        const void* a = seg ? p.a[1] : p.a[0];
        const void* b = seg ? p.b[1] : p.b[0];
        const long long lda = seg ? p.lda[1] : p.lda[0], ldb = seg ? p.ldb[1] : p.ldb[0];
        const bool a_bf16 = p.flags & (seg ? GEMM_A1_BF16 : GEMM_A0_BF16);
        const bool b_bf16 = p.flags & (seg ? GEMM_B1_BF16 : GEMM_B0_BF16);
        if (A_KMAJOR)
            stage<BM, BK, A_COLS>(As, a, a_bf16, lda, m0, p.m, kbase, K);
        else
            stage<BK, BM, A_COLS>(As, a, a_bf16, lda, kbase, K, m0, p.m);
        if (B_KMAJOR)
            stage<BN, BK, B_COLS>(Bs, b, b_bf16, ldb, n0, p.n, kbase, K);
        else
            stage<BK, BN, B_COLS>(Bs, b, b_bf16, ldb, kbase, K, n0, p.n);
    }

    static __device__ void run(const GemmParams& p) {
        extern __shared__ __align__(16) unsigned char smem[];
        bf16* As = reinterpret_cast<bf16*>(smem);
        bf16* Bs = As + STAGES * A_TILE;
        const int m0 = (blockIdx.y + p.m_block0) * BM, n0 = blockIdx.x * BN;
        const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
        const int wm = warp / WN, wn = warp % WN;
        int t0, begin, end;
        tile_range(p, BK, &t0, &begin, &end);

        float acc[MI][NI][4];
        #pragma unroll
        for (int i = 0; i < MI; ++i)
            #pragma unroll
            for (int j = 0; j < NI; ++j)
                #pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

        // Prologue: the first STAGES - 1 tiles in flight. Every thread commits a group per
        // tile slot, empty or not, so group counts stay in step.
        #pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (begin + s < end) load_tile(p, As + s * A_TILE, Bs + s * B_TILE, begin + s, t0, m0, n0);
            cp_async_commit();
        }
        for (int tile = begin; tile < end; ++tile) {
            const int s = (tile - begin) % STAGES;
            cp_async_wait<STAGES - 2>();
            __syncthreads();  // tile's data visible to all; the stage refilled below is free
            const int next = tile + STAGES - 1;
            if (next < end) {
                const int ns = (next - begin) % STAGES;
                load_tile(p, As + ns * A_TILE, Bs + ns * B_TILE, next, t0, m0, n0);
            }
            cp_async_commit();
            const bf16* as = As + s * A_TILE;
            const bf16* bs = Bs + s * B_TILE;
            #pragma unroll
            for (int kk = 0; kk < BK; kk += 16) {
                uint32_t af[MI][4], bfrag[NI][2];
                #pragma unroll
                for (int i = 0; i < MI; ++i) {
                    const int row0 = wm * WTM + i * 16;
                    if (A_KMAJOR)
                        ldmatrix<4, false>(af[i], as + (row0 + lane % 8 + 8 * (lane / 8 % 2)) * A_COLS + kk + 8 * (lane / 16));
                    else
                        ldmatrix<4, true>(af[i], as + (kk + lane % 8 + 8 * (lane / 16)) * A_COLS + row0 + 8 * (lane / 8 % 2));
                }
                #pragma unroll
                for (int j = 0; j < NI; j += 2) {
                    const int col0 = wn * WTN + j * 8;
                    uint32_t r[4];
                    if (B_KMAJOR)
                        ldmatrix<4, false>(r, bs + (col0 + lane % 8 + 8 * (lane / 16)) * B_COLS + kk + 8 * (lane / 8 % 2));
                    else
                        ldmatrix<4, true>(r, bs + (kk + lane % 8 + 8 * (lane / 8 % 2)) * B_COLS + col0 + 8 * (lane / 16));
                    bfrag[j][0] = r[0];
                    bfrag[j][1] = r[1];
                    bfrag[j + 1][0] = r[2];
                    bfrag[j + 1][1] = r[3];
                }
                #pragma unroll
                for (int i = 0; i < MI; ++i)
                    #pragma unroll
                    for (int j = 0; j < NI; ++j) mma_m16n8k16_bf16(acc[i][j], af[i], bfrag[j], acc[i][j]);
            }
        }
        cp_async_wait<0>();

        // The epilogue runs once per block while its tensor cores idle, and it spent a dozen
        // instructions an element on flags, bounds, a bias load and a 2-byte store. So the
        // bias is loaded once per column pair and an aligned pair of adjacent columns (a
        // thread's two accumulators in a row) is stored at once: the large tile's sm_90 code
        // after its last mma went from 4190 instructions to 2575. Same arithmetic per
        // element, so the same bits.
        const int g = lane / 4, t = lane % 4;
        const bool c_bf16 = p.flags & GEMM_C_BF16;
        const int c_align = c_bf16 ? 4 : 8;
        const bool pairs = p.split > 1 ? p.n % 2 == 0 && reinterpret_cast<uintptr_t>(p.c) % 8 == 0
                                       : p.ldc % 2 == 0 && reinterpret_cast<uintptr_t>(p.c) % c_align == 0;
        #pragma unroll
        for (int j = 0; j < NI; ++j) {
            const int col = n0 + wn * WTN + j * 8 + 2 * t;  // even: a pair's first column
            if (col >= p.n) continue;
            const bool both = col + 1 < p.n;
            float bias[2] = {0.f, 0.f};
            if (p.split == 1 && p.bias) {
                #pragma unroll
                for (int e = 0; e < 2; ++e)
                    if (e == 0 || both)
                        bias[e] = p.flags & GEMM_BIAS_BF16 ? load(static_cast<const bf16*>(p.bias), col + e)
                                                           : static_cast<const float*>(p.bias)[col + e];
            }
            #pragma unroll
            for (int i = 0; i < MI; ++i)
                #pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int row = m0 + wm * WTM + i * 16 + g + 8 * h;
                    if (row >= p.m) continue;
                    float v[2] = {acc[i][j][2 * h], acc[i][j][2 * h + 1]};
                    if (p.split > 1) {
                        store_two(static_cast<float*>(p.c) + ((long long)blockIdx.z * p.m + row) * p.n + col, v,
                                  pairs, both);
                        continue;
                    }
                    #pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        v[e] *= p.alpha;
                        if (p.bias) v[e] += bias[e];
                    }
                    const long long at = row * p.ldc + col;
                    if (c_bf16)
                        store_two(static_cast<bf16*>(p.c) + at, v, pairs, both);
                    else
                        store_two(static_cast<float*>(p.c) + at, v, pairs, both);
                }
        }
    }
};

// ---------------------------------------------------------------- f32, plain FMA

template <bool A_KMAJOR, bool B_KMAJOR>
__device__ void gemm_f32(const GemmParams& p) {
    constexpr int BM = 64, BN = 64, BK = 16;
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int m0 = (blockIdx.y + p.m_block0) * BM, n0 = blockIdx.x * BN;
    int t0, begin, end;
    tile_range(p, BK, &t0, &begin, &end);
    float acc[4][4] = {};
    for (int tile = begin; tile < end; ++tile) {
        const int seg = tile < t0 ? 0 : 1;
        const int kbase = (tile - (seg ? t0 : 0)) * BK;
        const GemmSegment s = gemm_segment(p, seg);
        const int K = s.k;
        const float* a = static_cast<const float*>(s.a);
        const float* b = static_cast<const float*>(s.b);
        const long long lda = s.lda, ldb = s.ldb;
        for (int e = threadIdx.x; e < BM * BK; e += 256) {
            // Consecutive threads walk the operand's contiguous dimension.
            int mm = A_KMAJOR ? e / BK : e % BM, kk = A_KMAJOR ? e % BK : e / BM;
            int gm = m0 + mm, gk = kbase + kk;
            As[kk][mm] = gm < p.m && gk < K ? a[A_KMAJOR ? gm * lda + gk : gk * lda + gm] : 0.f;
            int nn = B_KMAJOR ? e / BK : e % BN, kb = B_KMAJOR ? e % BK : e / BN;
            int gn = n0 + nn, gkb = kbase + kb;
            Bs[kb][nn] = gn < p.n && gkb < K ? b[B_KMAJOR ? gn * ldb + gkb : gkb * ldb + gn] : 0.f;
        }
        __syncthreads();
        #pragma unroll
        for (int k = 0; k < BK; ++k) {
            float av[4], bv[4];
            #pragma unroll
            for (int i = 0; i < 4; ++i) av[i] = As[k][ty + 16 * i];
            #pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = Bs[k][tx + 16 * j];
            #pragma unroll
            for (int i = 0; i < 4; ++i)
                #pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
    #pragma unroll
    for (int i = 0; i < 4; ++i)
        #pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int row = m0 + ty + 16 * i, col = n0 + tx + 16 * j;
            if (row >= p.m || col >= p.n) continue;
            float* c = static_cast<float*>(p.c);
            if (p.split > 1) {
                c[((long long)blockIdx.z * p.m + row) * p.n + col] = acc[i][j];
            } else {
                float out = p.alpha * acc[i][j];
                if (p.bias) out += static_cast<const float*>(p.bias)[col];
                c[row * p.ldc + col] = out;
            }
        }
}

// ---------------------------------------------------------------- split-K reduction

// out[i] = alpha · Σ_z ws[z][i] (+ bias[i % n]), z in increasing order. The 64-bit division
// and remainder that place an element (a hundred-odd instructions, more than the element's
// memory traffic costs) run only where needed: a bias, or output rows that are not packed.
template <typename T, typename TBias>
__device__ void gemm_reduce(const float* ws, int split, long long count, int n, float alpha, const TBias* bias, T* out,
                            long long ldc) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x) {
        float s = 0.f;
        for (int z = 0; z < split; ++z) s += ws[z * count + i];
        float v = alpha * s;
        if (bias || ldc != n) {
            const int col = static_cast<int>(i % n);
            if (bias) v += load(bias, col);
            store(out, (i / n) * ldc + col, v);
        } else {
            store(out, i, v);
        }
    }
}

// ---------------------------------------------------------------- entry points

#define GEMM_TC(LAYOUT, AK, BK_, BM, BN, BKT, WM, WN, ST)                                                   \
    extern "C" __global__ void __launch_bounds__(WM * WN * 32)                                              \
        gemm_tc_##LAYOUT##_##BM##x##BN##x##BKT##_w##WM##x##WN##_s##ST(GemmParams p) {                    \
        TcGemm<AK, BK_, BM, BN, BKT, WM, WN, ST>::run(p);                                                   \
    }

// The tile configurations the GPU check sweeps (src/backend/cuda/gemm.rs lists the same).
#define GEMM_TC_CONFIGS(LAYOUT, AK, BK_)                 \
    GEMM_TC(LAYOUT, AK, BK_, 128, 128, 32, 2, 4, 3)     \
    GEMM_TC(LAYOUT, AK, BK_, 128, 256, 32, 2, 4, 3)     \
    GEMM_TC(LAYOUT, AK, BK_, 128, 64, 32, 2, 2, 4)      \
    GEMM_TC(LAYOUT, AK, BK_, 64, 128, 32, 2, 2, 4)      \
    GEMM_TC(LAYOUT, AK, BK_, 64, 64, 32, 2, 2, 4)       \
    GEMM_TC(LAYOUT, AK, BK_, 64, 64, 64, 2, 2, 3)       \
    GEMM_TC(LAYOUT, AK, BK_, 128, 128, 64, 2, 4, 3)     \
    GEMM_TC(LAYOUT, AK, BK_, 128, 128, 32, 2, 4, 4)     \
    GEMM_TC(LAYOUT, AK, BK_, 128, 128, 64, 2, 4, 2)     \
    GEMM_TC(LAYOUT, AK, BK_, 128, 128, 64, 2, 2, 3)     \
    GEMM_TC(LAYOUT, AK, BK_, 128, 128, 32, 2, 2, 4)

GEMM_TC_CONFIGS(kk, true, true)
GEMM_TC_CONFIGS(kn, true, false)
GEMM_TC_CONFIGS(mn, false, false)

extern "C" __global__ void __launch_bounds__(256) gemm_f32_kk(GemmParams p) { gemm_f32<true, true>(p); }
extern "C" __global__ void __launch_bounds__(256) gemm_f32_kn(GemmParams p) { gemm_f32<true, false>(p); }
extern "C" __global__ void __launch_bounds__(256) gemm_f32_mn(GemmParams p) { gemm_f32<false, false>(p); }

extern "C" __global__ void gemm_reduce_f32(const float* ws, int split, long long count, int n, float alpha,
                                           const float* bias, float* out, long long ldc) {
    gemm_reduce(ws, split, count, n, alpha, bias, out, ldc);
}
extern "C" __global__ void gemm_reduce_bf16(const float* ws, int split, long long count, int n, float alpha,
                                            const bf16* bias, bf16* out, long long ldc) {
    gemm_reduce(ws, split, count, n, alpha, bias, out, ldc);
}
// f32 sums with an f32 bias, stored in bf16: an output for products (attention's inputs).
extern "C" __global__ void gemm_reduce_bf16_bias_f32(const float* ws, int split, long long count, int n, float alpha,
                                                     const float* bias, bf16* out, long long ldc) {
    gemm_reduce(ws, split, count, n, alpha, bias, out, ldc);
}
