//! Linear map with fused LoRA on the CPU: `y = x·Wᵀ + b + s·(x_l·Aᵀ)·Bᵀ`, and each gradient
//! of it as a separate GEMM so unrequested ones cost nothing.

use std::ops::Range;

use half::bf16;

use super::bf16_gemm::{product_with_bf16_weight, WeightUse};
use super::element::Element;
use super::gemm::{gemm, product, product_plus_row, Layout};
use crate::backend::shapes::LinearDims;

/// LoRA operands as slices.
#[derive(Debug)]
pub struct Lora<'a, T> {
    pub a: &'a [T],
    pub b: &'a [T],
    pub scale: T,
}

/// Forward pass; returns `y` and, with LoRA, `h = x_l·Aᵀ`.
pub fn forward<T: Element>(
    d: LinearDims,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    lora: Option<&Lora<'_, T>>,
    x_lora: &[T],
) -> (Vec<T>, Option<Vec<T>>) {
    let x_layout = Layout::row_major(d.rows, d.input);
    let w_t = Layout::row_major(d.output, d.input).t();
    let mut y = match bias {
        Some(b) => product_plus_row(x, x_layout, w, w_t, b),
        None => product(T::ONE, x, x_layout, w, w_t),
    };
    let h = add_lora(d, &mut y, lora, x_lora);
    (y, h)
}

/// [`forward`] with a frozen weight stored in bf16 ([`super::bf16_gemm`]): `x·Wᵀ` from the
/// operands rounded to bf16, the bias and LoRA's term in f32.
pub fn forward_bf16(
    d: LinearDims,
    x: &[f32],
    w: &[bf16],
    bias: Option<&[f32]>,
    lora: Option<&Lora<'_, f32>>,
    x_lora: &[f32],
) -> (Vec<f32>, Option<Vec<f32>>) {
    let dims = (d.output, d.input);
    let mut y = product_with_bf16_weight(x, d.rows, w, dims, WeightUse::Transposed, bias);
    let h = add_lora(d, &mut y, lora, x_lora);
    (y, h)
}

/// Adds `s·(x_l·Aᵀ)·Bᵀ` to `y` and returns `h = x_l·Aᵀ` (nothing without LoRA).
fn add_lora<T: Element>(
    d: LinearDims,
    y: &mut [T],
    lora: Option<&Lora<'_, T>>,
    x_lora: &[T],
) -> Option<Vec<T>> {
    let x_layout = Layout::row_major(d.rows, d.input);
    lora.map(|l| {
        let a_t = Layout::row_major(d.rank, d.input).t();
        let h = product(T::ONE, x_lora, x_layout, l.a, a_t);
        gemm(
            l.scale,
            &h,
            Layout::row_major(d.rows, d.rank),
            l.b,
            Layout::row_major(d.output, d.rank).t(),
            T::ONE,
            y,
            Layout::row_major(d.rows, d.output),
        );
        h
    })
}

/// `dX = dY·W`: `[rows, in]`.
pub fn grad_input<T: Element>(d: LinearDims, dy: &[T], w: &[T]) -> Vec<T> {
    product(
        T::ONE,
        dy,
        Layout::row_major(d.rows, d.output),
        w,
        Layout::row_major(d.output, d.input),
    )
}

/// [`grad_input`] with a frozen weight stored in bf16: `dY·W` from the operands rounded to
/// bf16.
pub fn grad_input_bf16(d: LinearDims, dy: &[f32], w: &[bf16]) -> Vec<f32> {
    product_with_bf16_weight(dy, d.rows, w, (d.output, d.input), WeightUse::AsIs, None)
}

/// `dW = dYᵀ·X`: `[out, in]`.
pub fn grad_weight<T: Element>(d: LinearDims, dy: &[T], x: &[T]) -> Vec<T> {
    product(
        T::ONE,
        dy,
        Layout::row_major(d.rows, d.output).t(),
        x,
        Layout::row_major(d.rows, d.input),
    )
}

