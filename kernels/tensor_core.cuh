// Every inline-PTX instruction of the kernels, each behind one small __device__ wrapper:
// tensor-core mma.sync (m16n8k16, bf16 in, f32 accumulate), ldmatrix (x1/x2/x4, with and
// without .trans) and cp.async (16 bytes, zero-filled tail, commit / wait groups).
//
// On the GPU each wrapper is one instruction. Under the CPU stand-in (__EMU__) each is
// emulated following the PTX ISA's fragment layouts: mma and ldmatrix are warp collectives
// (every lane publishes its registers or row address, the last arrival computes all lanes'
// results), and cp.async copies land only at the wait that covers their group (until then
// the destination reads as NaN bytes, so a missing wait shows up).
//
// Fragment layouts (g = lane / 4, t = lane % 4; a 32-bit register holds two bf16, the lower
// column / k index in the low half), checked on an H200 for mma:
//   A 16×16 row-major: a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B 16×8 (k, n):     b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C, D 16×8 f32:     c0, c1 = C[g][2t], C[g][2t+1]; c2, c3 = C[g+8][2t], C[g+8][2t+1]
// ldmatrix: lane l supplies the address of row l % 8 of matrix l / 8 (16 bytes of shared
// memory, 16-byte aligned); register i of lane l receives row l / 4, elements 2t and 2t+1 of
// matrix i, or with .trans elements (2t, l / 4) and (2t + 1, l / 4): the transpose.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

// Under the stand-in every wrapper also takes its caller's source position (filled in by
// default arguments), so a divergence report names the kernel's line, not this header's.
#ifdef __EMU__
#define EMU_CALL_SITE , const char *file = __builtin_FILE(), int line = __builtin_LINE()
#else
#define EMU_CALL_SITE
#endif

#ifdef __EMU__
namespace emu {

inline float bf16_low(uint32_t r) { return __uint_as_float(r << 16); }
inline float bf16_high(uint32_t r) { return __uint_as_float(r & 0xffff0000u); }

struct MmaIn {
    uint32_t a[4], b[2];
    float c[4];
};

inline void combine_mma(Warp& w, unsigned parity, unsigned) {
    Slot* s = w.slot[parity];
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
        MmaIn in = read_slot<MmaIn>(s[l].in);
        int g = l / 4, t = l % 4;
        const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
        for (int i = 0; i < 4; ++i) {
            A[rows[i]][cols[i]] = bf16_low(in.a[i]);
            A[rows[i]][cols[i] + 1] = bf16_high(in.a[i]);
        }
        B[2 * t][g] = bf16_low(in.b[0]);
        B[2 * t + 1][g] = bf16_high(in.b[0]);
        B[2 * t + 8][g] = bf16_low(in.b[1]);
        B[2 * t + 9][g] = bf16_high(in.b[1]);
        C[g][2 * t] = in.c[0];
        C[g][2 * t + 1] = in.c[1];
        C[g + 8][2 * t] = in.c[2];
        C[g + 8][2 * t + 1] = in.c[3];
    }
    // bf16 products are exact in f32; only the summation order is ours, not the GPU's: each
    // element adds its products to C in k order. A row's eight sums run side by side (the
    // loop over j innermost vectorises), which changes no element's order.
    // (A vector type, so the eight sums stay in a register rather than on the stack.)
    typedef float Row8 __attribute__((vector_size(32)));
    float D[16][8];
    for (int i = 0; i < 16; ++i) {
        Row8 acc, b;
        std::memcpy(&acc, C[i], sizeof acc);
        for (int k = 0; k < 16; ++k) {
            std::memcpy(&b, B[k], sizeof b);
            acc += A[i][k] * b;
        }
        std::memcpy(D[i], &acc, sizeof acc);
    }
    for (int l = 0; l < 32; ++l) {
        int g = l / 4, t = l % 4;
        float d[4] = {D[g][2 * t], D[g][2 * t + 1], D[g + 8][2 * t], D[g + 8][2 * t + 1]};
        std::memcpy(s[l].out, d, sizeof d);
    }
}

