//! Layernorm over the last dimension on the CPU: rows in parallel, each row on its own with
//! two-pass statistics (so the bits do not depend on the number of threads).

use rayon::prelude::*;

use super::element::Element;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 32;

/// Returns `(y, mean, rstd)`.
pub fn forward<T: Element>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    n: usize,
    eps: T,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows = x.len() / n;
    let inv_n = T::ONE / T::from_f64(n as f64);
    let mut y = vec![T::ZERO; x.len()];
    let mut mean = vec![T::ZERO; rows];
    let mut rstd = vec![T::ZERO; rows];
    let task = ROWS_PER_TASK * n;
    y.par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .zip(mean.par_chunks_mut(ROWS_PER_TASK))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .for_each(|(((y, x), mean), rstd)| {
            for (r, (xr, yr)) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)).enumerate() {
                let mut s = T::ZERO;
                for &v in xr {
                    s += v;
                }
                let mu = s * inv_n;
                let mut var = T::ZERO;
                for &v in xr {
                    var += (v - mu) * (v - mu);
                }
                let rs = T::ONE / (var * inv_n + eps).sqrt();
                for j in 0..n {
                    yr[j] = (xr[j] - mu) * rs * gamma[j] + beta[j];
                }
                mean[r] = mu;
                rstd[r] = rs;
            }
        });
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

/// `dx = rstd · (g − mean(g) − x̂ · mean(g ∘ x̂))` with `g = dY ∘ γ`.
pub fn grad_input<T: Element>(
    dy: &[T],
    x: &[T],
    mean: &[T],
    rstd: &[T],
    gamma: &[T],
    n: usize,
) -> Vec<T> {
    let inv_n = T::ONE / T::from_f64(n as f64);
    let mut dx = vec![T::ZERO; x.len()];
    dx.par_chunks_mut(n)
        .enumerate()
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(r, dxr)| {
            let (dyr, xr) = (&dy[r * n..(r + 1) * n], &x[r * n..(r + 1) * n]);
            let (mu, rs) = (mean[r], rstd[r]);
            let mut mean_g = T::ZERO;
            let mut mean_gx = T::ZERO;
            for j in 0..n {
                let g = dyr[j] * gamma[j];
                mean_g += g;
                mean_gx += g * (xr[j] - mu) * rs;
            }
            mean_g = mean_g * inv_n;
            mean_gx = mean_gx * inv_n;
            for j in 0..n {
                let xhat = (xr[j] - mu) * rs;
                dxr[j] = rs * (dyr[j] * gamma[j] - mean_g - xhat * mean_gx);
            }
        });
    dx
}
