// Softmax cross-entropy, binary cross-entropy with logits (multi-label: a sigmoid per class,
// mean over every element) and mean squared error, forward and backward, mean over the batch.
//
// Forward: a single block walks the rows in order (batches are small: one row per
// example), each thread owning rows t, t+blockDim.x, ..., then one block_sum tree: the loss
// is the same bits every run. Backward: a grid-stride loop over elements; d_loss is read
// from device memory (the tape's upstream gradient). Labels are validated on the host
// before launch. Outputs are assigned; loss is f32.
#include "common.cuh"

template <typename T>
__device__ float row_lse(const T* z, long base, int classes) {
    float m = load(z, base);
    for (int j = 1; j < classes; ++j) m = fmaxf(m, load(z, base + j));
    float s = 0.f;
    for (int j = 0; j < classes; ++j) s += expf(load(z, base + j) - m);
    return m + logf(s);
}

#define LOSS_ENTRIES(T, S)                                                                        \
    extern "C" __global__ void cross_entropy_forward_##S(const T* logits, const unsigned int* y,  \
                                                         float* loss, int rows, int classes) {    \
        extern __shared__ float scratch[];                                                        \
        float acc = 0.f;                                                                          \
        for (int r = threadIdx.x; r < rows; r += blockDim.x) {                                    \
            long base = (long)r * classes;                                                        \
            acc += row_lse(logits, base, classes) - load(logits, base + y[r]);                    \
        }                                                                                         \
        float total = block_sum(acc, scratch);                                                    \
        if (threadIdx.x == 0) loss[0] = total / rows;                                             \
    }                                                                                             \
    extern "C" __global__ void cross_entropy_backward_##S(const float* d_loss, const T* logits,   \
                                                          const unsigned int* y, T* d_logits,     \
                                                          int rows, int classes) {                \
        float g = d_loss[0] / rows;                                                               \
        for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < (long)rows * classes;      \
             i += (long)gridDim.x * blockDim.x) {                                                 \
            long r = i / classes;                                                                 \
            int j = (int)(i % classes);                                                           \
            float p = expf(load(logits, i) - row_lse(logits, r * classes, classes));              \
            store(d_logits, i, g * (p - (j == (int)y[r] ? 1.f : 0.f)));                           \
        }                                                                                         \
    }                                                                                             \
    extern "C" __global__ void bce_with_logits_forward_##S(const T* logits, const T* targets,     \
                                                           float* loss, int n) {                  \
        extern __shared__ float scratch[];                                                        \
        float acc = 0.f;                                                                          \
        for (int i = threadIdx.x; i < n; i += blockDim.x) {                                       \
            float z = load(logits, i);                                                            \
            acc += fmaxf(z, 0.f) - z * load(targets, i) + log1pf(expf(-fabsf(z)));                \
        }                                                                                         \
        float total = block_sum(acc, scratch);                                                    \
        if (threadIdx.x == 0) loss[0] = total / n;                                                \
    }                                                                                             \
    extern "C" __global__ void bce_with_logits_backward_##S(const float* d_loss, const T* logits, \
                                                            const T* targets, T* d_logits,        \
                                                            int n) {                              \
        float g = d_loss[0] / n;                                                                  \
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) { \
            float z = load(logits, i);                                                            \
            float e = expf(-fabsf(z));                                                            \
            float p = z >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);                                 \
            store(d_logits, i, g * (p - load(targets, i)));                                       \
        }                                                                                         \
    }                                                                                             \
    extern "C" __global__ void mse_forward_##S(const T* pred, const T* target, float* loss,       \
                                               int n) {                                           \
        extern __shared__ float scratch[];                                                        \
        float acc = 0.f;                                                                          \
        for (int i = threadIdx.x; i < n; i += blockDim.x) {                                       \
            float d = load(pred, i) - load(target, i);                                            \
            acc += d * d;                                                                         \
        }                                                                                         \
        float total = block_sum(acc, scratch);                                                    \
        if (threadIdx.x == 0) loss[0] = total / n;                                                \
    }                                                                                             \
    extern "C" __global__ void mse_backward_##S(const float* d_loss, const T* pred,               \
                                                const T* target, T* d_pred, int n) {              \
        float g = d_loss[0] * 2.f / n;                                                            \
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)   \
            store(d_pred, i, g * (load(pred, i) - load(target, i)));                              \
    }

LOSS_ENTRIES(float, f32)
LOSS_ENTRIES(bf16, bf16)
