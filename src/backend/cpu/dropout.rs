//! Dropout masks drawn from the counter-based generator (`crate::rng`): element `i` of a
//! block starting at counter `c` keeps its value (scaled by `1/(1−p)`) when
//! `keeps(seed, c + i)`. The mixer is three 64-bit multiplies per element; compiled for AVX2
//! the generic loops run four elements per instruction. f32, the training dtype, has its own
//! kernels that draw the same bits: AVX-512 ([`f32_avx512`]) where the CPU has it, else AVX2
//! ([`f32_avx2`]), with one multiply fewer.

use std::mem::MaybeUninit;

use super::element::Element;
use crate::backend::Dropout;
use crate::rng;

/// `x ∘ mask / (1 − p)` in place, where `x[i]` is element `first + i` of the mask stream.
pub fn apply_in_place<T: Element>(x: &mut [T], first: u64, dropout: &Dropout) {
    let (ptr, n) = (x.as_mut_ptr(), x.len());
    // SAFETY: source and destination are the same `n` elements of `x`, which `mask` allows.
    unsafe { mask(ptr, ptr, n, first, dropout) }
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
    // SAFETY: `x` and `out` hold `x.len()` elements each (checked above), are distinct
    // borrows, and `out` is only written.
    unsafe { mask(x.as_ptr(), out.as_mut_ptr().cast(), x.len(), first, dropout) }
}

/// `dst[i] = src[i]·keep_scale` where element `first + i` of the stream is kept, `0`
/// elsewhere: the f32 AVX2 kernel where it applies, else the generic loop (built for AVX2
/// when the CPU has it).
///
/// # Safety
/// `src` must be valid for `n` reads and `dst` for `n` writes; they may be the same pointer
/// but must not otherwise overlap.
unsafe fn mask<T: Element>(src: *const T, dst: *mut T, n: usize, first: u64, dropout: &Dropout) {
    let threshold = rng::drop_threshold(dropout.p);
    let keep_scale = T::from_f64(1.0 / (1.0 - dropout.p));
    let seed = dropout.seed;
    #[cfg(target_arch = "x86_64")]
    {
        if f32_avx512::applies::<T>() {
            let scale = keep_scale.to_f64() as f32;
            // SAFETY: `T` is f32 and the CPU has AVX-512 F and DQ (`applies`); the pointers
            // are as the caller guarantees.
            return f32_avx512::mask(src.cast(), dst.cast(), n, first, seed, threshold, scale);
        }
        if f32_avx2::applies::<T>() {
            let scale = keep_scale.to_f64() as f32;
            // SAFETY: `T` is f32 and the CPU has AVX2 (`applies`); the pointers are as the
            // caller guarantees.
            return f32_avx2::mask(src.cast(), dst.cast(), n, first, seed, threshold, scale);
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above); the pointers are as the caller
            // guarantees.
            return mask_avx2(src, dst, n, first, seed, threshold, keep_scale);
        }
    }
    mask_loop(src, dst, n, first, seed, threshold, keep_scale)
}

/// The generic loop of [`mask`]: each element is read before it is written, so `src` may
/// be `dst`.
///
/// # Safety
/// As for [`mask`].
#[inline(always)]
unsafe fn mask_loop<T: Element>(
    src: *const T,
    dst: *mut T,
    n: usize,
    first: u64,
    seed: u64,
    threshold: u32,
    keep_scale: T,
) {
    for i in 0..n {
        let keep = rng::keeps(seed, first + i as u64, threshold);
        let v = *src.add(i);
        *dst.add(i) = if keep { v * keep_scale } else { T::ZERO };
    }
}

/// [`mask_loop`] built for AVX2.
///
/// # Safety
/// As for [`mask`], and the CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mask_avx2<T: Element>(
    src: *const T,
    dst: *mut T,
    n: usize,
    first: u64,
    seed: u64,
    threshold: u32,
    keep_scale: T,
) {
    mask_loop(src, dst, n, first, seed, threshold, keep_scale)
}

