// Bias gradient: db[c] = Σ_r dy[r, c], the column sum of a [rows, cols] matrix; and column
// dots, Σ_r a[r, c]·b[r, c] (a DoRA magnitude's gradient), the same reduction over products.
//
// Decomposition: a block of 32×8 threads owns 32 adjacent columns of one chunk of rows
// (blockIdx.y; the host fixes the chunking from the shape alone); thread (tx, ty) adds the
// chunk's rows ty, ty+8, ty+16, ... of column tx in order, then the 8 partial sums of each
// column are added in a fixed tree in shared memory. With one chunk the block stores the sum;
// with several it writes an f32 partial per chunk and column_chunks_sum_* adds the chunks in
// order. Chunks exist because a 768-column output is only 24 blocks of 32 columns: on an H200
// the unchunked kernel took 4.5 ms of a 33.5 ms BERT-base training step. No atomics: the same
// input gives the same bits on any device.
// Output: db is assigned (f32 accumulation, stored in the storage type); column dots always
// write f32 partials, which column_chunks_sum_f32 adds (the host reads f32).
#include "common.cuh"

// factor: null for a plain column sum; else each element is multiplied by factor's element.
template <typename T>
__device__ void column_sum(const T* __restrict__ m, const T* __restrict__ factor, T* __restrict__ out,
                           float* __restrict__ partial, int rows, int cols, int rows_per_chunk) {
    __shared__ float part[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
    float acc = 0.f;
    if (c < cols) {
        if (factor)
            for (int r = r0 + threadIdx.y; r < r1; r += 8) acc += load(m, (long)r * cols + c) * load(factor, (long)r * cols + c);
        else
            for (int r = r0 + threadIdx.y; r < r1; r += 8) acc += load(m, (long)r * cols + c);
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    for (int s = 4; s > 0; s >>= 1) {
        if (threadIdx.y < s) part[threadIdx.y][threadIdx.x] += part[threadIdx.y + s][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && c < cols) {
        if (partial)
            partial[(long)blockIdx.y * cols + c] = part[0][threadIdx.x];
        else
            store(out, c, part[0][threadIdx.x]);
    }
}

// out[c] = Σ_z partial[z][c], z in increasing order (the chunks of a column reduction; the
// layernorm's dγ and dβ use it too).
template <typename T>
__device__ void column_chunks_sum(const float* __restrict__ partial, int chunks, int cols, T* __restrict__ out) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = 0.f;
    for (int z = 0; z < chunks; ++z) s += partial[(long)z * cols + c];
    store(out, c, s);
}

#define BIAS_GRAD_ENTRIES(T, S)                                                                         \
    extern "C" __global__ void bias_grad_##S(const T* dy, T* db, float* partial, int rows, int cols,     \
                                             int rows_per_chunk) {                                       \
        column_sum(dy, (const T*)nullptr, db, partial, rows, cols, rows_per_chunk);                    \
    }                                                                                                    \
    extern "C" __global__ void column_dots_##S(const T* a, const T* b, float* partial, int rows, int cols, \
                                               int rows_per_chunk) {                                     \
        column_sum(a, b, (T*)nullptr, partial, rows, cols, rows_per_chunk);                              \
    }                                                                                                    \
    extern "C" __global__ void column_chunks_sum_##S(const float* partial, int chunks, int cols, T* out) { \
        column_chunks_sum(partial, chunks, cols, out);                                                  \
    }

BIAS_GRAD_ENTRIES(float, f32)
BIAS_GRAD_ENTRIES(bf16, bf16)
