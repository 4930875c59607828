//! Per-column scales and sums of a `[rows, cols]` matrix: a DoRA adapter's rescaled output,
//! and its magnitude's gradient.

use super::element::Element;
use super::linear::sum_over_rows;

/// `y[r, c] = z[r, c]·scale[c] (+ bias[c])`.
pub fn scale<T: Element>(z: &[T], scale: &[T], bias: Option<&[T]>) -> Vec<T> {
    let cols = scale.len().max(1);
    let mut y = Vec::with_capacity(z.len());
    for row in z.chunks_exact(cols) {
        match bias {
            Some(bias) => y.extend(
                row.iter()
                    .zip(scale)
                    .zip(bias)
                    .map(|((&v, &s), &b)| v * s + b),
            ),
            None => y.extend(row.iter().zip(scale).map(|(&v, &s)| v * s)),
        }
    }
    y
}

/// `Σ_r a[r, c]·b[r, c]` in the fixed blocks of rows of [`sum_over_rows`].
pub fn dots<T: Element>(a: &[T], b: &[T], cols: usize) -> Vec<T> {
    let cols = cols.max(1);
    sum_over_rows(a.len() / cols, cols, |rows, sums| {
        let span = rows.start * cols..rows.end * cols;
        for (ra, rb) in a[span.clone()]
            .chunks_exact(cols)
            .zip(b[span].chunks_exact(cols))
        {
            for ((acc, &x), &y) in sums.iter_mut().zip(ra).zip(rb) {
                *acc += x * y;
            }
        }
    })
}
