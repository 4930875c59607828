//! Elementwise ops on the CPU: GELU, tanh, residual add, dropout, scaling, norms.

use super::element::Element;
use crate::backend::Dropout;
use crate::rng;

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// Below this many elements a second thread costs more than it saves.
const PARALLEL_MIN: usize = 1 << 16;

/// `out[i] = f(i)` for every `i`, split over the available cores. Each element is computed on
/// its own, so the result is the same bits whatever the split.
fn map_indexed<T: Element>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::ZERO; n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    if n < PARALLEL_MIN || threads < 2 {
        for (i, v) in out.iter_mut().enumerate() {
            *v = f(i);
        }
        return out;
    }
    let chunk = n.div_ceil(threads);
    std::thread::scope(|scope| {
        for (k, part) in out.chunks_mut(chunk).enumerate() {
            let f = &f;
            scope.spawn(move || {
                for (j, v) in part.iter_mut().enumerate() {
                    *v = f(k * chunk + j);
                }
            });
        }
    });
    out
}
/// `1 / sqrt(2π)`.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `x · Φ(x)` with `Φ(x) = (1 + erf(x/√2)) / 2` (BERT's exact GELU, not the tanh fit).
pub fn gelu<T: Element>(x: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    let c = T::from_f64(FRAC_1_SQRT_2);
    map_indexed(x.len(), |i| half * x[i] * (T::ONE + (x[i] * c).erf()))
}

/// `dy · (Φ(x) + x·φ(x))`.
pub fn gelu_backward<T: Element>(dy: &[T], x: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    let c = T::from_f64(FRAC_1_SQRT_2);
    let pdf = T::from_f64(FRAC_1_SQRT_2PI);
    map_indexed(x.len(), |i| {
        let v = x[i];
        let cdf = half * (T::ONE + (v * c).erf());
        dy[i] * (cdf + v * pdf * (-half * v * v).exp())
    })
}

/// `tanh(x)`.
pub fn tanh<T: Element>(x: &[T]) -> Vec<T> {
    map_indexed(x.len(), |i| x[i].tanh())
}

/// `dy · (1 − y²)`.
pub fn tanh_backward<T: Element>(dy: &[T], y: &[T]) -> Vec<T> {
    map_indexed(y.len(), |i| dy[i] * (T::ONE - y[i] * y[i]))
}

/// `a + b`.
pub fn add<T: Element>(a: &[T], b: &[T]) -> Vec<T> {
    map_indexed(a.len(), |i| a[i] + b[i])
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
    map_indexed(x.len(), |i| {
        if rng::keeps(d.seed, i as u64, threshold) {
            x[i] * keep_scale
        } else {
            T::ZERO
        }
    })
}
