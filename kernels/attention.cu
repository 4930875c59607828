// Fused multi-head self-attention, forward and backward (FlashAttention-2 style): the
// forward never writes the [seq, seq] scores or probabilities anywhere but registers and
// saves one log-sum-exp per query row; the backward recomputes the probabilities from it.
//
// Layout: q, k, v, out and their gradients are [rows, ld] with head h in columns
// [h·D, (h+1)·D). Sequences are indexed by start offsets (`starts[b]` .. `starts[b+1]`, the
// varlen interface), so a padded batch (starts = 0, S, 2S, …) and a packed one (no padding
// rows at all) are the same kernel. A key j of sequence b is attended iff j < its length and
// mask[b·mask_stride + j] != 0 (mask may be null). A query whose keys are all masked gets a
// zero context and lse = 0 (the CPU reference's convention). lse and delta are
// [batch][heads][max_seq] f32.
//
// Dropout on the probabilities draws the CPU's mask (src/rng.rs) for element (b, h, i, j) at
// counter ((b·heads + h)·max_seq + i)·max_seq + j.
//
// A relative position bias (MPNet's; pos_bias, may be null) [2·max_seq − 1][heads] f32 adds
// pos_bias[max_seq − 1 + j − i][h] to head h's scaled score of query i for key j, in every
// kernel that computes a score, as one fused multiply-add with the scale: s·scale + (bias +
// key bias) forward, s·scale + (bias − lse) backward. The tensor-core kernels add it only in
// their `_pb` instantiations (one stage buffer): the index arithmetic and loads in their
// unrolled loops cost up to 88 registers and spills at head dim 128 (ptxas -v, sm_90), which
// the kernels of every other model must not pay. The exact kernels test pos_bias at run time
// (one register). Its gradient has two kernels of their own (attention_position_bias_*).
//
// Backward: delta_i = Σ_j P_ij·dP̃_ij first, recomputed from the operands dS uses (tensor
// cores: in the dQ kernel; exact f32: in a pass of the dQ kernel's loop of its own), so the
// forward's output is never read and need not be kept; then one kernel per key tile for dK,
// dV and one per query tile for dQ, each summing over the other dimension in a fixed order
// inside one block: deterministic, no atomics (at the price of recomputing the scores in
// each).
//
// Tensor cores (attention_*_tc_<storage>_d<DP>_s<stages>): mma.sync on bf16 with f32
// accumulation, on 64-row tiles, 4 warps of 16 rows; the head dim is padded to DP ∈ {32, 64,
// 128} with zeros; the streamed tiles in one stage buffer or two (`stream_tiles`).
// Storage is bf16, f32 (f32 rows rounded to bf16 on their way into shared memory), or
// bf16qkv_f32: the operands q, k, v and dO in bf16, the outputs o, dq, dk, dv in f32 (the
// mixed-precision path: its query, key and value maps store their outputs in bf16, and the
// launcher rounds dO once for the two backward kernels that stage it). Exact f32
// (attention_*_exact): one thread per query (or key) row, plain FMA, tiles of the other side
// in shared memory (for exactness, not speed). Outputs are assigned.
#include "common.cuh"
#include "tensor_core.cuh"

// Mirrors AttentionParams in src/backend/cuda/attention.rs, field for field.
struct AttnParams {
    const void* q;
    const void* k;
    const void* v;
    const void* dout;  // backward
    void* o;           // forward output
    void* dq;          // backward outputs, null when not requested
    void* dk;
    void* dv;
    float* lse;
    float* delta;
    const int* starts;
    const unsigned* mask;
    const float* pos_bias;  // null: none
    float* d_pos_bias;      // attention_position_bias_sum's output
    float* bias_tiles;      // attention_position_bias_tiles_*'s output, the sum's input
    unsigned long long seed;
    long long ld;
    int heads, head_dim, max_seq, mask_stride;
    float scale;
    unsigned drop_threshold;  // 0: no dropout
    float keep_scale;
    int seq0;  // sequence of blockIdx.z = 0: more sequences than a grid's z dimension (65535)
               // holds take several launches
    int sequences;  // the batch's sequences (attention_position_bias_sum reads it)
};

__device__ __forceinline__ bool key_valid(const AttnParams& p, int b, int j, int len) {
    return j < len && (p.mask == nullptr || p.mask[(long long)b * p.mask_stride + j] != 0u);
}

// The position bias of head h for query i and key j of a sequence of `len` tokens; 0 without
// a bias, and outside the sequence (a tile's rows past its end would read past the table).
__device__ __forceinline__ float position_bias(const AttnParams& p, int h, int i, int j, int len) {
    if (p.pos_bias == nullptr || i >= len || j >= len) return 0.f;
    return p.pos_bias[(long long)(p.max_seq - 1 + j - i) * p.heads + h];
}

__device__ __forceinline__ float drop_factor(const AttnParams& p, int b, int h, int i, int j) {
    if (p.drop_threshold == 0u) return 1.f;
    unsigned long long counter = (((unsigned long long)b * p.heads + h) * p.max_seq + i) * p.max_seq + j;
    return spafit_keeps(p.seed, counter, p.drop_threshold) ? p.keep_scale : 0.f;
}

__device__ __forceinline__ long long stat_index(const AttnParams& p, int b, int h, int i) {
    return ((long long)b * p.heads + h) * p.max_seq + i;
}

// lse = 0 for the rows [from, to) of a tile that lie past the sequence's length but inside
// max_seq (a packed batch's shorter sequences), so every lse element is written, as the CPU
// writes it. Called by whole blocks before they return.
__device__ __forceinline__ void zero_lse_past_end(const AttnParams& p, int b, int h, int from, int to) {
    to = min(to, p.max_seq);
    for (int i = from + threadIdx.x; i < to; i += blockDim.x) p.lse[stat_index(p, b, h, i)] = 0.f;
}

// ---------------------------------------------------------------- bf16 tile helpers

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16(hi)) << 16);
}

// A fragment (16 rows × 16 k) from shared [row][k].
__device__ __forceinline__ void frag_a(uint32_t a[4], const bf16* s, int cols, int r0, int k0) {
    const int l = threadIdx.x % 32;
    ldmatrix<4, false>(a, s + (r0 + l % 8 + 8 * (l / 8 % 2)) * cols + k0 + 8 * (l / 16));
}
// B fragments of n-tiles n0 and n0 + 8 (16 k each) from shared [n][k].
__device__ __forceinline__ void frag_b_nk(uint32_t b0[2], uint32_t b1[2], const bf16* s, int cols, int n0, int k0) {
    const int l = threadIdx.x % 32;
    uint32_t r[4];
    ldmatrix<4, false>(r, s + (n0 + l % 8 + 8 * (l / 16)) * cols + k0 + 8 * (l / 8 % 2));
    b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}
