//! The bf16 mode's `x·Wᵀ` for few rows of `x` (a single text's or a small batch's forward
//! through a frozen weight) as dot products of contiguous rows, with no packing of the weight.
//!
//! Why: the tile and register kernels (`super::x86`) first pack the whole weight into panels
//! of column pairs, every call, whatever the number of rows. At a single text of 16 tokens
//! that packing was ~65% of a forward pass (perf, `NOTES.md`), and the bf16 mode ran slower
//! than f32 (whose few-row kernel, `sgemm_dot.rs`, packs nothing either). Here the weight is
//! read where it lies: row `n` of `W` is column `n` of `Wᵀ`, and its pairs of `k` are already
//! adjacent, as `vdpbf16ps` pairs them. Only `x`'s few rows are rounded to bf16 first.
//!
//! Every element of C is the same operations wherever it lies in C and however the columns
//! are split between threads: lane `l` of its accumulator sums the pairs `p ≡ l (mod 16)` in
//! ascending steps (`vdpbf16ps` adds a pair's odd product before its even one; the last step
//! masked to `k`), the sixteen lanes are added in one fixed tree, and the bias last, one f32
//! addition. The order differs from the tiles' and the register tile's, so which path runs
//! is decided from all of a product's rows ([`MAX_ROWS`]): an example's bits depend on the
//! number of rows in its batch, as in f32 on CPUs without AVX-512 (`sgemm_dot.rs`), not on
//! the thread count.

use std::arch::x86_64::*;

use half::bf16;
use rayon::prelude::*;

/// The most rows of `x` this kernel takes. On the project's 2-core Intel Xeon VM (`cargo
/// bench --bench gemm`, `x·Wt bf16` at MiniLM's three weight shapes, both threads) a layer's
/// six products took 0.94 ms here against 1.08 on AMX tiles at 48 rows and 1.28 against 1.12
/// at 64; against the AVX-512 BF16 register tile (no AMX) this kernel was faster at 64 too.
pub const MAX_ROWS: usize = 48;

/// Rows and columns of C one block computes: sixteen 16-lane accumulators.
const MB: usize = 4;
const NB: usize = 4;
/// bf16 elements of `k` a step takes: one 512-bit register of 16 pairs.
const STEP: usize = 32;
/// Columns of C a parallel task computes.
const COLS_PER_TASK: usize = 64;

/// `a·Wᵀ` (`a`: `rows × input` f32, row-major; `w`: `out × input` bf16, row-major), `bias`
/// (`out` values) added to each row after the sums, as a new row-major `rows × out` matrix.
///
/// # Safety
/// The CPU has AVX-512 F, BW and BF16; `a.len() == rows · input`, `w.len() == out · input`,
/// `bias` of `out` values, and `rows`, `out`, `input` all above zero.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn product_transposed(
    a: &[f32],
    rows: usize,
    w: &[bf16],
    out: usize,
    input: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let k = input;
    let pairs = k.next_multiple_of(STEP) / 2;
    // SAFETY: the caller's features; `a` holds `rows` rows of `k`.
    let packed_a = unsafe { super::x86::pack_a(a, k, pairs, rows) };
    let strips: Vec<Vec<f32>> = (0..out.div_ceil(COLS_PER_TASK))
        .into_par_iter()
        .map(|task| {
            let j0 = task * COLS_PER_TASK;
            let width = COLS_PER_TASK.min(out - j0);
            let mut strip = vec![0f32; rows * width];
            let mut j = 0;
            while j < width {
                let nb = NB.min(width - j);
                let w_rows = &w[(j0 + j) * k..(j0 + j + nb) * k];
                let mut i = 0;
                while i < rows {
                    let mb = MB.min(rows - i);
                    let a_rows = &packed_a[i * pairs..(i + mb) * pairs];
                    let c = &mut strip[i * width + j..];
                    let at = Block {
                        a: a_rows,
                        pairs,
                        w: w_rows,
                        k,
                        c,
                        ldc: width,
                    };
                    // SAFETY: the caller's features; the block's rows and columns lie in
                    // the slices (`Block`'s contract).
                    unsafe {
                        match (mb, nb) {
                            (4, 4) => block::<4, 4>(at),
                            (4, 3) => block::<4, 3>(at),
                            (4, 2) => block::<4, 2>(at),
                            (4, 1) => block::<4, 1>(at),
                            (3, 4) => block::<3, 4>(at),
                            (3, 3) => block::<3, 3>(at),
                            (3, 2) => block::<3, 2>(at),
                            (3, 1) => block::<3, 1>(at),
                            (2, 4) => block::<2, 4>(at),
                            (2, 3) => block::<2, 3>(at),
                            (2, 2) => block::<2, 2>(at),
                            (2, 1) => block::<2, 1>(at),
                            (1, 4) => block::<1, 4>(at),
                            (1, 3) => block::<1, 3>(at),
                            (1, 2) => block::<1, 2>(at),
                            _ => block::<1, 1>(at),
                        }
                    }
                    i += mb;
                }
                j += nb;
            }
            strip
        })
        .collect();
    let mut c = vec![0f32; rows * out];
    for (task, strip) in strips.iter().enumerate() {
        let j0 = task * COLS_PER_TASK;
        let width = COLS_PER_TASK.min(out - j0);
        for (row, src) in c.chunks_exact_mut(out).zip(strip.chunks_exact(width)) {
            let dst = &mut row[j0..j0 + width];
            match bias {
                Some(b) => {
                    for ((d, &s), &b) in dst.iter_mut().zip(src).zip(&b[j0..j0 + width]) {
                        *d = s + b;
                    }
                }
                None => dst.copy_from_slice(src),
            }
        }
    }
    c
}

