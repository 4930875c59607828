//! f32 transcendentals at the speed of vector code: BERT's exact GELU `x·Φ(x)` and its
//! derivative, and `e^x` for attention's softmax. Each is evaluated in f64 and rounded once.
//!
//! `e^x` is the same range reduction and series as [`exp_lanes`]: within an f32 ulp of the
//! rounded exact value (libm's `expf` was, at 256 tokens, the largest cost of attention).
//!
//! libm's `erff` is scalar and branchy, and was the largest cost of a training step after the
//! GEMMs. Here Φ comes from one smooth formula that vectorizes: for `z = |x|/√2`,
//! `erfc(z) = t·e^(−z²)·P(t)` with `t = 1/(1 + z/2)` and `P` a degree-11 polynomial fitted by
//! relative least squares to `erfc(z)·e^(z²)/t` on `z ∈ [0, 10]` (relative error of `erfc`
//! below 4e-10 there; `erfc(10)` is already far below f32's smallest number). It is evaluated
//! in f64 and rounded once to f32: every GELU value is within one f32 ulp of the correctly
//! rounded one (99.89% of a dense grid on [−12, 12] are exactly it). Every polynomial step is
//! one fused multiply-add, in the scalar loop (`f64::mul_add`) as in the AVX2 and AVX-512
//! kernels, so all three give the same bits.

use std::f64::consts::FRAC_1_SQRT_2;
use std::mem::MaybeUninit;

/// `1 / sqrt(2π)`.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `P(t)`'s coefficients, lowest degree first.
const ERFC_P: [f64; 12] = [
    0.282_099_080_808_719_54,
    0.281_960_921_611_129_46,
    0.248_680_199_431_308_8,
    0.161_426_353_531_880_45,
    0.161_549_290_791_537_8,
    -0.281_204_255_202_164_35,
    0.624_224_197_454_272_4,
    -1.198_512_579_427_388_5,
    1.246_927_454_835_798_3,
    -0.723_635_879_263_544_7,
    0.226_809_143_884_539_32,
    -0.030_323_928_389_967_156,
];

/// Elements evaluated together. The polynomials are long dependency chains; running each
/// step over 16 independent lanes (four AVX2 registers of f64) keeps the FPU busy instead of
/// waiting on one chain.
const LANES: usize = 16;
type Lanes = [f64; LANES];