// The same from shared [k][n].
__device__ __forceinline__ void frag_b_kn(uint32_t b0[2], uint32_t b1[2], const bf16* s, int cols, int n0, int k0) {
    const int l = threadIdx.x % 32;
    uint32_t r[4];
    ldmatrix<4, true>(r, s + (k0 + l % 8 + 8 * (l / 8 % 2)) * cols + n0 + 8 * (l / 16));
    b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}
// The A fragment over k = 16 formed by two accumulator tiles (8 columns each) of a 16-row
// result: how a probability tile becomes the left operand of the next product.
__device__ __forceinline__ void frag_a_from_acc(uint32_t a[4], const float c0[4], const float c1[4]) {
    a[0] = pack_bf16(c0[0], c0[1]);
    a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]);
    a[3] = pack_bf16(c1[2], c1[3]);
}

// Rows [r0, r0 + 64) of head h, columns [0, DP) (zero past head_dim and past `limit` rows),
// into shared [64][DP + 8] as bf16: bf16 rows by cp.async when 16-byte aligned, f32 rows
// rounded on the way — eight elements by two 16-byte loads and one 16-byte store where
// aligned (the synchronous loads are these kernels' main stall: NOTES.md, 2026-12-04).
template <int DP, typename T>
__device__ void stage_rows(bf16* dst, const T* src, const AttnParams& p, int start, int r0, int limit, int h) {
    constexpr int COLS = DP + 8, CHUNKS = 64 * DP / 8;
    constexpr bool BF16 = sizeof(T) == 2;
    const bool aligned = p.ld % 8 == 0 && p.head_dim % 8 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0;
    const bool vec = BF16 && aligned;
    const bool f32_vec = !BF16 && aligned;
    for (int c = threadIdx.x; c < CHUNKS; c += blockDim.x) {
        const int r = c / (DP / 8), cc = (c % (DP / 8)) * 8;
        const int valid = r0 + r < limit ? min(max(p.head_dim - cc, 0), 8) : 0;
        bf16* d = dst + r * COLS + cc;
        const T* s = src + (valid ? (long long)(start + r0 + r) * p.ld + (long long)h * p.head_dim + cc : 0);
        if (vec) {
            cp_async_16(d, s, valid * 2);
        } else if (f32_vec && valid == 8) {
            const float4 lo = *reinterpret_cast<const float4*>(s), hi = *reinterpret_cast<const float4*>(s + 4);
            *reinterpret_cast<uint4*>(d) = make_uint4(pack_bf16(lo.x, lo.y), pack_bf16(lo.z, lo.w),
                                                      pack_bf16(hi.x, hi.y), pack_bf16(hi.z, hi.w));
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) d[e] = __float2bfloat16(e < valid ? load(s, e) : 0.f);
        }
    }
}

// The loop over the tiles a block streams through shared memory: `stage(i, s)` issues step
// i's copies into stage buffer s (cp.async where the rows allow it, plain stores otherwise)
// and `compute(i, s)` reads them. One stage: each step waits for its own copies before its
// products. Two: step i + 1's copies are in flight while step i computes (the buffer they
// land in was last read by step i - 1), so the load latency can hide behind the tensor-core
// work, at the price of a second set of streamed tiles in shared memory (fewer blocks per
// SM). Copies by plain stores (f32 rows, unaligned rows) gain nothing from a second stage.
// The tiles a block keeps (staged before the loop, not yet committed) land with step 0's.
template <int STAGES, typename Stage, typename Compute>
__device__ __forceinline__ void stream_tiles(int steps, Stage&& stage, Compute&& compute) {
    static_assert(STAGES == 1 || STAGES == 2, "one or two stages");
    if (STAGES == 2 && steps > 0) {
        __syncthreads();  // an earlier stream of the block (dQ's first pass) may still read it
        stage(0, 0);
        cp_async_commit();
    }
    for (int i = 0; i < steps; ++i) {
        const int s = STAGES == 2 ? i % 2 : 0;
        __syncthreads();  // the buffer refilled now was last read by step i - 1
        if (STAGES == 1)
            stage(i, 0);
        else if (i + 1 < steps)
            stage(i + 1, 1 - s);
        cp_async_commit();  // an empty group on the last step of two stages keeps the count
        cp_async_wait<STAGES - 1>();
        __syncthreads();
        compute(i, s);
    }
}

template <int DP, typename TIn, typename TOut, int STAGES, bool BIAS>
struct AttnTc {
    static constexpr int COLS = DP + 8, TILE = 64 * COLS, NT = DP / 8;
    // Dynamic shared memory of a kernel that keeps KEPT bf16 tiles through its loop (the
    // forward its queries, the backward kernels two): those, two streamed tiles per stage,
    // then four 64-float vectors per stage (the streamed tiles' mask and statistics; a kept
    // tile's mask in stage 0's spare ones). src/backend/cuda/attention.rs computes the same
    // size (`tc_shared`).
    template <int KEPT>
    struct Smem {
        static constexpr int BYTES = (KEPT + 2 * STAGES) * TILE * 2 + STAGES * 4 * 64 * 4;
        unsigned char* base;
        __device__ __forceinline__ bf16* kept(int i) const { return reinterpret_cast<bf16*>(base) + i * TILE; }
        __device__ __forceinline__ bf16* streamed(int s, int i) const {
            return reinterpret_cast<bf16*>(base) + (KEPT + 2 * s + i) * TILE;
        }
        __device__ __forceinline__ float* vectors(int s) const {
            return reinterpret_cast<float*>(base + (KEPT + 2 * STAGES) * TILE * 2) + s * 4 * 64;
        }
    };