// `rng::mix`'s constants, for the vector kernels.
#[cfg(target_arch = "x86_64")]
const WEYL: u64 = 0x9E37_79B9_7F4A_7C15;
#[cfg(target_arch = "x86_64")]
const MUL1: u64 = 0xBF58_476D_1CE4_E5B9;
#[cfg(target_arch = "x86_64")]
const MUL2: u64 = 0x94D0_49BB_1331_11EB;

/// The mask on f32 with AVX-512, thirty-two elements per step, with the bits of
/// [`rng::keeps`]: eight 64-bit lanes per register and the native 64-bit multiply (DQ's
/// `vpmullq`) where AVX2 needs three 32-bit ones; the keep bits are a mask register that
/// scales the kept elements and zeroes the others in one instruction. As in [`f32_avx2`],
/// the Weyl step advances by addition and the finalizer's last shift is skipped.
#[cfg(target_arch = "x86_64")]
mod f32_avx512 {
    use std::arch::x86_64::*;

    use super::{MUL1, MUL2, WEYL};

    /// Whether `T` is f32 on a CPU with AVX-512 F and DQ.
    pub fn applies<T: 'static>() -> bool {
        std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512dq")
    }

    /// `dst[i] = src[i]·keep_scale` where element `first + i` is kept, `+0` elsewhere.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and DQ; `src` must be valid for `n` reads and `dst` for
    /// `n` writes. They may be the same pointer (each group is read before it is written),
    /// but must not otherwise overlap.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn mask(
        src: *const f32,
        dst: *mut f32,
        n: usize,
        first: u64,
        seed: u64,
        threshold: u32,
        keep_scale: f32,
    ) {
        let seed_v = _mm512_set1_epi64(seed as i64);
        let (mul1, mul2) = (
            _mm512_set1_epi64(MUL1 as i64),
            _mm512_set1_epi64(MUL2 as i64),
        );
        // Kept: the mixer's top 24 bits at least `threshold`, a signed compare against
        // `threshold − 1` (the bits are below 2²⁴).
        let below = _mm512_set1_epi64(i64::from(threshold) - 1);
        let scale = _mm512_set1_ps(keep_scale);
        let weyl_at = |i: u64| (first.wrapping_add(i).wrapping_add(1)).wrapping_mul(WEYL) as i64;
        let mut weyl = [0u64, 8, 16, 24].map(|i| {
            _mm512_setr_epi64(
                weyl_at(i),
                weyl_at(i + 1),
                weyl_at(i + 2),
                weyl_at(i + 3),
                weyl_at(i + 4),
                weyl_at(i + 5),
                weyl_at(i + 6),
                weyl_at(i + 7),
            )
        });
        let step = _mm512_set1_epi64(WEYL.wrapping_mul(32) as i64);
        let groups = n / 32;
        for g in 0..groups {
            let mut z = weyl;
            for zj in &mut z {
                let x = _mm512_xor_si512(*zj, seed_v);
                let x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64::<30>(x)), mul1);
                *zj = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64::<27>(x)), mul2);
            }
            for half in 0..2 {
                let kept =
                    |zj: __m512i| _mm512_cmpgt_epi64_mask(_mm512_srli_epi64::<40>(zj), below);
                let keep = u16::from(kept(z[2 * half])) | (u16::from(kept(z[2 * half + 1])) << 8);
                let at = 32 * g + 16 * half;
                let x = _mm512_loadu_ps(src.add(at));
                _mm512_storeu_ps(dst.add(at), _mm512_maskz_mul_ps(keep, x, scale));
            }
            for w in &mut weyl {
                *w = _mm512_add_epi64(*w, step);
            }
        }
        // The last `n % 32` elements by the generic loop, which draws the same bits.
        let done = groups * 32;
        super::mask_loop(
            src.add(done),
            dst.add(done),
            n - done,
            first + done as u64,
            seed,
            threshold,
            keep_scale,
        );
    }
}

