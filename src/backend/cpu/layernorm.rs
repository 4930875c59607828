//! Layernorm over the last dimension on the CPU: rows in parallel, each row on its own with
//! two-pass statistics summed in fixed lanes (so the bits do not depend on the number of
//! threads).

use std::mem::MaybeUninit;

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
        y: &mut [MaybeUninit<T>],
        mean: &mut [MaybeUninit<T>],
        rstd: &mut [MaybeUninit<T>],
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
            write_normalized(xr, yr, mu, rs, gamma, beta);
            mean[r].write(mu);
            rstd[r].write(rs);
        }
    }
}

/// One row's outputs from its mean and rstd: the forward and [`apply`] both write them
/// through this one expression, so with the same bits (Rust contracts no multiply-add on its
/// own).
#[inline(always)]
fn write_normalized<T: Element>(
    x: &[T],
    y: &mut [MaybeUninit<T>],
    mu: T,
    rs: T,
    gamma: &[T],
    beta: &[T],
) {
    for (((o, &v), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
        o.write((v - mu) * rs * g + b);
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
    // Every output is written only if the row and the parameters have `n` values each.
    assert!(
        rows * n == x.len() && gamma.len() == n && beta.len() == n,
        "layernorm: a partial row, or parameters of another width"
    );
    // Not zero-filled first (the fill showed in a step's profile): every row writes its `n`
    // outputs, its mean and its rstd.
    let mut y = Vec::with_capacity(x.len());
    let mut mean = Vec::with_capacity(rows);
    let mut rstd = Vec::with_capacity(rows);
    let task = ROWS_PER_TASK * n;
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .zip(mean.spare_capacity_mut()[..rows].par_chunks_mut(ROWS_PER_TASK))
        .zip(rstd.spare_capacity_mut()[..rows].par_chunks_mut(ROWS_PER_TASK))
        .for_each(|(((y, x), mean), rstd)| normalize_rows(x, y, mean, rstd, gamma, beta, n, eps));
    // SAFETY: the tasks cover all rows, and `normalize_rows` wrote each row's outputs, mean
    // and rstd.
    unsafe {
        y.set_len(x.len());
        mean.set_len(rows);
        rstd.set_len(rows);
    }
    (y, mean, rstd)
}

/// The forward's `y` from `x` and its `mean` and `rstd` ([`write_normalized`]: the same
/// bits).
pub fn apply<T: Element>(
    x: &[T],
    mean: &[T],
    rstd: &[T],
    gamma: &[T],
    beta: &[T],
    n: usize,
) -> Vec<T> {
    let rows = mean.len();
    assert!(
        x.len() == rows * n && rstd.len() == rows && gamma.len() == n && beta.len() == n,
        "layernorm apply: inconsistent lengths"
    );
    // As the forward's: not zero-filled first, every row writes its `n` outputs.
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(ROWS_PER_TASK * n)
        .zip(x.par_chunks(ROWS_PER_TASK * n))
        .enumerate()
        .for_each(|(task, (y, x))| {
            for (r, (yr, xr)) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)).enumerate() {
                let row = task * ROWS_PER_TASK + r;
                write_normalized(xr, yr, mean[row], rstd[row], gamma, beta);
            }
        });
    // SAFETY: the tasks cover all rows (the lengths checked above), each written whole.
    unsafe { y.set_len(x.len()) };
    y
}

/// `dβ = Σ_rows dY`.
pub fn grad_beta<T: Element>(dy: &[T], n: usize) -> Vec<T> {
    super::linear::column_sum(dy, n)
}

/// `dγ = Σ_rows dY ∘ x̂`.
pub fn grad_gamma<T: Element>(dy: &[T], x: &[T], mean: &[T], rstd: &[T], n: usize) -> Vec<T> {
    let rows = mean.len();
    assert!(
        dy.len() == rows * n && x.len() == rows * n && rstd.len() == rows,
        "layernorm gamma gradient: inconsistent lengths"
    );
    super::linear::sum_over_rows(rows, n, |rows, dg| {
        let (dy, x) = (
            &dy[rows.start * n..rows.end * n],
            &x[rows.start * n..rows.end * n],
        );
        let stats = mean[rows.clone()].iter().zip(&rstd[rows]);
        for ((dyr, xr), (&mu, &rs)) in dy.chunks_exact(n).zip(x.chunks_exact(n)).zip(stats) {
            for ((g, &d), &v) in dg.iter_mut().zip(dyr).zip(xr) {
                *g += d * (v - mu) * rs;
            }
        }
    })
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
        dx: &mut [MaybeUninit<T>],
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
                o.write(rs * (d * g - mean_g - xhat * mean_gx));
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
    let rows = x.len() / n;
    assert!(
        rows * n == x.len()
            && dy.len() == x.len()
            && mean.len() == rows
            && rstd.len() == rows
            && gamma.len() == n,
        "layernorm backward: inconsistent lengths"
    );
    let mut dx = Vec::with_capacity(x.len());
    let task = ROWS_PER_TASK * n;
    dx.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(task)
        .zip(dy.par_chunks(task).zip(x.par_chunks(task)))
        .zip(
            mean.par_chunks(ROWS_PER_TASK)
                .zip(rstd.par_chunks(ROWS_PER_TASK)),
        )
        .for_each(|((dx, (dy, x)), (mean, rstd))| grad_input_rows(dy, x, mean, rstd, gamma, n, dx));
    // SAFETY: the tasks cover all rows, and `grad_input_rows` wrote every element of each.
    unsafe { dx.set_len(x.len()) };
    dx
}