const LOG2_E: f64 = std::f64::consts::LOG2_E;
const LN2_HI: f64 = 0.693_147_180_369_123_8;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
/// Adding 1.5·2⁵² rounds to an integer and leaves it in the low bits of the mantissa.
const ROUND: f64 = 6_755_399_441_055_744.0;
/// `e^r`'s Taylor coefficients from degree 9 down to 0 (degree 10, `1/10!`, starts Horner).
const INVERSE_FACTORIALS: [f64; 10] = [
    1.0 / 362_880.0,
    1.0 / 40_320.0,
    1.0 / 5_040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// `e^y` lane by lane for `y ∈ [−700, 89]`: `y = k·ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by
/// its Taylor series to degree 10 (relative error below 3e-13, far past what an f32 result
/// needs), `2^k` built in the exponent bits.
#[inline(always)]
fn exp_lanes(y: &Lanes) -> Lanes {
    let mut shifted = [0.0; LANES];
    let mut r = [0.0; LANES];
    for i in 0..LANES {
        shifted[i] = y[i].mul_add(LOG2_E, ROUND);
        let k = shifted[i] - ROUND;
        r[i] = (-k).mul_add(LN2_LO, (-k).mul_add(LN2_HI, y[i]));
    }
    let mut p: Lanes = [1.0 / 3_628_800.0; LANES];
    for c in INVERSE_FACTORIALS {
        for i in 0..LANES {
            p[i] = p[i].mul_add(r[i], c);
        }
    }
    for i in 0..LANES {
        let k_bits = shifted[i].to_bits().wrapping_sub(ROUND.to_bits());
        p[i] *= f64::from_bits(k_bits.wrapping_add(1023) << 52);
    }
    p
}

/// `(Φ(x), φ(x))` lane by lane: the standard normal's CDF and density.
#[inline(always)]
fn normal_cdf_pdf(x: &Lanes) -> (Lanes, Lanes) {
    let mut z = [0.0; LANES];
    let mut t = [0.0; LANES];
    let mut minus_z2 = [0.0; LANES];
    for i in 0..LANES {
        // The clamp keeps the polynomial inside the range it was fitted on.
        z[i] = (x[i].abs() * FRAC_1_SQRT_2).min(10.0);
        t[i] = 1.0 / (1.0 + 0.5 * z[i]);
        minus_z2[i] = -(z[i] * z[i]);
    }
    let mut p = [ERFC_P[11]; LANES];
    for &c in ERFC_P[..11].iter().rev() {
        for i in 0..LANES {
            p[i] = p[i].mul_add(t[i], c);
        }
    }
    // One exponential serves both: erfc(z) = t·e^(−z²)·P(t) and φ(x) = e^(−z²)/√(2π).
    let gauss = exp_lanes(&minus_z2);
    let mut cdf = [0.0; LANES];
    let mut pdf = [0.0; LANES];
    for i in 0..LANES {
        // Past |x| = 10·√2 both tails are below 1e-44: zero as far as f32 is concerned.
        let g = if x[i].abs() >= 10.0 / FRAC_1_SQRT_2 {
            0.0
        } else {
            gauss[i]
        };
        let half_erfc = 0.5 * t[i] * p[i] * g;
        cdf[i] = if x[i] < 0.0 {
            half_erfc
        } else {
            1.0 - half_erfc
        };
        pdf[i] = FRAC_1_SQRT_2PI * g;
    }
    (cdf, pdf)
}

/// `x[range]` widened to f64; lanes past the end stay zero (computed like any other lane,
/// so every element sees the same operations whether its block is full or not).
#[inline(always)]
fn widen(x: &[f32], start: usize, end: usize) -> Lanes {
    let mut lanes = [0.0; LANES];
    for (lane, &xi) in lanes.iter_mut().zip(&x[start..end]) {
        *lane = f64::from(xi);
    }
    lanes
}

// Plain loops, no closures: a closure would be compiled on its own, without the AVX2 of the
// function that calls it.
#[inline(always)]
fn gelu_loop(x: &[f32], out: &mut [MaybeUninit<f32>]) {
    let mut start = 0;
    while start < x.len() {
        let end = (start + LANES).min(x.len());
        let v = widen(x, start, end);
        let (cdf, _) = normal_cdf_pdf(&v);
        for (i, o) in out[start..end].iter_mut().enumerate() {
            o.write((v[i] * cdf[i]) as f32);
        }
        start = end;
    }
}

#[inline(always)]
fn gelu_backward_loop(dy: &[f32], x: &[f32], out: &mut [MaybeUninit<f32>]) {
    let mut start = 0;
    while start < x.len() {
        let end = (start + LANES).min(x.len());
        let v = widen(x, start, end);
        let (cdf, pdf) = normal_cdf_pdf(&v);
        for (i, (o, &g)) in out[start..end].iter_mut().zip(&dy[start..end]).enumerate() {
            o.write((f64::from(g) * (cdf[i] + v[i] * pdf[i])) as f32);
        }
        start = end;
    }
}

#[inline(always)]
fn exp_loop(x: &mut [f32]) {
    let mut start = 0;
    while start < x.len() {
        let end = (start + LANES).min(x.len());
        let mut v = widen(x, start, end);
        for lane in v.iter_mut() {
            // Below −700 the result is 0 in f32 anyway; NaN stays NaN (the comparison fails).
            if *lane < -700.0 {
                *lane = -700.0;
            }
        }
        let e = exp_lanes(&v);
        for (o, &y) in x[start..end].iter_mut().zip(&e) {
            *o = y as f32;
        }
        start = end;
    }
}

/// The widest vector kernels this CPU runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Width {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// Whether this CPU runs `width`'s kernels (the AVX2 ones use FMA too).
fn runs(width: Width) -> bool {
    match width {
        Width::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        }
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => std::is_x86_feature_detected!("avx512f"),
    }
}

fn widest() -> Width {
    #[cfg(target_arch = "x86_64")]
    for width in [Width::Avx512, Width::Avx2] {
        if runs(width) {
            return width;
        }
    }
    Width::Scalar
}

/// `x = e^x` in place, for `x ≤ 88` (softmax arguments are at most 0).
pub fn exp_f32(x: &mut [f32]) {
    // SAFETY: the widest kernels this CPU runs.
    unsafe { exp_with(widest(), x) }
}

/// # Safety
/// The CPU must run `width`'s kernels ([`widest`] or narrower).
unsafe fn exp_with(width: Width, x: &mut [f32]) {
    // SAFETY (each arm): the caller guarantees the CPU runs `width`.
    match width {
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe { vector::exp_avx512(x) },
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe { vector::exp_avx2(x) },
        Width::Scalar => exp_loop(x),
    }
}