    // ---- forward: block (query tile, head, sequence), warp w owns queries 16w .. 16w + 15.
    static __device__ void forward(const AttnParams& p) {
        extern __shared__ __align__(16) unsigned char smem[];
        const Smem<1> sm{smem};
        bf16* Qs = sm.kept(0);
        const int b = blockIdx.z + p.seq0, h = blockIdx.y, q0 = blockIdx.x * 64;
        const int start = p.starts[b], len = p.starts[b + 1] - start;
        zero_lse_past_end(p, b, h, max(q0, len), q0 + 64);
        if (q0 >= len) return;
        const int lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane / 4, t = lane % 4;
        const TIn* q = static_cast<const TIn*>(p.q);
        const TIn* k = static_cast<const TIn*>(p.k);
        const TIn* v = static_cast<const TIn*>(p.v);
        stage_rows<DP, TIn>(Qs, q, p, start, q0, len, h);
        float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
        float o[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
        const auto stage_keys = [&](int i, int buf) {
            stage_rows<DP, TIn>(sm.streamed(buf, 0), k, p, start, 64 * i, len, h);
            stage_rows<DP, TIn>(sm.streamed(buf, 1), v, p, start, 64 * i, len, h);
            float* kbias = sm.vectors(buf);
            for (int j = threadIdx.x; j < 64; j += blockDim.x) kbias[j] = key_valid(p, b, 64 * i + j, len) ? 0.f : -INFINITY;
        };
        stream_tiles<STAGES>((len + 63) / 64, stage_keys, [&](int i, int buf) {
            const int k0 = 64 * i;
            const bf16* Ks = sm.streamed(buf, 0);
            const bf16* Vs = sm.streamed(buf, 1);
            const float* kbias = sm.vectors(buf);
            float s[8][4];
#pragma unroll
            for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < DP; kk += 16) {
                uint32_t a[4];
                frag_a(a, Qs, COLS, 16 * w, kk);
#pragma unroll
                for (int j = 0; j < 8; j += 2) {
                    uint32_t b0[2], b1[2];
                    frag_b_nk(b0, b1, Ks, COLS, j * 8, kk);
                    mma_m16n8k16_bf16(s[j], a, b0, s[j]);
                    mma_m16n8k16_bf16(s[j + 1], a, b1, s[j + 1]);
                }
            }
            // Online softmax over this tile, rows g (e = 0, 1) and g + 8 (e = 2, 3).
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int qi = q0 + 16 * w + g + 8 * (e >> 1), kc = j * 8 + 2 * t + (e & 1);
                    const float bias = BIAS ? kbias[kc] + position_bias(p, h, qi, k0 + kc, len) : kbias[kc];
                    s[j][e] = fmaf(s[j][e], p.scale, bias);
                    mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
                }
            float corr[2], mu[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                const float m_new = fmaxf(m[r], mx[r]);
                mu[r] = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: nothing to scale
                corr[r] = m[r] == -INFINITY ? 0.f : __expf(m[r] - mu[r]);
                m[r] = m_new;
            }
            float sum[2] = {0.f, 0.f};
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float pe = s[j][e] == -INFINITY ? 0.f : __expf(s[j][e] - mu[e >> 1]);
                    sum[e >> 1] += pe;
                    const int qi = q0 + 16 * w + g + 8 * (e >> 1), kj = k0 + j * 8 + 2 * t + (e & 1);
                    s[j][e] = pe * drop_factor(p, b, h, qi, kj);
                }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
                sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
                l[r] = l[r] * corr[r] + sum[r];
            }
#pragma unroll
            for (int n = 0; n < NT; ++n) {
                o[n][0] *= corr[0], o[n][1] *= corr[0];
                o[n][2] *= corr[1], o[n][3] *= corr[1];
            }
            add_product(o, s, Vs);  // O += P·V over the tile's 64 keys
        });
        TOut* out = static_cast<TOut*>(p.o);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int qi = q0 + 16 * w + g + 8 * r;
            if (qi >= len) continue;
            const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
            const long long row = (long long)(start + qi) * p.ld + (long long)h * p.head_dim;
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int d = n * 8 + 2 * t + e;
                    if (d < p.head_dim) store(out, row + d, o[n][2 * r + e] * inv);
                }
            if (t == 0) p.lse[stat_index(p, b, h, qi)] = l[r] > 0.f ? m[r] + __logf(l[r]) : 0.f;
        }
    }

    // ---- dK, dV: block (key tile, head, sequence), warp w owns keys 16w .. 16w + 15.
    static __device__ void backward_dkdv(const AttnParams& p) {
        extern __shared__ __align__(16) unsigned char smem[];
        const Smem<2> sm{smem};
        bf16* Ks = sm.kept(0);
        bf16* Vs = sm.kept(1);
        float* kvalid = sm.vectors(0) + 2 * 64;
        const int b = blockIdx.z + p.seq0, h = blockIdx.y, k0 = blockIdx.x * 64;
        const int start = p.starts[b], len = p.starts[b + 1] - start;
        if (k0 >= len) return;
        const int lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane / 4, t = lane % 4;
        // dV alone needs neither V nor delta: dV = P̃ᵀ·dO (v and delta may be null then).
        const bool want_dk = p.dk != nullptr;
        stage_rows<DP, TIn>(Ks, static_cast<const TIn*>(p.k), p, start, k0, len, h);
        if (want_dk) stage_rows<DP, TIn>(Vs, static_cast<const TIn*>(p.v), p, start, k0, len, h);
        for (int j = threadIdx.x; j < 64; j += blockDim.x) kvalid[j] = key_valid(p, b, k0 + j, len) ? 1.f : 0.f;
        float dk[NT][4], dv[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;
        const auto stage_queries = [&](int step, int buf) {
            const int q0 = 64 * step;
            stage_rows<DP, TIn>(sm.streamed(buf, 0), static_cast<const TIn*>(p.q), p, start, q0, len, h);
            stage_rows<DP, TIn>(sm.streamed(buf, 1), static_cast<const TIn*>(p.dout), p, start, q0, len, h);
            float* lse_s = sm.vectors(buf);
            float* delta_s = lse_s + 64;
            for (int i = threadIdx.x; i < 64; i += blockDim.x) {
                const bool in = q0 + i < len;
                lse_s[i] = in ? p.lse[stat_index(p, b, h, q0 + i)] : 0.f;
                delta_s[i] = in && want_dk ? p.delta[stat_index(p, b, h, q0 + i)] : 0.f;
            }
        };
        stream_tiles<STAGES>((len + 63) / 64, stage_queries, [&](int step, int buf) {
            const int q0 = 64 * step;
            const bf16* Qs = sm.streamed(buf, 0);
            const bf16* dOs = sm.streamed(buf, 1);
            const float* lse_s = sm.vectors(buf);
            const float* delta_s = lse_s + 64;
            // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ: 16 keys × 64 queries per warp.
            float st[8][4], dpt[8][4];
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) st[j][e] = dpt[j][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < DP; kk += 16) {
                uint32_t ak[4], av[4];
                frag_a(ak, Ks, COLS, 16 * w, kk);
                if (want_dk) frag_a(av, Vs, COLS, 16 * w, kk);
#pragma unroll
                for (int j = 0; j < 8; j += 2) {
                    uint32_t b0[2], b1[2];
                    frag_b_nk(b0, b1, Qs, COLS, j * 8, kk);
                    mma_m16n8k16_bf16(st[j], ak, b0, st[j]);
                    mma_m16n8k16_bf16(st[j + 1], ak, b1, st[j + 1]);
                    if (want_dk) {
                        frag_b_nk(b0, b1, dOs, COLS, j * 8, kk);
                        mma_m16n8k16_bf16(dpt[j], av, b0, dpt[j]);
                        mma_m16n8k16_bf16(dpt[j + 1], av, b1, dpt[j + 1]);
                    }
                }
            }
            // Pᵀ, the dropped P̃ᵀ (into st) and dSᵀ (into dpt).
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int kr = 16 * w + g + 8 * (e >> 1), qc = j * 8 + 2 * t + (e & 1);
                    const bool live = kvalid[kr] != 0.f && q0 + qc < len;
                    const float shift = BIAS ? position_bias(p, h, q0 + qc, k0 + kr, len) - lse_s[qc] : -lse_s[qc];
                    const float pt = live ? __expf(fmaf(st[j][e], p.scale, shift)) : 0.f;
                    const float z = drop_factor(p, b, h, q0 + qc, k0 + kr);
                    dpt[j][e] = pt * (dpt[j][e] * z - delta_s[qc]);
                    st[j][e] = pt * z;
                }
            // dV += P̃ᵀ·dO and dK += dSᵀ·Q over the tile's 64 queries, interleaved: as two
            // add_product calls ptxas spilled at head dim 128 (32 bytes) and took 179
            // registers for 174 at 64 (sm_90).
#pragma unroll
            for (int kc = 0; kc < 4; ++kc) {
                uint32_t ap[4], ads[4];
                frag_a_from_acc(ap, st[2 * kc], st[2 * kc + 1]);
                frag_a_from_acc(ads, dpt[2 * kc], dpt[2 * kc + 1]);
#pragma unroll
                for (int n = 0; n < NT; n += 2) {
                    uint32_t b0[2], b1[2];
                    frag_b_kn(b0, b1, dOs, COLS, n * 8, kc * 16);
                    mma_m16n8k16_bf16(dv[n], ap, b0, dv[n]);
                    mma_m16n8k16_bf16(dv[n + 1], ap, b1, dv[n + 1]);
                    if (want_dk) {
                        frag_b_kn(b0, b1, Qs, COLS, n * 8, kc * 16);
                        mma_m16n8k16_bf16(dk[n], ads, b0, dk[n]);
                        mma_m16n8k16_bf16(dk[n + 1], ads, b1, dk[n + 1]);
                    }
                }
            }
        });
        TOut* dk_out = static_cast<TOut*>(p.dk);
        TOut* dv_out = static_cast<TOut*>(p.dv);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int kj = k0 + 16 * w + g + 8 * r;
            if (kj >= len) continue;
            const long long row = (long long)(start + kj) * p.ld + (long long)h * p.head_dim;
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int d = n * 8 + 2 * t + e;
                    if (d >= p.head_dim) continue;
                    if (dk_out) store(dk_out, row + d, p.scale * dk[n][2 * r + e]);
                    if (dv_out) store(dv_out, row + d, dv[n][2 * r + e]);
                }
        }
    }

    // acc += A·X over a tile's 64 rows: A the warp's 16 × 64 accumulator tiles (probabilities
    // or score gradients, rounded to bf16 as mma operands), X the staged tile [64][COLS].
    static __device__ __forceinline__ void add_product(float acc[NT][4], const float a_acc[8][4], const bf16* X) {
#pragma unroll
        for (int kc = 0; kc < 4; ++kc) {
            uint32_t a[4];
            frag_a_from_acc(a, a_acc[2 * kc], a_acc[2 * kc + 1]);
#pragma unroll
            for (int n = 0; n < NT; n += 2) {
                uint32_t b0[2], b1[2];
                frag_b_kn(b0, b1, X, COLS, n * 8, kc * 16);
                mma_m16n8k16_bf16(acc[n], a, b0, acc[n]);
                mma_m16n8k16_bf16(acc[n + 1], a, b1, acc[n + 1]);
            }
        }
    }

    // S = Q·Kᵀ and dP = dO·Vᵀ of the staged tiles, 16 queries (warp w) × 64 keys.
    static __device__ __forceinline__ void scores_and_dp(const bf16* Qs, const bf16* dOs, const bf16* Ks,
                                                         const bf16* Vs, float s[8][4], float dp[8][4]) {
        const int w = threadIdx.x / 32;
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < DP; kk += 16) {
            uint32_t aq[4], ado[4];
            frag_a(aq, Qs, COLS, 16 * w, kk);
            frag_a(ado, dOs, COLS, 16 * w, kk);
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                uint32_t b0[2], b1[2];
                frag_b_nk(b0, b1, Ks, COLS, j * 8, kk);
                mma_m16n8k16_bf16(s[j], aq, b0, s[j]);
                mma_m16n8k16_bf16(s[j + 1], aq, b1, s[j + 1]);
                frag_b_nk(b0, b1, Vs, COLS, j * 8, kk);
                mma_m16n8k16_bf16(dp[j], ado, b0, dp[j]);
                mma_m16n8k16_bf16(dp[j + 1], ado, b1, dp[j + 1]);
            }
        }
    }

    // ---- delta and dQ: block (query tile, head, sequence), warp w owns queries 16w .. 16w + 15.
    // Pass 1 writes delta_i = Σ_j P_ij·dP̃_ij over all keys, from exactly the P and dP̃ that dS
    // uses, so every row of dS sums to zero as the exact softmax gradient's does.
    // (FlashAttention's rowsum(dO ∘ O) would mix in the forward's bf16 rounding of P and the
    // output: an error common to a whole row, which lands coherently in dQ, dK and the query
    // bias gradient.) Pass 2, when dQ is asked for: dS = P ∘ (dP̃ − delta), dQ = scale·dS·K.
    // Runs before the dK/dV kernel, which reads delta.
    static __device__ void backward_dq(const AttnParams& p) {
        extern __shared__ __align__(16) unsigned char smem[];
        const Smem<2> sm{smem};
        bf16* Qs = sm.kept(0);
        bf16* dOs = sm.kept(1);
        const int b = blockIdx.z + p.seq0, h = blockIdx.y, q0 = blockIdx.x * 64;
        const int start = p.starts[b], len = p.starts[b + 1] - start;
        if (q0 >= len) return;
        const int lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane / 4, t = lane % 4;
        stage_rows<DP, TIn>(Qs, static_cast<const TIn*>(p.q), p, start, q0, len, h);
        stage_rows<DP, TIn>(dOs, static_cast<const TIn*>(p.dout), p, start, q0, len, h);
        float lse_r[2], delta_r[2] = {0.f, 0.f};
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int qi = q0 + 16 * w + g + 8 * r;
            lse_r[r] = qi < len ? p.lse[stat_index(p, b, h, qi)] : 0.f;
        }
        float dq[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;
        const auto stage_keys = [&](int i, int buf) {
            const int k0 = 64 * i;
            stage_rows<DP, TIn>(sm.streamed(buf, 0), static_cast<const TIn*>(p.k), p, start, k0, len, h);
            stage_rows<DP, TIn>(sm.streamed(buf, 1), static_cast<const TIn*>(p.v), p, start, k0, len, h);
            float* kvalid = sm.vectors(buf);
            for (int j = threadIdx.x; j < 64; j += blockDim.x) kvalid[j] = key_valid(p, b, k0 + j, len) ? 1.f : 0.f;
        };
        // One stream of tiles per pass (one stream over both passes' tiles, which would stage
        // pass 1's first tile during pass 0's last, took 248 registers for 167 at head dim 128
        // on sm_90).
        const int passes = p.dq ? 2 : 1;
        for (int pass = 0; pass < passes; ++pass) {
            stream_tiles<STAGES>((len + 63) / 64, stage_keys, [&](int i, int buf) {
                const int k0 = 64 * i;
                const bf16* Ks = sm.streamed(buf, 0);
                const bf16* Vs = sm.streamed(buf, 1);
                const float* kvalid = sm.vectors(buf);
                float s[8][4], dp[8][4];
                scores_and_dp(Qs, dOs, Ks, Vs, s, dp);
#pragma unroll
                for (int j = 0; j < 8; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int r = e >> 1, kc = j * 8 + 2 * t + (e & 1);
                        const int qi = q0 + 16 * w + g + 8 * r;
                        const float shift = BIAS ? position_bias(p, h, qi, k0 + kc, len) - lse_r[r] : -lse_r[r];
                        const float pr = kvalid[kc] != 0.f && qi < len ? __expf(fmaf(s[j][e], p.scale, shift)) : 0.f;
                        const float dpz = dp[j][e] * drop_factor(p, b, h, qi, k0 + kc);
                        if (pass == 0)
                            delta_r[r] += pr * dpz;
                        else
                            dp[j][e] = pr * (dpz - delta_r[r]);
                    }
                if (pass == 1) add_product(dq, dp, Ks);  // dQ += dS·K
            });
            if (pass == 0) {
                // A row's 64 keys are spread over the quad of lanes g·4 .. g·4 + 3.
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    delta_r[r] += __shfl_xor_sync(0xffffffffu, delta_r[r], 1);
                    delta_r[r] += __shfl_xor_sync(0xffffffffu, delta_r[r], 2);
                    const int qi = q0 + 16 * w + g + 8 * r;
                    if (t == 0 && qi < len) p.delta[stat_index(p, b, h, qi)] = delta_r[r];
                }
            }
        }
        if (!p.dq) return;
        TOut* dq_out = static_cast<TOut*>(p.dq);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int qi = q0 + 16 * w + g + 8 * r;
            if (qi >= len) continue;
            const long long row = (long long)(start + qi) * p.ld + (long long)h * p.head_dim;
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int d = n * 8 + 2 * t + e;
                    if (d < p.head_dim) store(dq_out, row + d, p.scale * dq[n][2 * r + e]);
                }
        }
    }
};