/// Column sums of a `[rows, cols]` matrix (deterministic: [`sum_over_rows`]).
pub fn column_sum<T: Element>(m: &[T], cols: usize) -> Vec<T> {
    assert!(
        cols > 0 && m.len().is_multiple_of(cols),
        "column_sum: {} values in rows of {cols}",
        m.len()
    );
    sum_over_rows(m.len() / cols, cols, |rows, sums| {
        for row in m[rows.start * cols..rows.end * cols].chunks_exact(cols) {
            for (acc, &v) in sums.iter_mut().zip(row) {
                *acc += v;
            }
        }
    })
}

/// Rows per partial sum in [`sum_over_rows`].
const ROWS_PER_PARTIAL: usize = 64;

/// `cols` sums over `rows` rows: `add_rows(range, partial)` adds a range of rows into a
/// zeroed partial; the partials, one per fixed block of [`ROWS_PER_PARTIAL`] rows, run on
/// the shared pool when the work is large and are added in order. The blocks do not depend
/// on the number of threads, so neither do the bits. (Splitting by columns instead, each
/// task reading part of every row, was no faster than one core: `/tmp` microbenchmark in
/// NOTES.md.)
pub(super) fn sum_over_rows<T: Element>(
    rows: usize,
    cols: usize,
    add_rows: impl Fn(Range<usize>, &mut [T]) + Sync,
) -> Vec<T> {
    use rayon::prelude::*;
    let partial = |block: usize| {
        let mut sums = vec![T::ZERO; cols];
        let start = block * ROWS_PER_PARTIAL;
        add_rows(start..(start + ROWS_PER_PARTIAL).min(rows), &mut sums);
        sums
    };
    let blocks = rows.div_ceil(ROWS_PER_PARTIAL);
    // Below ~64K elements the pool costs more than the other threads save; the same blocks
    // either way, so the same bits.
    let partials: Vec<Vec<T>> = if rows.saturating_mul(cols) < (1 << 16) {
        (0..blocks).map(partial).collect()
    } else {
        (0..blocks).into_par_iter().map(partial).collect()
    };
    let mut partials = partials.into_iter();
    let mut sums = partials.next().unwrap_or_else(|| vec![T::ZERO; cols]);
    for p in partials {
        for (acc, v) in sums.iter_mut().zip(p) {
            *acc += v;
        }
    }
    sums
}

/// `g = s·dY·B`: `[rows, r]`, the gradient at the LoRA bottleneck.
pub fn grad_bottleneck<T: Element>(d: LinearDims, dy: &[T], lora: &Lora<'_, T>) -> Vec<T> {
    product(
        lora.scale,
        dy,
        Layout::row_major(d.rows, d.output),
        lora.b,
        Layout::row_major(d.output, d.rank),
    )
}

/// `dA = gᵀ·X_l`: `[r, in]`.
pub fn grad_lora_a<T: Element>(d: LinearDims, g: &[T], x_lora: &[T]) -> Vec<T> {
    product(
        T::ONE,
        g,
        Layout::row_major(d.rows, d.rank).t(),
        x_lora,
        Layout::row_major(d.rows, d.input),
    )
}

/// `dB = s·dYᵀ·H`: `[out, r]`.
pub fn grad_lora_b<T: Element>(d: LinearDims, dy: &[T], h: &[T], scale: T) -> Vec<T> {
    product(
        scale,
        dy,
        Layout::row_major(d.rows, d.output).t(),
        h,
        Layout::row_major(d.rows, d.rank),
    )
}

/// `dX_l = g·A`: `[rows, in]`.
pub fn grad_lora_input<T: Element>(d: LinearDims, g: &[T], a: &[T]) -> Vec<T> {
    product(
        T::ONE,
        g,
        Layout::row_major(d.rows, d.rank),
        a,
        Layout::row_major(d.rank, d.input),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partials over fixed blocks of rows: the sums hold, and 1 or 3 threads give the same
    /// bits (the row count is not a multiple of the block; the work is over the parallel
    /// threshold).
    #[test]
    fn column_sums_hold_and_ignore_the_thread_count() {
        let (rows, cols) = (1000, 70);
        let m: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| column_sum(&m, cols))
        };
        let (one, three) = (on(1), on(3));
        for j in 0..cols {
            let exact: f64 = (0..rows).map(|i| f64::from(m[i * cols + j])).sum();
            assert!((f64::from(one[j]) - exact).abs() < 1e-3, "column {j}");
            assert_eq!(one[j].to_bits(), three[j].to_bits(), "column {j}");
        }
    }
}
