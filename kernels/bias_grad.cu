// Bias gradient: db[c] = Σ_r dy[r, c], the column sum of a [rows, cols] matrix.
//
// Decomposition: a block of 32×8 threads owns 32 adjacent columns; thread (tx, ty) adds rows
// ty, ty+8, ty+16, ... of column tx in order, then the 8 partial sums of each column are
// added in a fixed tree in shared memory. No atomics: the same input gives the same bits.
// Output: db is assigned (f32 accumulation, stored in the storage type).
#include "common.cuh"

template <typename T>
__device__ void column_sum(const T* __restrict__ m, T* __restrict__ out, int rows, int cols) {
    __shared__ float part[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.f;
    if (c < cols) {
        for (int r = threadIdx.y; r < rows; r += 8) acc += load(m, (long)r * cols + c);
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    for (int s = 4; s > 0; s >>= 1) {
        if (threadIdx.y < s) part[threadIdx.y][threadIdx.x] += part[threadIdx.y + s][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && c < cols) store(out, c, part[0][threadIdx.x]);
}

extern "C" __global__ void bias_grad_f32(const float* dy, float* db, int rows, int cols) {
    column_sum(dy, db, rows, cols);
}
extern "C" __global__ void bias_grad_bf16(const bf16* dy, bf16* db, int rows, int cols) {
    column_sum(dy, db, rows, cols);
}