// ---------------------------------------------------------------- f32: one thread per row

// Rows of a tile in shared memory are padded to head_dim + 1 floats: each thread walks its
// own row, and the padding puts the 32 rows of a warp in 32 different banks.
struct F32Tiles {
    static constexpr int ROWS = 32;  // own rows per block (one warp)
    static constexpr int OTHER = 16; // rows of the streamed side per step
};

__device__ __forceinline__ void load_rows_f32(float* dst, int pitch, const float* src, const AttnParams& p, int start,
                                              int r0, int rows, int limit, int h) {
    for (int e = threadIdx.x; e < rows * p.head_dim; e += blockDim.x) {
        const int r = e / p.head_dim, d = e % p.head_dim;
        dst[r * pitch + d] = r0 + r < limit ? src[(long long)(start + r0 + r) * p.ld + (long long)h * p.head_dim + d] : 0.f;
    }
}

// Forward: thread i owns query q0 + i; keys stream through shared memory 16 at a time.
__device__ void attention_forward_f32_impl(const AttnParams& p) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int D = p.head_dim, pitch = D + 1;
    float* Qs = reinterpret_cast<float*>(smem);        // [32][pitch]
    float* Os = Qs + F32Tiles::ROWS * pitch;           // [32][pitch]
    float* Ks = Os + F32Tiles::ROWS * pitch;           // [16][pitch]
    float* Vs = Ks + F32Tiles::OTHER * pitch;          // [16][pitch]
    float* kvalid = Vs + F32Tiles::OTHER * pitch;      // [16]
    const int b = blockIdx.z + p.seq0, h = blockIdx.y, q0 = blockIdx.x * F32Tiles::ROWS;
    const int start = p.starts[b], len = p.starts[b + 1] - start;
    zero_lse_past_end(p, b, h, max(q0, len), q0 + F32Tiles::ROWS);
    if (q0 >= len) return;
    const int i = threadIdx.x, qi = q0 + i;
    load_rows_f32(Qs, pitch, static_cast<const float*>(p.q), p, start, q0, F32Tiles::ROWS, len, h);
    for (int d = 0; d < D; ++d) Os[i * pitch + d] = 0.f;
    float m = -INFINITY, l = 0.f;
    for (int k0 = 0; k0 < len; k0 += F32Tiles::OTHER) {
        __syncthreads();
        load_rows_f32(Ks, pitch, static_cast<const float*>(p.k), p, start, k0, F32Tiles::OTHER, len, h);
        load_rows_f32(Vs, pitch, static_cast<const float*>(p.v), p, start, k0, F32Tiles::OTHER, len, h);
        if (i < F32Tiles::OTHER) kvalid[i] = key_valid(p, b, k0 + i, len) ? 1.f : 0.f;
        __syncthreads();
        float s[F32Tiles::OTHER];
        float mx = -INFINITY;
        for (int j = 0; j < F32Tiles::OTHER; ++j) {
            float acc = 0.f;
            for (int d = 0; d < D; ++d) acc = fmaf(Qs[i * pitch + d], Ks[j * pitch + d], acc);
            s[j] = kvalid[j] != 0.f ? fmaf(acc, p.scale, position_bias(p, h, qi, k0 + j, len)) : -INFINITY;
            mx = fmaxf(mx, s[j]);
        }
        const float m_new = fmaxf(m, mx);
        const float mu = m_new == -INFINITY ? 0.f : m_new;
        const float corr = m == -INFINITY ? 0.f : expf(m - mu);
        m = m_new;
        float sum = 0.f;
        for (int j = 0; j < F32Tiles::OTHER; ++j) {
            const float pe = s[j] == -INFINITY ? 0.f : expf(s[j] - mu);
            sum += pe;
            s[j] = pe * drop_factor(p, b, h, qi, k0 + j);
        }
        l = l * corr + sum;
        for (int d = 0; d < D; ++d) {
            float acc = Os[i * pitch + d] * corr;
            for (int j = 0; j < F32Tiles::OTHER; ++j) acc = fmaf(s[j], Vs[j * pitch + d], acc);
            Os[i * pitch + d] = acc;
        }
    }
    if (qi >= len) return;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    float* out = static_cast<float*>(p.o);
    const long long row = (long long)(start + qi) * p.ld + (long long)h * D;
    for (int d = 0; d < D; ++d) out[row + d] = Os[i * pitch + d] * inv;
    p.lse[stat_index(p, b, h, qi)] = l > 0.f ? m + logf(l) : 0.f;
}

