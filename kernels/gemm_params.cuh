// The parameter block every GEMM kernel takes (gemm.cu's tensor-core and f32 kernels,
// gemm_skinny.cu's narrow-output kernels): one launcher fills it for all of them.
#pragma once

// One launch's operands (mirrors GemmParams in src/backend/cuda/gemm.rs, field for field).
struct GemmParams {
    const void* a[2];
    const void* b[2];
    long long lda[2];
    long long ldb[2];
    int k[2];        // reduction length of each segment (k[1] = 0: one segment)
    int m, n;
    void* c;         // [m][ldc] output, or the f32 workspace [split][m][n] when split > 1
    long long ldc;
    const void* bias;  // [n], storage type, or null
    float alpha;
    int split;
    int flags;  // GEMM_*_BF16 bits: which of a[0], a[1], b[0], b[1], c, bias are bf16 (else f32)
    int m_block0;  // row block of blockIdx.y = 0: outputs of more row blocks than a grid's
                   // y dimension (65535) holds take several launches
};

#define GEMM_A0_BF16 1
#define GEMM_A1_BF16 2
#define GEMM_B0_BF16 4
#define GEMM_B1_BF16 8
#define GEMM_C_BF16 16
#define GEMM_BIAS_BF16 32
// Segment `seg` (0 or 1) of a launch: its reduction length, operands, their leading
// dimensions and storage.
struct GemmSegment {
    int k;
    const void* a;
    const void* b;
    long long lda, ldb;
    bool a_bf16, b_bf16;
};

__device__ __forceinline__ GemmSegment gemm_segment(const GemmParams& p, int seg) {
    // Ternaries, not p.k[seg]: indexing the parameter struct with a variable would copy it to
    // local memory.
    GemmSegment s;
    s.k = seg ? p.k[1] : p.k[0];
    s.a = seg ? p.a[1] : p.a[0];
    s.b = seg ? p.b[1] : p.b[0];
    s.lda = seg ? p.lda[1] : p.lda[0];
    s.ldb = seg ? p.ldb[1] : p.ldb[0];
    s.a_bf16 = p.flags & (seg ? GEMM_A1_BF16 : GEMM_A0_BF16);
    s.b_bf16 = p.flags & (seg ? GEMM_B1_BF16 : GEMM_B0_BF16);
    return s;
}

// Every operand is rounded to bf16 before it multiplies (the tensor cores' precision), for
// the kernels that multiply on the CUDA cores (gemm_skinny.cu).
#define GEMM_ROUND_BF16 64