/// One block's operands: `M` rows of packed A (`pairs` u32 each, zeros past `k`), `N` rows of
/// W (`k` bf16 each), and C's cell of the block's first row and column, rows `ldc` apart
/// (`M` rows of `N` columns inside `c`).
struct Block<'a> {
    a: &'a [u32],
    pairs: usize,
    w: &'a [bf16],
    k: usize,
    c: &'a mut [f32],
    ldc: usize,
}

/// `M × N` sums of [`Block`] into its cells of C, overwriting them.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn block<const M: usize, const N: usize>(at: Block<'_>) {
    debug_assert!(at.a.len() >= M * at.pairs && at.w.len() >= N * at.k);
    debug_assert!(at.c.len() >= (M - 1) * at.ldc + N && 2 * at.pairs >= at.k);
    let mut acc = [[_mm512_setzero_ps(); N]; M];
    let ap = at.a.as_ptr();
    let wp = at.w.as_ptr() as *const u16;
    let whole = at.k / STEP;
    let rest = at.k % STEP;
    // One step of 32 `k`s from W's rows (masked past `k`: W's next row, or past its end,
    // must not enter a sum, even times A's zeros: it may hold infinities) into every sum.
    let mut step = |s: usize, mask: __mmask32| {
        let mut wv = [_mm512_setzero_si512(); N];
        for (n, v) in wv.iter_mut().enumerate() {
            // SAFETY: row `n` of W holds `k` bf16 from `n · k`; the mask reads only those
            // below `k`.
            *v = unsafe { _mm512_maskz_loadu_epi16(mask, wp.add(n * at.k + s * STEP) as *const _) };
        }
        for (i, sums) in acc.iter_mut().enumerate() {
            // SAFETY: row `i` of packed A holds `pairs ≥ (s + 1) · 16` u32.
            let x = unsafe { _mm512_loadu_si512(ap.add(i * at.pairs + s * STEP / 2) as *const _) };
            // SAFETY: a bit cast between 512-bit vector types.
            let x = unsafe { std::mem::transmute::<__m512i, __m512bh>(x) };
            for (sum, &v) in sums.iter_mut().zip(&wv) {
                // SAFETY: as above.
                let v = unsafe { std::mem::transmute::<__m512i, __m512bh>(v) };
                *sum = _mm512_dpbf16_ps(*sum, x, v);
            }
        }
    };
    for s in 0..whole {
        step(s, !0);
    }
    if rest > 0 {
        step(whole, (1u32 << rest) - 1);
    }
    // A block of fewer rows or columns sums zeros in the missing places: every cell's tree
    // is the same in every block.
    let mut sums = [_mm512_setzero_ps(); MB * NB];
    for (i, row) in acc.iter().enumerate() {
        for (n, &sum) in row.iter().enumerate() {
            sums[n * MB + i] = sum;
        }
    }
    // SAFETY: the block's features.
    let totals: [f32; MB * NB] = unsafe { std::mem::transmute(lanes_sums(sums)) };
    for (i, row) in totals.chunks_exact(NB).take(M).enumerate() {
        at.c[i * at.ldc..][..N].copy_from_slice(&row[..N]);
    }
}

/// The lane sums of sixteen vectors, `v[4·col + row]` into lane `4·row + col`, each in the
/// same tree: lanes `l` and `l + 8` added, then `l` and `l + 4` of those, then `+ 2`, `+ 1`.
/// Four levels of adds over pairs of vectors (15 adds in all, where sixteen separate
/// reductions take 64): at `k` = 384 the sums' reduction was as costly as their products.
#[target_feature(enable = "avx512f")]
unsafe fn lanes_sums(v: [__m512; 16]) -> __m512 {
    // Halves: [a's 8 | b's 8] for each pair of vectors.
    let halves: [__m512; 8] = std::array::from_fn(|j| {
        let (a, b) = (v[2 * j], v[2 * j + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
        )
    });
    // Quarters: a 128-bit block each of four vectors' 4 partial sums, in order.
    let quarters: [__m512; 4] = std::array::from_fn(|j| {
        let (a, b) = (halves[2 * j], halves[2 * j + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    });
    // Within each 128-bit block `q`: [v(8j + q)'s two, v(8j + 4 + q)'s two].
    let pairs: [__m512; 2] = std::array::from_fn(|j| {
        let (a, b) = (quarters[2 * j], quarters[2 * j + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
            _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
        )
    });
    // Block `q`: the totals of v(q), v(4 + q), v(8 + q), v(12 + q).
    _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(pairs[0], pairs[1]),
        _mm512_shuffle_ps::<0b11_01_11_01>(pairs[0], pairs[1]),
    )
}