// dK, dV: thread j owns key k0 + j; queries stream through shared memory 16 at a time.
__device__ void attention_dkdv_f32_impl(const AttnParams& p) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int D = p.head_dim, pitch = D + 1;
    float* Ks = reinterpret_cast<float*>(smem);        // [32][pitch] own keys
    float* Vs = Ks + F32Tiles::ROWS * pitch;
    float* dKs = Vs + F32Tiles::ROWS * pitch;
    float* dVs = dKs + F32Tiles::ROWS * pitch;
    float* Qs = dVs + F32Tiles::ROWS * pitch;          // [16][pitch] streamed queries
    float* dOs = Qs + F32Tiles::OTHER * pitch;
    float* stat = dOs + F32Tiles::OTHER * pitch;       // lse[16], delta[16]
    const int b = blockIdx.z + p.seq0, h = blockIdx.y, k0 = blockIdx.x * F32Tiles::ROWS;
    const int start = p.starts[b], len = p.starts[b + 1] - start;
    if (k0 >= len) return;
    const int j = threadIdx.x, kj = k0 + j;
    // dV alone needs neither V nor delta (both may be null then).
    const bool want_dk = p.dk != nullptr;
    load_rows_f32(Ks, pitch, static_cast<const float*>(p.k), p, start, k0, F32Tiles::ROWS, len, h);
    if (want_dk) load_rows_f32(Vs, pitch, static_cast<const float*>(p.v), p, start, k0, F32Tiles::ROWS, len, h);
    for (int d = 0; d < D; ++d) dKs[j * pitch + d] = dVs[j * pitch + d] = 0.f;
    const bool valid = key_valid(p, b, kj, len);
    for (int q0 = 0; q0 < len; q0 += F32Tiles::OTHER) {
        __syncthreads();
        load_rows_f32(Qs, pitch, static_cast<const float*>(p.q), p, start, q0, F32Tiles::OTHER, len, h);
        load_rows_f32(dOs, pitch, static_cast<const float*>(p.dout), p, start, q0, F32Tiles::OTHER, len, h);
        if (j < F32Tiles::OTHER) {
            const bool in = q0 + j < len;
            stat[j] = in ? p.lse[stat_index(p, b, h, q0 + j)] : 0.f;
            stat[F32Tiles::OTHER + j] = in && want_dk ? p.delta[stat_index(p, b, h, q0 + j)] : 0.f;
        }
        __syncthreads();
        for (int i = 0; i < F32Tiles::OTHER; ++i) {
            if (!valid || q0 + i >= len) continue;
            float s = 0.f, dp = 0.f;
            for (int d = 0; d < D; ++d) {
                s = fmaf(Qs[i * pitch + d], Ks[j * pitch + d], s);
                if (want_dk) dp = fmaf(dOs[i * pitch + d], Vs[j * pitch + d], dp);
            }
            const float pr = expf(fmaf(s, p.scale, position_bias(p, h, q0 + i, kj, len) - stat[i]));
            const float z = drop_factor(p, b, h, q0 + i, kj);
            const float ds = pr * (dp * z - stat[F32Tiles::OTHER + i]);
            const float pd = pr * z;
            for (int d = 0; d < D; ++d) {
                dVs[j * pitch + d] = fmaf(pd, dOs[i * pitch + d], dVs[j * pitch + d]);
                dKs[j * pitch + d] = fmaf(ds, Qs[i * pitch + d], dKs[j * pitch + d]);
            }
        }
    }
    if (kj >= len) return;
    const long long row = (long long)(start + kj) * p.ld + (long long)h * D;
    float* dk = static_cast<float*>(p.dk);
    float* dv = static_cast<float*>(p.dv);
    for (int d = 0; d < D; ++d) {
        if (dk) dk[row + d] = p.scale * dKs[j * pitch + d];
        if (dv) dv[row + d] = dVs[j * pitch + d];
    }
}

