//! f32 GEMM for CPUs with AVX-512, with `matrixmultiply::sgemm`'s contract (and that crate as
//! the fallback elsewhere).
//!
//! Why our own: on the Xeon this project is measured on (two 512-bit FMA units per core),
//! matrixmultiply's 16 × 16 AVX-512 kernel issues one broadcast load per FMA and its depth
//! (256) overflows L1 with both slivers, so it reached about half of the core's FMA peak at
//! a training step's shapes, where MKL reaches 90% (NOTES.md). Here:
//!
//! - a 12 × 32 register tile (24 accumulators; per step of `k`, two loads of B and twelve
//!   broadcasts of A feed 24 FMAs), at depth `KC` = 128 so the B sliver (16 KiB) and the A
//!   rows stay in L1: the tile alone runs at the FMA peak;
//! - A is never packed when its rows or its columns are contiguous (every product of a
//!   step): the tile broadcasts straight from it, so a product's cost is its FMAs and one
//!   pass over B, which is packed into `KC × 32` slivers once per panel;
//! - each tile's rows of A (the strided reads) stay in L1 while the tile sweeps all the
//!   panel's slivers, which are contiguous and come from L2. Sweeping 192 rows of A under
//!   one sliver instead re-read every A tile from L2 once per sliver: the training step was
//!   slower that way in 21 of 30 alternating rounds (NOTES.md).
//!
//! Every element of C is the sum over `k` in ascending order, in one accumulator per `KC`
//! chunk, the chunks added to C in order: the same operations wherever the element lies in
//! C, whatever the matrix's size — so the splits of `super::gemm` (blocks of rows or
//! columns per thread) give bitwise the same result as one call.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::element::{fill_rows, fill_then_gemm};

/// Rows of the register tile.
const MR: usize = 12;
/// Columns of the register tile: two 16-lane registers.
const NR: usize = 32;
/// Depth of one pass: B sliver `KC × NR` (16 KiB) and twelve A rows of `KC` in L1.
const KC: usize = 128;
/// Columns per packed B panel: `KC × NC` (1 MiB) in L2.
const NC: usize = 2048;
// A tile never straddles two panels (`nr` is cut at the matrix's edge only).
const _: () = assert!(NC.is_multiple_of(NR));

/// `$body` once per row of the tile, `$i` a constant in each copy: the tile is then indexed
/// by constants only and stays in registers (a loop over its rows, even of constant length,
/// was left a loop and kept the tile in memory, zeroed and copied for every tile).
macro_rules! each_row {
    ($i:ident, $body:block) => {
        each_row!(@ $i, $body, 0 1 2 3 4 5 6 7 8 9 10 11)
    };
    (@ $i:ident, $body:block, $($n:literal)*) => {
        const _: () = assert!([$($n),*].len() == MR);
        $({
            let $i: usize = $n;
            $body
        })*
    };
}

/// One register tile's accumulators: row `i`, columns `16h..16h + 16` in `[i][h]`.
type Tile = [[__m512; 2]; MR];

thread_local! {
    /// Packed B panel and A edge sliver, reused across calls (no allocation per product).
    static PACKED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The rows of one tile where this kernel runs (the CPU has AVX-512), else `None`
/// (matrixmultiply's kernel does the product).
pub fn tile_rows_if_used() -> Option<usize> {
    std::is_x86_feature_detected!("avx512f").then_some(MR)
}

/// `c = alpha·a·b + beta·c` on strided matrices, as `matrixmultiply::sgemm`: with `beta = 0`
/// `c` is written without being read.
///
/// # Safety
/// As `matrixmultiply::sgemm`: every addressed element of `a`, `b` and `c` in bounds, `c` not
/// aliasing `a` or `b` nor overlapping itself.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    if std::is_x86_feature_detected!("avx512f") {
        // `cᵀ = bᵀ·aᵀ` reads and writes the same elements through swapped strides.
        let (m, n, a, rsa, csa, b, rsb, csb, rsc, csc) = if transposing_fills_more_lanes(m, n, csa)
        {
            (n, m, b, csb, rsb, a, csa, rsa, csc, rsc)
        } else {
            (m, n, a, rsa, csa, b, rsb, csb, rsc, csc)
        };
        // SAFETY: the CPU has AVX-512F; the operands are as the caller guarantees.
        unsafe {
            sgemm_avx512(
                m,
                k,
                n,
                alpha,
                a,
                rsa,
                csa,
                b,
                rsb,
                csb,
                beta,
                std::ptr::null(),
                c,
                rsc,
                csc,
            )
        }
    } else {
        // SAFETY: the same contract.
        unsafe {
            matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        }
    }
}

