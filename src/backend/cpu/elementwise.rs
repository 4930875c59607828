//! Elementwise ops on the CPU: GELU, tanh, residual add, dropout, scaling, norms.

use super::element::Element;
use crate::backend::Dropout;
use crate::rng;

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// `1 / sqrt(2π)`.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `x · Φ(x)` with `Φ(x) = (1 + erf(x/√2)) / 2` (BERT's exact GELU, not the tanh fit).
pub fn gelu<T: Element>(x: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    let c = T::from_f64(FRAC_1_SQRT_2);
    x.iter()
        .map(|&v| half * v * (T::ONE + (v * c).erf()))
        .collect()
}

/// `dy · (Φ(x) + x·φ(x))`.
pub fn gelu_backward<T: Element>(dy: &[T], x: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    let c = T::from_f64(FRAC_1_SQRT_2);
    let pdf = T::from_f64(FRAC_1_SQRT_2PI);
    dy.iter()
        .zip(x)
        .map(|(&g, &v)| {
            let cdf = half * (T::ONE + (v * c).erf());
            g * (cdf + v * pdf * (-half * v * v).exp())
        })
        .collect()
}

/// `tanh(x)`.
pub fn tanh<T: Element>(x: &[T]) -> Vec<T> {
    x.iter().map(|&v| v.tanh()).collect()
}

/// `dy · (1 − y²)`.
pub fn tanh_backward<T: Element>(dy: &[T], y: &[T]) -> Vec<T> {
    dy.iter()
        .zip(y)
        .map(|(&g, &t)| g * (T::ONE - t * t))
        .collect()
}

/// `a + b`.
pub fn add<T: Element>(a: &[T], b: &[T]) -> Vec<T> {
    a.iter().zip(b).map(|(&x, &y)| x + y).collect()
}

/// `acc += x`.
pub fn add_assign<T: Element>(acc: &mut [T], x: &[T]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// `t *= s`.
pub fn scale<T: Element>(t: &mut [T], s: T) {
    for v in t {
        *v = *v * s;
    }
}

/// `Σ t²` in f64, in order.
pub fn sum_squares<T: Element>(t: &[T]) -> f64 {
    t.iter().map(|&v| v.to_f64() * v.to_f64()).sum()
}

/// `x ∘ keep / (1 − p)`, the mask drawn from `(seed, element index)`.
pub fn dropout<T: Element>(x: &[T], d: &Dropout) -> Vec<T> {
    let threshold = rng::drop_threshold(d.p);
    let keep_scale = T::from_f64(1.0 / (1.0 - d.p));
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            if rng::keeps(d.seed, i as u64, threshold) {
                v * keep_scale
            } else {
                T::ZERO
            }
        })
        .collect()
}
