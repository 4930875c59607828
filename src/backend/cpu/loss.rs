//! Softmax cross-entropy and mean squared error (means over the batch) and binary
//! cross-entropy with logits (a mean over every element) on the CPU.

use super::element::Element;

fn log_sum_exp<T: Element>(row: &[T]) -> T {
    let m = row
        .iter()
        .copied()
        .fold(row[0], |a, b| if b > a { b } else { a });
    let mut s = T::ZERO;
    for &v in row {
        s += (v - m).exp();
    }
    m + s.ln()
}

/// `mean_i (logsumexp(z_i) − z_i[y_i])`.
pub fn cross_entropy<T: Element>(logits: &[T], labels: &[u32], classes: usize) -> T {
    let mut total = T::ZERO;
    for (row, &y) in logits.chunks_exact(classes).zip(labels) {
        total += log_sum_exp(row) - row[y as usize];
    }
    total / T::from_f64(labels.len() as f64)
}

/// `d_loss · (softmax(z_i) − onehot(y_i)) / n`.
pub fn cross_entropy_backward<T: Element>(
    d_loss: T,
    logits: &[T],
    labels: &[u32],
    classes: usize,
) -> Vec<T> {
    let g = d_loss / T::from_f64(labels.len() as f64);
    let mut d = vec![T::ZERO; logits.len()];
    for ((row, drow), &y) in logits
        .chunks_exact(classes)
        .zip(d.chunks_exact_mut(classes))
        .zip(labels)
    {
        let lse = log_sum_exp(row);
        for (j, (dv, &v)) in drow.iter_mut().zip(row).enumerate() {
            let onehot = if j == y as usize { T::ONE } else { T::ZERO };
            *dv = g * ((v - lse).exp() - onehot);
        }
    }
    d
}

/// `mean (p − t)²`.
pub fn mse<T: Element>(pred: &[T], target: &[T]) -> T {
    let mut total = T::ZERO;
    for (&p, &t) in pred.iter().zip(target) {
        total += (p - t) * (p - t);
    }
    total / T::from_f64(pred.len() as f64)
}

/// `d_loss · 2 (p − t) / n`.
pub fn mse_backward<T: Element>(d_loss: T, pred: &[T], target: &[T]) -> Vec<T> {
    let g = d_loss * T::from_f64(2.0 / pred.len() as f64);
    pred.iter()
        .zip(target)
        .map(|(&p, &t)| g * (p - t))
        .collect()
}

/// `mean (max(z, 0) − z·t + ln(1 + e^−|z|))`: binary cross-entropy of `sigmoid(z)` against
/// `t`, mean over every element, in the form that neither overflows nor loses small losses.
pub fn bce_with_logits<T: Element>(logits: &[T], targets: &[T]) -> T {
    let mut total = T::ZERO;
    for (&z, &t) in logits.iter().zip(targets) {
        let positive = if z > T::ZERO { z } else { T::ZERO };
        let magnitude = if z < T::ZERO { T::ZERO - z } else { z };
        total += positive - z * t + (T::ZERO - magnitude).exp().ln_1p();
    }
    total / T::from_f64(logits.len() as f64)
}

/// `d_loss · (sigmoid(z) − t) / n`.
pub fn bce_with_logits_backward<T: Element>(d_loss: T, logits: &[T], targets: &[T]) -> Vec<T> {
    let g = d_loss / T::from_f64(logits.len() as f64);
    logits
        .iter()
        .zip(targets)
        .map(|(&z, &t)| g * (sigmoid(z) - t))
        .collect()
}

/// `1 / (1 + e^−z)`, through `e^z` for negative `z` so that neither side overflows (also
/// what a multi-label prediction's probabilities are).
pub(crate) fn sigmoid<T: Element>(z: T) -> T {
    if z >= T::ZERO {
        T::ONE / (T::ONE + (T::ZERO - z).exp())
    } else {
        let e = z.exp();
        e / (T::ONE + e)
    }
}