/// Whether `c = a·b` is better computed as `cᵀ = bᵀ·aᵀ`: B of `n ≤ 16` columns (a LoRA
/// rank's: `dB = dYᵀ·H`) from A whose rows are not contiguous (so the narrow tile, which
/// needs them, does not apply) uses `n` of the wide tile's 32 columns; transposed, B's
/// columns are the tile's rows and A's many rows its columns (`cargo bench --bench gemm`,
/// "lora dYt·H": NOTES.md), though a row-major C is then stored element by element
/// (`store_strided`), a small cost beside the FMAs saved. Each element is the same fused
/// multiply-adds over `k` in the same order (a multiply-add's product does not depend on
/// the operands' order), so the bits are those of the untransposed product.
fn transposing_fills_more_lanes(m: usize, n: usize, csa: isize) -> bool {
    n <= NR / 2 && m > n && csa != 1
}

/// `c = a·b + row`, `row` (`n` values) added to every row of the product: the linear layer's
/// bias, added in the kernel's first pass instead of copied into C beforehand (the copy, and
/// reading it back, were 2–3% of a training step). The same bits as filling C with `row` and
/// calling [`sgemm`] with `alpha = beta = 1`.
///
/// # Safety
/// As [`sgemm`], and `row` valid for `n` reads.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_plus_row(
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    row: *const f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the operands are as the caller guarantees.
        unsafe {
            sgemm_avx512(
                m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 1.0, row, c, rsc, csc,
            )
        }
    } else {
        // SAFETY: the same contract.
        unsafe { fill_then_gemm(m, k, n, a, rsa, csa, b, rsb, csb, row, c, rsc, csc) }
    }
}

/// How the tile reads A.
#[derive(Clone, Copy)]
enum ASource {
    /// Rows contiguous (`csa = 1`): row `i` at `ptr + i·row_step`.
    Rows { row_step: isize },
    /// Columns contiguous (`rsa = 1`, A transposed): the tile's twelve values for one `k`
    /// lie side by side, consecutive `k` `k_step` apart. Also the packed sliver's form.
    Columns { k_step: isize },
    /// Neither stride 1: every sliver packed into the column form.
    Packed,
}

#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_avx512(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    bias: *const f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !bias.is_null() {
            return fill_rows(m, n, bias, c, rsc, csc);
        }
        for i in 0..m {
            for j in 0..n {
                let p = c.offset(i as isize * rsc + j as isize * csc);
                *p = if beta == 0.0 { 0.0 } else { beta * *p };
            }
        }
        return;
    }
    let source = if csa == 1 {
        ASource::Rows { row_step: rsa }
    } else if rsa == 1 {
        ASource::Columns { k_step: csa }
    } else {
        ASource::Packed
    };
    PACKED.with(|packed| {
        let mut packed = packed.borrow_mut();
        let (panel, sliver) = &mut *packed;
        let panel_len = KC * n.min(NC).next_multiple_of(NR);
        if panel.len() < panel_len {
            panel.resize(panel_len, 0.0);
        }
        if sliver.len() < KC * MR {
            sliver.resize(KC * MR, 0.0);
        }
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                pack_b(
                    panel,
                    b.offset(pc as isize * rsb + jc as isize * csb),
                    rsb,
                    csb,
                    kc,
                    nc,
                );
                let first = pc == 0;
                // Narrow B (a LoRA rank's columns) from row-contiguous A: 24 rows by 16
                // columns per tile, so the FMAs' lanes are not three quarters padding.
                let narrow = nc <= NR / 2 && matches!(source, ASource::Rows { .. });
                let tile_height = if narrow { 2 * MR } else { MR };
                for row in (0..m).step_by(tile_height) {
                    let mr = tile_height.min(m - row);
                    let at = a.offset(row as isize * rsa + pc as isize * csa);
                    // A partial sliver of column-contiguous A (reading all twelve would pass
                    // its end), or A with neither stride 1: packed once for the whole panel,
                    // zero rows past the edge.
                    let packed_a = match source {
                        ASource::Rows { .. } => false,
                        ASource::Columns { .. } => mr < MR,
                        ASource::Packed => true,
                    };
                    if packed_a {
                        pack_a_sliver(sliver, at, rsa, csa, mr, kc);
                    }
                    for jr in (0..nc).step_by(NR) {
                        let nr = NR.min(nc - jr);
                        let pb = panel.as_ptr().add(jr * kc);
                        let out = TileOut {
                            c: c.offset(row as isize * rsc + (jc + jr) as isize * csc),
                            rsc,
                            csc,
                            rows: mr.min(MR),
                            cols: nr,
                            alpha,
                            beta,
                            bias: if bias.is_null() {
                                bias
                            } else {
                                bias.add(jc + jr)
                            },
                            first,
                        };
                        // Each arm stores its own tile (one `acc` shared by the arms
                        // would live in memory).
                        match source {
                            ASource::Rows { row_step } if narrow => {
                                let acc = tile_rows_narrow(kc, at, row_step, mr, pb);
                                store(&acc, out);
                                if mr > MR {
                                    let lower: Tile = std::array::from_fn(|i| [acc[i][1]; 2]);
                                    let out = TileOut {
                                        c: out.c.offset(MR as isize * rsc),
                                        rows: mr - MR,
                                        ..out
                                    };
                                    store(&lower, out)
                                }
                            }
                            ASource::Rows { row_step } => {
                                store(&tile_rows(kc, at, row_step, mr, pb), out)
                            }
                            ASource::Columns { k_step } if !packed_a => {
                                store(&tile_columns(kc, at, k_step, pb), out)
                            }
                            ASource::Columns { .. } | ASource::Packed => {
                                store(&tile_columns(kc, sliver.as_ptr(), MR as isize, pb), out)
                            }
                        }
                    }
                }
            }
        }
    });
}

