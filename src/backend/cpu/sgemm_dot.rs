//! f32 `c = a·bᵀ` for few rows of `a` (a small batch's linear forward, `x·Wᵀ`) as dot
//! products of contiguous rows, with no packing.
//!
//! Why: matrixmultiply packs B into column slivers before multiplying. For `x·Wᵀ` that pack
//! is a transpose of the whole weight — every call, whatever the batch — while the product
//! does only `m` multiply-adds per weight element. At a few dozen rows the pack cost more than
//! the product (perf of `spafit train` at batch 4 × 16 tokens: 41% of the process in
//! `pack_avx2`, 27% in the kernel; NOTES.md). Here both operands are read in place along `k`
//! (the rows of `x` and of `W` are contiguous there): a 4 × 3 block of outputs keeps twelve
//! 8-lane accumulators, each step of 8 `k` loads three weight vectors and four row vectors
//! for twelve FMAs; a block sweeps the rows of `a` (in L2 for the sizes this kernel takes)
//! under three weight rows (in L1).
//!
//! Every element of C is the same operations wherever it lies in C and however the product
//! is split: lane `l` of its accumulator sums the products at `k ≡ l (mod 8)` in ascending
//! order (the last partial step masked), the eight lanes are added in one fixed tree, and
//! `row` (the bias) or C's own value (`beta = 1`) last — one addition, so a row added in the
//! kernel gives the bits of C filled with it and added to. `super::gemm` decides once per
//! product, from all its rows, whether this kernel runs, so its splits give the bits of one
//! call.

use std::arch::x86_64::*;

use super::element::SmallProduct;

/// The most rows of `a` this kernel takes. On one core of the 2-core AMD EPYC VM without
/// AVX-512 (`cargo bench --bench gemm`, `cpu_gemm_small_batch`: MiniLM's three weight shapes)
/// it was 1.10–1.93× matrixmultiply at 8 rows, 1.25–1.45× at 16, 1.14–1.18× at 32, 1.02–1.09×
/// at 64 and slower from 96 (its rows of `a` no longer stay near the core).
pub const MAX_ROWS: usize = 32;

/// Rows and columns of C one block computes.
const MB: usize = 4;
const NB: usize = 3;

/// Whether [`sgemm_dot`] computes `c = alpha·a·b + beta·c` here: few rows (all the product's,
/// before any split), `a`'s rows and `b`'s columns contiguous (`x·Wᵀ`), `alpha = 1` and
/// `beta` 0 or 1, and a CPU with AVX2 and FMA.
pub fn applies(m: usize, alpha: f32, beta: f32, csa: isize, rsb: isize) -> bool {
    m <= MAX_ROWS
        && alpha == 1.0
        && (beta == 0.0 || beta == 1.0)
        && csa == 1
        && rsb == 1
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
}

/// `p`'s product: `c[i, j] = Σ_k a[i, k]·b[k, j]`, plus `row[j]` or, with `add_to_c`, plus
/// `c[i, j]`'s own value (else `c` is written, not read).
///
/// # Safety
/// The CPU has AVX2 and FMA ([`applies`]); every addressed element of `a`, `b`, `c` (and `n`
/// values of `row`) in bounds; `c` aliases neither operand nor overlaps itself.
pub unsafe fn sgemm_dot(at: &SmallProduct<f32>) {
    let mut j = 0;
    while j < at.n {
        let nb = NB.min(at.n - j);
        let mut i = 0;
        while i < at.m {
            let mb = MB.min(at.m - i);
            // SAFETY: rows i..i+mb and columns j..j+nb lie in the product (the caller's bounds).
            unsafe {
                match (mb, nb) {
                    (4, 3) => block::<4, 3>(at, i, j),
                    (4, 2) => block::<4, 2>(at, i, j),
                    (4, 1) => block::<4, 1>(at, i, j),
                    (3, 3) => block::<3, 3>(at, i, j),
                    (3, 2) => block::<3, 2>(at, i, j),
                    (3, 1) => block::<3, 1>(at, i, j),
                    (2, 3) => block::<2, 3>(at, i, j),
                    (2, 2) => block::<2, 2>(at, i, j),
                    (2, 1) => block::<2, 1>(at, i, j),
                    (1, 3) => block::<1, 3>(at, i, j),
                    (1, 2) => block::<1, 2>(at, i, j),
                    _ => block::<1, 1>(at, i, j),
                }
            }
            i += mb;
        }
        j += nb;
    }
}

