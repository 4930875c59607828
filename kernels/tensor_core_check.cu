// Checks of the tensor-core wrappers (tensor_core.cuh), one warp per case, for
// tests/integration/tensor_core.rs: the same kernels run on the CPU stand-in in CI and on the GPU in the
// GPU check, so the hardware judges the fragment layouts the stand-in assumes.
//
// Matrices travel as raw bf16 bits (unsigned short). Every kernel handles case blockIdx.x:
// A is 16×16 (row-major, A[m][k]), B is 16×8 (B[k][n], row-major) and D = A·B (+ C) is 16×8.
// Outputs are assigned.
#include "common.cuh"
#include "tensor_core.cuh"

typedef unsigned short u16;

__device__ __forceinline__ uint32_t pack(u16 lo, u16 hi) { return (uint32_t)lo | ((uint32_t)hi << 16); }

__device__ __forceinline__ void store_d(float* D, const float d[4]) {
    int l = threadIdx.x, g = l / 4, t = l % 4;
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// mma alone: registers built from global memory by the documented table.
extern "C" __global__ void check_mma(const u16* A, const u16* B, const float* C, float* D) {
    A += blockIdx.x * 256;
    B += blockIdx.x * 128;
    C += blockIdx.x * 128;
    D += blockIdx.x * 128;
    int l = threadIdx.x, g = l / 4, t = l % 4;
    uint32_t a[4] = {pack(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]), pack(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]),
                     pack(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]),
                     pack(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9])};
    uint32_t b[2] = {pack(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]), pack(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g])};
    float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    float d[4];
    mma_m16n8k16_bf16(d, a, b, c);
    store_d(D, d);
}

// ldmatrix alone: matrix i (of 4) is src[i*64 .. i*64+64) row-major 8×8; lane l supplies row
// l % 8 of matrix (l / 8) % N. out[lane * 4 + i] = register i.
template <int N, bool TRANS>
__device__ void ldmatrix_dump(const u16* src, uint32_t* out) {
    __shared__ __align__(16) u16 tile[4 * 64];
    int l = threadIdx.x;
    src += blockIdx.x * 256;
    out += blockIdx.x * 128;
    for (int i = l; i < 256; i += 32) tile[i] = src[i];
    __syncwarp();
    uint32_t r[N];
    ldmatrix<N, TRANS>(r, &tile[((l / 8) % N) * 64 + (l % 8) * 8]);
    for (int i = 0; i < 4; ++i) out[l * 4 + i] = i < N ? r[i] : 0u;
}

extern "C" __global__ void check_ldmatrix_x1(const u16* s, uint32_t* o) { ldmatrix_dump<1, false>(s, o); }
extern "C" __global__ void check_ldmatrix_x2(const u16* s, uint32_t* o) { ldmatrix_dump<2, false>(s, o); }
extern "C" __global__ void check_ldmatrix_x4(const u16* s, uint32_t* o) { ldmatrix_dump<4, false>(s, o); }
extern "C" __global__ void check_ldmatrix_x1_trans(const u16* s, uint32_t* o) { ldmatrix_dump<1, true>(s, o); }
extern "C" __global__ void check_ldmatrix_x2_trans(const u16* s, uint32_t* o) { ldmatrix_dump<2, true>(s, o); }
extern "C" __global__ void check_ldmatrix_x4_trans(const u16* s, uint32_t* o) { ldmatrix_dump<4, true>(s, o); }