/// The tile over `kc` steps from row-contiguous A: row `i` of the tile reads
/// `a + i·row_step` (rows past `rows` repeat the last one; their results are not stored).
#[inline(always)]
unsafe fn tile_rows(
    kc: usize,
    a: *const f32,
    row_step: isize,
    rows: usize,
    pb: *const f32,
) -> Tile {
    let row: [*const f32; MR] =
        std::array::from_fn(|i| a.offset(i.min(rows - 1) as isize * row_step));
    let mut acc: Tile = [[_mm512_setzero_ps(); 2]; MR];
    let mut pb = pb;
    for p in 0..kc {
        let b0 = _mm512_loadu_ps(pb);
        let b1 = _mm512_loadu_ps(pb.add(16));
        for i in 0..MR {
            let ai = _mm512_set1_ps(*row[i].add(p));
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
        }
        pb = pb.add(NR);
    }
    acc
}

/// Twice [`tile_rows`]'s rows by half its columns, for B of at most 16 columns: row `i`
/// of the 24 in `acc[i % 12][i / 12]`, its first 16 columns; the same FMAs in the same
/// order per element as the wide tile (same bits). Rows past `rows` repeat the last one.
#[inline(always)]
unsafe fn tile_rows_narrow(
    kc: usize,
    a: *const f32,
    row_step: isize,
    rows: usize,
    pb: *const f32,
) -> Tile {
    let row: [*const f32; 2 * MR] =
        std::array::from_fn(|i| a.offset(i.min(rows - 1) as isize * row_step));
    let mut acc: Tile = [[_mm512_setzero_ps(); 2]; MR];
    let mut pb = pb;
    for p in 0..kc {
        let b0 = _mm512_loadu_ps(pb);
        for i in 0..MR {
            let upper = _mm512_set1_ps(*row[i].add(p));
            let lower = _mm512_set1_ps(*row[MR + i].add(p));
            acc[i][0] = _mm512_fmadd_ps(upper, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(lower, b0, acc[i][1]);
        }
        pb = pb.add(NR);
    }
    acc
}

/// The tile over `kc` steps from A whose twelve values for one `k` are contiguous, `k_step`
/// apart from one `k` to the next.
#[inline(always)]
unsafe fn tile_columns(kc: usize, a: *const f32, k_step: isize, pb: *const f32) -> Tile {
    let mut acc: Tile = [[_mm512_setzero_ps(); 2]; MR];
    let (mut pa, mut pb) = (a, pb);
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(pb);
        let b1 = _mm512_loadu_ps(pb.add(16));
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let ai = _mm512_set1_ps(*pa.add(i));
            acc_i[0] = _mm512_fmadd_ps(ai, b0, acc_i[0]);
            acc_i[1] = _mm512_fmadd_ps(ai, b1, acc_i[1]);
        }
        // Wrapping: after the last step the address may lie past A (never read).
        pa = pa.wrapping_offset(k_step);
        pb = pb.add(NR);
    }
    acc
}

/// Where and how a tile goes into C.
#[derive(Clone, Copy)]
struct TileOut {
    /// The tile's element (0, 0) in C, and C's strides.
    c: *mut f32,
    rsc: isize,
    csc: isize,
    /// The corner of the tile that is C.
    rows: usize,
    cols: usize,
    alpha: f32,
    beta: f32,
    /// The bias row at the tile's first column, or null.
    bias: *const f32,
    /// Whether this is the first pass over `k`.
    first: bool,
}

