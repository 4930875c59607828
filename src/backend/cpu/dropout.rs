//! Dropout masks drawn from the counter-based generator (`crate::rng`): element `i` of a
//! block starting at counter `c` keeps its value (scaled by `1/(1−p)`) when
//! `keeps(seed, c + i)`. The mixer is three 64-bit multiplies per element; compiled for AVX2
//! the loops run four elements per instruction.

use std::mem::MaybeUninit;

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

#[inline(always)]
fn write_loop<T: Element>(
    x: &[T],
    out: &mut [MaybeUninit<T>],
    first: u64,
    seed: u64,
    threshold: u32,
    keep_scale: T,
) {
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let keep = rng::keeps(seed, first + i as u64, threshold);
        o.write(if keep { v * keep_scale } else { T::ZERO });
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn write_avx2<T: Element>(
    x: &[T],
    out: &mut [MaybeUninit<T>],
    first: u64,
    seed: u64,
    threshold: u32,
    keep_scale: T,
) {
    write_loop(x, out, first, seed, threshold, keep_scale)
}

/// `out = x ∘ mask / (1 − p)`, where `x[i]` is element `first + i` of the mask stream: the
/// bits of [`apply_in_place`] on a copy of `x`, in one pass that writes every element of
/// `out` once (a copy and a zero fill before it were a tenth of a step's memory traffic).
pub fn write_masked<T: Element>(
    x: &[T],
    out: &mut [MaybeUninit<T>],
    first: u64,
    dropout: &Dropout,
) {
    assert_eq!(
        x.len(),
        out.len(),
        "dropout: input and output lengths differ"
    );
    let threshold = rng::drop_threshold(dropout.p);
    let keep_scale = T::from_f64(1.0 / (1.0 - dropout.p));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { write_avx2(x, out, first, dropout.seed, threshold, keep_scale) };
    }
    write_loop(x, out, first, dropout.seed, threshold, keep_scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass dropout of the elementwise op (over several blocks of the pool, a length
    /// that is not a multiple of four) has the bits of the in-place mask on a copy, which the
    /// attention's backward and the CUDA kernels are checked against.
    #[test]
    fn written_and_in_place_masks_agree_bit_for_bit() {
        let n = 3 * (1 << 14) + 7;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let d = Dropout { p: 0.3, seed: 42 };
        let mut expected = x.clone();
        apply_in_place(&mut expected, 0, &d);
        let written = super::super::elementwise::dropout(&x, &d);
        assert_eq!(
            written.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let dropped = written.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.3).abs() < 0.01, "dropped {dropped}");
        let mut out = vec![MaybeUninit::new(f64::NAN); 5];
        let x64 = [1.0, -2.0, 3.0, 4.0, 5.0];
        write_masked(&x64, &mut out, 11, &d);
        let mut expected = x64;
        apply_in_place(&mut expected, 11, &d);
        // SAFETY: every element was written above.
        let out: Vec<f64> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
        assert_eq!(out, expected);
    }
}