/// `out = x·Φ(x)`, every element of `out` written (it may start uninitialised).
pub fn gelu_f32(x: &[f32], out: &mut [MaybeUninit<f32>]) {
    // SAFETY: the widest kernels this CPU runs.
    unsafe { gelu_with(widest(), x, out) }
}

/// # Safety
/// The CPU must run `width`'s kernels ([`widest`] or narrower).
unsafe fn gelu_with(width: Width, x: &[f32], out: &mut [MaybeUninit<f32>]) {
    // Every width writes `x.len()` elements: equal lengths make that all of `out`.
    assert_eq!(x.len(), out.len(), "gelu: input and output lengths differ");
    // SAFETY (each arm): the caller guarantees the CPU runs `width`.
    match width {
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe { vector::gelu_avx512(x, out) },
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe { vector::gelu_avx2(x, out) },
        Width::Scalar => gelu_loop(x, out),
    }
}

/// `out = dy·(Φ(x) + x·φ(x))`, every element of `out` written (it may start uninitialised).
pub fn gelu_backward_f32(dy: &[f32], x: &[f32], out: &mut [MaybeUninit<f32>]) {
    // SAFETY: the widest kernels this CPU runs.
    unsafe { gelu_backward_with(widest(), dy, x, out) }
}

/// # Safety
/// The CPU must run `width`'s kernels ([`widest`] or narrower).
unsafe fn gelu_backward_with(width: Width, dy: &[f32], x: &[f32], out: &mut [MaybeUninit<f32>]) {
    assert!(
        dy.len() == x.len() && x.len() == out.len(),
        "gelu backward: lengths differ"
    );
    // SAFETY (each arm): the caller guarantees the CPU runs `width`.
    match width {
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe { vector::gelu_backward_avx512(dy, x, out) },
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe { vector::gelu_backward_avx2(dy, x, out) },
        Width::Scalar => gelu_backward_loop(dy, x, out),
    }
}

/// The same operations as the scalar loops above, in the same order, on vectors of f64
/// lanes: four per AVX2 register, eight per AVX-512 one. A fused multiply-add exactly where
/// the scalar loop calls `mul_add` (Rust never contracts `a·b + c` on its own), so every
/// result has the bits of the scalar loop's, on either width.
/// Written with intrinsics because the compiler left the selects, tails and conversions of
/// the scalar loops scalar.
///
/// One algorithm, generic over the register ([`F64x`]); four registers go through each
/// step together (a `Group`), their polynomial chains kept interleaved by `settle`.
#[cfg(target_arch = "x86_64")]
mod vector {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::super::chains::{issue_together, issue_together_512};

    use super::{
        ERFC_P, FRAC_1_SQRT_2, FRAC_1_SQRT_2PI, INVERSE_FACTORIALS, LN2_HI, LN2_LO, LOG2_E, ROUND,
    };

    // The helpers below are `#[inline(always)]` without a target feature (stable Rust allows
    // not both): they are only called from the `#[target_feature]` entry points at the end,
    // where they compile with that feature and the intrinsics inline into them. Built with
    // the feature and a plain `#[inline]`, LLVM kept the erfc evaluation a call that passed
    // sixteen registers through memory (1.72 against 2.07 ns per GELU element).

    /// An f64 register and the operations the kernels use on it.
    pub(super) trait F64x: Copy {
        /// Lanes per register.
        const LANES: usize;
        /// The result of a lane-wise comparison.
        type Mask: Copy;
        unsafe fn splat(c: f64) -> Self;
        unsafe fn add(a: Self, b: Self) -> Self;
        unsafe fn sub(a: Self, b: Self) -> Self;
        unsafe fn mul(a: Self, b: Self) -> Self;
        /// `a·b + c`, rounded once.
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self;
        unsafe fn div(a: Self, b: Self) -> Self;
        /// `min(a, b)`, `b` where `a` is NaN (as `f64::min` returns the number).
        unsafe fn min(a: Self, b: Self) -> Self;
        /// `a` without its sign bit.
        unsafe fn abs(a: Self) -> Self;
        /// `a` with its sign bit flipped.
        unsafe fn neg(a: Self) -> Self;
        /// `a ≥ b`, false where either is NaN.
        unsafe fn ge(a: Self, b: Self) -> Self::Mask;
        /// `a < b`, false where either is NaN.
        unsafe fn lt(a: Self, b: Self) -> Self::Mask;
        /// `yes` where `m` holds, else `no`.
        unsafe fn select(m: Self::Mask, yes: Self, no: Self) -> Self;
        /// `p·2^k` where `shifted = k + ROUND` (the exponent built in the bits).
        unsafe fn times_two_to(p: Self, shifted: Self) -> Self;
        /// `LANES` f32 from `x`, widened.
        unsafe fn load(x: *const f32) -> Self;
        /// Rounded to f32 into `LANES` elements at `out`.
        unsafe fn store(v: Self, out: *mut f32);
        /// The four registers' chains issued together ([`issue_together`]).
        unsafe fn settle(v: &mut [Self; 4]);
    }