/// `C = alpha·acc + beta·C` on the first pass over `k` (C unread when `beta = 0`), or
/// `alpha·acc + bias` with a bias row (its `cols` values from `bias`); `C += alpha·acc`
/// after. Only the `rows × cols` corner of the tile is C.
#[inline(always)]
unsafe fn store(acc: &Tile, out: TileOut) {
    let TileOut {
        c,
        rsc,
        csc,
        rows,
        cols,
        alpha,
        beta,
        bias,
        first,
    } = out;
    let va = _mm512_set1_ps(alpha);
    let vb = _mm512_set1_ps(beta);
    if csc == 1 {
        let masks = [
            column_mask(cols.min(16)),
            column_mask(cols.saturating_sub(16)),
        ];
        each_row!(i, {
            for h in 0..2 {
                if i >= rows || masks[h] == 0 {
                    continue;
                }
                let p = c.offset(i as isize * rsc).add(16 * h);
                let t = if alpha == 1.0 {
                    acc[i][h]
                } else {
                    _mm512_mul_ps(va, acc[i][h])
                };
                let v = if !first {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(masks[h], p), t)
                } else if !bias.is_null() {
                    _mm512_add_ps(t, _mm512_maskz_loadu_ps(masks[h], bias.add(16 * h)))
                } else if beta == 0.0 {
                    t
                } else {
                    _mm512_add_ps(_mm512_mul_ps(vb, _mm512_maskz_loadu_ps(masks[h], p)), t)
                };
                _mm512_mask_storeu_ps(p, masks[h], v);
            }
        });
        return;
    }
    // C's columns not contiguous: the tile through a buffer (the tile itself must not be
    // handed to the call, or it stops living in registers on the common path too).
    // Not zero-filled first: every lane is written just below.
    let mut lanes = std::mem::MaybeUninit::<[f32; MR * NR]>::uninit();
    let base = lanes.as_mut_ptr().cast::<f32>();
    each_row!(i, {
        _mm512_storeu_ps(base.add(i * NR), acc[i][0]);
        _mm512_storeu_ps(base.add(i * NR + 16), acc[i][1]);
    });
    store_strided(lanes.assume_init_ref(), out)
}

/// [`store`] for C whose columns are not contiguous, element by element with the same
/// arithmetic, from the tile's rows laid out `NR` apart.
#[inline(never)]
unsafe fn store_strided(lanes: &[f32; MR * NR], out: TileOut) {
    let TileOut {
        c,
        rsc,
        csc,
        rows,
        cols,
        alpha,
        beta,
        bias,
        first,
    } = out;
    for i in 0..rows {
        for (j, &v) in lanes[i * NR..].iter().enumerate().take(cols) {
            let p = c.offset(i as isize * rsc + j as isize * csc);
            let t = if alpha == 1.0 { v } else { alpha * v };
            *p = if !first {
                *p + t
            } else if !bias.is_null() {
                t + *bias.add(j)
            } else if beta == 0.0 {
                t
            } else {
                beta * *p + t
            };
        }
    }
}

/// The low `cols` lanes of a 16-lane register (`cols ≤ 16`).
#[inline(always)]
fn column_mask(cols: usize) -> __mmask16 {
    ((1u32 << cols) - 1) as __mmask16
}