template <int N, bool TRANS>
inline void combine_ldmatrix(Warp& w, unsigned parity, unsigned) {
    Slot* s = w.slot[parity];
    const uint16_t* rows[32];
    for (int l = 0; l < 8 * N; ++l) {
        const void* p = read_slot<const void*>(s[l].in);
        if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
            fail("ldmatrix: lane %d's row address %p is not 16-byte aligned", l, p);
            return;
        }
        if (!in_shared(p, 16)) {
            fail("ldmatrix: lane %d's row address %p is not in this block's shared memory", l, p);
            return;
        }
        rows[l] = static_cast<const uint16_t*>(p);
    }
    for (int l = 0; l < 32; ++l) {
        uint32_t r[N];
        int g = l / 4, t = l % 4;
        for (int i = 0; i < N; ++i) {
            uint32_t lo, hi;
            if (TRANS) {
                lo = rows[8 * i + 2 * t][g];
                hi = rows[8 * i + 2 * t + 1][g];
            } else {
                lo = rows[8 * i + g][2 * t];
                hi = rows[8 * i + g][2 * t + 1];
            }
            r[i] = lo | hi << 16;
        }
        std::memcpy(s[l].out, r, sizeof r);
    }
}

}  // namespace emu
#endif

// D = A·B + C on one 16×8×16 tile (registers as in the table above). d may alias c.
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                  const float c[4] EMU_CALL_SITE) {
#ifdef __EMU__
    emu::MmaIn in{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}, {c[0], c[1], c[2], c[3]}};
    const unsigned char* out =
        emu::collective(emu::K_MMA, 0xffffffffu, in, emu::combine_mma, true, file, line);
    std::memcpy(d, out, 4 * sizeof(float));
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#endif
}

// N (1, 2 or 4) 8×8 bf16 matrices from shared memory; `row` is this lane's row address.
template <int N, bool TRANS>
__device__ __forceinline__ void ldmatrix(uint32_t r[N], const void* row EMU_CALL_SITE) {
    static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
#ifdef __EMU__
    const unsigned char* out = emu::collective(emu::K_LDMATRIX, 0xffffffffu, row, emu::combine_ldmatrix<N, TRANS>,
                                               true, file, line);
    std::memcpy(r, out, N * sizeof(uint32_t));
#else
    unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
    if constexpr (N == 4 && TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr) : "memory");
    else if constexpr (N == 4)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr) : "memory");
    else if constexpr (N == 2 && TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1])
                     : "r"(addr) : "memory");
    else if constexpr (N == 2)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr) : "memory");
    else if constexpr (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(addr) : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(addr) : "memory");
#endif
}

// Starts copying 16 bytes global → shared; only the first `src_bytes` (0..16) are read, the
// rest of the 16 are zero-filled (predicated tiles at matrix edges). Both addresses 16-byte
// aligned. The data is there after the cp_async_wait that covers this copy's group.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
#ifdef __EMU__
    if (reinterpret_cast<uintptr_t>(smem) % 16 != 0)
        emu::fail_here("cp.async: shared address %p is not 16-byte aligned", smem);
    if (!emu::in_shared(smem, 16))
        emu::fail_here("cp.async: destination %p is not in this block's shared memory", smem);
    if (src_bytes < 0 || src_bytes > 16) emu::fail_here("cp.async: source size %d is not in 0..16", src_bytes);
    // The alignment rule holds whatever src-size says (PTX ISA), zero-fill included.
    if (reinterpret_cast<uintptr_t>(gmem) % 16 != 0)
        emu::fail_here("cp.async: global address %p is not 16-byte aligned", gmem);
    emu::Thread* t = emu::t_rt->cur;
    emu::PendingCopy c{};
    c.dst = smem;
    c.src = gmem;
    c.size = 16;
    c.src_bytes = src_bytes;
    c.group = t->committed_groups;
    // Read now, so a bad source faults at the copy that reads it; the wait reads it again and
    // fails the launch if it changed meanwhile (the hardware may read at any point until then).
    std::memcpy(c.bytes, gmem, static_cast<size_t>(src_bytes));
    std::memset(smem, 0xFF, 16);  // in flight: NaN until waited for
    t->copies.push_back(c);
#else
    unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst),
                 "l"(__cvta_generic_to_global(gmem)), "r"(src_bytes)
                 : "memory");
#endif
}

// Closes the group of cp.async copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#ifdef __EMU__
    emu::t_rt->cur->committed_groups++;
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef __EMU__
    emu::Thread* t = emu::t_rt->cur;
    auto& q = t->copies;
    size_t kept = 0;
    for (size_t i = 0; i < q.size(); ++i) {
        if (q[i].group + N < t->committed_groups) {
            if (q[i].src_bytes > 0 && std::memcmp(q[i].bytes, q[i].src, static_cast<size_t>(q[i].src_bytes)) != 0)
                emu::fail_here("cp.async: global memory at %p changed while a copy from it was in flight", q[i].src);
            std::memcpy(q[i].dst, q[i].bytes, static_cast<size_t>(q[i].size));
        } else {
            q[kept++] = q[i];
        }
    }
    q.resize(kept);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
