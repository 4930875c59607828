// DeBERTa's disentangled attention, exact f32 on CUDA cores: head h's score of query i for
// key j is scale·(q_i·k_j + q_i·kr[r] + k_j·qr[r]), r = rows[i·seq + j] the row of their
// relative distance in the band of relative embeddings mapped by the layer's key (kr, the
// content-to-position term) and query (qr, position-to-content) maps; padded keys are
// masked, a query without a valid key gets a zero context.
//
// A first, simple set: one block per (query row, head, sequence) in the forward and in the
// backward's row pass, which writes dS and the dropped probabilities to [batch, heads, seq,
// seq] scratch for the column pass (dK, dV) and the relative rows' pass (their gradients:
// each row sums over the (i, j) pairs that read it, listed on the host). Fixed loop orders,
// no atomics: the same bits every run. Not fused or tiled as kernels/attention.cu is; none
// of it has run on a GPU yet.

#include "common.cuh"

// The operands every kernel reads. Pointers to absent terms are never read (c2p, p2c).
// Each kernel takes them as its first arguments (DISENTANGLED_PARAMS) and gathers them here.
struct DisentangledArgs {
    const float* q;
    const float* k;
    const float* v;
    const float* kr;
    const float* qr;
    const unsigned* rows;
    const unsigned* mask;
    int seq, heads, head_dim, c2p, p2c;
    float scale;
    unsigned long long seed;
    unsigned drop_threshold;
    float keep_scale;
};

#define DISENTANGLED_PARAMS                                                                      \
    const float *q, const float *k, const float *v, const float *kr, const float *qr,          \
        const unsigned *rows, const unsigned *mask, int seq, int heads, int head_dim, int c2p, \
        int p2c, float scale, unsigned long long seed, unsigned drop_threshold, float keep_scale
#define DISENTANGLED_ARGS \
    DisentangledArgs a{q, k, v, kr, qr, rows, mask, seq, heads, head_dim, c2p, p2c, scale, seed, drop_threshold, keep_scale}

__device__ __forceinline__ long long token(const DisentangledArgs& a, int b, int t) {
    return ((long long)b * a.seq + t) * (long long)(a.heads * a.head_dim);
}

// The scaled score of query i for key j, the terms added in the CPU backend's order.
__device__ float disentangled_score(const DisentangledArgs& a, int b, int h, int i, int j) {
    const int D = a.head_dim;
    const long long hidden = (long long)a.heads * D;
    const float* qi = a.q + token(a, b, i) + h * D;
    const float* kj = a.k + token(a, b, j) + h * D;
    float qk = 0.f;
    for (int e = 0; e < D; ++e) qk = fmaf(qi[e], kj[e], qk);
    float s = qk * a.scale;
    const long long r = a.rows[(long long)i * a.seq + j];
    if (a.c2p) {
        const float* kr = a.kr + r * hidden + h * D;
        float t = 0.f;
        for (int e = 0; e < D; ++e) t = fmaf(qi[e], kr[e], t);
        s = s + a.scale * t;
    }
    if (a.p2c) {
        const float* qr = a.qr + r * hidden + h * D;
        float t = 0.f;
        for (int e = 0; e < D; ++e) t = fmaf(kj[e], qr[e], t);
        s = s + a.scale * t;
    }
    return s;
}

// The dropout factor of probability (i, j) of pair (b, h): the CPU's stream, element
// ((b·heads + h)·seq + i)·seq + j.
__device__ __forceinline__ float disentangled_drop(const DisentangledArgs& a, long long row, int j) {
    if (a.drop_threshold == 0) return 1.f;
    return spafit_keeps(a.seed, (unsigned long long)(row * a.seq + j), a.drop_threshold) ? a.keep_scale : 0.f;
}

// Forward: grid (seq, heads, batch), a power-of-two block; shared memory seq + blockDim floats.
extern "C" __global__ void disentangled_attention_forward(DISENTANGLED_PARAMS, float* out, float* lse) {
    DISENTANGLED_ARGS;
    extern __shared__ __align__(16) unsigned char smem[];
    float* s = reinterpret_cast<float*>(smem);
    float* scratch = s + a.seq;
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, D = a.head_dim;
    const unsigned* valid = a.mask + (long long)b * a.seq;
    const long long row = ((long long)b * a.heads + h) * a.seq + i;
    float local_max = -INFINITY;
    for (int j = threadIdx.x; j < a.seq; j += blockDim.x) {
        const float v = valid[j] ? disentangled_score(a, b, h, i, j) : -INFINITY;
        s[j] = v;
        local_max = fmaxf(local_max, v);
    }
    const float m = block_max(local_max, scratch);
    float* o = out + token(a, b, i) + h * D;
    if (m == -INFINITY) {
        for (int e = threadIdx.x; e < D; e += blockDim.x) o[e] = 0.f;
        if (threadIdx.x == 0) lse[row] = 0.f;
        return;
    }
    float local_sum = 0.f;
    for (int j = threadIdx.x; j < a.seq; j += blockDim.x) {
        const float p = valid[j] ? expf(s[j] - m) : 0.f;
        s[j] = p;
        local_sum += p;
    }
    const float sum = block_sum(local_sum, scratch);
    if (threadIdx.x == 0) lse[row] = m + logf(sum);
    const float inverse = 1.f / sum;
    for (int j = threadIdx.x; j < a.seq; j += blockDim.x) s[j] = s[j] * inverse * disentangled_drop(a, row, j);
    __syncthreads();
    for (int e = threadIdx.x; e < D; e += blockDim.x) {
        float acc = 0.f;
        for (int j = 0; j < a.seq; ++j) acc = fmaf(s[j], a.v[token(a, b, j) + h * D + e], acc);
        o[e] = acc;
    }
}

