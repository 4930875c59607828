// Embedding gather and its scatter-add backward.
//
// Forward: out[i, d] = table[ids[i], d]; a grid-stride loop over the n·dim outputs.
// Backward without atomics: the host groups positions by id (a stable sort of the ids, so
// each group lists its positions in increasing order) and passes, per group, the range
// [starts[g], starts[g+1]) of `order`. One block per group adds its rows in that order, each
// thread owning dimensions d, d+blockDim.x, ...; rows of d_table whose id never occurs stay
// as allocated (zero). A group of thousands of rows (the one token type of a batch, padding)
// would leave one block summing them alone while the rest of the GPU idles (1.8 ms of a
// BERT-base step on an H200), so where a group is longer than a chunk the host cuts every
// group into chunks: embedding_backward_partial_* sums each chunk into an f32 row of a
// workspace, embedding_backward_combine_* adds each group's chunk sums in chunk order.
// Deterministic for any number of repeats: the chunks depend on the ids alone.
#include "common.cuh"

// dst[group_ids[g]] = Σ_{k in [starts[g], starts[g+1])} src[order[k]], in k order.
template <typename In, typename Out>
__device__ void sum_rows_by_group(const In* src, const unsigned int* order, const unsigned int* starts,
                                  const unsigned int* group_ids, Out* dst, int dim) {
    const int g = blockIdx.x;
    const long dst_row = (long)group_ids[g] * dim;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
        float acc = 0.f;
        for (unsigned int k = starts[g]; k < starts[g + 1]; ++k) acc += load(src, (long)order[k] * dim + d);
        store(dst, dst_row + d, acc);
    }
}

#define EMBEDDING_ENTRIES(T, S)                                                                          \
    extern "C" __global__ void embedding_forward_##S(const T* table, const unsigned int* ids, T* out,    \
                                                     long n, int dim) {                                  \
        for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n * dim;                          \
             i += (long)gridDim.x * blockDim.x) {                                                        \
            long row = i / dim;                                                                          \
            int d = (int)(i % dim);                                                                      \
            store(out, i, load(table, (long)ids[row] * dim + d));                                        \
        }                                                                                                \
    }                                                                                                    \
    extern "C" __global__ void embedding_backward_##S(const T* d_out, const unsigned int* order,         \
                                                      const unsigned int* starts,                        \
                                                      const unsigned int* group_ids, T* d_table,         \
                                                      int dim) {                                         \
        sum_rows_by_group(d_out, order, starts, group_ids, d_table, dim);                                \
    }                                                                                                    \
    extern "C" __global__ void embedding_backward_partial_##S(const T* d_out, const unsigned int* order, \
                                                              const unsigned int* starts,                \
                                                              const unsigned int* chunk_ids,             \
                                                              float* chunk_sums, int dim) {              \
        sum_rows_by_group(d_out, order, starts, chunk_ids, chunk_sums, dim);                             \
    }                                                                                                    \
    extern "C" __global__ void embedding_backward_combine_##S(const float* chunk_sums,                   \
                                                              const unsigned int* chunk_order,           \
                                                              const unsigned int* starts,                \
                                                              const unsigned int* group_ids, T* d_table, \
                                                              int dim) {                                 \
        sum_rows_by_group(chunk_sums, chunk_order, starts, group_ids, d_table, dim);                     \
    }

EMBEDDING_ENTRIES(float, f32)
EMBEDDING_ENTRIES(bf16, bf16)