// dQ: thread i owns query q0 + i; keys stream through shared memory 16 at a time. DELTA_ONLY:
// the same pass computes delta_i = Σ_j P_ij·z_ij·dP̃_ij (z: the dropout factor) in key order
// and writes it, which dQ and dK/dV then read: no kernel needs the forward's output.
template <bool DELTA_ONLY>
__device__ void attention_dq_f32_impl(const AttnParams& p) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int D = p.head_dim, pitch = D + 1;
    float* Qs = reinterpret_cast<float*>(smem);
    float* dOs = Qs + F32Tiles::ROWS * pitch;
    float* dQs = dOs + F32Tiles::ROWS * pitch;
    float* Ks = dQs + F32Tiles::ROWS * pitch;
    float* Vs = Ks + F32Tiles::OTHER * pitch;
    float* kvalid = Vs + F32Tiles::OTHER * pitch;
    const int b = blockIdx.z + p.seq0, h = blockIdx.y, q0 = blockIdx.x * F32Tiles::ROWS;
    const int start = p.starts[b], len = p.starts[b + 1] - start;
    if (q0 >= len) return;
    const int i = threadIdx.x, qi = q0 + i;
    load_rows_f32(Qs, pitch, static_cast<const float*>(p.q), p, start, q0, F32Tiles::ROWS, len, h);
    load_rows_f32(dOs, pitch, static_cast<const float*>(p.dout), p, start, q0, F32Tiles::ROWS, len, h);
    for (int d = 0; d < D; ++d) dQs[i * pitch + d] = 0.f;
    const float lse = qi < len ? p.lse[stat_index(p, b, h, qi)] : 0.f;
    const float delta = !DELTA_ONLY && qi < len ? p.delta[stat_index(p, b, h, qi)] : 0.f;
    float delta_sum = 0.f;
    for (int k0 = 0; k0 < len; k0 += F32Tiles::OTHER) {
        __syncthreads();
        load_rows_f32(Ks, pitch, static_cast<const float*>(p.k), p, start, k0, F32Tiles::OTHER, len, h);
        load_rows_f32(Vs, pitch, static_cast<const float*>(p.v), p, start, k0, F32Tiles::OTHER, len, h);
        if (i < F32Tiles::OTHER) kvalid[i] = key_valid(p, b, k0 + i, len) ? 1.f : 0.f;
        __syncthreads();
        if (qi >= len) continue;
        for (int j = 0; j < F32Tiles::OTHER; ++j) {
            if (kvalid[j] == 0.f) continue;
            float s = 0.f, dp = 0.f;
            for (int d = 0; d < D; ++d) {
                s = fmaf(Qs[i * pitch + d], Ks[j * pitch + d], s);
                dp = fmaf(dOs[i * pitch + d], Vs[j * pitch + d], dp);
            }
            const float pr = expf(fmaf(s, p.scale, position_bias(p, h, qi, k0 + j, len) - lse));
            const float z = drop_factor(p, b, h, qi, k0 + j);
            if (DELTA_ONLY) {
                delta_sum = fmaf(pr * z, dp, delta_sum);
                continue;
            }
            const float ds = pr * (dp * z - delta);
            for (int d = 0; d < D; ++d) dQs[i * pitch + d] = fmaf(ds, Ks[j * pitch + d], dQs[i * pitch + d]);
        }
    }
    if (qi >= len) return;
    if (DELTA_ONLY) {
        p.delta[stat_index(p, b, h, qi)] = delta_sum;
        return;
    }
    const long long row = (long long)(start + qi) * p.ld + (long long)h * D;
    float* dq = static_cast<float*>(p.dq);
    for (int d = 0; d < D; ++d) dq[row + d] = p.scale * dQs[i * pitch + d];
}