/// B's `kc × nc` block into slivers of `NR` columns, each `kc` rows of `NR` values, columns
/// past `nc` zero.
#[inline(always)]
unsafe fn pack_b(panel: &mut [f32], b: *const f32, rsb: isize, csb: isize, kc: usize, nc: usize) {
    for (s, jr) in (0..nc).step_by(NR).enumerate() {
        let cols = NR.min(nc - jr);
        let dst = panel.as_mut_ptr().add(s * kc * NR);
        let src = b.offset(jr as isize * csb);
        if csb == 1 {
            let masks = [
                column_mask(cols.min(16)),
                column_mask(cols.saturating_sub(16)),
            ];
            for p in 0..kc {
                let row = src.offset(p as isize * rsb);
                for (h, &mask) in masks.iter().enumerate() {
                    // Wrapping: with no column in the upper half (mask 0) the address may lie
                    // past B; the masked load reads nothing there.
                    let v = _mm512_maskz_loadu_ps(mask, row.wrapping_add(16 * h));
                    _mm512_storeu_ps(dst.add(p * NR + 16 * h), v);
                }
            }
        } else if rsb == 1 {
            // B transposed (the forward's `x·Wᵀ`): its columns are contiguous rows of W,
            // turned into the sliver's rows sixteen by sixteen in registers.
            for h in 0..2 {
                for p0 in (0..kc).step_by(16) {
                    let depth = 16.min(kc - p0);
                    let mut block = [_mm512_setzero_ps(); 16];
                    for (j, r) in block.iter_mut().enumerate() {
                        if 16 * h + j < cols {
                            let column = src.offset((16 * h + j) as isize * csb).add(p0);
                            *r = _mm512_maskz_loadu_ps(column_mask(depth), column);
                        }
                    }
                    let rows = transpose16(block);
                    for (p, r) in rows.iter().enumerate().take(depth) {
                        _mm512_storeu_ps(dst.add((p0 + p) * NR + 16 * h), *r);
                    }
                }
            }
        } else {
            for p in 0..kc {
                for j in 0..NR {
                    *dst.add(p * NR + j) = if j < cols {
                        *src.offset(p as isize * rsb + j as isize * csb)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// The transpose of a 16 × 16 block held as sixteen rows: interleave pairs of rows by 32
/// bits, then by 64 bits (each 128-bit lane then holds four rows of one column), then gather
/// the lanes of one column from four registers in two rounds of 128-bit shuffles.
#[inline(always)]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + c]: rows 4g..4g+4 of columns c, c + 4, c + 8, c + 12 (one per 128-bit lane).
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (lo, hi) = (_mm512_castps_pd(t[4 * g]), _mm512_castps_pd(t[4 * g + 2]));
        let (lo2, hi2) = (
            _mm512_castps_pd(t[4 * g + 1]),
            _mm512_castps_pd(t[4 * g + 3]),
        );
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo2, hi2));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo2, hi2));
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        // Lanes 0, 2 and 1, 3 of rows 0..8, then of rows 8..16.
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        let w0 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let w1 = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(v0, w0);
        out[c + 8] = _mm512_shuffle_f32x4::<0xDD>(v0, w0);
        out[c + 4] = _mm512_shuffle_f32x4::<0x88>(v1, w1);
        out[c + 12] = _mm512_shuffle_f32x4::<0xDD>(v1, w1);
    }
    out
}

