//! Layernorm over the last dimension on the CPU: rows in parallel, each row on its own with
//! two-pass statistics summed in fixed lanes (so the bits do not depend on the number of
//! threads).

use rayon::prelude::*;

use super::element::Element;
use super::lanes::{sum_of3, with_avx2};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 32;

with_avx2! {
    /// Normalizes the rows of one task.
    #[allow(clippy::too_many_arguments)]
    fn normalize_rows<T>(
        x: &[T],
        y: &mut [T],
        mean: &mut [T],
        rstd: &mut [T],
        gamma: &[T],
        beta: &[T],
        n: usize,
        eps: T,
    ) {
        let inv_n = T::ONE / T::from_f64(n as f64);
        for (r, (xr, yr)) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)).enumerate() {
            let mu = sum_of3(xr, xr, xr, |v, _, _| v) * inv_n;
            let var = sum_of3(xr, xr, xr, |v, _, _| (v - mu) * (v - mu));
            let rs = T::ONE / (var * inv_n + eps).sqrt();
            for (((o, &v), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
                *o = (v - mu) * rs * g + b;
            }
            mean[r] = mu;
            rstd[r] = rs;
        }
    }
}

/// Returns `(y, mean, rstd)`.
pub fn forward<T: Element>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    n: usize,
    eps: T,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows = x.len() / n;
    let mut y = vec![T::ZERO; x.len()];
    let mut mean = vec![T::ZERO; rows];
    let mut rstd = vec![T::ZERO; rows];
    let task = ROWS_PER_TASK * n;
    y.par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .zip(mean.par_chunks_mut(ROWS_PER_TASK))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .for_each(|(((y, x), mean), rstd)| normalize_rows(x, y, mean, rstd, gamma, beta, n, eps));
    (y, mean, rstd)
}

/// `dβ = Σ_rows dY`.
pub fn grad_beta<T: Element>(dy: &[T], n: usize) -> Vec<T> {
    super::linear::column_sum(dy, n)
}

/// `dγ = Σ_rows dY ∘ x̂`.
pub fn grad_gamma<T: Element>(dy: &[T], x: &[T], mean: &[T], rstd: &[T], n: usize) -> Vec<T> {
    let mut dg = vec![T::ZERO; n];
    for (r, (dyr, xr)) in dy.chunks_exact(n).zip(x.chunks_exact(n)).enumerate() {
        for j in 0..n {
            dg[j] += dyr[j] * (xr[j] - mean[r]) * rstd[r];
        }
    }
    dg
}

with_avx2! {
    /// [`grad_input`] for the rows of one task.
    fn grad_input_rows<T>(
        dy: &[T],
        x: &[T],
        mean: &[T],
        rstd: &[T],
        gamma: &[T],
        n: usize,
        dx: &mut [T],
    ) {
        let inv_n = T::ONE / T::from_f64(n as f64);
        let rows = dx.chunks_exact_mut(n).zip(dy.chunks_exact(n)).zip(x.chunks_exact(n));
        for (r, ((dxr, dyr), xr)) in rows.enumerate() {
            let (mu, rs) = (mean[r], rstd[r]);
            let gamma = &gamma[..n];
            let mean_g = sum_of3(dyr, gamma, xr, |d, g, _| d * g) * inv_n;
            let mean_gx = sum_of3(dyr, gamma, xr, |d, g, v| d * g * (v - mu) * rs) * inv_n;
            for (((o, &d), &g), &v) in dxr.iter_mut().zip(dyr).zip(gamma).zip(xr) {
                let xhat = (v - mu) * rs;
                *o = rs * (d * g - mean_g - xhat * mean_gx);
            }
        }
    }
}

/// `dx = rstd · (g − mean(g) − x̂ · mean(g ∘ x̂))` with `g = dY ∘ γ`.
pub fn grad_input<T: Element>(
    dy: &[T],
    x: &[T],
    mean: &[T],
    rstd: &[T],
    gamma: &[T],
    n: usize,
) -> Vec<T> {
    let mut dx = vec![T::ZERO; x.len()];
    let task = ROWS_PER_TASK * n;
    dx.par_chunks_mut(task)
        .zip(dy.par_chunks(task).zip(x.par_chunks(task)))
        .zip(
            mean.par_chunks(ROWS_PER_TASK)
                .zip(rstd.par_chunks(ROWS_PER_TASK)),
        )
        .for_each(|((dx, (dy, x)), (mean, rstd))| grad_input_rows(dy, x, mean, rstd, gamma, n, dx));
    dx
}