// ---------------------------------------------------------------- position bias gradient

// d pos_bias[t][h] = Σ over the sequences b and queries i, with key j = i + t − (max_seq − 1)
// attended, of dS_ij = P_ij·(z_ij·dP_ij − delta_i), in two kernels, deterministic and without
// atomics. P and dP are recomputed from q, k, v, dO (as stored, in f32 arithmetic, rounded to
// bf16 first where ROUND: what the tensor-core kernels stage from f32 rows), lse and the delta
// the dQ kernel wrote.
//
// attention_position_bias_tiles_*: one block of 128 threads per (query tile, key tile) of
// BIAS_TILE × BIAS_TILE scores, head and sequence (grid: tile pairs, heads, sequences). The
// four operand tiles are staged in shared memory BIAS_TILE columns of the head dim at a time,
// so each element loaded from global memory serves BIAS_TILE scores (a kernel reading both
// dot products' operands from global memory per score moved ~4·D·4 bytes per score); each
// thread keeps 8 scores' two sums over the head dim in order, as fused multiply-adds. The
// tile's dS goes to shared memory, and one thread per diagonal (2·BIAS_TILE − 1 of them) sums
// it along the diagonal in row order into bias_tiles[sequence][head][query tile][key tile]
// [diagonal].
// attention_position_bias_sum: one block of 128 threads per (distance, head), grid
// (2·max_seq − 1, heads): the diagonals of every (sequence, query tile) that fall on the
// distance (two key tiles hold a part of it, one where it is a multiple of BIAS_TILE), each
// thread a fixed stride of them in order, then block_sum's fixed tree.
#define BIAS_TILE 32
#define BIAS_DIAGONALS (2 * BIAS_TILE - 1)

__device__ __forceinline__ int bias_tiles(const AttnParams& p) { return (p.max_seq + BIAS_TILE - 1) / BIAS_TILE; }

template <typename T, bool ROUND>
__device__ void position_bias_tiles_impl(const AttnParams& p) {
    constexpr int PITCH = BIAS_TILE + 1;  // a column's reads fall in distinct banks
    __shared__ float Qs[BIAS_TILE * PITCH];
    __shared__ float Ks[BIAS_TILE * PITCH];
    __shared__ float Os[BIAS_TILE * PITCH];
    __shared__ float Vs[BIAS_TILE * PITCH];
    __shared__ float dS[BIAS_TILE * PITCH];
    const int tiles = bias_tiles(p);
    const int qt = blockIdx.x / tiles, kt = blockIdx.x % tiles, h = blockIdx.y, b = p.seq0 + blockIdx.z;
    const int q0 = qt * BIAS_TILE, k0 = kt * BIAS_TILE;
    const int start = p.starts[b], len = p.starts[b + 1] - start;
    float* out = p.bias_tiles + ((((long long)b * p.heads + h) * tiles + qt) * tiles + kt) * BIAS_DIAGONALS;
    if (q0 >= len || k0 >= len) {
        for (int t = threadIdx.x; t < BIAS_DIAGONALS; t += blockDim.x) out[t] = 0.f;
        return;
    }
    const T* q = static_cast<const T*>(p.q);
    const T* k = static_cast<const T*>(p.k);
    const T* v = static_cast<const T*>(p.v);
    const T* dout = static_cast<const T*>(p.dout);
    const auto read = [&](const T* x, int row, int d) {
        if (row >= len || d >= p.head_dim) return 0.f;
        const float f = load(x, (long long)(start + row) * p.ld + (long long)h * p.head_dim + d);
        return ROUND ? __bfloat162float(__float2bfloat16(f)) : f;
    };
    // Thread t: query row t / 4 of the tile, key columns t % 4 + 4·m.
    const int ii = threadIdx.x / 4, jj0 = threadIdx.x % 4;
    float s[8] = {}, dp[8] = {};
    for (int c0 = 0; c0 < p.head_dim; c0 += BIAS_TILE) {
        for (int e = threadIdx.x; e < BIAS_TILE * BIAS_TILE; e += blockDim.x) {
            const int r = e / BIAS_TILE, c = e % BIAS_TILE;
            Qs[r * PITCH + c] = read(q, q0 + r, c0 + c);
            Os[r * PITCH + c] = read(dout, q0 + r, c0 + c);
            Ks[r * PITCH + c] = read(k, k0 + r, c0 + c);
            Vs[r * PITCH + c] = read(v, k0 + r, c0 + c);
        }
        __syncthreads();
        const int width = min(BIAS_TILE, p.head_dim - c0);
        for (int d = 0; d < width; ++d) {
            const float a = Qs[ii * PITCH + d], o = Os[ii * PITCH + d];
#pragma unroll
            for (int m = 0; m < 8; ++m) {
                const int jj = jj0 + 4 * m;
                s[m] = fmaf(a, Ks[jj * PITCH + d], s[m]);
                dp[m] = fmaf(o, Vs[jj * PITCH + d], dp[m]);
            }
        }
        __syncthreads();
    }
    const int i = q0 + ii;
    const bool row_valid = i < len;
    const long long at = stat_index(p, b, h, min(i, p.max_seq - 1));
    const float lse = row_valid ? p.lse[at] : 0.f, delta = row_valid ? p.delta[at] : 0.f;
#pragma unroll
    for (int m = 0; m < 8; ++m) {
        const int jj = jj0 + 4 * m, j = k0 + jj;
        float ds = 0.f;
        if (row_valid && key_valid(p, b, j, len)) {
            const float pr = expf(fmaf(s[m], p.scale, position_bias(p, h, i, j, len) - lse));
            ds = pr * (dp[m] * drop_factor(p, b, h, i, j) - delta);
        }
        dS[ii * PITCH + jj] = ds;
    }
    __syncthreads();
    if (threadIdx.x < BIAS_DIAGONALS) {
        const int diagonal = threadIdx.x - (BIAS_TILE - 1);  // jj − ii
        float sum = 0.f;
        for (int r = max(0, -diagonal); r < min(BIAS_TILE, BIAS_TILE - diagonal); ++r) sum += dS[r * PITCH + r + diagonal];
        out[threadIdx.x] = sum;
    }
}

