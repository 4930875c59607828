//! Linear map with fused LoRA on the CPU: `y = x·Wᵀ + b + s·(x_l·Aᵀ)·Bᵀ`, and each gradient
//! of it as a separate GEMM so unrequested ones cost nothing.

use super::element::Element;
use super::gemm::{gemm, Layout};
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
    let mut y = vec![T::ZERO; d.rows * d.output];
    let beta = match bias {
        Some(b) => {
            for row in y.chunks_exact_mut(d.output) {
                row.copy_from_slice(b);
            }
            T::ONE
        }
        None => T::ZERO,
    };
    let w_t = Layout::row_major(d.output, d.input).t();
    gemm(
        T::ONE,
        x,
        Layout::row_major(d.rows, d.input),
        w,
        w_t,
        beta,
        &mut y,
        Layout::row_major(d.rows, d.output),
    );
    let h = lora.map(|l| {
        let mut h = vec![T::ZERO; d.rows * d.rank];
        gemm(
            T::ONE,
            x_lora,
            Layout::row_major(d.rows, d.input),
            l.a,
            Layout::row_major(d.rank, d.input).t(),
            T::ZERO,
            &mut h,
            Layout::row_major(d.rows, d.rank),
        );
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
    let mut dx = vec![T::ZERO; d.rows * d.input];
    gemm(
        T::ONE,
        dy,
        Layout::row_major(d.rows, d.output),
        w,
        Layout::row_major(d.output, d.input),
        T::ZERO,
        &mut dx,
        Layout::row_major(d.rows, d.input),
    );
    dx
}

/// `dW = dYᵀ·X`: `[out, in]`.
pub fn grad_weight<T: Element>(d: LinearDims, dy: &[T], x: &[T]) -> Vec<T> {
    let mut dw = vec![T::ZERO; d.output * d.input];
    gemm(
        T::ONE,
        dy,
        Layout::row_major(d.rows, d.output).t(),
        x,
        Layout::row_major(d.rows, d.input),
        T::ZERO,
        &mut dw,
        Layout::row_major(d.output, d.input),
    );
    dw
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
    let mut g = vec![T::ZERO; d.rows * d.rank];
    gemm(
        lora.scale,
        dy,
        Layout::row_major(d.rows, d.output),
        lora.b,
        Layout::row_major(d.output, d.rank),
        T::ZERO,
        &mut g,
        Layout::row_major(d.rows, d.rank),
    );
    g
}

/// `dA = gᵀ·X_l`: `[r, in]`.
pub fn grad_lora_a<T: Element>(d: LinearDims, g: &[T], x_lora: &[T]) -> Vec<T> {
    let mut da = vec![T::ZERO; d.rank * d.input];
    gemm(
        T::ONE,
        g,
        Layout::row_major(d.rows, d.rank).t(),
        x_lora,
        Layout::row_major(d.rows, d.input),
        T::ZERO,
        &mut da,
        Layout::row_major(d.rank, d.input),
    );
    da
}

/// `dB = s·dYᵀ·H`: `[out, r]`.
pub fn grad_lora_b<T: Element>(d: LinearDims, dy: &[T], h: &[T], scale: T) -> Vec<T> {
    let mut db = vec![T::ZERO; d.output * d.rank];
    gemm(
        scale,
        dy,
        Layout::row_major(d.rows, d.output).t(),
        h,
        Layout::row_major(d.rows, d.rank),
        T::ZERO,
        &mut db,
        Layout::row_major(d.output, d.rank),
    );
    db
}

/// `dX_l = g·A`: `[rows, in]`.
pub fn grad_lora_input<T: Element>(d: LinearDims, g: &[T], a: &[T]) -> Vec<T> {
    let mut dx = vec![T::ZERO; d.rows * d.input];
    gemm(
        T::ONE,
        g,
        Layout::row_major(d.rows, d.rank),
        a,
        Layout::row_major(d.rank, d.input),
        T::ZERO,
        &mut dx,
        Layout::row_major(d.rows, d.input),
    );
    dx
}
