//! Dropout masks applied in place, drawn from the counter-based generator (`crate::rng`):
//! element `i` of a block starting at counter `c` keeps its value (scaled by `1/(1−p)`) when
//! `keeps(seed, c + i)`. The mixer is three 64-bit multiplies per element; compiled for AVX2
//! the loop runs four elements per instruction.

use super::element::Element;
use crate::backend::Dropout;
use crate::rng;

#[inline(always)]
fn apply_loop<T: Element>(x: &mut [T], first: u64, seed: u64, threshold: u32, keep_scale: T) {
    for (i, v) in x.iter_mut().enumerate() {
        let keep = rng::keeps(seed, first + i as u64, threshold);
        *v = if keep { *v * keep_scale } else { T::ZERO };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn apply_avx2<T: Element>(
    x: &mut [T],
    first: u64,
    seed: u64,
    threshold: u32,
    keep_scale: T,
) {
    apply_loop(x, first, seed, threshold, keep_scale)
}

/// `x ∘ mask / (1 − p)` in place, where `x[i]` is element `first + i` of the mask stream.
pub fn apply_in_place<T: Element>(x: &mut [T], first: u64, dropout: &Dropout) {
    let threshold = rng::drop_threshold(dropout.p);
    let keep_scale = T::from_f64(1.0 / (1.0 - dropout.p));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { apply_avx2(x, first, dropout.seed, threshold, keep_scale) };
    }
    apply_loop(x, first, dropout.seed, threshold, keep_scale)
}