__device__ void position_bias_sum_impl(const AttnParams& p) {
    __shared__ float scratch[128];
    const int t = blockIdx.x, h = blockIdx.y, offset = t - (p.max_seq - 1);  // j − i
    const int tiles = bias_tiles(p);
    // offset = (kt − qt)·BIAS_TILE + diagonal: key tile qt + near at the diagonal offset −
    // near·BIAS_TILE ∈ [0, BIAS_TILE), and qt + near + 1 at that less BIAS_TILE where it is
    // not −BIAS_TILE.
    const int near = (offset >= 0 ? offset : offset - (BIAS_TILE - 1)) / BIAS_TILE;
    const int rest = offset - near * BIAS_TILE;
    float acc = 0.f;
    const long long items = (long long)p.sequences * tiles * 2;
    for (long long e = threadIdx.x; e < items; e += blockDim.x) {
        const int which = (int)(e % 2);
        const long long pair = e / 2;
        const int b = (int)(pair / tiles), qt = (int)(pair % tiles);
        const int kt = qt + near + which, diagonal = rest - which * BIAS_TILE;
        if (kt < 0 || kt >= tiles || diagonal <= -BIAS_TILE) continue;
        acc += p.bias_tiles[((((long long)b * p.heads + h) * tiles + qt) * tiles + kt) * BIAS_DIAGONALS + diagonal + BIAS_TILE - 1];
    }
    const float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) p.d_pos_bias[(long long)t * p.heads + h] = total;
}

// ---------------------------------------------------------------- entry points

// S names the storage: bf16 or f32 for everything, or bf16qkv_f32 for q, k, v in bf16 (the
// mixed-precision path's copies, which are what the products read: NOTES.md, 2026-12-04) with
// f32 outputs and dO.
// _s<STAGES>: streamed tiles in one stage buffer or two (`stream_tiles`). Two only where the
// operands are bf16, which cp.async copies; f32 rows are rounded by the threads themselves.
// _pb: with the position bias (BIAS; one stage only).
#define ATTENTION_TC_OF(DP, TIN, TOUT, S, N, BIAS, PB)                                                                    \
    extern "C" __global__ void __launch_bounds__(128) attention_forward_tc_##S##_d##DP##_s##N##PB(AttnParams p) {         \
        AttnTc<DP, TIN, TOUT, N, BIAS>::forward(p);                                                                       \
    }                                                                                                                     \
    extern "C" __global__ void __launch_bounds__(128) attention_backward_dkdv_tc_##S##_d##DP##_s##N##PB(AttnParams p) {   \
        AttnTc<DP, TIN, TOUT, N, BIAS>::backward_dkdv(p);                                                                 \
    }                                                                                                                     \
    extern "C" __global__ void __launch_bounds__(128) attention_backward_dq_tc_##S##_d##DP##_s##N##PB(AttnParams p) {     \
        AttnTc<DP, TIN, TOUT, N, BIAS>::backward_dq(p);                                                                   \
    }
#define ATTENTION_TC(DP, TIN, TOUT, S, N) ATTENTION_TC_OF(DP, TIN, TOUT, S, N, false, )
#define ATTENTION_TC_PB(DP, TIN, TOUT, S) ATTENTION_TC_OF(DP, TIN, TOUT, S, 1, true, _pb)

ATTENTION_TC(32, bf16, bf16, bf16, 1)
ATTENTION_TC(64, bf16, bf16, bf16, 1)
ATTENTION_TC(128, bf16, bf16, bf16, 1)
ATTENTION_TC(32, float, float, f32, 1)
ATTENTION_TC(64, float, float, f32, 1)
ATTENTION_TC(128, float, float, f32, 1)
ATTENTION_TC(32, bf16, float, bf16qkv_f32, 1)
ATTENTION_TC(64, bf16, float, bf16qkv_f32, 1)
ATTENTION_TC(128, bf16, float, bf16qkv_f32, 1)
ATTENTION_TC(32, bf16, bf16, bf16, 2)
ATTENTION_TC(64, bf16, bf16, bf16, 2)
ATTENTION_TC(128, bf16, bf16, bf16, 2)
ATTENTION_TC(32, bf16, float, bf16qkv_f32, 2)
ATTENTION_TC(64, bf16, float, bf16qkv_f32, 2)
ATTENTION_TC(128, bf16, float, bf16qkv_f32, 2)
ATTENTION_TC_PB(32, bf16, bf16, bf16)
ATTENTION_TC_PB(64, bf16, bf16, bf16)
ATTENTION_TC_PB(128, bf16, bf16, bf16)
ATTENTION_TC_PB(32, float, float, f32)
ATTENTION_TC_PB(64, float, float, f32)
ATTENTION_TC_PB(128, float, float, f32)
ATTENTION_TC_PB(32, bf16, float, bf16qkv_f32)
ATTENTION_TC_PB(64, bf16, float, bf16qkv_f32)
ATTENTION_TC_PB(128, bf16, float, bf16qkv_f32)

extern "C" __global__ void __launch_bounds__(32) attention_forward_exact(AttnParams p) { attention_forward_f32_impl(p); }
extern "C" __global__ void __launch_bounds__(32) attention_backward_dkdv_exact(AttnParams p) { attention_dkdv_f32_impl(p); }
extern "C" __global__ void __launch_bounds__(32) attention_backward_dq_exact(AttnParams p) { attention_dq_f32_impl<false>(p); }
extern "C" __global__ void __launch_bounds__(32) attention_backward_delta_exact(AttnParams p) { attention_dq_f32_impl<true>(p); }
// How q, k, v and dO are stored and read: f32 (the exact kernels), bf16 (the tensor-core
// kernels' bf16 and bf16qkv_f32 storages, whose dO the launcher rounds), or f32 rounded to
// bf16 on reading (the tensor-core kernels' f32 storage, rounded as they stage it).
extern "C" __global__ void __launch_bounds__(128) attention_position_bias_tiles_f32(AttnParams p) { position_bias_tiles_impl<float, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attention_position_bias_tiles_bf16(AttnParams p) { position_bias_tiles_impl<bf16, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attention_position_bias_tiles_f32_rounded(AttnParams p) { position_bias_tiles_impl<float, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attention_position_bias_sum(AttnParams p) { position_bias_sum_impl(p); }
