//! Products with a frozen weight stored in bf16 (`--device cpu --dtype bf16`), as CUDA's bf16
//! mode computes them: both operands rounded to bf16 (round to nearest even), products summed
//! in f32. Where the CPU has AMX tiles (`amx.rs`: Sapphire Rapids on) blocks of 32 × 32 run
//! on them; else where it has AVX-512 BF16 (`vdpbf16ps`: per lane, two bf16 products added to
//! an f32 sum) a register tile of 12 rows × 32 columns runs it, about twice the f32 FMA rate
//! of a Zen 5 core, slower than f32 on the project's Intel Xeon VM with AMX (NOTES.md); elsewhere the
//! rounded operands go through the f32 GEMM. Both kernels pack the whole weight first; a
//! forward `x·Wᵀ` of at most [`dot::MAX_ROWS`] rows (a single text, a small batch) reads it in
//! place instead, as dot products (`dot.rs`), on any CPU with AVX-512 BF16.
//!
//! Every element of the result is one row of A against one column of B, summed in ascending
//! pairs of `k` in one accumulator (`vdpbf16ps` adds a pair's odd product before its even
//! one; on tiles, ascending steps of 16 pairs, each step's order the hardware's; in the
//! few-row kernel, sixteen lanes then a fixed tree), whatever the split over threads:
//! bitwise reproducible on a given CPU on the same path (which path runs depends on the
//! product's rows, and on the OS's grant of the tiles and `SPAFIT_CPU_NO_AMX`: `amx.rs`). The
//! products flush denormal sums and operands to zero (below ~1e-38), as the instructions do
//! (A's last `k mod 16` elements of a row are rounded by `half`, which keeps denormals, but
//! the dot products read them as zero; the few-row kernel's last adds, of its sixteen lane
//! sums, follow the CPU's default and keep a denormal result); the fallback keeps them.

use half::bf16;

use super::bf16_copies;
use super::gemm::{product, Layout};

/// How the weight `W` (`[out, in]`, row-major) enters the product with `A` (`[rows, k]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightUse {
    /// `A·Wᵀ` (the forward `X·Wᵀ`): `k` = in, columns = out.
    Transposed,
    /// `A·W` (the backward `dY·W`): `k` = out, columns = in.
    AsIs,
}

impl WeightUse {
    /// The product's depth `k` and columns for a weight of `[out, input]`.
    pub fn depth_and_columns(self, out: usize, input: usize) -> (usize, usize) {
        match self {
            WeightUse::Transposed => (input, out),
            WeightUse::AsIs => (out, input),
        }
    }
}

/// `A·Wᵀ` or `A·W` for a row-major f32 `a` of `rows` rows and a bf16 weight `w` of
/// `[out, in]`, as a new row-major f32 matrix, `bias` (one per column) added to each row
/// after the sums (one f32 addition, wherever it is done).
pub fn product_with_bf16_weight(
    a: &[f32],
    rows: usize,
    w: &[bf16],
    (out, input): (usize, usize),
    use_: WeightUse,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (k, cols) = use_.depth_and_columns(out, input);
    assert_eq!(a.len(), rows * k, "bf16 product: A is not [{rows}, {k}]");
    assert_eq!(
        w.len(),
        out * input,
        "bf16 product: W is not [{out}, {input}]"
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), cols, "bf16 product: the bias is not [{cols}]");
    }
    // Every kernel below needs AVX-512 BF16 (the tiles too, for the rounding) and no empty
    // side.
    #[cfg(target_arch = "x86_64")]
    if avx512_bf16() && rows > 0 && cols > 0 && k > 0 {
        if use_ == WeightUse::Transposed && rows <= dot::MAX_ROWS {
            // SAFETY: the CPU has the features the kernel is compiled for; sizes checked
            // above.
            return unsafe { dot::product_transposed(a, rows, w, out, input, bias) };
        }
        if amx_tiles() {
            // SAFETY: as above, and the tiles are there.
            return unsafe { x86::product_on_tiles(a, rows, w, out, input, k, cols, use_, bias) };
        }
        // SAFETY: as above.
        return unsafe { x86::product(a, rows, w, out, input, k, cols, use_, bias) };
    }
    bf16_copies::plus_row(product_by_rounding(a, rows, w, out, input, use_), bias)
}