    impl F64x for __m256d {
        const LANES: usize = 4;
        type Mask = __m256d;
        #[inline(always)]
        unsafe fn splat(c: f64) -> Self {
            _mm256_set1_pd(c)
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            _mm256_add_pd(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: Self, b: Self) -> Self {
            _mm256_sub_pd(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: Self, b: Self) -> Self {
            _mm256_mul_pd(a, b)
        }
        #[inline(always)]
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
            _mm256_fmadd_pd(a, b, c)
        }
        #[inline(always)]
        unsafe fn div(a: Self, b: Self) -> Self {
            _mm256_div_pd(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: Self, b: Self) -> Self {
            _mm256_min_pd(a, b)
        }
        #[inline(always)]
        unsafe fn abs(a: Self) -> Self {
            _mm256_andnot_pd(_mm256_set1_pd(-0.0), a)
        }
        #[inline(always)]
        unsafe fn neg(a: Self) -> Self {
            _mm256_xor_pd(a, _mm256_set1_pd(-0.0))
        }
        #[inline(always)]
        unsafe fn ge(a: Self, b: Self) -> Self::Mask {
            _mm256_cmp_pd::<_CMP_GE_OQ>(a, b)
        }
        #[inline(always)]
        unsafe fn lt(a: Self, b: Self) -> Self::Mask {
            _mm256_cmp_pd::<_CMP_LT_OQ>(a, b)
        }
        #[inline(always)]
        unsafe fn select(m: Self::Mask, yes: Self, no: Self) -> Self {
            _mm256_blendv_pd(no, yes, m)
        }
        #[inline(always)]
        unsafe fn times_two_to(p: Self, shifted: Self) -> Self {
            let k_bits = _mm256_sub_epi64(
                _mm256_castpd_si256(shifted),
                _mm256_set1_epi64x(ROUND.to_bits() as i64),
            );
            let two_k = _mm256_slli_epi64::<52>(_mm256_add_epi64(k_bits, _mm256_set1_epi64x(1023)));
            _mm256_mul_pd(p, _mm256_castsi256_pd(two_k))
        }
        #[inline(always)]
        unsafe fn load(x: *const f32) -> Self {
            _mm256_cvtps_pd(_mm_loadu_ps(x))
        }
        #[inline(always)]
        unsafe fn store(v: Self, out: *mut f32) {
            _mm_storeu_ps(out, _mm256_cvtpd_ps(v))
        }
        #[inline(always)]
        unsafe fn settle(v: &mut [Self; 4]) {
            // SAFETY: `__m256d` and `__m256i` are the same 256 bits, any pattern valid for both.
            issue_together(&mut *(v as *mut [Self; 4]).cast::<[__m256i; 4]>());
        }
    }

    impl F64x for __m512d {
        const LANES: usize = 8;
        type Mask = __mmask8;
        #[inline(always)]
        unsafe fn splat(c: f64) -> Self {
            _mm512_set1_pd(c)
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            _mm512_add_pd(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: Self, b: Self) -> Self {
            _mm512_sub_pd(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: Self, b: Self) -> Self {
            _mm512_mul_pd(a, b)
        }
        #[inline(always)]
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
            _mm512_fmadd_pd(a, b, c)
        }
        #[inline(always)]
        unsafe fn div(a: Self, b: Self) -> Self {
            _mm512_div_pd(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: Self, b: Self) -> Self {
            _mm512_min_pd(a, b)
        }
        #[inline(always)]
        unsafe fn abs(a: Self) -> Self {
            _mm512_abs_pd(a)
        }
        #[inline(always)]
        unsafe fn neg(a: Self) -> Self {
            _mm512_castsi512_pd(_mm512_xor_si512(
                _mm512_castpd_si512(a),
                _mm512_set1_epi64(i64::MIN),
            ))
        }
        #[inline(always)]
        unsafe fn ge(a: Self, b: Self) -> Self::Mask {
            _mm512_cmp_pd_mask::<_CMP_GE_OQ>(a, b)
        }
        #[inline(always)]
        unsafe fn lt(a: Self, b: Self) -> Self::Mask {
            _mm512_cmp_pd_mask::<_CMP_LT_OQ>(a, b)
        }
        #[inline(always)]
        unsafe fn select(m: Self::Mask, yes: Self, no: Self) -> Self {
            _mm512_mask_blend_pd(m, no, yes)
        }
        #[inline(always)]
        unsafe fn times_two_to(p: Self, shifted: Self) -> Self {
            let k_bits = _mm512_sub_epi64(
                _mm512_castpd_si512(shifted),
                _mm512_set1_epi64(ROUND.to_bits() as i64),
            );
            let two_k = _mm512_slli_epi64::<52>(_mm512_add_epi64(k_bits, _mm512_set1_epi64(1023)));
            _mm512_mul_pd(p, _mm512_castsi512_pd(two_k))
        }
        #[inline(always)]
        unsafe fn load(x: *const f32) -> Self {
            _mm512_cvtps_pd(_mm256_loadu_ps(x))
        }
        #[inline(always)]
        unsafe fn store(v: Self, out: *mut f32) {
            _mm256_storeu_ps(out, _mm512_cvtpd_ps(v))
        }
        #[inline(always)]
        unsafe fn settle(v: &mut [Self; 4]) {
            // SAFETY: `__m512d` and `__m512i` are the same 512 bits, any pattern valid for both.
            issue_together_512(&mut *(v as *mut [Self; 4]).cast::<[__m512i; 4]>());
        }
    }

    /// Four registers: 16 (AVX2) or 32 (AVX-512) elements.
    type Group<V> = [V; 4];

    /// `y = k·ln 2 + r` for `exp_lanes`: `(k + ROUND, r)`.
    #[inline(always)]
    unsafe fn exp_reduce<V: F64x>(y: V) -> (V, V) {
        let shifted = V::mul_add(y, V::splat(LOG2_E), V::splat(ROUND));
        let k = V::sub(shifted, V::splat(ROUND));
        let minus_k = V::neg(k);
        let r = V::mul_add(
            minus_k,
            V::splat(LN2_LO),
            V::mul_add(minus_k, V::splat(LN2_HI), y),
        );
        (shifted, r)
    }

    /// One Horner step `p·x + c` of four chains.
    #[inline(always)]
    unsafe fn horner_step<V: F64x>(p: &mut Group<V>, x: &Group<V>, c: f64) {
        for j in 0..4 {
            p[j] = V::mul_add(p[j], x[j], V::splat(c));
        }
    }

    /// `e^y`: `exp_lanes`, a group of lanes.
    #[inline(always)]
    unsafe fn exp_group<V: F64x>(y: Group<V>) -> Group<V> {
        let (mut shifted, mut r) = (y, y);
        for j in 0..4 {
            (shifted[j], r[j]) = exp_reduce(y[j]);
        }
        let mut p = [V::splat(1.0 / 3_628_800.0); 4];
        for c in INVERSE_FACTORIALS {
            horner_step(&mut p, &r, c);
            V::settle(&mut p);
        }
        for j in 0..4 {
            p[j] = V::times_two_to(p[j], shifted[j]);
        }
        p
    }

    /// `(Φ(x), φ(x))`: `normal_cdf_pdf`, a group of lanes. The erfc polynomial and the
    /// exponential's series step together: eight independent chains.
    #[inline(always)]
    unsafe fn normal_cdf_pdf_group<V: F64x>(x: Group<V>) -> (Group<V>, Group<V>) {
        let (mut abs_x, mut t, mut shifted, mut r) = (x, x, x, x);
        for j in 0..4 {
            abs_x[j] = V::abs(x[j]);
            // `min` returns its second operand for a NaN first one, as f64::min returns 10.
            let z = V::min(V::mul(abs_x[j], V::splat(FRAC_1_SQRT_2)), V::splat(10.0));
            t[j] = V::div(
                V::splat(1.0),
                V::add(V::splat(1.0), V::mul(V::splat(0.5), z)),
            );
            (shifted[j], r[j]) = exp_reduce(V::neg(V::mul(z, z)));
        }
        let mut p = [V::splat(ERFC_P[11]); 4];
        let mut series = [V::splat(1.0 / 3_628_800.0); 4];
        for (step, &c) in ERFC_P[..11].iter().rev().enumerate() {
            horner_step(&mut p, &t, c);
            // The series has one step fewer than the polynomial.
            if let Some(&factor) = INVERSE_FACTORIALS.get(step) {
                horner_step(&mut series, &r, factor);
                V::settle(&mut series);
            }
            V::settle(&mut p);
        }
        let (mut cdf, mut pdf) = (x, x);
        for j in 0..4 {
            let far = V::ge(abs_x[j], V::splat(10.0 / FRAC_1_SQRT_2));
            let g = V::select(far, V::splat(0.0), V::times_two_to(series[j], shifted[j]));
            let half_erfc = V::mul(V::mul(V::mul(V::splat(0.5), t[j]), p[j]), g);
            let negative = V::lt(x[j], V::splat(0.0));
            cdf[j] = V::select(negative, half_erfc, V::sub(V::splat(1.0), half_erfc));
            pdf[j] = V::mul(V::splat(FRAC_1_SQRT_2PI), g);
        }
        (cdf, pdf)
    }

    /// A group's elements from `x` (`4·LANES` of them), widened.
    #[inline(always)]
    unsafe fn load<V: F64x>(x: *const f32) -> Group<V> {
        let mut v = [V::splat(0.0); 4];
        for (j, vj) in v.iter_mut().enumerate() {
            *vj = V::load(x.add(j * V::LANES));
        }
        v
    }

    #[inline(always)]
    unsafe fn store<V: F64x>(v: Group<V>, out: *mut f32) {
        for (j, &vj) in v.iter().enumerate() {
            V::store(vj, out.add(j * V::LANES));
        }
    }

    /// The longest group (AVX-512's): room for a zero-padded tail.
    const MAX_GROUP: usize = 32;

    /// An elementwise op on groups of lanes, of `N` inputs. (A trait rather than a closure:
    /// a closure is compiled on its own, without the entry point's target feature, and the
    /// intrinsics in it could stay calls.)
    trait GroupOp<V: F64x, const N: usize> {
        unsafe fn apply(args: [Group<V>; N]) -> Group<V>;
    }

    /// `Op` over `n` elements in groups of `4·LANES`; the last `n % group` zero-padded to a
    /// whole group (computed like any other) and copied out. Each group's inputs are read
    /// before its output is written, so `out` may be an input.
    #[inline(always)]
    unsafe fn each_group<V: F64x, const N: usize, Op: GroupOp<V, N>>(
        inputs: [*const f32; N],
        out: *mut f32,
        n: usize,
    ) {
        let group = 4 * V::LANES;
        let whole = n - n % group;
        let mut start = 0;
        while start < whole {
            let mut args = [[V::splat(0.0); 4]; N];
            for (arg, x) in args.iter_mut().zip(inputs) {
                *arg = load::<V>(x.add(start));
            }
            store(Op::apply(args), out.add(start));
            start += group;
        }
        if whole < n {
            let tail = n - whole;
            let mut args = [[V::splat(0.0); 4]; N];
            for (arg, x) in args.iter_mut().zip(inputs) {
                let mut padded = [0.0f32; MAX_GROUP];
                std::ptr::copy_nonoverlapping(x.add(whole), padded.as_mut_ptr(), tail);
                *arg = load::<V>(padded.as_ptr());
            }
            let mut result = [0.0f32; MAX_GROUP];
            store(Op::apply(args), result.as_mut_ptr());
            std::ptr::copy_nonoverlapping(result.as_ptr(), out.add(whole), tail);
        }
    }

    /// `x·Φ(x)`.
    struct Gelu;
    impl<V: F64x> GroupOp<V, 1> for Gelu {
        #[inline(always)]
        unsafe fn apply([x]: [Group<V>; 1]) -> Group<V> {
            let (mut y, _) = normal_cdf_pdf_group(x);
            for j in 0..4 {
                y[j] = V::mul(x[j], y[j]);
            }
            y
        }
    }

    /// `dy·(Φ(x) + x·φ(x))`.
    struct GeluBackward;
    impl<V: F64x> GroupOp<V, 2> for GeluBackward {
        #[inline(always)]
        unsafe fn apply([dy, x]: [Group<V>; 2]) -> Group<V> {
            let (mut grad, pdf) = normal_cdf_pdf_group(x);
            for j in 0..4 {
                grad[j] = V::mul(dy[j], V::add(grad[j], V::mul(x[j], pdf[j])));
            }
            grad
        }
    }

    /// `e^x` with `x` clamped below at −700 (the result is 0 in f32 anyway; NaN stays NaN,
    /// the comparison fails).
    struct ClampedExp;
    impl<V: F64x> GroupOp<V, 1> for ClampedExp {
        #[inline(always)]
        unsafe fn apply([mut v]: [Group<V>; 1]) -> Group<V> {
            for vj in &mut v {
                *vj = V::select(V::lt(*vj, V::splat(-700.0)), V::splat(-700.0), *vj);
            }
            exp_group(v)
        }
    }

    /// The entry points, one per instruction set.
    macro_rules! entry_points {
        ($feature:literal, $v:ty, $gelu:ident, $gelu_backward:ident, $exp:ident) => {
            /// # Safety
            /// The CPU must have the instruction set named in the function's name, and
            /// `out` must be as long as `x` (checked by the caller, `gelu_with`).
            #[target_feature(enable = $feature)]
            pub unsafe fn $gelu(x: &[f32], out: &mut [MaybeUninit<f32>]) {
                each_group::<$v, 1, Gelu>([x.as_ptr()], out.as_mut_ptr().cast(), x.len())
            }

            /// # Safety
            /// As for the forward, and `dy` as long as `x` (checked by `gelu_backward_with`).
            #[target_feature(enable = $feature)]
            pub unsafe fn $gelu_backward(dy: &[f32], x: &[f32], out: &mut [MaybeUninit<f32>]) {
                each_group::<$v, 2, GeluBackward>(
                    [dy.as_ptr(), x.as_ptr()],
                    out.as_mut_ptr().cast(),
                    x.len(),
                )
            }

            /// # Safety
            /// As for the forward.
            #[target_feature(enable = $feature)]
            pub unsafe fn $exp(x: &mut [f32]) {
                let p = x.as_mut_ptr();
                each_group::<$v, 1, ClampedExp>([p.cast_const()], p, x.len())
            }
        };
    }

    entry_points!("avx2,fma", __m256d, gelu_avx2, gelu_backward_avx2, exp_avx2);
    entry_points!(
        "avx512f",
        __m512d,
        gelu_avx512,
        gelu_backward_avx512,
        exp_avx512
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GELU and its derivative in f64 with libm's erfc, rounded to f32 (the reference), and
    /// the size of the derivative's two terms.
    fn reference(x: f32) -> (f32, f32, f64) {
        let v = f64::from(x);
        let cdf = 0.5 * libm::erfc(-v * FRAC_1_SQRT_2);
        let pdf = FRAC_1_SQRT_2PI * (-0.5 * v * v).exp();
        (
            (v * cdf) as f32,
            (cdf + v * pdf) as f32,
            cdf.abs() + (v * pdf).abs(),
        )
    }

    fn ulps(a: f32, b: f32) -> u32 {
        if a == b {
            return 0;
        }
        let ordered = |f: f32| {
            let i = f.to_bits() as i32;
            if i < 0 {
                i32::MIN - i
            } else {
                i
            }
        };
        ordered(a).abs_diff(ordered(b))
    }

    #[test]
    fn within_one_f32_ulp_of_the_rounded_exact_values() {
        let xs: Vec<f32> = (-240_000..=240_000).map(|i| i as f32 * 5e-5).collect();
        let mut fwd = vec![0.0; xs.len()];
        let mut bwd = vec![0.0; xs.len()];
        gelu_f32(&xs, as_out(&mut fwd));
        gelu_backward_f32(&vec![1.0; xs.len()], &xs, as_out(&mut bwd));
        let (mut worst_f, mut worst_b, mut exact) = (0, 0.0f64, 0usize);
        for ((&x, &f), &b) in xs.iter().zip(&fwd).zip(&bwd) {
            let (rf, rb, terms) = reference(x);
            worst_f = worst_f.max(ulps(f, rf));
            // Near its zero (x ≈ −0.75) the derivative is a difference of two O(0.2) terms:
            // its error is measured in units of f32 rounding of those terms.
            let unit = if ulps(b, rb) <= 1 {
                f64::INFINITY
            } else {
                terms * f64::from(f32::EPSILON)
            };
            worst_b = worst_b.max((f64::from(b) - f64::from(rb)).abs() / unit);
            exact += usize::from(f == rf);
        }
        assert!(worst_f <= 1, "forward {worst_f} ulp");
        assert!(worst_b <= 1.0, "backward {worst_b} roundings of its terms");
        assert!(
            exact as f64 / xs.len() as f64 > 0.998,
            "{exact} of {}",
            xs.len()
        );
        // The scalar loops and every vector width this CPU runs agree bit for bit (the
        // length is not a multiple of any group, so every tail is in it).
        assert_eq!(xs.len() % 32, 1);
        let mut scalar = vec![0.0; xs.len()];
        gelu_loop(&xs, as_out(&mut scalar));
        let dy: Vec<f32> = xs.iter().map(|x| 1.0 - x * 0.3).collect();
        let mut scalar_bwd = vec![0.0; xs.len()];
        gelu_backward_loop(&dy, &xs, as_out(&mut scalar_bwd));
        let exp_input: Vec<f32> = xs.iter().map(|x| x * 8.0).collect();
        let mut scalar_exp = exp_input.clone();
        exp_loop(&mut scalar_exp);
        for width in widths() {
            // SAFETY (these calls): `widths` lists what this CPU runs.
            unsafe { gelu_with(width, &xs, as_out(&mut fwd)) };
            assert_eq!(bits(&scalar), bits(&fwd), "{width:?}");
            unsafe { gelu_backward_with(width, &dy, &xs, as_out(&mut bwd)) };
            assert_eq!(bits(&scalar_bwd), bits(&bwd), "{width:?}");
            let mut vector = exp_input.clone();
            unsafe { exp_with(width, &mut vector) };
            assert_eq!(bits(&scalar_exp), bits(&vector), "{width:?}");
        }
    }

    /// Every width this CPU runs, the widest last.
    fn widths() -> Vec<Width> {
        #[allow(unused_mut)]
        let mut all = vec![Width::Scalar];
        #[cfg(target_arch = "x86_64")]
        all.extend(
            [Width::Avx2, Width::Avx512]
                .into_iter()
                .filter(|&w| runs(w)),
        );
        assert_eq!(all.last(), Some(&widest()));
        all
    }

    /// An initialised slice as the kernels' output type.
    fn as_out(v: &mut [f32]) -> &mut [MaybeUninit<f32>] {
        // SAFETY: `MaybeUninit<f32>` has the layout of f32, and the kernels store only
        // initialised values, so `v` stays initialised.
        unsafe { &mut *(v as *mut [f32] as *mut [MaybeUninit<f32>]) }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn exp_within_one_f32_ulp() {
        let mut xs: Vec<f32> = (-1_000_000..=100_000).map(|i| i as f32 * 1e-4).collect();
        let want: Vec<f32> = xs.iter().map(|&x| f64::from(x).exp() as f32).collect();
        exp_f32(&mut xs);
        let worst = xs
            .iter()
            .zip(&want)
            .map(|(&a, &b)| ulps(a, b))
            .max()
            .unwrap();
        assert!(worst <= 1, "{worst} ulp");
        let mut specials = [-1e30f32, -800.0, 0.0, f32::NAN];
        exp_f32(&mut specials);
        assert_eq!(&specials[..3], &[0.0, 0.0, 1.0]);
        assert!(specials[3].is_nan());
    }

    #[test]
    fn tails_and_specials() {
        let xs = [
            -1e30f32,
            -50.0,
            -9.0,
            0.0,
            -0.0,
            9.0,
            50.0,
            1e30,
            f32::INFINITY,
            f32::NAN,
        ];
        for width in widths() {
            let mut out = [0.0; 10];
            // SAFETY (these calls): `widths` lists what this CPU runs.
            unsafe { gelu_with(width, &xs, as_out(&mut out)) };
            assert_eq!(&out[..2], &[-0.0, -0.0], "{width:?}");
            assert_eq!(out[3], 0.0);
            assert_eq!(&out[5..9], &[9.0, 50.0, 1e30, f32::INFINITY], "{width:?}");
            assert!(out[9].is_nan());
            let (want, _, _) = reference(-9.0);
            assert_eq!(out[2], want);
            let mut specials = [-1e30f32, -800.0, 0.0, f32::NAN];
            unsafe { exp_with(width, &mut specials) };
            assert_eq!(&specials[..3], &[0.0, 0.0, 1.0], "{width:?}");
            assert!(specials[3].is_nan());
        }
    }
}
