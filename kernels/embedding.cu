// Embedding gather and its scatter-add backward.
//
// Forward: out[i, d] = table[ids[i], d]; a grid-stride loop over the n·dim outputs.
// Backward without atomics: the host groups positions by id (a stable sort of the ids, so
// each group lists its positions in increasing order) and passes, per distinct id, the
// range [starts[g], starts[g+1]) of `order`. One block per distinct id adds its rows in that
// order, each thread owning dimensions d, d+blockDim.x, ...; rows of d_table whose id never
// occurs stay as allocated (zero). Deterministic for any number of repeats.
#include "common.cuh"

#define EMBEDDING_ENTRIES(T, S)                                                                   \
    extern "C" __global__ void embedding_forward_##S(const T* table, const unsigned int* ids,     \
                                                     T* out, long n, int dim) {                   \
        for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n * dim;                   \
             i += (long)gridDim.x * blockDim.x) {                                                 \
            long row = i / dim;                                                                   \
            int d = (int)(i % dim);                                                               \
            store(out, i, load(table, (long)ids[row] * dim + d));                                 \
        }                                                                                         \
    }                                                                                             \
    extern "C" __global__ void embedding_backward_##S(const T* d_out, const unsigned int* order,  \
                                                      const unsigned int* starts,                 \
                                                      const unsigned int* group_ids, T* d_table,  \
                                                      int dim) {                                  \
        int g = blockIdx.x;                                                                       \
        long dst = (long)group_ids[g] * dim;                                                      \
        for (int d = threadIdx.x; d < dim; d += blockDim.x) {                                     \
            float acc = 0.f;                                                                      \
            for (unsigned int k = starts[g]; k < starts[g + 1]; ++k)                              \
                acc += load(d_out, (long)order[k] * dim + d);                                     \
            store(d_table, dst + d, acc);                                                         \
        }                                                                                         \
    }

EMBEDDING_ENTRIES(float, f32)
EMBEDDING_ENTRIES(bf16, bf16)