/// The product on any CPU: the operands rounded to bf16, widened back, through the f32 GEMM.
pub fn product_by_rounding(
    a: &[f32],
    rows: usize,
    w: &[bf16],
    out: usize,
    input: usize,
    use_: WeightUse,
) -> Vec<f32> {
    let a = bf16_copies::rounded_to_bf16(a);
    let w = bf16_copies::widened(w);
    let w_layout = Layout::row_major(out, input);
    match use_ {
        WeightUse::Transposed => product(1.0, &a, Layout::row_major(rows, input), &w, w_layout.t()),
        WeightUse::AsIs => product(1.0, &a, Layout::row_major(rows, out), &w, w_layout),
    }
}

/// Whether this CPU runs the products on AMX tiles (`tdpbf16ps`; with AVX-512 BF16 beside
/// them for the rounding): Sapphire Rapids and later, where Linux grants the tiles, unless
/// `SPAFIT_CPU_NO_AMX=1` (then AVX-512 BF16 takes them, with other bits).
pub fn amx_tiles() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512_bf16() && super::amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU runs `vdpbf16ps` (and the AVX-512 it needs).
pub fn avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
mod dot;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::bf16;
    use rayon::prelude::*;

    use std::mem::MaybeUninit;

    use super::super::amx::{self, Tiles};
    use super::WeightUse;

    /// Rows of the register tile.
    const MR: usize = 12;
    /// Columns of the register tile: two 16-lane registers.
    const NR: usize = 32;
    /// Rows per parallel task: whole tiles.
    const ROWS_PER_TASK: usize = 8 * MR;

    /// `a` (`[rows, k]`) times `B` (`[k, cols]`, from `w` as `use_` says), `bias` added.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product(
        a: &[f32],
        rows: usize,
        w: &[bf16],
        out: usize,
        input: usize,
        k: usize,
        cols: usize,
        use_: WeightUse,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let pairs = k.div_ceil(2);
        // A's rows in bf16, each padded to whole pairs: lane `p` of a row's u32 view holds
        // elements 2p (low half) and 2p + 1 (high half), as `vdpbf16ps` pairs them.
        let packed_a = pack_a(a, k, pairs, rows);
        let panels = pack_b(w, out, input, k, cols, pairs, use_);
        // The panel's bias columns from `j0`, if any.
        let bias_at = |j0: usize| bias.map(|b| &b[j0..]);
        // Every cell is written by one tile: the output needs no zeros first.
        let mut c: Vec<f32> = Vec::with_capacity(rows * cols);
        // Tests and debug builds: NaN where no tile wrote, rather than old heap bytes.
        #[cfg(debug_assertions)]
        c.spare_capacity_mut()[..rows * cols].fill(MaybeUninit::new(f32::NAN));
        if rows <= ROWS_PER_TASK {
            // Too few rows to share: the threads take the column panels instead, each into a
            // block of its own, copied into place.
            let blocks: Vec<Vec<MaybeUninit<f32>>> = panels
                .par_chunks_exact(pairs * NR)
                .enumerate()
                .map(|(jb, panel)| {
                    let n = NR.min(cols - jb * NR);
                    let mut block = vec![MaybeUninit::uninit(); rows * NR];
                    let mut r = 0;
                    while r < rows {
                        let m = MR.min(rows - r);
                        let a_rows = &packed_a[r * pairs..(r + m) * pairs];
                        let cells = &mut block[r * NR..];
                        // SAFETY: as in the row split below, into a block of `rows × NR`.
                        unsafe { tile(a_rows, m, pairs, panel, cells, NR, n, bias_at(jb * NR)) };
                        r += m;
                    }
                    block
                })
                .collect();
            let dst = &mut c.spare_capacity_mut()[..rows * cols];
            for (jb, block) in blocks.iter().enumerate() {
                let j0 = jb * NR;
                let n = NR.min(cols - j0);
                for (row, src) in dst.chunks_exact_mut(cols).zip(block.chunks_exact(NR)) {
                    row[j0..j0 + n].copy_from_slice(&src[..n]);
                }
            }
            // SAFETY: the blocks' first `n` columns, written by their tiles, cover every
            // column of every row.
            unsafe { c.set_len(rows * cols) };
            return c;
        }
        c.spare_capacity_mut()[..rows * cols]
            .par_chunks_mut(ROWS_PER_TASK * cols)
            .enumerate()
            .for_each(|(task, chunk)| {
                let row0 = task * ROWS_PER_TASK;
                let n_rows = chunk.len() / cols;
                let mut r = 0;
                while r < n_rows {
                    let m = MR.min(n_rows - r);
                    let a_rows = &packed_a[(row0 + r) * pairs..(row0 + r + m) * pairs];
                    for (jb, panel) in panels.chunks_exact(pairs * NR).enumerate() {
                        let j0 = jb * NR;
                        let n = NR.min(cols - j0);
                        let cells = &mut chunk[r * cols + j0..];
                        // SAFETY: features enabled on this function; the slices hold `m`
                        // rows of `pairs` and a panel of `pairs × NR`; the tile's cells lie
                        // in `chunk`.
                        unsafe { tile(a_rows, m, pairs, panel, cells, cols, n, bias_at(j0)) };
                    }
                    r += m;
                }
            });
        // SAFETY: the tiles of every task cover every cell of its rows.
        unsafe { c.set_len(rows * cols) };
        c
    }

    /// [`product`] (`bias` added) on AMX tiles: blocks of 32 rows × 32 columns, each summed over all of `k`
    /// in steps of 16 pairs by one tile sequence, whatever the split over threads (bitwise
    /// reproducible on a given CPU). A is packed with its rows and pairs padded with zeros to
    /// whole blocks and steps, B's panels with their pairs so.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product_on_tiles(
        a: &[f32],
        rows: usize,
        w: &[bf16],
        out: usize,
        input: usize,
        k: usize,
        cols: usize,
        use_: WeightUse,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        const ROW_BLOCKS_PER_TASK: usize = 4;
        let pairs = k.div_ceil(2).next_multiple_of(amx::PAIRS_PER_STEP);
        let steps = pairs / amx::PAIRS_PER_STEP;
        let packed_a = pack_a(a, k, pairs, rows.next_multiple_of(amx::BLOCK));
        let panels = pack_b(w, out, input, k, cols, pairs, use_);
        let row_blocks = rows.div_ceil(amx::BLOCK);
        let col_blocks = cols.div_ceil(NR);
        // The 32 × 32 block (rb, cb), the bias added, into `dst`, row-major with `ld`
        // columns, whose cell (0, 0) is the product's (row0, col0). Every cell of the
        // product is written by one block: the output needs no zeros first.
        let block_into = |tiles: &Tiles,
                          (rb, cb): (usize, usize),
                          dst: &mut [MaybeUninit<f32>],
                          ld: usize,
                          (row0, col0): (usize, usize)| {
            // Written whole by the tiles: no zeros first (4 KiB a block).
            let mut sums = MaybeUninit::uninit();
            let a_rows = packed_a[rb * amx::BLOCK * pairs..].as_ptr();
            let panel = panels[cb * pairs * NR..].as_ptr();
            // SAFETY: A is padded to whole blocks of rows and both to whole steps of pairs:
            // block `rb`'s 32 rows and panel `cb`'s `pairs` rows are inside them.
            unsafe { tiles.block(a_rows, pairs * 4, panel, steps, &mut sums) };
            // SAFETY: `block` stored all of it.
            let sums: &[f32; amx::BLOCK * amx::BLOCK] = unsafe { sums.assume_init_ref() };
            let (r0, c0) = (rb * amx::BLOCK, cb * NR);
            let (m, n) = (amx::BLOCK.min(rows - r0), NR.min(cols - c0));
            for (i, src) in sums.chunks_exact(amx::BLOCK).take(m).enumerate() {
                let at = (r0 - row0 + i) * ld + c0 - col0;
                let dst = &mut dst[at..at + n];
                match bias {
                    Some(b) => {
                        for ((d, &s), &b) in dst.iter_mut().zip(src).zip(&b[c0..c0 + n]) {
                            d.write(s + b);
                        }
                    }
                    None => {
                        for (d, &s) in dst.iter_mut().zip(src) {
                            d.write(s);
                        }
                    }
                }
            }
        };
        let mut c: Vec<f32> = Vec::with_capacity(rows * cols);
        // Tests and debug builds: NaN where no block wrote, rather than old heap bytes.
        #[cfg(debug_assertions)]
        c.spare_capacity_mut()[..rows * cols].fill(MaybeUninit::new(f32::NAN));
        if row_blocks < 2 * ROW_BLOCKS_PER_TASK {
            // Too few rows to share: the threads take the column panels, each into a strip
            // of its own, copied into place.
            let strips: Vec<Vec<MaybeUninit<f32>>> = (0..col_blocks)
                .into_par_iter()
                .map(|cb| {
                    // SAFETY: the caller checked that the tiles are there.
                    let tiles = unsafe { Tiles::configure() };
                    let n = NR.min(cols - cb * NR);
                    let mut strip = vec![MaybeUninit::uninit(); rows * n];
                    for rb in 0..row_blocks {
                        block_into(&tiles, (rb, cb), &mut strip, n, (0, cb * NR));
                    }
                    strip
                })
                .collect();
            let dst = &mut c.spare_capacity_mut()[..rows * cols];
            for (cb, strip) in strips.iter().enumerate() {
                let n = NR.min(cols - cb * NR);
                for (row, src) in dst.chunks_exact_mut(cols).zip(strip.chunks_exact(n)) {
                    row[cb * NR..cb * NR + n].copy_from_slice(src);
                }
            }
            // SAFETY: the strips cover every column of every row.
            unsafe { c.set_len(rows * cols) };
            return c;
        }
        // Up to ROW_BLOCKS_PER_TASK blocks of rows a task, fewer where that would leave
        // threads without two tasks each (a 16 × 64 batch's 32 blocks on 16 threads).
        let threads = rayon::current_num_threads().max(1);
        let task_blocks = (row_blocks / (2 * threads)).clamp(1, ROW_BLOCKS_PER_TASK);
        let task_rows = task_blocks * amx::BLOCK;
        c.spare_capacity_mut()[..rows * cols]
            .par_chunks_mut(task_rows * cols)
            .enumerate()
            .for_each(|(task, chunk)| {
                // SAFETY: the caller checked that the tiles are there.
                let tiles = unsafe { Tiles::configure() };
                let first = task * task_rows;
                for rb in first / amx::BLOCK..(first + chunk.len() / cols).div_ceil(amx::BLOCK) {
                    for cb in 0..col_blocks {
                        block_into(&tiles, (rb, cb), chunk, cols, (first, 0));
                    }
                }
            });
        // SAFETY: the blocks of every task cover every cell of its rows.
        unsafe { c.set_len(rows * cols) };
        c
    }

    /// A's rows rounded to bf16 (nearest even), `2 · pairs` per row (zeros pad the row past
    /// `k`), `rows_padded` rows (zeros past A's own).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_a(a: &[f32], k: usize, pairs: usize, rows_padded: usize) -> Vec<u32> {
        const ROWS_PER_TASK: usize = 64;
        let rows = a.len() / k.max(1);
        let mut packed: Vec<u32> = Vec::with_capacity(rows_padded * pairs);
        // Tests and debug builds: bf16 NaN pairs where nothing wrote, rather than old bytes.
        #[cfg(debug_assertions)]
        packed.spare_capacity_mut()[..rows_padded * pairs].fill(MaybeUninit::new(0x7fc0_7fc0));
        // Every element written below, padding included: no zero fill first.
        packed.spare_capacity_mut()[..rows_padded * pairs]
            .par_chunks_mut(pairs.max(1) * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, dst)| {
                let first = task * ROWS_PER_TASK;
                for (i, drow) in dst.chunks_exact_mut(pairs.max(1)).enumerate() {
                    let src = match first + i < rows {
                        true => &a[(first + i) * k..(first + i + 1) * k],
                        false => &[],
                    };
                    // SAFETY: as the enclosing function's features.
                    unsafe { round_row(src, drow) };
                }
            });
        // SAFETY: every row of the `rows_padded` was written whole.
        unsafe { packed.set_len(rows_padded * pairs) };
        packed
    }

    /// One row of f32 to bf16 pairs, zeros after it to the end of `dst` (which holds at least
    /// `src.len()` bf16).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn round_row(src: &[f32], dst: &mut [MaybeUninit<u32>]) {
        let bits = dst.as_mut_ptr() as *mut u16;
        let len = 2 * dst.len();
        assert!(src.len() <= len);
        let mut i = 0;
        while i + 16 <= src.len() {
            // SAFETY: 16 f32 read from `src[i..]`, 16 u16 written at `bits + i` (inside
            // `dst`: `i + 16 ≤ src.len() ≤ len`).
            unsafe {
                let v = _mm512_loadu_ps(src.as_ptr().add(i));
                let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                _mm256_storeu_si256(bits.add(i) as *mut __m256i, h);
            }
            i += 16;
        }
        for (j, &v) in src.iter().enumerate().skip(i) {
            // SAFETY: `j < src.len() ≤ len`.
            unsafe { bits.add(j).write(bf16::from_f32(v).to_bits()) };
        }
        // SAFETY: the rest of `dst`'s `len` u16.
        unsafe { std::ptr::write_bytes(bits.add(src.len()), 0, len - src.len()) };
    }

    /// B in panels of `NR` columns: for each of `pairs` pairs `p`, the panel's columns'
    /// (B[2p][n], B[2p + 1][n]) as u32, zero past `cols` and past `k`.
    fn pack_b(
        w: &[bf16],
        out: usize,
        input: usize,
        k: usize,
        cols: usize,
        pairs: usize,
        use_: WeightUse,
    ) -> Vec<u32> {
        debug_assert_eq!((k, cols), use_.depth_and_columns(out, input));
        let bits: &[u16] = bytemuck::cast_slice(w);
        let blocks = cols.div_ceil(NR);
        let mut panels = vec![0u32; blocks * pairs * NR];
        panels
            .par_chunks_mut(pairs * NR)
            .enumerate()
            .for_each(|(jb, panel)| {
                let j0 = jb * NR;
                let width = NR.min(cols - j0);
                match use_ {
                    // Column n of B is row n of W: its pairs are consecutive there.
                    WeightUse::Transposed => {
                        for jj in 0..width {
                            let row = &bits[(j0 + jj) * input..(j0 + jj + 1) * input];
                            let (whole, odd) = row.split_at(row.len() - row.len() % 2);
                            for (p, pair) in whole.chunks_exact(2).enumerate() {
                                panel[p * NR + jj] =
                                    u32::from(pair[0]) | (u32::from(pair[1]) << 16);
                            }
                            if let Some(&last) = odd.first() {
                                panel[whole.len() / 2 * NR + jj] = u32::from(last);
                            }
                        }
                    }
                    // Rows 2p and 2p + 1 of W hold pair p of every column.
                    WeightUse::AsIs => {
                        // Past k's pairs (padded for whole tile steps) the panel stays zero.
                        for (p, lanes) in panel.chunks_exact_mut(NR).take(k.div_ceil(2)).enumerate()
                        {
                            let even = &bits[2 * p * input + j0..][..width];
                            let odd =
                                (2 * p + 1 < k).then(|| &bits[(2 * p + 1) * input + j0..][..width]);
                            match odd {
                                Some(odd) => {
                                    for ((lane, &e), &o) in lanes.iter_mut().zip(even).zip(odd) {
                                        *lane = u32::from(e) | (u32::from(o) << 16);
                                    }
                                }
                                None => {
                                    for (lane, &e) in lanes.iter_mut().zip(even) {
                                        *lane = u32::from(e);
                                    }
                                }
                            }
                        }
                    }
                }
            });
        panels
    }

    /// `m` ≤ MR rows of packed A against one panel into `n` ≤ NR columns of C (row stride
    /// `ldc`), writing them whole, `bias` (the panel's columns on) added after the sums.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        a: &[u32],
        m: usize,
        pairs: usize,
        panel: &[u32],
        c: &mut [MaybeUninit<f32>],
        ldc: usize,
        n: usize,
        bias: Option<&[f32]>,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let ap = a.as_ptr();
        let bp = panel.as_ptr();
        if m == MR {
            for p in 0..pairs {
                // SAFETY: `p < pairs`; the panel holds `pairs × NR`, A `MR × pairs`.
                unsafe {
                    let b0: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR) as *const _));
                    let b1: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR + 16) as *const _));
                    macro_rules! row {
                        ($i:literal) => {{
                            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                                *ap.add($i * pairs + p) as i32,
                            ));
                            acc[$i][0] = _mm512_dpbf16_ps(acc[$i][0], x, b0);
                            acc[$i][1] = _mm512_dpbf16_ps(acc[$i][1], x, b1);
                        }};
                    }
                    row!(0);
                    row!(1);
                    row!(2);
                    row!(3);
                    row!(4);
                    row!(5);
                    row!(6);
                    row!(7);
                    row!(8);
                    row!(9);
                    row!(10);
                    row!(11);
                }
            }
        } else {
            for p in 0..pairs {
                // SAFETY: as above, for `m` rows.
                unsafe {
                    let b0: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR) as *const _));
                    let b1: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR + 16) as *const _));
                    for (i, row) in acc.iter_mut().enumerate().take(m) {
                        let x: __m512bh =
                            std::mem::transmute(_mm512_set1_epi32(*ap.add(i * pairs + p) as i32));
                        row[0] = _mm512_dpbf16_ps(row[0], x, b0);
                        row[1] = _mm512_dpbf16_ps(row[1], x, b1);
                    }
                }
            }
        }
        let low = if n >= 16 {
            0xffff
        } else {
            (1u32 << n) as u16 - 1
        } as __mmask16;
        let high = if n >= NR {
            0xffff
        } else if n > 16 {
            ((1u32 << (n - 16)) - 1) as u16
        } else {
            0
        } as __mmask16;
        if let Some(b) = bias {
            assert!(b.len() >= n, "bf16 product: the bias ends inside the panel");
            // SAFETY: the masks read no lane past the `n` columns `b` holds.
            let (b0, b1) = unsafe {
                (
                    _mm512_maskz_loadu_ps(low, b.as_ptr()),
                    match n > 16 {
                        true => _mm512_maskz_loadu_ps(high, b.as_ptr().add(16)),
                        false => _mm512_setzero_ps(),
                    },
                )
            };
            for row in acc.iter_mut().take(m) {
                row[0] = _mm512_add_ps(row[0], b0);
                row[1] = _mm512_add_ps(row[1], b1);
            }
        }
        for (i, row) in acc.iter().enumerate().take(m) {
            // SAFETY: row `i` of the tile starts at `i · ldc` in `c`, which holds its `n`
            // columns; the masks write no lane past them.
            unsafe {
                let dst = c.as_mut_ptr().add(i * ldc) as *mut f32;
                _mm512_mask_storeu_ps(dst, low, row[0]);
                // Past 16 columns only: the pointer must stay inside the row's allocation.
                if n > 16 {
                    _mm512_mask_storeu_ps(dst.add(16), high, row[1]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::skipped;

    /// Exact sums (in f64) of the bf16-rounded operands: the kernels may differ from them by
    /// the f32 rounding of their own sums only.
    fn reference(
        a: &[f32],
        rows: usize,
        w: &[bf16],
        out: usize,
        input: usize,
        use_: WeightUse,
    ) -> (Vec<f64>, Vec<f64>) {
        let (k, cols) = use_.depth_and_columns(out, input);
        let mut c = vec![0.0; rows * cols];
        let mut scale = vec![0.0; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                for kk in 0..k {
                    let x = f64::from(bf16::from_f32(a[i * k + kk]).to_f32());
                    let y = f64::from(
                        match use_ {
                            WeightUse::Transposed => w[j * input + kk],
                            WeightUse::AsIs => w[kk * input + j],
                        }
                        .to_f32(),
                    );
                    c[i * cols + j] += x * y;
                    scale[i * cols + j] += (x * y).abs();
                }
            }
        }
        (c, scale)
    }

    /// The few-row kernel reads each row of W up to its own end only: an infinity in the next
    /// row would turn a sum into NaN even against A's zero padding. (A read past the last
    /// row is not seen here; the masks that stop one stop the other.)
    #[test]
    fn a_products_sums_read_no_weight_past_their_row() {
        if !avx512_bf16() {
            skipped("the few-row kernel: this CPU lacks AVX-512 BF16");
            return;
        }
        // Depths below, at and past one step of 32, odd and even.
        for input in [1, 5, 31, 32, 33, 70] {
            let (rows, out) = (3, 6);
            let a: Vec<f32> = (0..rows * input)
                .map(|i| (i % 7) as f32 * 0.25 - 0.5)
                .collect();
            // Rows 1 and 3 are all infinite: rows 0, 2, 4 and 5 lie beside them.
            let w: Vec<bf16> = (0..out * input)
                .map(|i| match (i / input) % 2 {
                    1 if i / input < 4 => bf16::INFINITY,
                    _ => bf16::from_f32((i % 5) as f32 * 0.5 - 1.0),
                })
                .collect();
            let got =
                product_with_bf16_weight(&a, rows, &w, (out, input), WeightUse::Transposed, None);
            let (want, _) = reference(&a, rows, &w, out, input, WeightUse::Transposed);
            for i in 0..rows {
                for j in [0, 2, 4, 5] {
                    let (g, e) = (got[i * out + j], want[i * out + j]);
                    assert!(
                        g.is_finite() && (f64::from(g) - e).abs() <= 1e-5 * e.abs().max(1.0),
                        "depth {input}: cell ({i}, {j}) is {g}, want {e}"
                    );
                }
            }
        }
    }

    /// A cell of a few rows' product is the same operations wherever it lies, in a whole block
    /// or at an edge: a row alone, or a weight's row alone, gives it the same bits.
    #[test]
    fn a_few_rows_cells_have_the_same_bits_anywhere_in_the_product() {
        if !avx512_bf16() {
            skipped("the few-row kernel: this CPU lacks AVX-512 BF16");
            return;
        }
        let (rows, out, input) = (11, 70, 45);
        // Magnitudes over 2⁻⁶..2⁶, so that sums in other orders round differently.
        let value = |i: usize, m: usize| {
            ((i * m % 101) as f32 - 50.0) / 7.0 * 2f32.powi((i * 7 % 13) as i32 - 6)
        };
        let a: Vec<f32> = (0..rows * input).map(|i| value(i, 37)).collect();
        let w: Vec<bf16> = (0..out * input)
            .map(|i| bf16::from_f32(value(i, 53)))
            .collect();
        let t = WeightUse::Transposed;
        let all = product_with_bf16_weight(&a, rows, &w, (out, input), t, None);
        for i in 0..rows {
            let row = &a[i * input..(i + 1) * input];
            let alone = product_with_bf16_weight(row, 1, &w, (out, input), t, None);
            for j in 0..out {
                assert_eq!(
                    alone[j].to_bits(),
                    all[i * out + j].to_bits(),
                    "row {i} col {j}"
                );
            }
        }
        for j in 0..out {
            let w_row = &w[j * input..(j + 1) * input];
            let alone = product_with_bf16_weight(&a, rows, w_row, (1, input), t, None);
            for i in 0..rows {
                assert_eq!(
                    alone[i].to_bits(),
                    all[i * out + j].to_bits(),
                    "row {i} col {j}"
                );
            }
        }
    }

    #[test]
    fn every_path_sums_the_rounded_operands_at_every_edge() {
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
        };
        for (rows, out, input) in [
            (1, 1, 1),
            (13, 33, 7),
            (12, 32, 16),
            (25, 40, 61),
            (97, 70, 130),
            (7, 3, 2),
            // More than eight blocks of 32 rows (split by rows over threads on tiles), an
            // odd depth past one step of 32.
            (300, 70, 131),
            (257, 33, 64),
            // The few-row kernel's edges: rows past one block of 4, columns past a task of
            // 64 and not whole blocks of 4, depths of whole steps of 32 and not.
            (32, 130, 97),
            (6, 67, 64),
            (9, 5, 33),
        ] {
            for use_ in [WeightUse::Transposed, WeightUse::AsIs] {
                let (k, cols) = use_.depth_and_columns(out, input);
                let a: Vec<f32> = (0..rows * k).map(|_| next()).collect();
                let w: Vec<bf16> = (0..out * input).map(|_| bf16::from_f32(next())).collect();
                let (want, scale) = reference(&a, rows, &w, out, input, use_);
                let rounded = product_by_rounding(&a, rows, &w, out, input, use_);
                let mut paths = vec![("rounding", rounded)];
                #[cfg(target_arch = "x86_64")]
                if avx512_bf16() {
                    // SAFETY: the CPU has the kernel's features; the sizes are consistent.
                    let got =
                        unsafe { x86::product(&a, rows, &w, out, input, k, cols, use_, None) };
                    // Its bias, added in the tile (the public path takes the tiles instead
                    // where the CPU has them): one f32 addition after the sums.
                    let bias: Vec<f32> = (0..cols).map(|j| j as f32 * 0.37 - 5.0).collect();
                    // SAFETY: as above.
                    let biased = unsafe {
                        x86::product(&a, rows, &w, out, input, k, cols, use_, Some(&bias))
                    };
                    for (i, (b, s)) in biased.iter().zip(&got).enumerate() {
                        let want = s + bias[i % cols];
                        assert!(
                            b.to_bits() == want.to_bits(),
                            "{use_:?} {rows}x{out}x{input}: the kernel's bias at {i}"
                        );
                    }
                    paths.push(("kernel", got));
                }
                #[cfg(target_arch = "x86_64")]
                if avx512_bf16() && use_ == WeightUse::Transposed {
                    // SAFETY: as above.
                    let got = unsafe { dot::product_transposed(&a, rows, &w, out, input, None) };
                    paths.push(("dot", got));
                }
                #[cfg(target_arch = "x86_64")]
                if amx_tiles() {
                    // SAFETY: as above, and the tiles are there.
                    let got = unsafe {
                        x86::product_on_tiles(&a, rows, &w, out, input, k, cols, use_, None)
                    };
                    paths.push(("tiles", got));
                }
                // The bias, added after the sums on every path: one f32 addition each.
                let bias: Vec<f32> = (0..cols).map(|_| next()).collect();
                let plain = product_with_bf16_weight(&a, rows, &w, (out, input), use_, None);
                let biased =
                    product_with_bf16_weight(&a, rows, &w, (out, input), use_, Some(&bias));
                for (i, (got, sum)) in biased.iter().zip(&plain).enumerate() {
                    let want = sum + bias[i % cols];
                    assert!(
                        got.to_bits() == want.to_bits(),
                        "{use_:?} {rows}x{out}x{input} bias at {i}"
                    );
                }
                // On one thread (other splits of rows or columns), the same bits.
                let one_thread = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap();
                let alone = one_thread
                    .install(|| product_with_bf16_weight(&a, rows, &w, (out, input), use_, None));
                assert!(
                    alone
                        .iter()
                        .map(|v| v.to_bits())
                        .eq(plain.iter().map(|v| v.to_bits())),
                    "{use_:?} {rows}x{out}x{input}: one thread's bits differ"
                );
                if paths.len() == 1 {
                    // The portable path ran: not a skipped test.
                    println!("note: the AVX-512 BF16 kernel did not run: this CPU lacks it");
                } else if !paths.iter().any(|(path, _)| *path == "tiles") {
                    // The other paths ran: not a skipped test.
                    println!("note: the AMX kernel did not run: this CPU or OS lacks it");
                }
                for (path, got) in paths {
                    assert_eq!(got.len(), want.len());
                    for ((g, e), s) in got.iter().zip(&want).zip(&scale) {
                        let err = (f64::from(*g) - e).abs();
                        assert!(
                            err <= 1e-6 * s + 1e-30,
                            "{path} {use_:?} {rows}x{out}x{input}: {g} vs {e} (scale {s})"
                        );
                    }
                }
            }
        }
    }
}