/// The mask on f32, sixteen elements per step, with the bits of [`rng::keeps`]:
/// - the Weyl step `(index + 1)·0x9E37…` advances by adding `16·0x9E37…` (mod 2⁶⁴) per step,
///   instead of a multiply per element;
/// - a 64-bit multiply is three 32-bit ones (`_mm256_mul_epu32`) and two adds;
/// - the finalizer's last `z ^ (z >> 31)` leaves the top 24 bits that decide untouched, so it
///   is skipped.
#[cfg(target_arch = "x86_64")]
mod f32_avx2 {
    use std::arch::x86_64::*;

    use super::super::chains::issue_together;

    use super::{MUL1, MUL2, WEYL};

    /// Whether `T` is f32 on a CPU with AVX2.
    pub fn applies<T: 'static>() -> bool {
        std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
            && std::is_x86_feature_detected!("avx2")
    }

    /// `a·m mod 2⁶⁴` in each 64-bit lane.
    #[inline(always)]
    unsafe fn mul64(a: __m256i, m: u64) -> __m256i {
        let m_lo = _mm256_set1_epi64x((m & 0xFFFF_FFFF) as i64);
        let m_hi = _mm256_set1_epi64x((m >> 32) as i64);
        let low = _mm256_mul_epu32(a, m_lo);
        let cross = _mm256_add_epi64(
            _mm256_mul_epu32(_mm256_srli_epi64::<32>(a), m_lo),
            _mm256_mul_epu32(a, m_hi),
        );
        _mm256_add_epi64(low, _mm256_slli_epi64::<32>(cross))
    }

    /// All-ones in the 64-bit lanes that keep their element, for sixteen Weyl values: the
    /// mixer's top 24 bits at least `threshold` (as a signed compare against `threshold − 1`;
    /// the bits are below 2²⁴). The four registers go through each stage of the mixer
    /// together ([`issue_together`]; the op 0.79 → 0.60 ms in `cargo bench --bench
    /// elementwise`).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn keeps16(weyl: [__m256i; 4], seed: __m256i, below: __m256i) -> [__m256i; 4] {
        let mut z = weyl;
        for zj in &mut z {
            let x = _mm256_xor_si256(*zj, seed);
            *zj = _mm256_xor_si256(x, _mm256_srli_epi64::<30>(x));
        }
        issue_together(&mut z);
        for zj in &mut z {
            *zj = mul64(*zj, MUL1);
        }
        issue_together(&mut z);
        for zj in &mut z {
            *zj = _mm256_xor_si256(*zj, _mm256_srli_epi64::<27>(*zj));
        }
        issue_together(&mut z);
        for zj in &mut z {
            *zj = mul64(*zj, MUL2);
        }
        issue_together(&mut z);
        for zj in &mut z {
            *zj = _mm256_cmpgt_epi64(_mm256_srli_epi64::<40>(*zj), below);
        }
        z
    }

    /// `dst[i] = src[i]·keep_scale` where element `first + i` is kept, `+0` elsewhere.
    ///
    /// # Safety
    /// The CPU must have AVX2; `src` must be valid for `n` reads and `dst` for `n` writes.
    /// They may be the same pointer (each group is read before it is written), but must not
    /// otherwise overlap.
    #[target_feature(enable = "avx2")]
    pub unsafe fn mask(
        src: *const f32,
        dst: *mut f32,
        n: usize,
        first: u64,
        seed: u64,
        threshold: u32,
        keep_scale: f32,
    ) {
        let seed_v = _mm256_set1_epi64x(seed as i64);
        let below = _mm256_set1_epi64x(i64::from(threshold) - 1);
        let scale = _mm256_set1_ps(keep_scale);
        let weyl_at = |i: u64| (first.wrapping_add(i).wrapping_add(1)).wrapping_mul(WEYL) as i64;
        let mut weyl = [0u64, 4, 8, 12].map(|i| {
            _mm256_setr_epi64x(weyl_at(i), weyl_at(i + 1), weyl_at(i + 2), weyl_at(i + 3))
        });
        let step = _mm256_set1_epi64x(WEYL.wrapping_mul(16) as i64);
        let groups = n / 16;
        for g in 0..groups {
            let keep = keeps16(weyl, seed_v, below);
            for half in 0..2 {
                // The low 32 bits of each 64-bit mask, in element order.
                let interleaved = _mm256_shuffle_ps::<0b10_00_10_00>(
                    _mm256_castsi256_ps(keep[2 * half]),
                    _mm256_castsi256_ps(keep[2 * half + 1]),
                );
                let keep = _mm256_castsi256_ps(_mm256_permute4x64_epi64::<0b11_01_10_00>(
                    _mm256_castps_si256(interleaved),
                ));
                let at = 16 * g + 8 * half;
                let x = _mm256_loadu_ps(src.add(at));
                _mm256_storeu_ps(dst.add(at), _mm256_and_ps(keep, _mm256_mul_ps(x, scale)));
            }
            for w in &mut weyl {
                *w = _mm256_add_epi64(*w, step);
            }
        }
        // The last `n % 16` elements by the generic loop, which draws the same bits.
        let done = groups * 16;
        let (src, dst) = (src.add(done), dst.add(done));
        super::mask_loop(
            src,
            dst,
            n - done,
            first + done as u64,
            seed,
            threshold,
            keep_scale,
        );
    }
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

    /// Every f32 kernel this CPU can run (the dispatch picks one; the others would go
    /// untested here), beside the generic loop.
    #[allow(clippy::type_complexity)]
    fn f32_kernels() -> Vec<(
        &'static str,
        unsafe fn(*const f32, *mut f32, usize, u64, u64, u32, f32),
    )> {
        let mut kernels: Vec<(
            &'static str,
            unsafe fn(*const f32, *mut f32, usize, u64, u64, u32, f32),
        )> = vec![("generic", mask_loop::<f32>)];
        #[cfg(target_arch = "x86_64")]
        {
            if f32_avx2::applies::<f32>() {
                kernels.push(("avx2", f32_avx2::mask));
            }
            if f32_avx512::applies::<f32>() {
                kernels.push(("avx512", f32_avx512::mask));
            }
        }
        kernels
    }

    /// Each f32 kernel (the Weyl step by addition) against the scalar definition, element by
    /// element: odd starts and lengths, several rates, a stream offset past 2³² (the high
    /// halves of the 64-bit multiplies), and p = 0.
    #[test]
    fn f32_masks_match_the_scalar_definition() {
        for (name, kernel) in f32_kernels() {
            for (first, n, p) in [
                (0u64, 1000, 0.1),
                (13, 37, 0.5),
                (1 << 40, 29, 0.3),
                ((1 << 40) + 3, 101, 0.3),
                (5, 64, 0.0),
            ] {
                let x: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
                let seed = 0xDEAD_BEEF;
                let threshold = rng::drop_threshold(p);
                let scale = (1.0 / (1.0 - p)) as f32;
                let mut got = x.clone();
                // SAFETY: `got` holds `n` elements, read and written in place; `kernels`
                // lists only what this CPU runs.
                unsafe {
                    kernel(
                        got.as_ptr(),
                        got.as_mut_ptr(),
                        n,
                        first,
                        seed,
                        threshold,
                        scale,
                    )
                };
                for (i, (&g, &v)) in got.iter().zip(&x).enumerate() {
                    let keep = rng::keeps(seed, first + i as u64, threshold);
                    let want = if keep { v * scale } else { 0.0 };
                    assert_eq!(
                        g.to_bits(),
                        want.to_bits(),
                        "{name}: first {first} element {i} p {p}"
                    );
                }
            }
        }
    }
}