// ldmatrix feeding mma, the way the GEMM and attention kernels use them. A is given row-major
// (A[m][k]); B is given as Bt[n][k] (the layout of a weight W[out][in]). `layout` picks how the
// operands are staged in shared memory and loaded:
//   bit 0 set: A stored transposed ([k][m]) and loaded with ldmatrix.x4.trans, else [m][k], .x4;
//   bits 1-2: B as 0 = [n][k] with .x2, 1 = [k][n] with .x2.trans, 2 = [n][k] with two .x1,
//             3 = [k][n] with two .x1.trans.
extern "C" __global__ void check_ldmatrix_mma(const u16* A, const u16* Bt, float* D, int layout) {
    __shared__ __align__(16) u16 as[16 * 16];
    __shared__ __align__(16) u16 bs[16 * 8];
    A += blockIdx.x * 256;
    Bt += blockIdx.x * 128;
    D += blockIdx.x * 128;
    int l = threadIdx.x;
    const bool a_trans = layout & 1;
    const int b_mode = (layout >> 1) & 3;
    const bool b_trans = b_mode & 1;
    for (int i = l; i < 256; i += 32) {
        int m = i / 16, k = i % 16;
        as[a_trans ? k * 16 + m : i] = A[i];
    }
    for (int i = l; i < 128; i += 32) {
        int n = i / 16, k = i % 16;
        bs[b_trans ? k * 8 + n : i] = Bt[i];
    }
    __syncwarp();
    uint32_t a[4], b[2];
    int i = l / 8, r = l % 8;
    if (a_trans) {
        // Matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15) as a0..a3;
        // stored rows are k, so lane l points at k-row r + 8 * (i / 2), m offset 8 * (i % 2).
        ldmatrix<4, true>(a, &as[(r + 8 * (i / 2)) * 16 + 8 * (i % 2)]);
    } else {
        ldmatrix<4, false>(a, &as[(r + 8 * (i % 2)) * 16 + 8 * (i / 2)]);
    }
    switch (b_mode) {
        case 0: ldmatrix<2, false>(b, &bs[r * 16 + 8 * (i % 2)]); break;       // n-row r, k half i % 2
        case 1: ldmatrix<2, true>(b, &bs[(r + 8 * (i % 2)) * 8]); break;       // k-row r + 8(i % 2)
        case 2:
            ldmatrix<1, false>(&b[0], &bs[r * 16]);
            ldmatrix<1, false>(&b[1], &bs[r * 16 + 8]);
            break;
        default:
            ldmatrix<1, true>(&b[0], &bs[r * 8]);
            ldmatrix<1, true>(&b[1], &bs[(r + 8) * 8]);
            break;
    }
    float c[4] = {0.f, 0.f, 0.f, 0.f}, d[4];
    mma_m16n8k16_bf16(d, a, b, c);
    store_d(D, d);
}

// cp.async: lane l copies 16-byte chunk l in its first commit group and chunk 32 + l in its
// second, reading src_bytes[chunk] bytes and zero-filling the rest; it writes chunk l back to
// dst after waiting for all but one group, and chunk 32 + l after waiting for all.
extern "C" __global__ void check_cp_async(const u16* src, const int* src_bytes, u16* dst) {
    __shared__ __align__(16) u16 buf[64 * 8];
    int l = threadIdx.x;
    src += blockIdx.x * 512;
    src_bytes += blockIdx.x * 64;
    dst += blockIdx.x * 512;
    cp_async_16(&buf[l * 8], src + l * 8, src_bytes[l]);
    cp_async_commit();
    cp_async_16(&buf[(32 + l) * 8], src + (32 + l) * 8, src_bytes[32 + l]);
    cp_async_commit();
    cp_async_wait<1>();
    for (int i = 0; i < 8; ++i) dst[l * 8 + i] = buf[l * 8 + i];
    cp_async_wait<0>();
    for (int i = 0; i < 8; ++i) dst[(32 + l) * 8 + i] = buf[(32 + l) * 8 + i];
}

// cp.async → ldmatrix → mma over k = 32 (A [16][32] row-major, Bt [8][32]), as the GEMM does it.
extern "C" __global__ void check_pipeline_tile(const u16* A, const u16* Bt, float* D) {
    __shared__ __align__(16) u16 as[16 * 32];
    __shared__ __align__(16) u16 bs[8 * 32];
    A += blockIdx.x * 512;
    Bt += blockIdx.x * 256;
    D += blockIdx.x * 128;
    int l = threadIdx.x;
    for (int c = l; c < 64; c += 32) cp_async_16(&as[c * 8], A + c * 8, 16);
    cp_async_commit();
    cp_async_16(&bs[l * 8], Bt + l * 8, 16);
    cp_async_commit();
    cp_async_wait<1>();  // A has landed; B may still be in flight
    cp_async_wait<0>();
    __syncwarp();
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    int i = l / 8, r = l % 8;
    for (int ks = 0; ks < 32; ks += 16) {
        uint32_t a[4], b[2];
        ldmatrix<4, false>(a, &as[(r + 8 * (i % 2)) * 32 + ks + 8 * (i / 2)]);
        ldmatrix<2, false>(b, &bs[r * 32 + ks + 8 * (i % 2)]);
        mma_m16n8k16_bf16(acc, a, b, acc);
    }
    store_d(D, acc);
}
