//! Linear map with fused LoRA on the CPU: `y = x·Wᵀ + b + s·(x_l·Aᵀ)·Bᵀ`, and each gradient
//! of it as a separate GEMM so unrequested ones cost nothing.

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
    let mut s = vec![T::ZERO; cols];
    for row in m.chunks_exact(cols) {
        for (acc, &v) in s.iter_mut().zip(row) {
            *acc += v;
        }
    }
    s
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