/// Rows `0..rows` of A's `rows × kc` block into `sliver` in the tile's column form (twelve
/// values per `k`), rows past `rows` zero.
#[inline(always)]
unsafe fn pack_a_sliver(
    sliver: &mut [f32],
    a: *const f32,
    rsa: isize,
    csa: isize,
    rows: usize,
    kc: usize,
) {
    for p in 0..kc {
        for i in 0..MR {
            sliver[p * MR + i] = if i < rows {
                *a.offset(i as isize * rsa + p as isize * csa)
            } else {
                0.0
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::cpu::skipped;

    /// A matrix of `rows × cols` in `data` at `(rs, cs)` strides from offset 0.
    struct Strided {
        data: Vec<f32>,
        rs: isize,
        cs: isize,
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Values that expose index mistakes: distinct, of mixed sign, not all of one scale.
    fn matrix(rows: usize, cols: usize, transposed: bool, salt: usize) -> Strided {
        let data = (0..rows * cols)
            .map(|i| (((i * 7919 + salt * 104_729) % 2003) as f32 - 1001.0) / 517.0)
            .collect();
        let (rs, cs) = if transposed {
            (1, rows as isize)
        } else {
            (cols as isize, 1)
        };
        Strided { data, rs, cs }
    }

    fn at(x: &Strided, i: usize, j: usize) -> f32 {
        x.data[(i as isize * x.rs + j as isize * x.cs) as usize]
    }

    /// `alpha·a·b + beta·c0` in f64, and the scale of its terms (for the tolerance).
    fn reference(
        a: &Strided,
        b: &Strided,
        (m, k, n): (usize, usize, usize),
        alpha: f32,
        beta: f32,
        c0: &[f32],
    ) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut scale) = (0f64, 0f64);
                for p in 0..k {
                    let t = f64::from(at(a, i, p)) * f64::from(at(b, p, j));
                    sum += t;
                    scale += t.abs();
                }
                let prior = if beta == 0.0 {
                    0.0
                } else {
                    f64::from(beta) * f64::from(c0[i * n + j])
                };
                out.push((
                    f64::from(alpha) * sum + prior,
                    f64::from(alpha.abs()) * scale + prior.abs(),
                ));
            }
        }
        out
    }

    fn run(
        a: &Strided,
        b: &Strided,
        (m, k, n): (usize, usize, usize),
        alpha: f32,
        beta: f32,
        c: &mut [f32],
    ) {
        // SAFETY: every operand holds its whole matrix at its strides; `c` is `m × n` row-major.
        unsafe {
            sgemm(
                m,
                k,
                n,
                alpha,
                a.data.as_ptr(),
                a.rs,
                a.cs,
                b.data.as_ptr(),
                b.rs,
                b.cs,
                beta,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        }
    }

    #[test]
    fn every_layout_and_edge_matches_f64() {
        // Sizes on both sides of the tile (12 × 32), the depth chunk (128), the row block
        // (192) and the 16-lane masks; A and B each row-major and transposed.
        let shapes = [
            (1, 1, 1),
            (12, 128, 32),
            (13, 129, 33),
            (11, 17, 15),
            (25, 300, 70),
            (200, 40, 17),
            (7, 5, 2100),
            (13, 300, 2100),
            (40, 256, 64),
            // Narrow B (≤ 16 columns): 24-row tiles, partial in rows, columns and depth.
            (37, 130, 8),
            (24, 128, 16),
            (13, 3, 1),
        ];
        for (m, k, n) in shapes {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                for (alpha, beta) in [(1.0, 0.0), (-0.5, 1.5)] {
                    let a = matrix(m, k, ta, 1);
                    let b = matrix(k, n, tb, 2);
                    let c0: Vec<f32> = (0..m * n).map(|i| (i % 11) as f32 - 5.0).collect();
                    let mut c = if beta == 0.0 {
                        vec![f32::NAN; m * n]
                    } else {
                        c0.clone()
                    };
                    run(&a, &b, (m, k, n), alpha, beta, &mut c);
                    let want = reference(&a, &b, (m, k, n), alpha, beta, &c0);
                    for (idx, (&got, &(exact, scale))) in c.iter().zip(&want).enumerate() {
                        let err = (f64::from(got) - exact).abs();
                        assert!(
                            err <= 1e-6 * scale + 1e-30,
                            "{m}×{k}×{n} transposed ({ta}, {tb}) alpha {alpha} beta {beta}: \
                             element {idx} = {got}, f64 says {exact}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn strided_operands_and_transposed_output() {
        // A and B windows with neither stride 1 (every other element), C written column by
        // column: the packed paths and the element-by-element store.
        let (m, k, n) = (14, 19, 35);
        let a_buf: Vec<f32> = (0..m * k * 2)
            .map(|i| (i % 17) as f32 * 0.25 - 2.0)
            .collect();
        let b_buf: Vec<f32> = (0..k * n * 2)
            .map(|i| (i % 13) as f32 * 0.5 - 3.0)
            .collect();
        let (rsa, csa) = (2 * k as isize, 2);
        let (rsb, csb) = (2, 2 * k as isize);
        let mut c = vec![f32::NAN; m * n];
        // SAFETY: the strides address elements inside the buffers; C is `n × m` row-major,
        // read as `m × n` with strides (1, m).
        unsafe {
            sgemm(
                m,
                k,
                n,
                1.0,
                a_buf.as_ptr(),
                rsa,
                csa,
                b_buf.as_ptr(),
                rsb,
                csb,
                0.0,
                c.as_mut_ptr(),
                1,
                m as isize,
            )
        }
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|p| {
                        f64::from(a_buf[(i as isize * rsa + p as isize * csa) as usize])
                            * f64::from(b_buf[(p as isize * rsb + j as isize * csb) as usize])
                    })
                    .sum();
                let got = f64::from(c[j * m + i]);
                assert!(
                    (got - exact).abs() <= 1e-4,
                    "({i}, {j}): {got} against {exact}"
                );
            }
        }
    }

    /// The narrow tile (B of at most 16 columns) gives each element the bits the wide tile
    /// gives it: the first columns of a wider product, computed alone. A property of this
    /// kernel: matrixmultiply's, which runs without AVX-512, rounds them otherwise (1 ulp).
    #[test]
    fn narrow_b_gives_the_bits_of_the_wide_tile() {
        if !std::is_x86_feature_detected!("avx512f") {
            skipped("narrow_b_gives_the_bits_of_the_wide_tile: no AVX-512 here");
            return;
        }
        for (m, k, n) in [(37, 130, 8), (50, 300, 16), (25, 7, 3)] {
            for tb in [false, true] {
                let a = matrix(m, k, false, 5);
                let wide_n = 40;
                let wide_b = matrix(k, wide_n, tb, 6);
                let c0: Vec<f32> = (0..m * wide_n).map(|i| (i % 5) as f32 - 2.0).collect();
                for (alpha, beta) in [(1.0, 0.0), (0.75, -1.25)] {
                    let mut wide = c0.clone();
                    run(&a, &wide_b, (m, k, wide_n), alpha, beta, &mut wide);
                    let mut narrow: Vec<f32> = (0..m)
                        .flat_map(|i| c0[i * wide_n..i * wide_n + n].to_vec())
                        .collect();
                    // B's first `n` columns: the same elements at the same strides.
                    run(&a, &wide_b, (m, k, n), alpha, beta, &mut narrow);
                    for i in 0..m {
                        for j in 0..n {
                            assert_eq!(
                                narrow[i * n + j].to_bits(),
                                wide[i * wide_n + j].to_bits(),
                                "{m}×{k}×{n} B transposed {tb}, alpha {alpha}: ({i}, {j})"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A narrow product from A with columns contiguous runs transposed: the same bits as the
    /// kernel on the product as given.
    #[test]
    fn narrow_products_run_transposed_with_the_same_bits() {
        if !std::is_x86_feature_detected!("avx512f") {
            skipped("narrow_products_run_transposed_with_the_same_bits: no AVX-512 here");
            return;
        }
        for (m, k, n) in [
            (384, 300, 8),
            (37, 130, 16),
            (25, 7, 3),
            (13, 129, 12),
            (40, 0, 8),
        ] {
            assert!(transposing_fills_more_lanes(m, n, m as isize));
            for tb in [false, true] {
                let a = matrix(m, k, true, 9);
                let b = matrix(k, n, tb, 10);
                let c0: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 - 3.0).collect();
                for (alpha, beta) in [(1.0, 0.0), (0.75, -1.25)] {
                    let mut transposed = c0.clone();
                    run(&a, &b, (m, k, n), alpha, beta, &mut transposed);
                    let mut as_given = c0.clone();
                    // SAFETY: as in `run`.
                    unsafe {
                        sgemm_avx512(
                            m,
                            k,
                            n,
                            alpha,
                            a.data.as_ptr(),
                            a.rs,
                            a.cs,
                            b.data.as_ptr(),
                            b.rs,
                            b.cs,
                            beta,
                            std::ptr::null(),
                            as_given.as_mut_ptr(),
                            n as isize,
                            1,
                        )
                    }
                    assert_eq!(
                        bits(&transposed),
                        bits(&as_given),
                        "{m}×{k}×{n} B transposed {tb}, alpha {alpha}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_row_added_in_the_kernel_is_fill_then_add() {
        // Each A and B layout, C contiguous and column-strided (the element-by-element
        // store), edges of every tile, depth 0; the row fenced by an unreadable page.
        if !std::is_x86_feature_detected!("avx512f") {
            // Both sides would be matrixmultiply's.
            skipped("a_row_added_in_the_kernel_is_fill_then_add: no AVX-512 here");
            return;
        }
        // Two B panels (n > NC) with several depth passes: the row's offset per panel.
        for (m, k, n) in [
            (13, 129, 35),
            (25, 40, 70),
            (3, 0, 5),
            (12, 128, 32),
            (13, 300, 2100),
        ] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                for transposed_c in [false, true] {
                    let a = matrix(m, k, ta, 7);
                    let b = matrix(k, n, tb, 8);
                    let row: Vec<f32> = (0..n).map(|j| j as f32 * 0.37 - 3.0).collect();
                    let fenced_row = Fenced::new(&row);
                    let (rsc, csc) = if transposed_c {
                        (1, m as isize)
                    } else {
                        (n as isize, 1)
                    };
                    let mut want = vec![0f32; m * n];
                    let mut got = vec![f32::NAN; m * n];
                    // SAFETY: the operands hold their matrices at their strides; C is `m × n`
                    // at (rsc, csc) in a buffer of `m·n`; the row holds `n` values.
                    unsafe {
                        fill_rows(m, n, row.as_ptr(), want.as_mut_ptr(), rsc, csc);
                        sgemm(
                            m,
                            k,
                            n,
                            1.0,
                            a.data.as_ptr(),
                            a.rs,
                            a.cs,
                            b.data.as_ptr(),
                            b.rs,
                            b.cs,
                            1.0,
                            want.as_mut_ptr(),
                            rsc,
                            csc,
                        );
                        sgemm_plus_row(
                            m,
                            k,
                            n,
                            a.data.as_ptr(),
                            a.rs,
                            a.cs,
                            b.data.as_ptr(),
                            b.rs,
                            b.cs,
                            fenced_row.data,
                            got.as_mut_ptr(),
                            rsc,
                            csc,
                        );
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{m}×{k}×{n} ({ta}, {tb}) C transposed {transposed_c}"
                    );
                }
            }
        }
    }

    #[test]
    fn empty_depth_scales_or_clears_the_output() {
        let a = matrix(3, 0, false, 1);
        let b = matrix(0, 4, false, 2);
        let mut c = vec![f32::NAN; 12];
        run(&a, &b, (3, 0, 4), 1.0, 0.0, &mut c);
        assert!(
            c.iter().all(|&v| v == 0.0),
            "beta 0 must clear without reading: {c:?}"
        );
        let mut c: Vec<f32> = (0..12).map(|i| i as f32).collect();
        run(&a, &b, (3, 0, 4), 1.0, 2.0, &mut c);
        assert_eq!(c, (0..12).map(|i| 2.0 * i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn blocks_of_any_split_give_the_same_bits() {
        // What makes the threaded GEMM deterministic: an element's value does not depend on
        // where the block holding it starts or how large the product is.
        let (m, k, n) = (61, 300, 77);
        for (ta, tb) in [(false, true), (true, false)] {
            let a = matrix(m, k, ta, 3);
            let b = matrix(k, n, tb, 4);
            let mut whole = vec![0f32; m * n];
            run(&a, &b, (m, k, n), 1.0, 0.0, &mut whole);
            for split in [1, 5, 12, 17, 40] {
                let mut rows = vec![0f32; m * n];
                let mut cols = vec![0f32; m * n];
                // SAFETY: the blocks address parts of the same operands and disjoint parts of C.
                unsafe {
                    for (start, len) in [(0, split), (split, m - split)] {
                        sgemm(
                            len,
                            k,
                            n,
                            1.0,
                            a.data.as_ptr().offset(start as isize * a.rs),
                            a.rs,
                            a.cs,
                            b.data.as_ptr(),
                            b.rs,
                            b.cs,
                            0.0,
                            rows.as_mut_ptr().add(start * n),
                            n as isize,
                            1,
                        );
                    }
                    for (start, len) in [(0, split), (split, n - split)] {
                        sgemm(
                            m,
                            k,
                            len,
                            1.0,
                            a.data.as_ptr(),
                            a.rs,
                            a.cs,
                            b.data.as_ptr().offset(start as isize * b.cs),
                            b.rs,
                            b.cs,
                            0.0,
                            cols.as_mut_ptr().add(start),
                            n as isize,
                            1,
                        );
                    }
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&rows),
                    bits(&whole),
                    "rows split at {split} ({ta}, {tb})"
                );
                assert_eq!(
                    bits(&cols),
                    bits(&whole),
                    "columns split at {split} ({ta}, {tb})"
                );
            }
        }
    }

    /// `len` f32 ending exactly at a page that may not be read or written.
    struct Fenced {
        base: *mut libc::c_void,
        size: usize,
        data: *mut f32,
    }

    impl Fenced {
        fn new(values: &[f32]) -> Self {
            // SAFETY: plain anonymous mappings; the data pointer lies inside the readable part.
            unsafe {
                let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
                let bytes = std::mem::size_of_val(values).next_multiple_of(page);
                let size = bytes + page;
                let base = libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(base, libc::MAP_FAILED);
                assert_eq!(
                    libc::mprotect(base.cast::<u8>().add(bytes).cast(), page, libc::PROT_NONE),
                    0
                );
                let data = base.cast::<u8>().add(bytes).cast::<f32>().sub(values.len());
                std::ptr::copy_nonoverlapping(values.as_ptr(), data, values.len());
                Fenced { base, size, data }
            }
        }
    }

    impl Drop for Fenced {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`.
            unsafe { libc::munmap(self.base, self.size) };
        }
    }

    #[test]
    fn reads_and_writes_stay_inside_the_operands() {
        // Each operand ends at an unreadable page: a tile that read rows past A's last (the
        // partial tile), a mask that loaded lanes past B's last column or a store past C's
        // end would fault and kill this test.
        for (m, k, n) in [(13, 21, 35), (1, 3, 1), (25, 130, 47)] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = matrix(m, k, ta, 5);
                let b = matrix(k, n, tb, 6);
                let (fa, fb) = (Fenced::new(&a.data), Fenced::new(&b.data));
                let fc = Fenced::new(&vec![0f32; m * n]);
                // SAFETY: the fenced copies hold the operands at their strides.
                unsafe {
                    sgemm(
                        m, k, n, 1.0, fa.data, a.rs, a.cs, fb.data, b.rs, b.cs, 0.0, fc.data,
                        n as isize, 1,
                    );
                }
                let mut c = vec![0f32; m * n];
                run(&a, &b, (m, k, n), 1.0, 0.0, &mut c);
                // SAFETY: `fc` holds `m·n` elements.
                let fenced = unsafe { std::slice::from_raw_parts(fc.data, m * n) };
                assert_eq!(fenced, &c[..], "{m}×{k}×{n} ({ta}, {tb})");
            }
        }
    }
}
