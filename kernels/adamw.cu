// Fused AdamW, operation for operation as torch.optim.AdamW:
//   p ← p·(1 − lr·wd);  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
//   p ← p − (lr / (1−β₁ᵗ)) · m / (sqrt(v)/sqrt(1−β₂ᵗ) + ε)
// The bias corrections and 1−β are computed on the host in f64 (f32(0.999) is not 0.999, and
// 1 − f32(β₂) would be off by 1.3e-5 relative), as the CPU reference and torch do. Parameters and moments are f32 (master
// weights); the gradient may be f32 or bf16. Updates p, m, v in place; a grid-stride loop.
#include "common.cuh"

template <typename G>
__device__ void adamw(float* p, const G* g, float* m, float* v, long n, float decay, float beta1,
                      float one_minus_beta1, float beta2, float one_minus_beta2, float step_size,
                      float bias2_sqrt, float eps) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float gi = load(g, i);
        float pi = p[i] * decay;
        float mi = beta1 * m[i] + one_minus_beta1 * gi;
        float vi = beta2 * v[i] + one_minus_beta2 * gi * gi;
        p[i] = pi - step_size * mi / (sqrtf(vi) / bias2_sqrt + eps);
        m[i] = mi;
        v[i] = vi;
    }
}

extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, long n, float decay,
                                     float beta1, float one_minus_beta1, float beta2, float one_minus_beta2,
                                     float step_size, float bias2_sqrt, float eps) {
    adamw(p, g, m, v, n, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, bias2_sqrt, eps);
}
extern "C" __global__ void adamw_bf16_grad(float* p, const bf16* g, float* m, float* v, long n, float decay,
                                           float beta1, float one_minus_beta1, float beta2,
                                           float one_minus_beta2, float step_size, float bias2_sqrt,
                                           float eps) {
    adamw(p, g, m, v, n, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, bias2_sqrt, eps);
}