// Backward, rows: recomputes query i's probabilities from its lse, writes dS_ij and the
// dropped probabilities P̃_ij to [batch, heads, seq, seq], and dq_i = scale·Σ_j dS_ij·(k_j +
// kr[r_ij]). Grid as the forward's; shared memory 2·seq + blockDim floats.
extern "C" __global__ void disentangled_attention_backward_rows(
    DISENTANGLED_PARAMS, const float* dout, const float* lse, float* ds, float* dropped, float* dq) {
    DISENTANGLED_ARGS;
    extern __shared__ __align__(16) unsigned char smem[];
    float* g = reinterpret_cast<float*>(smem);
    float* probs = g + a.seq;
    float* scratch = probs + a.seq;
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, D = a.head_dim;
    const long long hidden = (long long)a.heads * D;
    const unsigned* valid = a.mask + (long long)b * a.seq;
    const long long row = ((long long)b * a.heads + h) * a.seq + i;
    const float* doi = dout + token(a, b, i) + h * D;
    float local = 0.f;
    for (int j = threadIdx.x; j < a.seq; j += blockDim.x) {
        float p = 0.f, dp = 0.f;
        if (valid[j]) {
            p = expf(disentangled_score(a, b, h, i, j) - lse[row]);
            const float* vj = a.v + token(a, b, j) + h * D;
            for (int e = 0; e < D; ++e) dp = fmaf(doi[e], vj[e], dp);
        }
        const float z = disentangled_drop(a, row, j);
        dropped[row * a.seq + j] = p * z;
        probs[j] = p;
        g[j] = dp * z;
        local += p * g[j];
    }
    const float delta = block_sum(local, scratch);
    for (int j = threadIdx.x; j < a.seq; j += blockDim.x) {
        g[j] = probs[j] * (g[j] - delta);
        ds[row * a.seq + j] = g[j];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < D; e += blockDim.x) {
        float acc = 0.f;
        for (int j = 0; j < a.seq; ++j) acc = fmaf(g[j], a.k[token(a, b, j) + h * D + e], acc);
        float rel = 0.f;
        if (a.c2p) {
            for (int j = 0; j < a.seq; ++j) {
                const long long r = a.rows[(long long)i * a.seq + j];
                rel = fmaf(g[j], a.kr[r * hidden + h * D + e], rel);
            }
        }
        dq[token(a, b, i) + h * D + e] = a.scale * acc + a.scale * rel;
    }
}

// Backward, columns: dk_j = scale·Σ_i dS_ij·(q_i + qr[r_ij]) and dv_j = Σ_i P̃_ij·dO_i. Grid
// (seq, heads, batch); no shared memory.
extern "C" __global__ void disentangled_attention_backward_columns(
    DISENTANGLED_PARAMS, const float* dout, const float* ds, const float* dropped, float* dk, float* dv) {
    DISENTANGLED_ARGS;
    const int j = blockIdx.x, h = blockIdx.y, b = blockIdx.z, D = a.head_dim;
    const long long hidden = (long long)a.heads * D;
    const long long first = ((long long)b * a.heads + h) * a.seq * a.seq + j;
    for (int e = threadIdx.x; e < D; e += blockDim.x) {
        {
            float acc = 0.f, rel = 0.f;
            for (int i = 0; i < a.seq; ++i) {
                const float g = ds[first + (long long)i * a.seq];
                acc = fmaf(g, a.q[token(a, b, i) + h * D + e], acc);
                if (a.p2c) {
                    const long long r = a.rows[(long long)i * a.seq + j];
                    rel = fmaf(g, a.qr[r * hidden + h * D + e], rel);
                }
            }
            dk[token(a, b, j) + h * D + e] = a.scale * acc + a.scale * rel;
        }
        {
            float acc = 0.f;
            for (int i = 0; i < a.seq; ++i)
                acc = fmaf(dropped[first + (long long)i * a.seq], dout[token(a, b, i) + h * D + e], acc);
            dv[token(a, b, j) + h * D + e] = acc;
        }
    }
}

// Backward, relative rows: d_kr[r] = scale·Σ_b Σ_(i,j) reading r dS_ij·q_i and d_qr[r] =
// scale·Σ_b Σ dS_ij·k_j, each for its term (c2p, p2c); the pairs of row r are pairs[starts[r] ..
// starts[r + 1]] (i·seq + j, in row-major order), the sequences summed in order. Grid (rows,
// heads); no shared memory.
extern "C" __global__ void disentangled_attention_backward_terms(
    DISENTANGLED_PARAMS, int batch, const float* ds, const unsigned* pairs, const unsigned* starts,
    float* d_kr, float* d_qr) {
    DISENTANGLED_ARGS;
    const int r = blockIdx.x, h = blockIdx.y, D = a.head_dim;
    const long long hidden = (long long)a.heads * D;
    for (int e = threadIdx.x; e < D; e += blockDim.x) {
        float on_q = 0.f, on_k = 0.f;
        for (int b = 0; b < batch; ++b) {
            const long long first = ((long long)b * a.heads + h) * a.seq * a.seq;
            for (unsigned t = starts[r]; t < starts[r + 1]; ++t) {
                const int i = pairs[t] / a.seq, j = pairs[t] % a.seq;
                const float g = ds[first + pairs[t]];
                if (a.c2p) on_q = fmaf(g, a.q[token(a, b, i) + h * D + e], on_q);
                if (a.p2c) on_k = fmaf(g, a.k[token(a, b, j) + h * D + e], on_k);
            }
        }
        if (a.c2p) d_kr[r * hidden + h * D + e] = a.scale * on_q;
        if (a.p2c) d_qr[r * hidden + h * D + e] = a.scale * on_k;
    }
}
