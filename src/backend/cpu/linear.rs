//! Linear map with fused LoRA on the CPU: `y = x·Wᵀ + b + s·(x_l·Aᵀ)·Bᵀ`, and each gradient
//! of it as a separate GEMM so unrequested ones cost nothing.

use std::ops::Range;

use super::element::Element;
use super::gemm::{gemm, product, product_plus_row, Layout};
use crate::backend::shapes::LinearDims;

/// LoRA operands as slices.
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
    let h = lora.map(|l| {
        let a_t = Layout::row_major(d.rank, d.input).t();
        let h = product(T::ONE, x_lora, x_layout, l.a, a_t);
        gemm(
            l.scale,
            &h,
            Layout::row_major(d.rows, d.rank),
            l.b,
            Layout::row_major(d.output, d.rank).t(),
            T::ONE,
            &mut y,
            Layout::row_major(d.rows, d.output),
        );
        h
    });
    (y, h)
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

/// Column sums of a `[rows, cols]` matrix, rows added in order (deterministic).
pub fn column_sum<T: Element>(m: &[T], cols: usize) -> Vec<T> {
    by_column_blocks(cols, m.len(), |columns, sums| {
        for row in m.chunks_exact(cols) {
            for (acc, &v) in sums.iter_mut().zip(&row[columns.clone()]) {
                *acc += v;
            }
        }
    })
}

/// `cols` sums, zero to start, that `add_rows(columns, sums)` accumulates for a block of
/// columns; the blocks run on the shared pool when `work` (elements read) is large. Each
/// column is summed whole by one task, rows in order, so the bits do not depend on the split.
pub(super) fn by_column_blocks<T: Element>(
    cols: usize,
    work: usize,
    add_rows: impl Fn(Range<usize>, &mut [T]) + Sync,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut sums = vec![T::ZERO; cols];
    let threads = rayon::current_num_threads();
    // Below ~64K elements the split costs more than the second core saves.
    if threads < 2 || work < (1 << 16) || cols < 32 {
        add_rows(0..cols, &mut sums);
        return sums;
    }
    // Whole 64-byte lines of f32 per block, so two tasks never write one line.
    let block = cols.div_ceil(threads).next_multiple_of(16);
    sums.par_chunks_mut(block)
        .enumerate()
        .for_each(|(i, part)| add_rows(i * block..i * block + part.len(), part));
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
