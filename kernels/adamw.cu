// Fused AdamW, operation for operation as torch.optim.AdamW:
//   p ← p·(1 − lr·wd);  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
//   p ← p − (lr / (1−β₁ᵗ)) · m / (sqrt(v)/sqrt(1−β₂ᵗ) + ε)
// The bias corrections and 1−β are computed on the host in f64 (f32(0.999) is not 0.999, and
// 1 − f32(β₂) would be off by 1.3e-5 relative), as the CPU reference and torch do. Parameters and moments are f32 (master
// weights); the gradient may be f32 or bf16. Updates p, m, v in place; a grid-stride loop.
// adamw_list_* updates a whole TensorList in one launch, element for element as adamw_*.
//
// Every operation is an explicitly rounded intrinsic, in the CPU backend's order: a plain
// `a * b + c` in PTX (mul.f32, add.f32 without .rn) lets ptxas fuse it into an FMA wherever
// its scheduling likes, and on an H200 it fused the two entries differently, so the list
// launch and the per-tensor launch disagreed in the last bit. Now both, the CPU stand-in and
// the CPU backend's f32 step give the same bits.
#include "common.cuh"
#include "tensor_list.cuh"

// The step's constants, shared by every tensor of a step. Mirrored field for field by
// AdamWConstants in src/backend/cuda/adamw.rs.
struct AdamWConstants {
    float beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, bias2_sqrt, eps;
};

template <typename G>
__device__ __forceinline__ void adamw_element(float* p, const G* g, float* m, float* v, long i, float decay,
                                              const AdamWConstants& c) {
    float gi = load(g, i);
    float pi = __fmul_rn(p[i], decay);
    float mi = __fadd_rn(__fmul_rn(c.beta1, m[i]), __fmul_rn(c.one_minus_beta1, gi));
    float vi = __fadd_rn(__fmul_rn(c.beta2, v[i]), __fmul_rn(__fmul_rn(c.one_minus_beta2, gi), gi));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c.bias2_sqrt), c.eps);
    p[i] = __fsub_rn(pi, __fdiv_rn(__fmul_rn(c.step_size, mi), denom));
    m[i] = mi;
    v[i] = vi;
}

template <typename G>
__device__ void adamw(float* p, const G* g, float* m, float* v, long n, float decay, const AdamWConstants& c) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        adamw_element(p, g, m, v, i, decay, c);
}

template <typename G>
__device__ void adamw_list(const TensorList& list, const AdamWConstants& c) {
    ListBlock b = list_block(list);
    float* p = (float*)list.operand[b.tensor][0];
    const G* g = (const G*)list.operand[b.tensor][1];
    float* m = (float*)list.operand[b.tensor][2];
    float* v = (float*)list.operand[b.tensor][3];
    float decay = list.scalar[b.tensor];
    LIST_STRIDE(i, b, list.n[b.tensor]) adamw_element(p, g, m, v, i, decay, c);
}

#define ADAMW_ENTRIES(G, S)                                                                              \
    extern "C" __global__ void adamw_##S(float* p, const G* g, float* m, float* v, long n, float decay, \
                                         AdamWConstants c) {                                             \
        adamw(p, g, m, v, n, decay, c);                                                                  \
    }                                                                                                    \
    extern "C" __global__ void adamw_list_##S(TensorList list, AdamWConstants c) { adamw_list<G>(list, c); }

ADAMW_ENTRIES(float, f32)
ADAMW_ENTRIES(bf16, bf16_grad)