/// The `R × C` outputs at rows `i..`, columns `j..`.
#[target_feature(enable = "avx2,fma")]
unsafe fn block<const R: usize, const C: usize>(p: &SmallProduct<f32>, i: usize, j: usize) {
    let k = p.k;
    // SAFETY (all loads and stores below): rows i..i+R of a and columns j..j+C of b hold k
    // elements each (the caller's bounds); the masked step reads only the lanes below k. The
    // row starts are wrapping arithmetic: with k = 0 the caller's offsets need not be in
    // bounds, and nothing is read through them.
    unsafe {
        let rows: [*const f32; R] =
            std::array::from_fn(|r| p.a.wrapping_offset((i + r) as isize * p.rsa));
        let cols: [*const f32; C] =
            std::array::from_fn(|q| p.b.wrapping_offset((j + q) as isize * p.csb));
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let whole = k - k % 8;
        let mut kk = 0;
        while kk < whole {
            let w: [__m256; C] = std::array::from_fn(|q| _mm256_loadu_ps(cols[q].add(kk)));
            for r in 0..R {
                let x = _mm256_loadu_ps(rows[r].add(kk));
                for q in 0..C {
                    acc[r][q] = _mm256_fmadd_ps(x, w[q], acc[r][q]);
                }
            }
            kk += 8;
        }
        if whole < k {
            let mask = tail_mask(k - whole);
            let w: [__m256; C] =
                std::array::from_fn(|q| _mm256_maskload_ps(cols[q].add(whole), mask));
            for r in 0..R {
                let x = _mm256_maskload_ps(rows[r].add(whole), mask);
                for q in 0..C {
                    acc[r][q] = _mm256_fmadd_ps(x, w[q], acc[r][q]);
                }
            }
        }
        for (r, sums) in acc.iter().enumerate() {
            for (q, &sum) in sums.iter().enumerate() {
                let mut v = lanes_sum(sum);
                let at =
                    p.c.offset((i + r) as isize * p.rsc + (j + q) as isize * p.csc);
                if let Some(row) = p.row {
                    v += *row.add(j + q);
                } else if p.add_to_c {
                    v += *at;
                }
                *at = v;
            }
        }
    }
}

/// Lanes below `valid` (1..=7) set, for `_mm256_maskload_ps`.
#[target_feature(enable = "avx2")]
fn tail_mask(valid: usize) -> __m256i {
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(valid as i32), lane)
}

/// The eight lanes' sum in one fixed tree: `(l0+l4)+(l2+l6)` and `(l1+l5)+(l3+l7)`, then their sum.
#[target_feature(enable = "avx2")]
fn lanes_sum(v: __m256) -> f32 {
    let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    let one = _mm_add_ss(pairs, _mm_shuffle_ps::<0b01>(pairs, pairs));
    _mm_cvtss_f32(one)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::skipped;

    /// Every shape edge (rows and columns off the 4 × 3 block, k off the 8-lane step) against
    /// the f64 sums; the bits of the bias added in the kernel equal to C filled with it and
    /// added to, and those of a product split into row and column pieces to the whole's.
    #[test]
    fn dot_products_match_the_definition_and_any_split() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            skipped("dot_products_match_the_definition_and_any_split: no AVX2/FMA");
            return;
        }
        let mut rng = crate::rng::SplitMix::new(9);
        for (m, k, n) in [
            (1, 1, 1),
            (5, 7, 4),
            (4, 8, 3),
            (7, 13, 5),
            (64, 384, 37),
            (9, 17, 2),
        ] {
            let lda = k + 3; // a's rows apart by more than k
            let a: Vec<f32> = (0..m * lda)
                .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                .collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect();
            let mut c = vec![f32::NAN; m * n];
            // SAFETY: AVX2 and FMA checked; a is m × lda, w is n × k, c is m × n.
            unsafe {
                sgemm_dot(&SmallProduct {
                    m,
                    k,
                    n,
                    a: a.as_ptr(),
                    rsa: lda as isize,
                    b: w.as_ptr(),
                    csb: k as isize,
                    row: Some(bias.as_ptr()),
                    add_to_c: false,
                    c: c.as_mut_ptr(),
                    rsc: n as isize,
                    csc: 1,
                });
            }
            for i in 0..m {
                for j in 0..n {
                    let exact: f64 = bias[j] as f64
                        + (0..k)
                            .map(|x| a[i * lda + x] as f64 * w[j * k + x] as f64)
                            .sum::<f64>();
                    let got = c[i * n + j] as f64;
                    assert!(
                        (got - exact).abs() <= 1e-5 * (1.0 + exact.abs()),
                        "{m}×{k}×{n} at ({i}, {j}): {got} vs {exact}"
                    );
                }
            }
            // C filled with the bias and added to: the bits of the bias added in the kernel.
            let mut filled: Vec<f32> = (0..m).flat_map(|_| bias.iter().copied()).collect();
            // SAFETY: as above; `filled` is m × n.
            unsafe {
                sgemm_dot(&SmallProduct {
                    m,
                    k,
                    n,
                    a: a.as_ptr(),
                    rsa: lda as isize,
                    b: w.as_ptr(),
                    csb: k as isize,
                    row: None,
                    add_to_c: true,
                    c: filled.as_mut_ptr(),
                    rsc: n as isize,
                    csc: 1,
                });
            }
            assert!(
                filled
                    .iter()
                    .zip(&c)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{m}×{k}×{n}: C filled with the bias and added to"
            );
            // Pieces: rows from 1, columns from 2, written into a transposed C.
            let mut pieces = vec![f32::NAN; m * n];
            let (i0, j0) = (m.min(1), n.min(2));
            for (ri, rn) in [(0, i0), (i0, m - i0)] {
                for (cj, cn) in [(0, j0), (j0, n - j0)] {
                    // SAFETY: sub-blocks of the same operands; C transposed (row stride 1).
                    unsafe {
                        sgemm_dot(&SmallProduct {
                            m: rn,
                            k,
                            n: cn,
                            a: a.as_ptr().add(ri * lda),
                            rsa: lda as isize,
                            b: w.as_ptr().add(cj * k),
                            csb: k as isize,
                            row: Some(bias.as_ptr().add(cj)),
                            add_to_c: false,
                            c: pieces.as_mut_ptr().add(ri + cj * m),
                            rsc: 1,
                            csc: m as isize,
                        });
                    }
                }
            }
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(
                        pieces[i + j * m].to_bits(),
                        c[i * n + j].to_bits(),
                        "{m}×{k}×{n} at ({i}, {j})"
                    );
                }
            }
        }
    }
}
